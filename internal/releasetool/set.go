package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"
)

// setVersions rewrites the go.mod files of the work tree, the committed
// ones, so that each requires the repository's modules at version, and
// returns the names of those it changed. Replace lines stay as they are.
func setVersions(t *gitTree, version string) ([]string, error) {
	root, goMods, err := repoModules(t)
	if err != nil {
		return nil, err
	}
	var changed []string
	for _, name := range goMods {
		file := filepath.Join(t.dir, filepath.FromSlash(name))
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		f, err := modfile.Parse(name, data, nil)
		if err != nil {
			return nil, err
		}
		for _, r := range f.Require {
			if p := r.Mod.Path; p == root || strings.HasPrefix(p, root+"/") {
				if err := f.AddRequire(p, version); err != nil {
					return nil, err
				}
			}
		}
		out, err := f.Format()
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(out, data) {
			if err := os.WriteFile(file, out, 0o644); err != nil {
				return nil, err
			}
			changed = append(changed, name)
		}
	}
	return changed, nil
}

func setCmd(args []string) error {
	if len(args) != 1 {
		usage()
	}
	dir, err := os.Getwd()
	if err != nil {
		return err
	}
	changed, err := setVersions(&gitTree{dir: dir, rev: "HEAD"}, args[0])
	for _, name := range changed {
		fmt.Println(name)
	}
	return err
}
