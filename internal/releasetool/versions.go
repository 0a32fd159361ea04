package main

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
)

// pubModule is a module to publish: its directory in the repository
// ("." for the root) and its module path.
type pubModule struct {
	Dir, Path string
}

// checkVersions checks that version is a release version and that every
// go.mod file of the tree requires the repository's modules at exactly
// that version, and only those of dirs, the published ones. It returns
// the modules of dirs, the root's first.
func checkVersions(t *gitTree, version string, dirs []string) ([]pubModule, error) {
	if !semver.IsValid(version) || semver.Canonical(version) != version {
		return nil, fmt.Errorf("%q is not a canonical semantic version such as v0.1.0", version)
	}
	if module.IsPseudoVersion(version) {
		return nil, fmt.Errorf("%s is a pseudo-version: release a version of its own", version)
	}

	root, goMods, err := repoModules(t)
	if err != nil {
		return nil, err
	}
	if err := module.Check(root, version); err != nil {
		return nil, err
	}
	var mods []pubModule
	published := map[string]bool{}
	for _, dir := range dirs {
		dir = path.Clean(dir)
		want := root
		if dir != "." {
			want = root + "/" + dir
		}
		f, err := readGoMod(t, path.Join(dir, "go.mod"))
		if err != nil {
			return nil, err
		}
		if got := f.Module.Mod.Path; got != want {
			return nil, fmt.Errorf("%s/go.mod: module %s: a module in directory %s must be %s, or its tags will not name it", dir, got, dir, want)
		}
		mods = append(mods, pubModule{Dir: dir, Path: want})
		published[want] = true
	}
	if !published[root] {
		return nil, fmt.Errorf("the root module (directory .) must be published with the others")
	}
	slices.SortStableFunc(mods, func(a, b pubModule) int { return strings.Compare(a.Path, b.Path) })

	var errs []error
	for _, name := range goMods {
		f, err := readGoMod(t, name)
		if err != nil {
			return nil, err
		}
		for _, r := range f.Require {
			p, v := r.Mod.Path, r.Mod.Version
			if p != root && !strings.HasPrefix(p, root+"/") {
				continue
			}
			switch {
			case !published[p]:
				errs = append(errs, fmt.Errorf("%s requires %s, which is not published", name, p))
			case module.IsZeroPseudoVersion(v):
				errs = append(errs, fmt.Errorf("%s requires %s %s, the zero pseudo-version, which only a replace line resolves: require %s", name, p, v, version))
			case v != version:
				errs = append(errs, fmt.Errorf("%s requires %s %s, not the version released, %s", name, p, v, version))
			}
		}
	}
	return mods, errors.Join(errs...)
}

// repoModules returns the root module's path and the names of the
// tree's go.mod files.
func repoModules(t *gitTree) (root string, goMods []string, err error) {
	f, err := readGoMod(t, "go.mod")
	if err != nil {
		return "", nil, err
	}
	files, err := t.Files()
	if err != nil {
		return "", nil, err
	}
	for _, name := range files {
		if path.Base(name) == "go.mod" {
			goMods = append(goMods, name)
		}
	}
	return f.Module.Mod.Path, goMods, nil
}

func readGoMod(t *gitTree, name string) (*modfile.File, error) {
	data, err := t.ReadFile(name)
	if err != nil {
		return nil, err
	}
	f, err := modfile.Parse(name, data, nil)
	if err != nil {
		return nil, err
	}
	if f.Module == nil {
		return nil, fmt.Errorf("%s: no module line", name)
	}
	return f, nil
}
