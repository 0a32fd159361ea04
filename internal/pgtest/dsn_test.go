package pgtest

import "testing"

func TestSanitize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"TestFoo/sub_case#01": "testfoo_sub_case_01",
		"///":                 "x",
		"Ünïcode Name":        "n_code_name",
	} {
		if got := sanitize(in, 40); got != want {
			t.Errorf("sanitize(%q) = %q, want %q", in, got, want)
		}
	}
	if got := sanitize("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 40); len(got) != 40 {
		t.Errorf("sanitize did not truncate: %d bytes", len(got))
	}
}
