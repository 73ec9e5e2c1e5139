package lab_test

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// ipIn runs ip with args in the namespace at path, failing t.
func ipIn(t *testing.T, path string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", filepath.Base(path)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v %s", filepath.Base(path), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestNodePortReplyPathMTULearned puts a client behind a router whose link
// to it has an MTU of 1300, and a UDP NodePort whose backend (on n2)
// answers every datagram with 1,350 bytes (DF set, as Linux sends UDP
// that fits its route). The router answers each reply with ICMP
// fragmentation needed, to the node that sent it (the frontend); the
// backend's kernel must learn the path MTU from it, through n2's NodePort
// (a local backend: the error comes back to n2) and through n1's (a
// remote backend: the error comes back to n1, which sends it through the
// tunnel). Until 2026-12-06 the error reached the node's own stack
// untranslated and the backend never learned it: a client behind a
// smaller path MTU got none of its large replies.
func TestNodePortReplyPathMTULearned(t *testing.T) {
	l := labtest.Up(t, 2, 0)
	big := labtest.Pod(t, l, "n2", "big", "app=big")
	labtest.Serve(t, lab.NetNSPath(big.NetNS), 8080, func(c net.Conn) { c.Close() },
		func([]byte) []byte { return bytes.Repeat([]byte{'x'}, 1350) })
	upsertNodePort(t, l, remoteNodePort("big", "10.96.0.23", "UDP", 80, 8080, 30084, big.IP), "n1", "n2")

	// The router, on the underlay; the client behind it.
	rt := labtest.UnderlayHost(t, l, "rt", "172.30.0.60")
	if out, err := exec.Command("ip", "netns", "exec", filepath.Base(rt), "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("router forwarding: %v %s", err, out)
	}
	cl := labtest.NetNS(t, "flab-"+l.Name+"-h-cl")
	ipIn(t, rt, "link", "add", "rt1", "mtu", "1300", "type", "veth", "peer", "name", "eth0", "mtu", "1300", "netns", filepath.Base(cl))
	ipIn(t, rt, "addr", "add", "172.31.0.1/24", "dev", "rt1")
	ipIn(t, rt, "link", "set", "rt1", "up")
	ipIn(t, cl, "addr", "add", "172.31.0.5/24", "dev", "eth0")
	ipIn(t, cl, "link", "set", "eth0", "up")
	ipIn(t, cl, "link", "set", "lo", "up")
	ipIn(t, cl, "route", "add", "default", "via", "172.31.0.1")
	for _, n := range l.Nodes {
		ipIn(t, lab.NetNSPath(n.NetNS), "route", "add", "172.31.0.0/24", "via", "172.30.0.60")
	}

	send := func(to string) {
		t.Helper()
		err := ns.WithNetNSPath(cl, func(ns.NetNS) error {
			c, err := net.Dial("udp4", to)
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("who"))
			return err
		})
		if err != nil {
			t.Fatalf("send to %s: %v", to, err)
		}
	}
	for _, c := range []struct{ node, backend, peer string }{
		{"n2", "local", "172.31.0.5"}, // the backend answers the client itself
		{"n1", "remote", ""},          // the backend answers n1 (its SNAT address)
	} {
		n, err := l.Node(c.node)
		if err != nil {
			t.Fatal(err)
		}
		peer := c.peer
		if peer == "" {
			peer = n.IP
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			send(n.IP + ":30084")
			time.Sleep(200 * time.Millisecond)
			route := ipIn(t, lab.NetNSPath(big.NetNS), "route", "get", peer)
			if strings.Contains(route, "mtu 1300") {
				t.Logf("%s (%s backend): the backend's route to %s: %s", c.node, c.backend, peer, strings.TrimSpace(route))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s (%s backend): the backend never learned the path MTU to %s: %s", c.node, c.backend, peer, route)
			}
		}
	}
}
