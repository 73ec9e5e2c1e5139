// Package apiservertest owns what cluster mesh tests share: a real
// filament-clustermesh-apiserver (TLS, etcd users) on loopback with a fresh
// bundle, a client with its agent credentials, and a remote config that
// points at it.
package apiservertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

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
	s := &Server{Name: name, ID: id, Bundle: t.TempDir()}
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
	go func() {
		defer close(s.done)
		apiserver.Run(ctx, s.cfg)
	}()
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

// Restart stops the apiserver and starts it again on the same data and
// address.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.run(t)
}

// Connect opens a client with the bundle's certificate for user.
func (s *Server) Connect(user string) (*kvstore.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return kvstore.Connect(ctx, kvstore.Config{Endpoints: []string{s.Endpoint}, DialTimeout: 2 * time.Second,
		CAFile: filepath.Join(s.Bundle, "ca.pem"), CertFile: filepath.Join(s.Bundle, user+".pem"), KeyFile: filepath.Join(s.Bundle, user+"-key.pem")})
}

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
