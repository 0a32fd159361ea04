package pgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// errNoBinaries means initdb and pg_ctl could not be found.
var errNoBinaries = errors.New("initdb and pg_ctl not found")

// binGlob matches the bin directories of Debian's PostgreSQL packages; tests
// change it.
var binGlob = "/usr/lib/postgresql/*/bin"

// cluster is a throwaway PostgreSQL cluster in a temporary directory.
type cluster struct {
	dir     string // temporary directory: socket, log, and data/ below it
	data    string // data directory
	pgCtl   string // path of pg_ctl
	runAs   string // OS user to run initdb/pg_ctl as ("" for ourselves)
	url     string
	logf    func(string, ...any)
	once    sync.Once
	logFile string
}

// startCluster creates and starts a throwaway cluster. Its server listens
// on no TCP address, only on a unix socket in the cluster's own directory.
// hba, if not empty, replaces the pg_hba.conf initdb wrote (trust for
// everyone).
func startCluster(ctx context.Context, logf func(string, ...any), hba string) (*cluster, error) {
	initdb, pgCtl, err := findBinaries()
	if err != nil {
		return nil, err
	}
	dir, err := clusterDir()
	if err != nil {
		return nil, err
	}
	c := &cluster{
		dir:     dir,
		data:    filepath.Join(dir, "data"),
		pgCtl:   pgCtl,
		logf:    logf,
		logFile: filepath.Join(dir, "postgres.log"),
	}
	fail := func(err error) (*cluster, error) {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgserver: throwaway cluster: %w", err)
	}
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		if err := chownTo(dir, "postgres"); err != nil {
			return fail(fmt.Errorf("running as root, so the cluster must run as user postgres: %w", err))
		}
		c.runAs = "postgres"
	}
	port, err := freePort()
	if err != nil {
		return fail(err)
	}
	logf("starting a throwaway cluster with %s in %s", filepath.Dir(initdb), dir)
	if err := c.run(ctx, initdb, "-D", c.data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return fail(err)
	}
	conf := fmt.Sprintf("\n# added by pgtest\n"+
		"listen_addresses = ''\n"+
		"unix_socket_directories = '%s'\n"+
		"port = %d\n"+
		"fsync = off\n"+
		"synchronous_commit = off\n"+
		"full_page_writes = off\n"+
		"max_connections = 200\n",
		strings.ReplaceAll(dir, "'", "''"), port)
	if err := appendFile(filepath.Join(c.data, "postgresql.conf"), conf); err != nil {
		return fail(err)
	}
	if hba != "" {
		if err := os.WriteFile(filepath.Join(c.data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
			return fail(err)
		}
	}
	if err := c.run(ctx, pgCtl, "start", "-D", c.data, "-l", c.logFile, "-w", "-t", "60"); err != nil {
		log, _ := os.ReadFile(c.logFile)
		c.run(context.Background(), pgCtl, "stop", "-D", c.data, "-m", "immediate", "-w")
		return fail(fmt.Errorf("%w\nserver log:\n%s", err, tail(log, 2000)))
	}
	c.url = fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d&sslmode=disable", url.QueryEscape(dir), port)
	logf("throwaway cluster ready at %s", c.url)
	return c, nil
}

// stop stops the cluster at once and removes its directory. It may be
// called more than once.
func (c *cluster) stop() {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.run(ctx, c.pgCtl, "stop", "-D", c.data, "-m", "immediate", "-w"); err != nil {
			c.logf("stopping the throwaway cluster: %v", err)
		}
		if err := os.RemoveAll(c.dir); err != nil {
			c.logf("removing the throwaway cluster: %v", err)
		}
	})
}

// run runs a PostgreSQL program, as c.runAs if set, and returns its output
// in the error if it fails.
func (c *cluster) run(ctx context.Context, name string, args ...string) error {
	var cmd *exec.Cmd
	switch {
	case c.runAs == "":
		cmd = exec.CommandContext(ctx, name, args...)
	case hasProgram("runuser"):
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", c.runAs, "--", name}, args...)...)
	default:
		cmd = exec.CommandContext(ctx, "su", c.runAs, "-s", "/bin/sh", "-c", shellQuote(append([]string{name}, args...)))
	}
	cmd.Dir = c.dir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, tail(out.Bytes(), 2000))
	}
	return nil
}

// findBinaries finds initdb and pg_ctl of one PostgreSQL version: on PATH
// first, else the newest under /usr/lib/postgresql/*/bin.
func findBinaries() (initdb, pgCtl string, err error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs := []string{filepath.Dir(p)}
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append([]string{filepath.Dir(real)}, dirs...)
		}
		for _, d := range dirs {
			if ctl := filepath.Join(d, "pg_ctl"); isExecutable(ctl) {
				return p, ctl, nil
			}
		}
		if ctl, err := exec.LookPath("pg_ctl"); err == nil {
			return p, ctl, nil
		}
	}
	dirs, _ := filepath.Glob(binGlob)
	slices.SortFunc(dirs, func(a, b string) int { // newest version first
		return compareVersions(filepath.Base(filepath.Dir(b)), filepath.Base(filepath.Dir(a)))
	})
	for _, d := range dirs {
		i, ctl := filepath.Join(d, "initdb"), filepath.Join(d, "pg_ctl")
		if isExecutable(i) && isExecutable(ctl) {
			return i, ctl, nil
		}
	}
	return "", "", errNoBinaries
}

// compareVersions compares dotted version numbers such as "9.6" and "15".
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	return strings.Compare(a, b)
}

// clusterDir makes the cluster's temporary directory, short enough for a
// unix socket path inside it.
func clusterDir() (string, error) {
	parent := os.TempDir()
	if len(parent) > 60 { // unix socket paths are limited to about 107 bytes
		parent = "/tmp"
	}
	dir, err := os.MkdirTemp(parent, "pgtest-")
	if err != nil {
		return "", fmt.Errorf("pgserver: throwaway cluster: %w", err)
	}
	return dir, nil
}

// chownTo gives path to the named OS user.
func chownTo(path, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return err
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return err
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return err
	}
	return os.Chown(path, uid, gid)
}

// freePort returns a TCP port number that was free a moment ago. The
// cluster only uses it to name its unix socket, in a directory of its own,
// so a clash with a TCP listener does not matter.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func hasProgram(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// shellQuote joins args into a /bin/sh command line.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// tail returns at most the last n bytes of b, as text.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
