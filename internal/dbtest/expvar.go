package dbtest

import (
	"encoding/json"
	"expvar"
	"net/http"
	"net/http/httptest"
	"testing"
)

// Published reads the expvar named name as expvar's handler serves it on
// GET /debug/vars, and unmarshals it into v.
func Published(t testing.TB, name string, v any) {
	t.Helper()
	rec := httptest.NewRecorder()
	expvar.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/vars", nil))
	var vars map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &vars); err != nil {
		t.Fatalf("GET /debug/vars: %v\n%s", err, rec.Body)
	}
	if err := json.Unmarshal(vars[name], v); err != nil {
		t.Fatalf("GET /debug/vars: %s: %v: %s", name, err, vars[name])
	}
}
