package l7

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/proxy"
)

// TestMain lets this test binary stand for filament-proxy: with
// FILAMENT_FAKE_PROXY set it binds the proxy port and serves the control
// API as the proxy does, and answers health checks slowly while a file
// "stall" is in its state dir.
func TestMain(m *testing.M) {
	if os.Getenv("FILAMENT_FAKE_PROXY") != "" {
		if err := fakeProxy(os.Args[1:]); err != nil {
			os.Stderr.WriteString("fake proxy: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func fakeProxy(args []string) error {
	var listen, socket, stateDir string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--listen":
			listen = args[i+1]
		case "--control-socket":
			socket = args[i+1]
		case "--state-dir":
			stateDir = args[i+1]
		}
	}
	// The proxy's own start-up order: its lock, the port, the control
	// socket.
	release, err := proxy.Lock(stateDir)
	if err != nil {
		return err
	}
	defer release()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	// An earlier version's proxy, whose sockets the datapath no longer
	// hands flows to, while a file "unmarked" is in its state dir at its
	// start.
	_, err = os.Stat(filepath.Join(stateDir, "unmarked"))
	marked := err != nil
	os.Remove(socket)
	cln, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if marked {
			w.Header().Set(proxy.ListenerMarkHeader, "1")
		}
		if _, err := os.Stat(filepath.Join(stateDir, "stall")); err == nil {
			time.Sleep(3 * time.Second)
		}
	})
	mux.HandleFunc("GET /pid", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strconv.Itoa(os.Getpid()))
	})
	mux.HandleFunc("PUT /v1/config", func(w http.ResponseWriter, r *http.Request) {
		if _, err := os.Stat(filepath.Join(stateDir, "refuse")); err == nil {
			http.Error(w, "config: larger than 64 MiB", http.StatusRequestEntityTooLarge)
		}
	})
	return http.Serve(cln, mux)
}

// A proxy that missed health checks (busy, or stuck for a while) was
// replaced by deleting its control socket and starting another, which
// could not bind the proxy port and exited: the first one went on serving
// with its last configuration and no way left to change it (policy
// changes never reached it). Found 2026-12-06 by reading the supervisor.
func TestSupervisorReplacesAStuckProxyWhole(t *testing.T) {
	dir := t.TempDir()
	s, first := supervised(t, dir)

	stall := filepath.Join(dir, "stall")
	if err := os.WriteFile(stall, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second)
	os.Remove(stall)

	// Some proxy must answer on the control socket again, and only one
	// proxy may be left.
	deadline := time.Now().Add(20 * time.Second)
	for !s.healthy(context.Background()) {
		if time.Now().After(deadline) {
			alive := syscall.Kill(first, 0) == nil
			t.Fatalf("no proxy answers on the control socket 20 s after the stall ended (the first proxy, pid %d, alive: %v)", first, alive)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The stuck one was stopped and replaced: another answers, the first
	// is gone.
	now := s.pidOf(t)
	if now == first {
		t.Fatalf("the stuck proxy (pid %d) answers again: it was never replaced", first)
	}
	deadline = time.Now().Add(5 * time.Second)
	for !errors.Is(syscall.Kill(first, 0), syscall.ESRCH) {
		if time.Now().After(deadline) {
			t.Fatalf("a second proxy (pid %d) answers while the first (pid %d) still runs", now, first)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// supervised starts a fake proxy in dir and supervises it until the test
// ends; it returns the supervisor and the proxy's pid.
func supervised(t *testing.T, dir string) (*Supervisor, int) {
	t.Helper()
	return supervisedThen(t, dir, nil)
}

// supervisedThen is supervised, with then changing the supervisor's
// configuration after the first proxy started.
func supervisedThen(t *testing.T, dir string, then func(*Config)) (*Supervisor, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FILAMENT_FAKE_PROXY", "1")
	s := newSupervisor(Config{
		Binary: exe, StateDir: dir, Port: uint16(port),
		Policies:  func() []policy.L7Policy { return nil },
		Endpoints: func() map[uint16]Endpoint { return nil },
		IPCache: func() (map[netip.Prefix]identity.NumericIdentity, uint64) {
			return nil, 1
		},
	})
	if err := s.spawn(); err != nil {
		t.Fatal(err)
	}
	first := s.pidOf(t)
	if then != nil {
		then(&s.cfg)
	}
	t.Cleanup(func() {
		for _, pid := range []int{first, s.pidOrZero()} {
			if pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.superviseAndConfigure(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s, first
}

// A configuration the proxy refuses (past its 64 MiB bound, say) leaves
// it on its last accepted one; the supervisor says so (filament status)
// until one is taken. Before 2026-12-06 only the log said it.
func TestSupervisorReportsARefusedConfiguration(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "refuse"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := supervised(t, dir)
	waitStatus := func(want bool) {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			applied, since, err := s.ConfigStatus()
			if applied == want && (want || (err != nil && !since.IsZero())) {
				return
			}
			if time.Now().After(end) {
				t.Fatalf("configuration status: applied %v (%v since %v), want applied %v", applied, err, since, want)
			}
		}
	}
	waitStatus(false)
	os.Remove(filepath.Join(dir, "refuse"))
	s.Changed() // pushed again at the next round
	waitStatus(true)
}

func (s *Supervisor) pidOf(t *testing.T) int {
	t.Helper()
	pid := s.pidOrZero()
	if pid == 0 {
		t.Fatal("the proxy does not say its pid")
	}
	return pid
}

func (s *Supervisor) pidOrZero() int {
	resp, err := s.hc.Get("http://proxy/pid")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	pid, _ := strconv.Atoi(string(b))
	return pid
}

// A proxy that answers but whose sockets do not carry the listener mark
// (one of an earlier version, adopted) gets no flow: it is replaced by one
// whose sockets do. The datapath hands flows to the marked sockets only,
// since 2026-12-07 (until then to any socket bound to the proxy's port:
// TestL7ProxyPortSquatterGetsNothing in the lab).
func TestSupervisorReplacesAnUnmarkedProxy(t *testing.T) {
	dir := t.TempDir()
	unmarked := filepath.Join(dir, "unmarked")
	if err := os.WriteFile(unmarked, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, first := supervisedThen(t, dir, func(*Config) { os.Remove(unmarked) })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if ok, marked := s.health(context.Background()); ok && marked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the proxy whose sockets are not marked was not replaced by one whose are, 20 s on")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if now := s.pidOf(t); now == first {
		t.Fatalf("the unmarked proxy (pid %d) still answers", first)
	}
}
