package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/lab"
)

// The relay's description names its namespace, both addresses and the
// commands that reach them from inside the namespace.
func TestDescribeRelay(t *testing.T) {
	var out bytes.Buffer
	describeRelay(&out, "demo", "c1", &lab.Relay{Node: "c1/n1", NetNS: "demo-c1-n1", Listen: "127.0.0.1:4245", Web: "127.0.0.1:4246", PID: 42, Log: "/x/relay.log"})
	for _, want := range []string{
		"relay of cluster c1: pid 42, in netns demo-c1-n1 (node c1/n1), log /x/relay.log",
		"Observer API: 127.0.0.1:4245",
		"web page:     http://127.0.0.1:4246/",
		"filament-lab exec --name demo c1/n1 -- filament observe --server 127.0.0.1:4245 --last 20",
		"ip netns exec demo-c1-n1 hubble observe --server 127.0.0.1:4245",
		"ip netns exec demo-c1-n1 curl -s http://127.0.0.1:4246/api/status",
		"filament-lab relay forward --name demo c1   then open http://127.0.0.1:4246/",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("description lacks %q:\n%s", want, out.String())
		}
	}
}

// A forward listens on loopback addresses only: the page has no
// authentication.
func TestListenLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "[::]:0", "192.0.2.1:0", "localhost:0", "127.0.0.1"} {
		if ln, err := listenLoopback(addr); err == nil {
			ln.Close()
			t.Errorf("listened on %q", addr)
		}
	}
	if _, err := listenLoopback("0.0.0.0:0"); !errors.Is(err, errNotLoopback) {
		t.Errorf("0.0.0.0:0: %v, want errNotLoopback", err)
	}
	ln, err := listenLoopback("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
}

// Each connection is forwarded both ways to one the dial makes, and a
// failed dial closes it.
func TestForwardConns(t *testing.T) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	ln, err := listenLoopback("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fail := false
	var mu sync.Mutex
	done := make(chan error, 1)
	go func() {
		done <- forwardConns(ln, func() (net.Conn, error) {
			mu.Lock()
			defer mu.Unlock()
			if fail {
				return nil, errors.New("refused")
			}
			return net.Dial("tcp", backend.Addr().String())
		})
	}()
	for i := range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprintf("hello %d", i)
		c.Write([]byte(msg))
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != msg {
			t.Errorf("through the forward: %q %v, want %q", got, err, msg)
		}
	}
	mu.Lock()
	fail = true
	mu.Unlock()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("a failed dial: read %d, %v; want the connection closed", n, err)
	}
	c.Close()
	ln.Close()
	if err := <-done; err == nil {
		t.Error("forwardConns returned nil after its listener closed")
	}
}
