package main

import (
	"slices"
	"strings"
	"testing"
)

func TestCheckImports(t *testing.T) {
	const list = `
{"ImportPath": "example.com/m/a", "Imports": ["example.com/m/internal/x", "fmt"], "XTestImports": ["example.com/m/sub/internal/y"]}
{"ImportPath": "example.com/m/internal/x"}
{"ImportPath": "example.com/m/sub", "Imports": ["example.com/m/sub/internal/y"], "TestImports": ["example.com/m/internal/x"]}
{"ImportPath": "example.com/m/sub/internal/y", "Imports": ["example.com/m/internal/x"]}
{"ImportPath": "fmt"}
`
	rep, err := checkImports(strings.NewReader(list), []string{"example.com/m", "example.com/m/sub"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Packages != 4 {
		t.Errorf("read %d packages of the modules, want 4", rep.Packages)
	}
	wantProblems := []string{"example.com/m/sub/internal/y (module example.com/m/sub) imports example.com/m/internal/x, internal to module example.com/m"}
	if !slices.Equal(rep.Problems, wantProblems) {
		t.Errorf("problems %q\nwant     %q", rep.Problems, wantProblems)
	}
	wantTests := []string{
		"example.com/m/a imports example.com/m/sub/internal/y",
		"example.com/m/sub imports example.com/m/internal/x",
	}
	if !slices.Equal(rep.TestOnly, wantTests) {
		t.Errorf("test-only %q\nwant      %q", rep.TestOnly, wantTests)
	}

	// A module go list did not list fails the check: its patterns
	// matched nothing, so nothing was checked.
	if _, err := checkImports(strings.NewReader(list), []string{"example.com/m", "example.com/other"}); err == nil {
		t.Error("a module with no package listed: no error")
	}
}

func TestOwner(t *testing.T) {
	mods := []string{"example.com/m", "example.com/m/sub"}
	for path, want := range map[string]string{
		"example.com/m":            "example.com/m",
		"example.com/m/a/internal": "example.com/m",
		"example.com/m/sub":        "example.com/m/sub",
		"example.com/m/sub/b":      "example.com/m/sub",
		"example.com/m/subway":     "example.com/m",
		"example.com/other":        "",
	} {
		if got := owner(path, mods); got != want {
			t.Errorf("owner(%s) = %q, want %q", path, got, want)
		}
	}
}
