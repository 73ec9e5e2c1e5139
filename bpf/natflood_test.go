package bpf

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// A flood of NodePort SYNs nobody completes does not push out the
// translations of established NodePort flows: a new flow's translation
// starts in a table of its own (lb_nats_new) and moves to lb_nats once the
// flow is established (TCP: the client's ACK of the backend's SYN-ACK, its
// number checked; UDP: the client's datagram after a reply).

const natFloodCapacity = 4096 // lb_nats, and lb_nats_new, made small for the test

func natFloodFixture(t *testing.T) *fixture {
	return loadSpec(t, func(s *ebpf.CollectionSpec) {
		s.Maps["lb_nats"].MaxEntries = natFloodCapacity
		if m, ok := s.Maps["lb_nats_new"]; ok {
			m.MaxEntries = natFloodCapacity
		}
	})
}

func TestNodePortNATFloodSparesEstablishedFlows(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	const local, far, udpLocal, be = 30090, 30091, 30092, 8080
	const lport, rport = 40000, 40001
	backendRoute(t, remote)
	f := natFloodFixture(t)
	f.rule(dirEgress, peerID, 6, lport, 24, false) // the pod's egress admits its replies
	f.lbService(1, nodeIP, local, 6, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), be))
	f.lbService(2, nodeIP, far, 6, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), be))
	f.lbService(3, nodeIP, udpLocal, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), be))

	// An established flow to the backend on another node (its reply comes
	// to this node's SNAT port)...
	client, backend := natPeers(f, nodeIP, remote, far, be, rport)
	natHandshake(client, backend, 1000, 5000)
	// ...and one to the pod of this node.
	f.run(f.objs.FromNetdev, tcpSeq(t, peerIP, nodeIP, lport, local, true, false, 2000, 0))
	f.run(f.objs.FromContainer, tcpSeq(t, podIP, peerIP, be, lport, true, true, 9000, 2001))
	f.run(f.objs.FromNetdev, tcpSeq(t, peerIP, nodeIP, lport, local, false, true, 2001, 9001))

	// The flood: three times lb_nats' size of flows from forged sources
	// to the local backend's NodePorts (two entries each): SYNs, a third
	// of them answered by the pod and "completed" blind (a wrong number),
	// and a third unanswered datagrams.
	for i := 0; i < 3*natFloodCapacity; i++ {
		src, sport := floodSource(i)
		if i%3 == 2 {
			f.run(f.objs.FromNetdev, udp(t, src, nodeIP, sport, udpLocal))
			continue
		}
		f.run(f.objs.FromNetdev, tcpSeq(t, src, nodeIP, sport, local, true, false, 1, 0))
		if i%3 == 1 {
			f.run(f.objs.FromContainer, tcpSeq(t, podIP, src, be, sport, true, true, 5000, 2))
			f.run(f.objs.FromNetdev, tcpSeq(t, src, nodeIP, sport, local, false, true, 2, 0xdeadbeef))
		}
	}
	// The flood made its translations (in lb_nats_new, when there is one).
	made := 0
	for _, m := range []*ebpf.Map{f.objs.LbNats, f.objs.LbNatsNew} {
		if m == nil {
			continue
		}
		var k DatapathLbNatKey
		var v DatapathLbNat
		for it := m.Iterate(); it.Next(&k, &v); {
			if k.Saddr&0xff == 198 || k.Daddr&0xff == 198 {
				made++
			}
		}
	}
	if made < natFloodCapacity/2 {
		t.Fatalf("the flood left %d translations, want the tables full of them: the flood was not translated", made)
	}

	// Both idle flows' next segments are still translated.
	_, out := f.runOut(f.objs.FromNetdev, tcpSeq(t, peerIP, nodeIP, rport, far, false, true, 1001, 5001))
	if dst, port := destination(t, out); !dst.Equal(remote) || port != be {
		t.Errorf("after the flood the remote backend's flow went to %s:%d, want %s:%d: its translation was evicted", dst, port, remote, be)
	}
	_, out = f.runOut(f.objs.FromContainer, tcpSeq(t, podIP, peerIP, be, lport, false, true, 9001, 2001))
	if src, port := net.IP(out[14+12:14+16]), uint16(out[14+20])<<8|uint16(out[14+21]); !src.Equal(nodeIP) || port != local {
		t.Errorf("after the flood the local backend's reply left from %s:%d, want translated to the frontend %s:%d: its translation was evicted", src, port, nodeIP, local)
	}

	// And no flood flow holds a place among the established ones.
	var k DatapathLbNatKey
	var v DatapathLbNat
	held := 0
	for it := f.objs.LbNats.Iterate(); it.Next(&k, &v); {
		if k.Saddr&0xff == 198 || k.Daddr&0xff == 198 {
			held++
		}
	}
	if held != 0 {
		t.Errorf("%d flood translations are in lb_nats (want 0: no flood flow was established)", held)
	}
}

// natTablesOf names the tables holding the two halves of the translation
// of client port sport (from peerIP): "lb_nats", "lb_nats_new", "" when
// missing, forward then reverse, and the reverse half's key.
func (f *fixture) natTablesOf(sport uint16) (fwd, rev string, rk DatapathLbNatKey) {
	f.t.Helper()
	f.natEach(func(m *ebpf.Map, k DatapathLbNatKey, v DatapathLbNat) {
		name := "lb_nats"
		if m == f.objs.LbNatsNew {
			name = "lb_nats_new"
		}
		switch {
		case v.Reverse == 0 && k.Saddr == ip4(peerIP) && k.Sport == htons(sport):
			fwd = name
		case v.Reverse == 1 && v.Daddr == ip4(peerIP) && v.Dport == htons(sport):
			rev, rk = name, k
		}
	})
	return fwd, rev, rk
}

func TestNodePortNATSettles(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	const fe, udpFE, be, sport, usport = 30090, 30091, 8080, 40000, 40001
	backendRoute(t, remote)
	f := load(t)
	in := func(what string, sport uint16, want string) {
		t.Helper()
		fwd, rev, _ := f.natTablesOf(sport)
		if fwd != want || rev != want {
			t.Fatalf("after %s: the translation's halves are in %q and %q, want both in %q", what, fwd, rev, want)
		}
	}
	client, backend := f.nodePortFlow(nodeIP, remote, fe, be, sport)
	client(natSeg{seq: 1000, syn: true})
	in("the client's SYN", sport, "lb_nats_new")
	backend(natSeg{seq: 5000, ack: 1001, syn: true, ackf: true})
	in("the backend's SYN-ACK", sport, "lb_nats_new")
	client(natSeg{seq: 1001, ack: 0x5000, ackf: true})
	in("an ACK of a number the backend never sent (blind)", sport, "lb_nats_new")
	// One half in each table (as when a move copied one half and not the
	// other): the flow is whole, and the client's ACK moves the other.
	_, _, rk := f.natTablesOf(sport)
	var rv DatapathLbNat
	if err := f.objs.LbNatsNew.Lookup(&rk, &rv); err != nil {
		t.Fatal(err)
	}
	if err := f.objs.LbNats.Put(&rk, &rv); err != nil {
		t.Fatal(err)
	}
	if err := f.objs.LbNatsNew.Delete(&rk); err != nil {
		t.Fatal(err)
	}
	client(natSeg{seq: 1001, ack: 5001, ackf: true})
	in("the client's ACK of the SYN-ACK (the reverse half in lb_nats already)", sport, "lb_nats")
	backend(natSeg{seq: 5001, ack: 1001, ackf: true, data: 100})
	in("the backend's data", sport, "lb_nats")
	_, out := f.runOut(f.objs.FromNetdev, tcpSeq(t, peerIP, nodeIP, sport, fe, false, true, 1001, 5101))
	if dst, port := destination(t, out); !dst.Equal(remote) || port != be {
		t.Fatalf("the settled flow's next segment went to %s:%d, want %s:%d", dst, port, remote, be)
	}

	// UDP: established, and settled, at the client's datagram after a reply.
	f.lbService(2, nodeIP, udpFE, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), be))
	f.run(f.objs.FromNetdev, udp(t, peerIP, nodeIP, usport, udpFE))
	in("a datagram", usport, "lb_nats_new")
	f.run(f.objs.FromNetdev, udp(t, peerIP, nodeIP, usport, udpFE))
	in("another datagram, no reply yet", usport, "lb_nats_new")
	_, _, rk = f.natTablesOf(usport)
	f.run(f.objs.FromNetdev, udp(t, remote, nodeIP, be, htons(rk.Dport)))
	in("the backend's reply", usport, "lb_nats_new")
	f.run(f.objs.FromNetdev, udp(t, peerIP, nodeIP, usport, udpFE))
	in("the client's datagram after the reply", usport, "lb_nats")
}
