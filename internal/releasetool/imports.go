package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// importReport is what checkImports found.
type importReport struct {
	Packages int      // packages of the modules read
	Problems []string // a package importing another module's internal/
	TestOnly []string // the same from test files, which no dependent builds
}

// checkImports reads go list -json's packages from r and reports where a
// package of one of modules imports an internal/ package of another
// module. The go command allows that wherever the import paths nest (its
// rule is about paths, not modules), but it breaks as soon as the two
// modules are required at different versions.
func checkImports(r io.Reader, modules []string) (importReport, error) {
	var rep importReport
	seen := map[string]bool{}
	dec := json.NewDecoder(r)
	for {
		var p struct {
			ImportPath                         string
			Imports, TestImports, XTestImports []string
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return rep, fmt.Errorf("reading go list -json: %w", err)
		}
		m := owner(p.ImportPath, modules)
		if m == "" {
			continue
		}
		rep.Packages++
		seen[m] = true
		for _, imp := range p.Imports {
			if to := owner(imp, modules); isInternal(imp) && to != m {
				rep.Problems = append(rep.Problems, fmt.Sprintf("%s (module %s) imports %s, internal to module %s", p.ImportPath, m, imp, to))
			}
		}
		for _, imp := range slices.Concat(p.TestImports, p.XTestImports) {
			if to := owner(imp, modules); isInternal(imp) && to != m {
				rep.TestOnly = append(rep.TestOnly, fmt.Sprintf("%s imports %s", p.ImportPath, imp))
			}
		}
	}
	slices.Sort(rep.TestOnly)
	rep.TestOnly = slices.Compact(rep.TestOnly)
	for _, m := range modules {
		if !seen[m] {
			return rep, fmt.Errorf("go list listed no package of module %s", m)
		}
	}
	return rep, nil
}

// owner returns the module of modules that holds the package at path:
// the longest module path that is path or a parent of it (a nested
// module's directory is not part of the module around it), or "".
func owner(path string, modules []string) string {
	best := ""
	for _, m := range modules {
		if (path == m || strings.HasPrefix(path, m+"/")) && len(m) > len(best) {
			best = m
		}
	}
	return best
}

// isInternal reports whether path has an element "internal", which only
// packages in the tree rooted at its parent may import.
func isInternal(path string) bool {
	return slices.Contains(strings.Split(path, "/"), "internal")
}
