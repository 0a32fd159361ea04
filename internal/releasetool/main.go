// Command releasetool checks and simulates a release of the repository's
// published modules, as scripts/release-check runs it:
//
//	releasetool proxy -rev HEAD -version v0.1.0 -out DIR . groups/natslayer dbprom dbotel
//
// checks that every go.mod file committed at the revision requires the
// repository's modules at that version, then writes a file-system module
// proxy (GOPROXY=file://DIR) serving each module directory named at that
// version, zipped from the revision's committed files as the go command
// zips a tagged commit. It prints the module paths, one a line.
//
//	go list -e -deps -json github.com/dbscope/dbscope/... | releasetool imports MODULE...
//
// reads go list's packages and fails where a package of one of the
// modules imports another module's internal/ packages; test files doing
// so are listed, not refused.
//
//	releasetool set v0.2.0
//
// run at the repository's root, rewrites its go.mod files to require the
// repository's modules at that version, for the next release.
//
// It is a module of its own, outside go.work, so that golang.org/x/mod
// stays out of the published modules and of the workspace's build list.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "proxy":
		err = proxyCmd(os.Args[2:])
	case "imports":
		err = importsCmd(os.Args[2:])
	case "set":
		err = setCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "releasetool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: releasetool proxy -rev REV -version VERSION -out DIR [-repo DIR] MODULE-DIR...")
	fmt.Fprintln(os.Stderr, "       go list -e -deps -json PATTERN | releasetool imports MODULE-PATH...")
	fmt.Fprintln(os.Stderr, "       releasetool set VERSION")
	os.Exit(2)
}

func proxyCmd(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	repo := fs.String("repo", ".", "the repository's work tree")
	rev := fs.String("rev", "HEAD", "the git revision to release")
	version := fs.String("version", "", "the version to release, such as v0.1.0")
	out := fs.String("out", "", "the proxy directory to write")
	fs.Parse(args)
	if *version == "" || *out == "" || fs.NArg() == 0 {
		usage()
	}
	root, err := filepath.Abs(*repo)
	if err != nil {
		return err
	}
	tree := &gitTree{dir: root, rev: *rev}
	mods, err := checkVersions(tree, *version, fs.Args())
	if err != nil {
		return err
	}
	if err := writeProxy(tree, *version, *out, mods); err != nil {
		return err
	}
	for _, m := range mods {
		fmt.Println(m.Path)
	}
	return nil
}

func importsCmd(args []string) error {
	if len(args) == 0 {
		usage()
	}
	rep, err := checkImports(os.Stdin, args)
	if err != nil {
		return err
	}
	for _, l := range rep.TestOnly {
		fmt.Printf("test files only (allowed: not part of a build): %s\n", l)
	}
	if len(rep.Problems) > 0 {
		for _, p := range rep.Problems {
			fmt.Fprintln(os.Stderr, p)
		}
		return fmt.Errorf("%d imports of another module's internal/ packages", len(rep.Problems))
	}
	fmt.Printf("%d packages of %d modules: none imports another module's internal/ packages\n", rep.Packages, len(args))
	return nil
}
