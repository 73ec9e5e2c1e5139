// Package apiservertest owns what cluster mesh tests share: a real
// filament-clustermesh-apiserver (TLS, etcd users) on loopback with a fresh
// bundle, a client with its agent credentials, and a remote config that
// points at it.
package apiservertest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/apiserver"
)

// Server is a running apiserver.
type Server struct {
	Name     string
	ID       uint32
	Bundle   string
	Endpoint string
	Agent    *kvstore.Client // connected with the bundle's agent certificate

	cfg  apiserver.Config
	stop context.CancelFunc
	done chan struct{}
	// proc: the apiserver runs in a process of its own (StartProcess).
	process bool
	proc    *exec.Cmd
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start runs an apiserver for cluster name/id until Stop or the end of t,
// and returns once its cluster-config is readable.
func Start(t testing.TB, name string, id uint32) *Server {
	t.Helper()
	return start(t, name, id, false)
}

// StartProcess is Start with the apiserver (and its etcd) in a child
// process, so that what the test process uses is measured apart from it.
// The test binary's TestMain must call RunChild first.
func StartProcess(t testing.TB, name string, id uint32) *Server {
	t.Helper()
	return start(t, name, id, true)
}

// childEnv carries the child's apiserver.Config (JSON).
const childEnv = "FILAMENT_APISERVERTEST_CHILD"

// RunChild, in a process StartProcess started, runs the apiserver until
// its stdin closes and exits; elsewhere it returns at once. Call it first
// in TestMain.
func RunChild() {
	raw := os.Getenv(childEnv)
	if raw == "" {
		return
	}
	var cfg apiserver.Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "apiservertest child: %s: %v\n", childEnv, err)
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin) // the parent closes it (or dies)
		cancel()
	}()
	stop := childProfile()
	err := apiserver.Run(ctx, cfg)
	stop()
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "apiservertest child: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// childProfile profiles the child's CPU for its whole run when
// $FILAMENT_APISERVERTEST_CPUPROFILE names a directory (a file per child,
// by pid), for the scale benchmarks; the returned func stops it.
func childProfile() func() {
	dir := os.Getenv("FILAMENT_APISERVERTEST_CPUPROFILE")
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, fmt.Sprintf("apiserver-%d.prof", os.Getpid())))
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "apiservertest child: cpu profile: %v\n", err)
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// Pid is the apiserver's process (this one unless StartProcess).
func (s *Server) Pid() int {
	if s.proc != nil {
		return s.proc.Process.Pid
	}
	return os.Getpid()
}

func start(t testing.TB, name string, id uint32, process bool) *Server {
	t.Helper()
	s := &Server{Name: name, ID: id, Bundle: t.TempDir(), process: process}
	if _, err := clustermesh.Enable(s.Bundle, name, id, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	s.Endpoint = fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
	s.cfg = apiserver.Config{Bundle: s.Bundle, DataDir: t.TempDir(), ClientURL: s.Endpoint,
		PeerURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), UnsafeNoFsync: true}
	t.Cleanup(s.Stop)
	s.run(t)
	return s
}

// run starts the apiserver and waits until its cluster-config is readable
// (with a new agent client in s.Agent).
func (s *Server) run(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s.stop, s.done = cancel, make(chan struct{})
	if s.process {
		s.runChild(ctx, t)
	} else {
		go func() {
			defer close(s.done)
			apiserver.Run(ctx, s.cfg)
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := s.Connect(clustermesh.UserAgent)
		if err == nil {
			if _, err = c.Get(ctx, clustermesh.ClusterConfigPrefix+s.Name); err == nil {
				s.Agent = c
				t.Cleanup(func() { c.Close() })
				return
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("apiserver %s not ready: %v", s.Name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runChild starts the apiserver in a child process (this test binary
// again, RunChild in its TestMain); ctx ending closes its stdin, which
// ends it (killed if it has not ended 10 s later).
func (s *Server) runChild(ctx context.Context, t testing.TB) {
	t.Helper()
	cfg, _ := json.Marshal(s.cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(cfg))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("apiserver process: %v", err)
	}
	s.proc = cmd
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	go func() {
		defer close(s.done)
		select {
		case <-exited:
			return
		case <-ctx.Done():
		}
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}()
}

// Restart stops the apiserver and starts it again on the same data and
// address.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.run(t)
}

// RestartWith is Restart with the apiserver's config changed by edit
// first.
func (s *Server) RestartWith(t testing.TB, edit func(*apiserver.Config)) {
	t.Helper()
	s.Stop()
	edit(&s.cfg)
	s.run(t)
}

// Connect opens a client with the bundle's certificate for user.
func (s *Server) Connect(user string) (*kvstore.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return kvstore.Connect(ctx, kvstore.Config{Endpoints: []string{s.Endpoint}, DialTimeout: 2 * time.Second,
		CAFile: filepath.Join(s.Bundle, "ca.pem"), CertFile: filepath.Join(s.Bundle, user+".pem"), KeyFile: filepath.Join(s.Bundle, user+"-key.pem")})
}

// Root connects as the etcd root user, or fails t; the client is closed
// at t's cleanup.
func (s *Server) Root(t testing.TB) *kvstore.Client {
	t.Helper()
	c, err := s.Connect(clustermesh.UserRoot)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// PutEmpty writes n keys, named by key, with empty values, a hundred to a
// transaction, or fails t.
func PutEmpty(t testing.TB, kv *kvstore.Client, n int, key func(int) string) {
	t.Helper()
	for i := 0; i < n; i += 100 {
		var ops []clientv3.Op
		for j := i; j < min(i+100, n); j++ {
			ops = append(ops, clientv3.OpPut(key(j), ""))
		}
		if _, err := kv.Txn(context.Background(), nil, ops); err != nil {
			t.Fatal(err)
		}
	}
}

// CountWarnings sends the process's log to a counter until t's cleanup
// and returns how many warnings (or worse) it has had so far.
func CountWarnings(t testing.TB) func() int64 {
	old := slog.Default()
	var n atomic.Int64
	slog.SetDefault(slog.New(counting{&n}))
	t.Cleanup(func() { slog.SetDefault(old) })
	return n.Load
}

// counting is a slog handler that counts warnings and drops everything.
type counting struct{ n *atomic.Int64 }

func (c counting) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (c counting) Handle(context.Context, slog.Record) error {
	c.n.Add(1)
	return nil
}
func (c counting) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c counting) WithGroup(string) slog.Handler      { return c }

// Stop ends the apiserver (idempotent).
func (s *Server) Stop() {
	s.stop()
	<-s.done
}

// WriteRemoteConfig puts the bundle's remote.yaml, pointed at this
// apiserver's real port, into dir as <name>.yaml.
func (s *Server) WriteRemoteConfig(t testing.TB, dir string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(s.Bundle, "remote.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rc clustermesh.RemoteConfig
	if err := yaml.Unmarshal(raw, &rc); err != nil {
		t.Fatal(err)
	}
	rc.Endpoints = []string{s.Endpoint}
	out, _ := yaml.Marshal(rc)
	if err := os.WriteFile(filepath.Join(dir, s.Name+".yaml"), out, 0o600); err != nil {
		t.Fatal(err)
	}
}
