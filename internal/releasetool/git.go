package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// gitTree reads the files committed at one revision of a git work tree,
// never the files on disk.
type gitTree struct {
	dir, rev string
}

func (t *gitTree) git(args ...string) ([]byte, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = t.dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// ReadFile returns the file at name, a slash-separated path from the
// repository's root.
func (t *gitTree) ReadFile(name string) ([]byte, error) {
	return t.git("cat-file", "blob", t.rev+":"+name)
}

// Files lists the paths of the committed files.
func (t *gitTree) Files() ([]string, error) {
	out, err := t.git("ls-tree", "-r", "-z", "--name-only", t.rev)
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00"), nil
}

// Time returns the revision's commit time, which a module proxy reports
// as the version's time.
func (t *gitTree) Time() (time.Time, error) {
	out, err := t.git("show", "-s", "--format=%ct", t.rev+"^{commit}")
	if err != nil {
		return time.Time{}, err
	}
	sec, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(sec, 0).UTC(), nil
}

// Archive returns the revision as a zip file made by git archive, as the
// go command makes one of a tagged commit (export-ignore attributes
// apply, line endings as committed).
func (t *gitTree) Archive() ([]byte, error) {
	return t.git("-c", "core.autocrlf=input", "-c", "core.eol=lf", "archive", "--format=zip", t.rev)
}
