package wsconsumer

import (
	"encoding/json"
	"testing"
)

type fuzzMsg struct {
	ID   int               `json:"id"`
	Name string            `json:"name"`
	Tags []string          `json:"tags"`
	Meta map[string]string `json:"meta"`
}

// FuzzDecodeJSON feeds client bytes to the JSON receive path: it must
// never panic, and what it accepts must be exactly one valid JSON value.
func FuzzDecodeJSON(f *testing.F) {
	for _, seed := range []string{`{"id":1}`, `{"id":1} {"id":2}`, `{nope`, `null`, `{"tags":["a"],"meta":{"k":"v"}}`, "\xff", `{"id":1e400}`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeJSON[fuzzMsg](data)
		if err != nil {
			return
		}
		if !json.Valid(data) {
			t.Fatalf("accepted invalid JSON %q as %+v", data, v)
		}
	})
}
