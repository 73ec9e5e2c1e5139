package labtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/lab"
)

// UpsertService writes doc to a file and stores it with `filament service
// upsert -f` on node; the output and error are returned.
func UpsertService(t testing.TB, l *lab.Lab, node, doc string) (string, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "service.yaml")
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return NodeRun(t, l, node, "filament", "service", "upsert", "-f", p)
}

// MustUpsertService is UpsertService failing t on error.
func MustUpsertService(t testing.TB, l *lab.Lab, node, doc string) {
	t.Helper()
	if out, err := UpsertService(t, l, node, doc); err != nil {
		t.Fatalf("service upsert on %s: %v %s", node, err, out)
	}
}

// Services lists a node's services through `filament service list -o json`.
func Services(t testing.TB, l *lab.Lab, node string) []types.ServiceStatus {
	t.Helper()
	out, err := NodeRun(t, l, node, "filament", "service", "list", "-o", "json")
	if err != nil {
		t.Fatalf("service list on %s: %v %s", node, err, out)
	}
	var ss []types.ServiceStatus
	if err := json.Unmarshal([]byte(out), &ss); err != nil {
		t.Fatalf("service list json: %v %s", err, out)
	}
	return ss
}

// Serve runs, inside the namespace at path, TCP and UDP servers on port:
// each TCP connection goes to onConn (which closes it), each datagram's
// reply is reply(datagram). They stop at cleanup.
func Serve(t testing.TB, path string, port int, onConn func(net.Conn), reply func([]byte) []byte) {
	t.Helper()
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", port))
		if err != nil {
			return err
		}
		pc, err := net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		if err != nil {
			ln.Close()
			return err
		}
		t.Cleanup(func() { ln.Close(); pc.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go onConn(c)
			}
		}()
		go func() {
			buf := make([]byte, 64<<10)
			for {
				n, a, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(reply(buf[:n]), a)
			}
		}()
		return nil
	})
	if err != nil {
		t.Fatalf("serve %d in %s: %v", port, path, err)
	}
}

// ServeName runs, inside the namespace at path, TCP and UDP servers on port
// that answer with name: TCP after the client's first line (so a client can
// hold a connection open before asking), UDP to every datagram. They stop
// at cleanup.
func ServeName(t testing.TB, path string, port int, name string) {
	t.Helper()
	Serve(t, path, port, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
			fmt.Fprintln(c, name)
		}
	}, func([]byte) []byte { return []byte(name) })
}

// Conn is a TCP connection opened from a namespace to a ServeName server.
type Conn struct{ net.Conn }

// Open connects from the namespace at path to addr (timeout 2s).
func Open(path, addr string) (*Conn, error) {
	var c net.Conn
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, 2*time.Second)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &Conn{c}, nil
}

// Ask sends a line and returns the server's name.
func (c *Conn) Ask() (string, error) {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(c, "who"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return line[:len(line)-1], nil
}

// Who connects from the namespace at path to addr over TCP and returns the
// name of the server that answered.
func Who(path, addr string) (string, error) {
	c, err := Open(path, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.Ask()
}

// Tally asks n times and counts answers by name ("" counts failures).
func Tally(path, addr string, n int) map[string]int {
	out := map[string]int{}
	for range n {
		name, err := Who(path, addr)
		if err != nil {
			name = ""
		}
		out[name]++
	}
	return out
}
