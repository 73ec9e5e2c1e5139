package lab_test

import (
	"net"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// A host on the underlay (not a node, not a pod) sends datagrams to a pod
// from the address of a pod the pod's policy admits. Pods never reach
// another pod through the underlay in the clear: a pod of the same node is
// delivered by its node, one of another node comes encapsulated (tunnel,
// the identity in the VNI) or routed (native). So such a datagram is
// forged, and must not pass as that pod:
//   - a local pod's address arriving from the underlay: refused in both
//     modes;
//   - a remote pod's address arriving in the clear in tunnel mode: refused
//     (its identity comes only with a known node's VNI);
//   - a local pod's address from a host behind the node on a link of its
//     own (a lab external: no program on that link): refused at the pod's
//     veth, since it did not come in on the local pod's own.
//
// Each refusal must be the datapath's (a drop event with the forged-source
// reason from n1), not the kernel's. The host as itself is admitted by the
// policy (fromCIDR), so its datagrams show that the host reaches the pod
// at all. In native routing without encryption a remote pod's datagram
// does arrive in the clear from the underlay, and its identity is its
// address's: native routing trusts the underlay to carry only what the
// nodes send (docs/architecture.md, "What the underlay is trusted with");
// that case is checked to pass.
func TestUnderlaySpoofsPodSource(t *testing.T) {
	for _, mode := range []string{"tunnel", "native"} {
		t.Run(mode, func(t *testing.T) {
			l := labtest.UpRouting(t, 2, mode)
			local := labtest.Pod(t, l, "n1", "local", "app=client")
			// Forged by the external only, so that its drops are told
			// apart from the underlay host's (events name the source).
			local2 := labtest.Pod(t, l, "n1", "local2", "app=client")
			remote := labtest.Pod(t, l, "n2", "remote", "app=client")
			victim := labtest.Pod(t, l, "n1", "victim", "app=victim")
			h := labtest.Host(t, l, "forger", "10.0.9.1")
			// And a host behind n1 on a link of its own (no program on it):
			// a local pod's address from there must not pass either.
			ext, err := l.AddExternal("n1", "extforger", "192.168.100.7")
			if err != nil {
				t.Fatal(err)
			}
			labtest.ImportPolicy(t, l, "n1", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: victim}
spec:
  endpointSelector: {matchLabels: {app: victim}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "7000", protocol: UDP}]}]
  - fromCIDR: [10.0.9.1/32, 192.168.100.7/32]
    toPorts: [{ports: [{port: "7000", protocol: UDP}]}]
`)
			drops := forgedDrops(t, l, "n1")
			got := udpSink(t, lab.NetNSPath(victim.NetNS), 7000)
			hostNS := lab.NetNSPath(h.NetNS)
			for _, ip := range []string{local.IP, remote.IP} {
				if out, err := exec.Command("ip", "-n", h.NetNS, "addr", "add", ip+"/32", "dev", "lo").CombinedOutput(); err != nil {
					t.Fatalf("forger: add %s: %v %s", ip, err, out)
				}
			}
			if out, err := exec.Command("ip", "-n", ext.NetNS, "addr", "add", local2.IP+"/32", "dev", "lo").CombinedOutput(); err != nil {
				t.Fatalf("external forger: add %s: %v %s", local2.IP, err, out)
			}
			extNS := lab.NetNSPath(ext.NetNS)
			send := func(ns, from, payload string) { sendUDP(t, ns, from, victim.IP, 7000, payload) }
			// Controls: the real pods are admitted (so the sink and the
			// policy work).
			for _, c := range []struct{ ns, from, payload string }{
				{lab.NetNSPath(local.NetNS), local.IP, "real-local"},
				{lab.NetNSPath(remote.NetNS), remote.IP, "real-remote"},
			} {
				if !got.waitFor(c.payload, 15*time.Second, func() { send(c.ns, c.from, c.payload) }) {
					t.Fatalf("the real pod %s never reached the victim (policy or sink broken)\n%s", c.from, labtest.Describe(t, l))
				}
			}
			forged := []struct {
				ns, from, payload string
				pass              bool
			}{
				{hostNS, h.IP, "host-itself", true},
				{hostNS, local.IP, "forged-local", false},
				{hostNS, remote.IP, "forged-remote", mode == "native"},
				{extNS, ext.IP, "external-itself", true},
				{extNS, local2.IP, "external-forged-local", false},
			}
			// Each datagram is sent for 3 s; then the controls must have
			// arrived and nothing else.
			end := time.Now().Add(3 * time.Second)
			for time.Now().Before(end) {
				for _, f := range forged {
					send(f.ns, f.from, f.payload)
				}
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond)
			for _, f := range forged {
				if n := got.count(f.payload); (n > 0) != f.pass {
					t.Errorf("%s mode: %d datagrams the underlay host sent from %s (%s) reached the victim; want them to pass: %v",
						mode, n, f.from, f.payload, f.pass)
				}
			}
			// Drop events are by source address: local's are the underlay
			// host's (from_netdev), local2's the external's (to_container).
			for _, d := range []struct {
				from string
				want bool
			}{{h.IP, false}, {ext.IP, false}, {local.IP, true}, {local2.IP, true}, {remote.IP, mode == "tunnel"}} {
				if n := drops.get(d.from); (n > 0) != d.want {
					t.Errorf("%s mode: %d forged-source drop events on n1 from %s; want some: %v", mode, n, d.from, d.want)
				}
			}
		})
	}
}

// sendUDP sends payload in one datagram from the namespace at path ns,
// from address from ("": the kernel's choice), to to:port.
func sendUDP(t *testing.T, ns, from, to string, port int, payload string) {
	inNS(t, ns, func() error {
		var laddr *net.UDPAddr
		if from != "" {
			laddr = &net.UDPAddr{IP: net.ParseIP(from)}
		}
		c, err := net.DialUDP("udp4", laddr, &net.UDPAddr{IP: net.ParseIP(to), Port: port})
		if err != nil {
			t.Errorf("send from %s: %v", from, err)
			return nil
		}
		defer c.Close()
		c.Write([]byte(payload))
		return nil
	})
}

// tally counts strings (payloads received, sources of drop events) from
// several goroutines.
type tally struct {
	mu sync.Mutex
	n  map[string]int
}

func newTally() *tally { return &tally{n: map[string]int{}} }

func (c *tally) add(k string) {
	c.mu.Lock()
	c.n[k]++
	c.mu.Unlock()
}

func (c *tally) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

// forgedDrops counts node's drop events with the forged-source reason, by
// source address, until cleanup.
func forgedDrops(t *testing.T, l *lab.Lab, node string) *tally {
	t.Helper()
	d := newTally()
	labtest.Monitor(t, l, node, "drop", func(ev types.Event) {
		if ev.Reason == datapath.ReasonName(datapath.ReasonForgedSource) {
			d.add(ev.Src.Addr().String())
		}
	})
	return d
}

// sink counts the datagrams a UDP listener received, by payload.
type sink struct{ *tally }

func (s *sink) count(payload string) int { return s.get(payload) }

// waitFor calls send every 300 ms until payload was received, up to d.
func (s *sink) waitFor(payload string, d time.Duration, send func()) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		send()
		time.Sleep(300 * time.Millisecond)
		if s.count(payload) > 0 {
			return true
		}
	}
	return false
}

// udpSink listens on UDP port in a namespace until cleanup.
func udpSink(t *testing.T, path string, port int) *sink {
	t.Helper()
	s := &sink{newTally()}
	var c *net.UDPConn
	inNS(t, path, func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	})
	if c == nil {
		t.Fatalf("udp sink on %d: no socket", port)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 256)
		for {
			n, _, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			s.add(string(buf[:n]))
		}
	}()
	return s
}
