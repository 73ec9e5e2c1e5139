package lab_test

import (
	"os/exec"
	"testing"
	"time"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// A host on the underlay routes its datagrams for a pod of n2 through n1
// (tunnel mode). n1 forwards them; its route to n2's pods goes out of the
// gateway device, whose program encapsulates the node's own traffic, and
// it took anything that was not a local pod's as the node's: the host
// reached the pod as remote-node, and a local pod's address forged by the
// host passed as that pod. Now only this node's own address speaks as
// remote-node (anything else forwarded into the tunnel is the world), and
// a local pod's address from the underlay is refused whatever the
// destination. Controls: a real pod of n1 and the node n1 itself reach the
// victim, whose policy admits app=client pods and remote-node on one port
// and the world on another, so the path works, the node keeps its
// identity, and the host's datagrams do cross as the world.
func TestUnderlayForwardedIntoTunnel(t *testing.T) {
	l := labtest.UpRouting(t, 2, "tunnel")
	client := labtest.Pod(t, l, "n1", "client", "app=client")
	victim := labtest.Pod(t, l, "n2", "victim", "app=victim")
	h := labtest.Host(t, l, "forger", "10.0.9.1")
	n1 := l.Nodes[0]
	labtest.ImportPolicy(t, l, "n1", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: victim}
spec:
  endpointSelector: {matchLabels: {app: victim}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "7000", protocol: UDP}]}]
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: "7000", protocol: UDP}]}]
  - fromEntities: [world]
    toPorts: [{ports: [{port: "7001", protocol: UDP}]}]
`)
	drops := forgedDrops(t, l, "n1")
	got := udpSink(t, lab.NetNSPath(victim.NetNS), 7000)
	world := udpSink(t, lab.NetNSPath(victim.NetNS), 7001)
	for _, args := range [][]string{
		{"addr", "add", client.IP + "/32", "dev", "lo"},
		{"route", "add", victim.IP + "/32", "via", n1.IP},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", h.NetNS}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("forger: ip %v: %v %s", args, err, out)
		}
	}
	sendTo := func(port int, ns, from, payload string) { sendUDP(t, ns, from, victim.IP, port, payload) }
	send := func(ns, from, payload string) { sendTo(7000, ns, from, payload) }
	for _, c := range []struct{ ns, from, payload string }{
		{lab.NetNSPath(client.NetNS), client.IP, "real-client"},
		{lab.NetNSPath(n1.NetNS), "", "node-n1"},
	} {
		if !got.waitFor(c.payload, 20*time.Second, func() { send(c.ns, c.from, c.payload) }) {
			t.Fatalf("%s never reached the victim (policy, path or the node's identity broken)\n%s", c.payload, labtest.Describe(t, l))
		}
	}
	hostNS := lab.NetNSPath(h.NetNS)
	// The host's own datagrams are forwarded as the world: admitted on
	// the port the world may reach.
	if !world.waitFor("forwarded-host-world", 20*time.Second, func() { sendTo(7001, hostNS, h.IP, "forwarded-host-world") }) {
		t.Fatalf("the host's datagrams routed through n1 never reached the victim's world port: want them forwarded as the world\n%s", labtest.Describe(t, l))
	}
	end := time.Now().Add(3 * time.Second)
	for time.Now().Before(end) {
		send(hostNS, h.IP, "forwarded-host")
		send(hostNS, client.IP, "forwarded-forged-client")
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	for _, c := range []struct {
		s *sink
		p string
	}{{got, "forwarded-host"}, {got, "forwarded-forged-client"}} {
		if n := c.s.count(c.p); n > 0 {
			t.Errorf("%d datagrams %s, routed through n1, reached the victim on n2; want none", n, c.p)
		}
	}
	if n := drops.get(client.IP); n == 0 {
		t.Errorf("no forged-source drop event on n1 for the client's address from the underlay")
	}
}
