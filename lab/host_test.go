package lab_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// An outside host (a stand-in for an EC2 instance): reachable from pods on
// every node as world, answering them at their own addresses, in both
// routing modes; bad input refused; deleted with its routes.
func TestLabHost(t *testing.T) {
	for _, routing := range []string{"tunnel", "native"} {
		t.Run(routing, func(t *testing.T) { testLabHost(t, routing) })
	}
}

func testLabHost(t *testing.T, routing string) {
	l := labtest.UpRouting(t, 2, routing)
	p1 := labtest.Pod(t, l, "n1", "p1")
	p2 := labtest.Pod(t, l, "n2", "p2")
	h := labtest.Host(t, l, "ec2a", "10.0.1.5")
	if want := (lab.Host{Name: "ec2a", Cluster: "default", NetNS: "flab-" + l.Name + "-host-ec2a", IP: "10.0.1.5", UnderlayIP: "172.30.0.200"}); *h != want {
		t.Fatalf("host %+v, want %+v", *h, want)
	}
	if cur, err := lab.Load(l.Name); err != nil || len(cur.Hosts) != 1 || cur.Hosts[0] != *h {
		t.Fatalf("recorded hosts: %+v (%v)", cur, err)
	}
	for _, n := range []string{"n1", "n2"} {
		if r := nodeRoute(t, l, n, h.IP); !strings.Contains(r, "via "+h.UnderlayIP) {
			t.Fatalf("node %s route to %s: %q", n, h.IP, r)
		}
	}

	// Pods on both nodes reach it; it reaches them.
	for _, p := range []*lab.Pod{p1, p2} {
		if err := labtest.PingEventually(t, l, p.Name, h.IP); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the host pings "+p.IP, func() bool {
			_, err := hostRun(t, l, "ec2a", "ping", "-c", "1", "-W", "1", p.IP)
			return err == nil
		})
	}
	hostPath := lab.NetNSPath(h.NetNS)
	serve(t, hostPath, 8443)
	for _, p := range []*lab.Pod{p1, p2} {
		if !reach(t, lab.NetNSPath(p.NetNS), "tcp", h.IP, 8443) {
			t.Fatalf("pod %s cannot reach %s:8443 in the host", p.Name, h.IP)
		}
	}
	// No masquerade: the host sees the pod's own address (what a security
	// group or a CIDR peer sees).
	if from := tcpPeer(t, hostPath, lab.NetNSPath(p2.NetNS), h.IP, 8444); from != p2.IP {
		t.Fatalf("the host saw a connection of pod %s (%s) from %q", p2.Name, p2.IP, from)
	}

	// A second host gets the next underlay address.
	h2 := labtest.Host(t, l, "ec2b", "192.168.7.7")
	if h2.UnderlayIP != "172.30.0.201" {
		t.Fatalf("second host underlay IP %s, want 172.30.0.201", h2.UnderlayIP)
	}
	if err := labtest.PingEventually(t, l, "p1", h2.IP); err != nil {
		t.Fatal(err)
	}

	// Bad input, each error naming the value.
	for _, c := range []struct {
		name, ip, cluster, value string
		want                     error
	}{
		{"bad1", "10.0.1", "", "10.0.1", lab.ErrInvalid},
		{"bad2", "fd00::5", "", "fd00::5", lab.ErrInvalid},
		{"bad3", "127.0.0.9", "", "127.0.0.9", lab.ErrInvalid},
		{"bad4", "10.244.1.77", "", "10.244.1.77", lab.ErrInvalid},
		{"bad5", "172.30.0.9", "", "172.30.0.9", lab.ErrInvalid},
		{"ec2a", "10.0.1.6", "", `"ec2a"`, lab.ErrExists},
		{"bad6", "10.0.1.5", "", "10.0.1.5", lab.ErrExists},
		{"Bad_7", "10.0.1.7", "", "Bad_7", lab.ErrInvalid},
		{"bad8", "10.0.1.8", "nope", "nope", lab.ErrNotFound},
	} {
		_, err := l.AddHost(c.name, c.ip, c.cluster)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.value) {
			t.Errorf("AddHost(%q, %q, %q): %v, want %v naming %s", c.name, c.ip, c.cluster, err, c.want, c.value)
		}
	}
	if len(l.Hosts) != 2 {
		t.Fatalf("hosts after refusals: %+v", l.Hosts)
	}
	if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "-host-bad") {
		t.Fatalf("a refused host left a namespace:\n%s", out)
	}

	// Delete: namespace and node routes gone, the pods no longer reach it.
	if err := l.DeleteHost("ec2a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(hostPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("host namespace %s after delete: %v", h.NetNS, err)
	}
	for _, n := range []string{"n1", "n2"} {
		if r := nodeRoute(t, l, n, h.IP); r != "" {
			t.Fatalf("node %s still routes %s: %q", n, h.IP, r)
		}
	}
	if len(l.Hosts) != 1 || l.Hosts[0].Name != "ec2b" {
		t.Fatalf("hosts after delete: %+v", l.Hosts)
	}
	if labtest.Ping(t, l, "p1", h.IP) == nil {
		t.Fatalf("pod p1 still reaches deleted host %s", h.IP)
	}
	if err := l.DeleteHost("ec2a"); !errors.Is(err, lab.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	// Its name, address and underlay address are free again.
	if h3 := labtest.Host(t, l, "ec2a", "10.0.1.5"); h3.UnderlayIP != "172.30.0.200" {
		t.Fatalf("re-added host underlay IP %s", h3.UnderlayIP)
	}
	// ec2a and ec2b are left for lab down to remove (checked by labtest).
}

func nodeRoute(t *testing.T, l *lab.Lab, node, ip string) string {
	t.Helper()
	n, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "-n", n.NetNS, "route", "show", ip+"/32").CombinedOutput()
	if err != nil {
		t.Fatalf("ip route show on %s: %v: %s", node, err, out)
	}
	return strings.TrimSpace(string(out))
}

func hostRun(t *testing.T, l *lab.Lab, host string, argv ...string) (string, error) {
	t.Helper()
	cmd, err := l.HostCommand(host, argv...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// tcpPeer listens on port in the namespace at srvPath, connects to ip:port
// from the namespace at cliPath and returns the address the server saw.
func tcpPeer(t *testing.T, srvPath, cliPath, ip string, port int) string {
	t.Helper()
	var ln net.Listener
	if err := inNS(t, srvPath, func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			seen <- ""
			return
		}
		seen <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Close()
	}()
	if err := inNS(t, cliPath, func() error {
		c, err := net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", ip, port), 2*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-seen:
		return s
	case <-time.After(3 * time.Second):
		return ""
	}
}
