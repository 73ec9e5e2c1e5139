package lab_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

const webService = `apiVersion: filament.io/v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, targetPort: 8080, protocol: UDP}
%s
backends:
- {ip: %s, node: n1, state: %s}
- {ip: %s, node: n2, state: %s}
`

func webDoc(extra, ip1, state1, ip2, state2 string) string {
	return fmt.Sprintf(webService, extra, ip1, state1, ip2, state2)
}

// udpWho sends one datagram from the namespace at path to addr and returns
// the answer and the address the application saw it come from.
func udpWho(t *testing.T, path, addr string) (string, string) {
	t.Helper()
	var name, from string
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		pc, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			return err
		}
		defer pc.Close()
		ua, _ := net.ResolveUDPAddr("udp4", addr)
		if _, err := pc.WriteTo([]byte("who"), ua); err != nil {
			return err
		}
		pc.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 64)
		n, a, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		name, from = string(buf[:n]), a.String()
		return nil
	})
	if err != nil {
		t.Fatalf("udp to %s: %v", addr, err)
	}
	return name, from
}

// ClusterIP and NodePort services on real traffic: pods on every node reach
// the ClusterIP over TCP and UDP through the socket load balancer and see the
// service address as their peer; a namespace outside the cluster reaches
// the NodePort on every node (DNAT to local backends, DNAT+SNAT over the
// tunnel to the other node's); terminating backends keep their connections
// and take no new ones; ClientIP affinity pins a client; a bad service is
// refused whole; a deleted one stops answering.
func TestServicesClusterIPAndNodePort(t *testing.T) {
	for _, routing := range []string{"tunnel", "native"} {
		t.Run(routing, func(t *testing.T) { testServices(t, routing) })
	}
}

func testServices(t *testing.T, routing string) {
	l := labtest.UpRouting(t, 2, routing)
	clients := []*lab.Pod{labtest.Pod(t, l, "n1", "client1"), labtest.Pod(t, l, "n2", "client2")}
	web1 := labtest.Pod(t, l, "n1", "web1", "app=web")
	web2 := labtest.Pod(t, l, "n2", "web2", "app=web")
	labtest.ServeName(t, lab.NetNSPath(web1.NetNS), 8080, "web1")
	labtest.ServeName(t, lab.NetNSPath(web2.NetNS), 8080, "web2")
	// filament-lab pod serve: a server the lab owns (stopped with the pod).
	if err := l.Serve("web1", 9090); err != nil {
		t.Fatal(err)
	}
	if name, err := labtest.Who(lab.NetNSPath(clients[1].NetNS), web1.IP+":9090"); err != nil || name != "web1" {
		t.Fatalf("pod serve: %q %v", name, err)
	}
	labtest.MustUpsertService(t, l, "n1", webDoc("", web1.IP, "active", web2.IP, "active"))

	for _, on := range []string{"n1", "n2"} {
		eventually(t, "service on "+on, func() bool {
			ss := labtest.Services(t, l, on)
			return len(ss) == 1 && len(ss[0].Frontends) == 3 && len(ss[0].Frontends[0].Backends) == 2
		})
	}
	for _, c := range clients {
		path := lab.NetNSPath(c.NetNS)
		got := labtest.Tally(path, "10.96.0.10:80", 40)
		t.Logf("ClusterIP from %s: %v", c.Name, got)
		if got["web1"] == 0 || got["web2"] == 0 || got[""] != 0 {
			t.Fatalf("ClusterIP from %s: answers %v, want both backends and no failure", c.Name, got)
		}
		conn, err := labtest.Open(path, "10.96.0.10:80")
		if err != nil {
			t.Fatal(err)
		}
		if peer := conn.RemoteAddr().String(); peer != "10.96.0.10:80" {
			t.Fatalf("getpeername shows %s, want the service address", peer)
		}
		conn.Close()
		udp := map[string]bool{}
		for range 20 {
			name, from := udpWho(t, path, "10.96.0.10:53")
			if from != "10.96.0.10:53" {
				t.Fatalf("UDP reply seen from %s, want the service address", from)
			}
			udp[name] = true
		}
		if !udp["web1"] || !udp["web2"] {
			t.Fatalf("UDP ClusterIP from %s reached %v", c.Name, udp)
		}
	}

	// NodePort from a host on the underlay that is not a node.
	out := labtest.UnderlayHost(t, l, "out", "172.30.0.50")
	for _, n := range l.Nodes {
		got := labtest.Tally(out, n.IP+":30080", 30)
		t.Logf("NodePort %s:30080 from outside: %v", n.IP, got)
		if got["web1"] == 0 || got["web2"] == 0 || got[""] != 0 {
			t.Fatalf("NodePort on %s from outside: answers %v, want both backends and no failure", n.Name, got)
		}
	}

	// Only web2 takes new connections; hold three open to it.
	labtest.MustUpsertService(t, l, "n1", webDoc("", web1.IP, "maintenance", web2.IP, "active"))
	eventually(t, "web1 in maintenance", func() bool {
		got := labtest.Tally(lab.NetNSPath(clients[0].NetNS), "10.96.0.10:80", 5)
		return got["web2"] == 5
	})
	var held []*labtest.Conn
	for range 3 {
		c, err := labtest.Open(lab.NetNSPath(clients[0].NetNS), "10.96.0.10:80")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	// web2 terminates: new connections go to web1, the held ones finish on web2.
	labtest.MustUpsertService(t, l, "n1", webDoc("", web1.IP, "active", web2.IP, "terminating"))
	// Every node applies it (the other node through the kvstore, a little
	// later): then no new connection goes to web2.
	for _, c := range clients[:2] {
		eventually(t, "web2 terminating on "+c.Node, func() bool {
			got := labtest.Tally(lab.NetNSPath(c.NetNS), "10.96.0.10:80", 5)
			return got["web1"] == 5
		})
	}
	if got := labtest.Tally(lab.NetNSPath(clients[1].NetNS), "10.96.0.10:80", 20); got["web1"] != 20 {
		t.Fatalf("new connections while web2 terminates: %v, want all web1", got)
	}
	for i, c := range held {
		if name, err := c.Ask(); err != nil || name != "web2" {
			t.Fatalf("held connection %d after web2 began terminating: %q %v", i, name, err)
		}
	}
	ss := labtest.Services(t, l, "n2")
	for _, b := range ss[0].Frontends[0].Backends {
		if want := b.Addr.Addr().String() == web1.IP; b.Preferred != want {
			t.Fatalf("service list on n2: %+v: preferred should be %v", b, want)
		}
	}

	// Session affinity by client: every connection of a client goes to one backend.
	labtest.MustUpsertService(t, l, "n1", webDoc("  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}",
		web1.IP, "active", web2.IP, "active"))
	// On both nodes: each applies the service through its own watch, and
	// n2's clients are tallied too.
	eventually(t, "affinity configured on both nodes", func() bool {
		for _, n := range []string{"n1", "n2"} {
			ss := labtest.Services(t, l, n)
			if ss[0].AffinityTimeout != 60 || len(ss[0].Frontends[0].Backends) != 2 || !ss[0].Frontends[0].Backends[1].Preferred {
				return false
			}
		}
		return true
	})
	for _, c := range clients {
		got := labtest.Tally(lab.NetNSPath(c.NetNS), "10.96.0.10:80", 20)
		if len(got) != 1 || got[""] != 0 {
			t.Fatalf("ClientIP affinity from %s: answers %v, want one backend", c.Name, got)
		}
	}
	outGot := labtest.Tally(out, l.Nodes[0].IP+":30080", 20)
	if len(outGot) != 1 || outGot[""] != 0 {
		t.Fatalf("ClientIP affinity on the NodePort: answers %v, want one backend", outGot)
	}

	// A bad service is refused with the field named, and the stored one stays.
	bad := strings.Replace(webDoc("", web1.IP, "active", web2.IP, "active"), "targetPort: 8080, nodePort: 30080", "targetPort: 8080, nodePort: 80", 1)
	if msg, err := labtest.UpsertService(t, l, "n1", bad); err == nil || !strings.Contains(msg, "spec.ports[0].nodePort 80") {
		t.Fatalf("bad nodePort: %v %s", err, msg)
	}
	if got := labtest.Tally(lab.NetNSPath(clients[0].NetNS), "10.96.0.10:80", 3); got[""] != 0 {
		t.Fatalf("the stored service stopped answering after a refused update: %v", got)
	}

	// Deleted: the ClusterIP no longer answers.
	if out, err := labtest.NodeRun(t, l, "n2", "filament", "service", "delete", "shop/web"); err != nil {
		t.Fatalf("service delete: %v %s", err, out)
	}
	eventually(t, "service gone on n1", func() bool { return len(labtest.Services(t, l, "n1")) == 0 })
	if name, err := labtest.Who(lab.NetNSPath(clients[0].NetNS), "10.96.0.10:80"); err == nil {
		t.Fatalf("deleted service still answers (%s)", name)
	}
	if out, err := labtest.NodeRun(t, l, "n2", "filament", "service", "delete", "shop/web"); err == nil || !strings.Contains(out, "not found") {
		t.Fatalf("deleting it again: %v %s", err, out)
	}
}
