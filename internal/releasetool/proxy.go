package main

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"
)

// writeProxy writes a module proxy in the layout of GOPROXY=file://out:
// each module's list, .info, .mod and .zip at version, from t's
// committed files. The zip holds the module directory's files, without
// those of nested modules (modzip omits them), and the root's LICENSE
// where the module has none, as the go command does for a tagged commit.
func writeProxy(t *gitTree, version, out string, mods []pubModule) error {
	when, err := t.Time()
	if err != nil {
		return err
	}
	archive, err := t.Archive()
	if err != nil {
		return err
	}
	zr, err := zip.NewReader(bytes.NewReader(archive), int64(len(archive)))
	if err != nil {
		return err
	}
	for _, m := range mods {
		if err := writeModule(t, zr, m, version, when, out); err != nil {
			return err
		}
	}
	return nil
}

func writeModule(t *gitTree, zr *zip.Reader, m pubModule, version string, when time.Time, out string) error {
	escPath, err := module.EscapePath(m.Path)
	if err != nil {
		return err
	}
	escVersion, err := module.EscapeVersion(version)
	if err != nil {
		return err
	}
	dir := filepath.Join(out, filepath.FromSlash(escPath), "@v")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	base := filepath.Join(dir, escVersion)

	gomod, err := t.ReadFile(strings.TrimPrefix(m.Dir+"/go.mod", "./"))
	if err != nil {
		return err
	}
	info, err := json.Marshal(struct {
		Version string
		Time    time.Time
	}{version, when})
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{
		filepath.Join(dir, "list"): []byte(version + "\n"),
		base + ".info":             info,
		base + ".mod":              gomod,
	} {
		if err := os.WriteFile(name, data, 0o644); err != nil {
			return err
		}
	}

	var files []modzip.File
	var license *zip.File
	prefix := m.Dir + "/"
	for _, f := range zr.File {
		if f.Name == "LICENSE" {
			license = f
		}
		if strings.HasSuffix(f.Name, "/") {
			continue // a directory
		}
		name := f.Name
		if m.Dir != "." {
			var ok bool
			if name, ok = strings.CutPrefix(f.Name, prefix); !ok {
				continue
			}
		}
		files = append(files, zipFile{name, f})
	}
	if license != nil && m.Dir != "." && !hasFile(files, "LICENSE") {
		files = append(files, zipFile{"LICENSE", license})
	}

	zf, err := os.Create(base + ".zip")
	if err != nil {
		return err
	}
	if err := modzip.Create(zf, module.Version{Path: m.Path, Version: version}, files); err != nil {
		zf.Close()
		return err
	}
	return zf.Close()
}

func hasFile(files []modzip.File, name string) bool {
	for _, f := range files {
		if f.Path() == name {
			return true
		}
	}
	return false
}

// zipFile is a file of git's archive under the name it has in the module.
type zipFile struct {
	name string
	f    *zip.File
}

func (f zipFile) Path() string                 { return f.name }
func (f zipFile) Lstat() (fs.FileInfo, error)  { return f.f.FileInfo(), nil }
func (f zipFile) Open() (io.ReadCloser, error) { return f.f.Open() }
