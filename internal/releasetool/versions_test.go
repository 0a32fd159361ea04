package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// repo commits files to a new git repository and returns its tree at
// HEAD.
func repo(t *testing.T, files map[string]string) *gitTree {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"init", "-q"},
		{"add", "."},
		{"-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "t"},
	} {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return &gitTree{dir: dir, rev: "HEAD"}
}

func TestCheckVersions(t *testing.T) {
	const (
		root = "module example.com/m\n\ngo 1.26\n"
		sub  = "module example.com/m/sub\n\ngo 1.26\n\nrequire example.com/m %s\n\nreplace example.com/m => ../\n"
		app  = "module example.com/m/app\n\ngo 1.26\n\nrequire (\n\texample.com/m %s\n\texample.com/m/sub %s\n)\n"
	)
	for _, tc := range []struct {
		name     string
		files    map[string]string
		version  string
		wantErrs []string // substrings of the error; none: no error
	}{
		{
			name: "released versions",
			files: map[string]string{
				"go.mod": root, "sub/go.mod": fmt.Sprintf(sub, "v0.1.0"),
				"app/go.mod": fmt.Sprintf(app, "v0.1.0", "v0.1.0"),
			},
			version: "v0.1.0",
		},
		{
			name: "the zero pseudo-version and another version",
			files: map[string]string{
				"go.mod": root, "sub/go.mod": fmt.Sprintf(sub, "v0.0.0-00010101000000-000000000000"),
				"app/go.mod": fmt.Sprintf(app, "v0.1.0", "v0.0.9"),
			},
			version: "v0.1.0",
			wantErrs: []string{
				"sub/go.mod requires example.com/m v0.0.0-00010101000000-000000000000, the zero pseudo-version",
				"app/go.mod requires example.com/m/sub v0.0.9, not the version released, v0.1.0",
			},
		},
		{
			name: "an unpublished module required",
			files: map[string]string{
				"go.mod": root, "sub/go.mod": fmt.Sprintf(sub, "v0.1.0"),
				"other/go.mod": "module example.com/m/other\n\ngo 1.26\n\nrequire example.com/m/app v0.1.0\n",
				"app/go.mod":   fmt.Sprintf(app, "v0.1.0", "v0.1.0"),
			},
			version:  "v0.1.0",
			wantErrs: []string{"other/go.mod requires example.com/m/app, which is not published"},
		},
		{
			name:     "a pseudo-version released",
			files:    map[string]string{"go.mod": root, "sub/go.mod": fmt.Sprintf(sub, "v0.1.0")},
			version:  "v0.1.1-0.20260101000000-abcdefabcdef",
			wantErrs: []string{"is a pseudo-version"},
		},
		{
			name:     "not canonical",
			files:    map[string]string{"go.mod": root, "sub/go.mod": fmt.Sprintf(sub, "v0.1")},
			version:  "v0.1",
			wantErrs: []string{"not a canonical semantic version"},
		},
		{
			name:     "a major version the module path lacks",
			files:    map[string]string{"go.mod": root, "sub/go.mod": fmt.Sprintf(sub, "v2.0.0")},
			version:  "v2.0.0",
			wantErrs: []string{"v2"},
		},
		{
			name:     "a module path that does not match its directory",
			files:    map[string]string{"go.mod": root, "sub/go.mod": strings.Replace(fmt.Sprintf(sub, "v0.1.0"), "m/sub", "m/subx", 1)},
			version:  "v0.1.0",
			wantErrs: []string{"sub/go.mod: module example.com/m/subx"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mods, err := checkVersions(repo(t, tc.files), tc.version, []string{".", "sub"})
			if len(tc.wantErrs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if len(mods) != 2 || mods[0] != (pubModule{".", "example.com/m"}) || mods[1] != (pubModule{"sub", "example.com/m/sub"}) {
					t.Errorf("modules %v", mods)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tc.wantErrs)
			}
			for _, want := range tc.wantErrs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\nlacks %q", err, want)
				}
			}
		})
	}
}

// set rewrites what checkVersions refuses into what it accepts.
func TestSetVersions(t *testing.T) {
	tree := repo(t, map[string]string{
		"go.mod":     "module example.com/m\n\ngo 1.26\n",
		"sub/go.mod": fmt.Sprintf("module example.com/m/sub\n\ngo 1.26\n\nrequire example.com/m %s\n\nreplace example.com/m => ../\n", "v0.0.0-00010101000000-000000000000"),
		"app/go.mod": "module example.com/m/app\n\ngo 1.26\n\nrequire (\n\texample.com/m v0.1.0\n\texample.com/m/sub v0.1.0\n\tgolang.org/x/mod v0.1.0\n)\n",
	})
	changed, err := setVersions(tree, "v0.2.0")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(changed, " ") != "app/go.mod sub/go.mod" {
		t.Errorf("changed %q", changed)
	}
	data, err := os.ReadFile(filepath.Join(tree.dir, "app", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "require (\n\texample.com/m v0.2.0\n\texample.com/m/sub v0.2.0\n\tgolang.org/x/mod v0.1.0\n)\n"; !strings.Contains(string(data), want) {
		t.Errorf("app/go.mod:\n%s\nwant it to hold\n%s", data, want)
	}
	for _, args := range [][]string{{"add", "."}, {"-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "v0.2.0"}} {
		cmd := exec.Command("git", args...)
		cmd.Dir = tree.dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git: %v\n%s", err, out)
		}
	}
	if _, err := checkVersions(tree, "v0.2.0", []string{".", "sub"}); err != nil {
		t.Error(err)
	}
}
