package main

import (
	"archive/zip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"
)

// The proxy serves each module's committed files: the root's without the
// nested module's, the nested module's with the root's LICENSE; what is
// on disk and not committed is left out. (The zips hash as those the go
// command makes from the tags themselves: compared once by hand, with
// git's url.insteadOf pointing github.com/dbscope/dbscope at a clone.)
func TestWriteProxy(t *testing.T) {
	tree := repo(t, map[string]string{
		"LICENSE":    "license",
		"go.mod":     "module example.com/m\n\ngo 1.26\n",
		"a/a.go":     "package a\n",
		"sub/go.mod": "module example.com/m/sub\n\ngo 1.26\n\nrequire example.com/m v0.1.0\n",
		"sub/s.go":   "package sub\n",
	})
	if err := os.WriteFile(filepath.Join(tree.dir, "a", "new.go"), []byte("package a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An annotated tag names the revision, as scripts/release makes them.
	tag := exec.Command("git", "-c", "user.name=t", "-c", "user.email=t@example.com", "tag", "-a", "-m", "v0.1.0", "v0.1.0")
	tag.Dir = tree.dir
	if out, err := tag.CombinedOutput(); err != nil {
		t.Fatalf("git tag: %v\n%s", err, out)
	}
	tree.rev = "v0.1.0"
	mods := []pubModule{{".", "example.com/m"}, {"sub", "example.com/m/sub"}}
	out := t.TempDir()
	if err := writeProxy(tree, "v0.1.0", out, mods); err != nil {
		t.Fatal(err)
	}
	for m, want := range map[string][]string{
		"example.com/m":     {"LICENSE", "a/a.go", "go.mod"},
		"example.com/m/sub": {"LICENSE", "go.mod", "s.go"},
	} {
		base := filepath.Join(out, filepath.FromSlash(m), "@v", "v0.1.0")
		mv := module.Version{Path: m, Version: "v0.1.0"}
		if _, err := modzip.CheckZip(mv, base+".zip"); err != nil {
			t.Errorf("%s: %v", m, err)
		}
		zr, err := zip.OpenReader(base + ".zip")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range zr.File {
			got = append(got, f.Name[len(mv.String())+1:])
		}
		zr.Close()
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: zip holds %q, want %q", m, got, want)
		}
		for _, ext := range []string{".info", ".mod"} {
			if _, err := os.Stat(base + ext); err != nil {
				t.Error(err)
			}
		}
	}
}
