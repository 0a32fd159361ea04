// Package natstest runs a nats-server of a test's own: on a free loopback
// port, with its monitoring endpoint on another, so that the test can
// kill it and start it again on the same ports, and count the
// subscriptions it holds. It is for the tests of package natslayer and of
// the programs that use it (the examples).
//
//	srv := natstest.Start(t) // skips without nats-server, fails under $CI
//	engine, err := natslayer.Connect(srv.URL, nil)
//	…
//	srv.Kill(t)    // SIGKILL: every connection breaks
//	srv.Restart(t) // the same ports; clients reconnect by themselves
//
// The binary is Debian's nats-server package (apt-get install
// nats-server), found on $PATH or at /usr/sbin/nats-server.
package natstest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ErrNoBinary is returned where no nats-server binary is found.
var ErrNoBinary = errors.New("natstest: no nats-server on $PATH or at /usr/sbin/nats-server (apt-get install nats-server)")

// Binary returns the path of the nats-server binary, or ErrNoBinary.
func Binary() (string, error) {
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p, nil
	}
	const debian = "/usr/sbin/nats-server"
	if fi, err := os.Stat(debian); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return debian, nil
	}
	return "", ErrNoBinary
}

// Server is a nats-server started by [Start] or [Run].
type Server struct {
	// URL is the client URL, nats://127.0.0.1:port; it stays the same
	// across Restart.
	URL string

	bin     string
	dir     string // config and log
	monitor string // http://127.0.0.1:port

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd has been waited for
}

// Start runs a nats-server for tb, stopped at cleanup. Without the binary
// it skips tb, or fails it where $CI is set (CI must run what it can).
func Start(tb testing.TB) *Server {
	tb.Helper()
	if _, err := Binary(); err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("%v; CI is set, so this fails instead of skipping", err)
		}
		tb.Skip(err)
	}
	s, err := Run()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Error(err)
		}
	})
	return s
}

// Run starts a nats-server on free loopback ports and returns once it
// accepts clients. The caller must Stop it.
func Run() (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "natstest")
	if err != nil {
		return nil, err
	}
	// A port free a moment ago may be taken by another test's server
	// before this one binds it: then again, on other ports.
	for try := 1; ; try++ {
		client, err := freePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		monitor, err := freePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		conf := fmt.Sprintf("listen: %q\nhttp: %q\n", client, monitor)
		if err := os.WriteFile(filepath.Join(dir, "nats.conf"), []byte(conf), 0o600); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s := &Server{URL: "nats://" + client, bin: bin, dir: dir, monitor: "http://" + monitor}
		err = s.start()
		if err == nil {
			return s, nil
		}
		if try == 5 || !strings.Contains(err.Error(), "address already in use") {
			os.RemoveAll(dir)
			return nil, err
		}
		os.Remove(filepath.Join(dir, "nats.log"))
	}
}

// freePort returns a loopback address that was free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// start runs the server process and waits until it sends clients its
// INFO line.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("natstest: the server runs already")
	}
	log, err := os.OpenFile(filepath.Join(s.dir, "nats.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close() // the child holds its own descriptor
	cmd := exec.Command(s.bin, "-c", filepath.Join(s.dir, "nats.conf"))
	cmd.Stdout, cmd.Stderr = log, log // files: no copying goroutines
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("natstest: starting %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	addr := strings.TrimPrefix(s.URL, "nats://")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if answers(addr) {
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("natstest: nats-server exited at start:\n%s", s.Log())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("natstest: nats-server did not answer on %s within 10s:\n%s", addr, s.Log())
		}
	}
}

// answers reports whether a NATS server greets a client on addr.
func answers(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "INFO ")
}

// kill sends SIGKILL and waits for the process. s.mu is held.
func (s *Server) kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Kill kills the server with SIGKILL, as a crash would, and returns once
// it has exited: every client connection is broken.
func (s *Server) Kill(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	running := s.cmd != nil
	s.kill()
	s.mu.Unlock()
	if !running {
		tb.Fatal("natstest: Kill: the server is not running")
	}
}

// Restart starts the server again on the same ports after Kill, and
// returns once it accepts clients.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	// The port was just released; another process may not have taken it,
	// but the kernel may still hold it briefly.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.start()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the server if it runs and removes its files. It may be
// called more than once.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kill()
	if s.dir == "" {
		return nil
	}
	err := os.RemoveAll(s.dir)
	s.dir = ""
	return err
}

// Log returns what the server wrote so far, for a failure message.
func (s *Server) Log() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "nats.log"))
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// Subscriptions returns how many subscriptions the server holds for the
// client connections named name (nats.Name), read from its monitoring
// endpoint (/connz): what the server, not the client, believes.
func (s *Server) Subscriptions(tb testing.TB, name string) int {
	tb.Helper()
	n, err := s.subscriptions(name)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

func (s *Server) subscriptions(name string) (int, error) {
	// No keep-alive: a kept connection's goroutines would outlive the
	// test, for goleak to see.
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(s.monitor + "/connz?limit=100000")
	if err != nil {
		return 0, fmt.Errorf("natstest: /connz: %w", err)
	}
	defer resp.Body.Close()
	var connz struct {
		Connections []struct {
			Name          string `json:"name"`
			Subscriptions int    `json:"subscriptions"`
		} `json:"connections"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&connz); err != nil {
		return 0, fmt.Errorf("natstest: /connz: %w", err)
	}
	n := 0
	for _, c := range connz.Connections {
		if c.Name == name {
			n += c.Subscriptions
		}
	}
	return n, nil
}
