package bpf

import (
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"
)

// A flood of flows nobody answers, or answered but never completed, does
// not push out the entries of established flows: new flows start in a
// table of their own (ct_new) and move to conntrack once they are
// established: a TCP connection at the opener's ACK of the other side's
// SYN-ACK (the number checked, so a blind source cannot complete one), a
// TCP flow picked up without its SYN, a UDP or ICMP flow at its first
// reply.

const floodCapacity = 4096 // conntrack, made small for the test

func floodFixture(t *testing.T) *fixture {
	return loadSpec(t, func(s *ebpf.CollectionSpec) { s.Maps["conntrack"].MaxEntries = floodCapacity })
}

// tcpSeq is a TCP packet with its numbers.
func tcpSeq(t *testing.T, src, dst net.IP, sport, dport uint16, syn, ack bool, seq, ackNo uint32) []byte {
	ip := ipv4(src, dst, layers.IPProtocolTCP)
	l4 := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: syn, ACK: ack, Seq: seq, Ack: ackNo, Window: 1000}
	l4.SetNetworkLayerForChecksum(ip)
	return serialize(t, eth(), ip, l4)
}

// floodSource is the i-th forged world source (not in the ipcache).
func floodSource(i int) (net.IP, uint16) {
	return net.IPv4(198, 18, byte(i>>8), byte(i)).To4(), uint16(1024 + i%50000)
}

func TestConntrackFloodSparesEstablishedFlows(t *testing.T) {
	f := floodFixture(t)
	// The pod serves the world on TCP 80 and UDP 53; its own connection
	// to the peer is established and idle.
	f.rule(dirIngress, 0, 6, 80, 24, false)
	f.rule(dirIngress, 0, 17, 53, 24, false)
	f.rule(dirIngress, 0, 1, 8, 24, false) // echo requests: the pod answers every one
	f.rule(dirEgress, peerID, 6, 443, 24, false)
	const isn = 7000
	for i, h := range []hop{
		{"SYN", f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 40000, 443, true, false, 100, 0)},
		{"SYN-ACK", f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 443, 40000, true, true, isn, 101)},
		{"ACK", f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 40000, 443, false, true, 101, isn+1)},
	} {
		if r := f.run(h.prog, h.pkt); r != actOK {
			t.Fatalf("handshake step %d (%s): %d", i, h.what, r)
		}
	}
	// The flood: three times conntrack's size of flows from forged
	// sources. A quarter are SYNs nobody completes, a quarter SYNs the
	// pod answers and the forger "completes" blind (a wrong number), a
	// quarter UDP datagrams the pod never answers, a quarter echo
	// requests the pod answers.
	n := 3 * floodCapacity
	for i := 0; i < n; i++ {
		src, sport := floodSource(i)
		switch i % 4 {
		case 3:
			f.run(f.objs.ToContainer, echo(t, src, podIP, 8, sport))
			f.run(f.objs.FromContainer, echo(t, podIP, src, 0, sport))
		case 0:
			f.run(f.objs.ToContainer, tcpSeq(t, src, podIP, sport, 80, true, false, 1, 0))
		case 1:
			f.run(f.objs.ToContainer, tcpSeq(t, src, podIP, sport, 80, true, false, 1, 0))
			f.run(f.objs.FromContainer, tcpSeq(t, podIP, src, 80, sport, true, true, 5000, 2))
			f.run(f.objs.ToContainer, tcpSeq(t, src, podIP, sport, 80, false, true, 2, 0xdeadbeef))
		case 2:
			f.run(f.objs.ToContainer, udp(t, src, podIP, sport, 53))
		}
	}
	// The peer's next segment of the idle connection still passes: its
	// entry was not evicted by the flood.
	if r := f.run(f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 443, 40000, false, true, isn+1, 101)); r != actOK {
		t.Fatalf("the established connection's next segment after the flood: verdict %d (conntrack missing: %d); its entry was evicted",
			r, f.count(reasonCTMissing, dirIngress))
	}
	// And no flood flow holds a place among the established ones.
	var k DatapathCtKey
	var v DatapathCtEntry
	held := 0
	it := f.objs.Conntrack.Iterate()
	for it.Next(&k, &v) {
		if k.Saddr&0xff == 198 || k.Daddr&0xff == 198 {
			held++
		}
	}
	if held != 0 {
		t.Errorf("%d flood flows hold conntrack entries (want 0: none was established)", held)
	}
}

// echo is an ICMP echo request (typ 8) or reply (0) of identifier id.
func echo(t *testing.T, src, dst net.IP, typ uint8, id uint16) []byte {
	return serialize(t, eth(), ipv4(src, dst, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: id, Seq: 1})
}

// inTable tells which table holds the entry of src:sport -> dst:dport at
// the pod in direction dir: "conntrack", "conntrack_new" or "".
func (f *fixture) inTable(src, dst net.IP, sport, dport uint16, proto, dir uint8) string {
	k := DatapathCtKey{Saddr: ip4(src), Daddr: ip4(dst), Sport: htons(sport), Dport: htons(dport), Proto: proto, Dir: dir, EpId: podEP}
	var v DatapathCtEntry
	switch {
	case f.objs.Conntrack.Lookup(&k, &v) == nil:
		return "conntrack"
	case f.objs.ConntrackNew.Lookup(&k, &v) == nil:
		return "conntrack_new"
	}
	return ""
}

func TestConntrackSettles(t *testing.T) {
	const minute = uint64(60e9)
	t.Run("TCP at the opener's ACK of the SYN-ACK, not at a blind one", func(t *testing.T) {
		f := floodFixture(t)
		f.rule(dirIngress, peerID, 6, 80, 24, false)
		where := func() string { return f.inTable(peerIP, podIP, 50000, 80, 6, dirIngress) }
		f.run(f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 50000, 80, true, false, 10, 0))
		if w := where(); w != "conntrack_new" {
			t.Fatalf("after the SYN the entry is in %q, want conntrack_new", w)
		}
		f.run(f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 80, 50000, true, true, 90000, 11))
		e := f.ctEntry(peerIP, podIP, 50000, 80, 6, dirIngress, podEP)
		if now := monotonic(t); e.Expires > now+minute {
			t.Errorf("answered, not established: expires in %d s, want at most 60", (e.Expires-now)/1e9)
		}
		for _, ack := range []uint32{90000, 90002, 0} {
			if r := f.run(f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 50000, 80, false, true, 11, ack)); r != actOK {
				t.Fatalf("ACK of %d: verdict %d (the flow's own segments pass, established or not)", ack, r)
			}
			if w := where(); w != "conntrack_new" {
				t.Fatalf("an ACK of %d (the SYN-ACK's number is 90000) moved the entry to %q", ack, w)
			}
		}
		f.run(f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 50000, 80, false, true, 11, 90001))
		if w := where(); w != "conntrack" {
			t.Fatalf("after the ACK of the SYN-ACK the entry is in %q, want conntrack", w)
		}
		if now, e := monotonic(t), f.ctEntry(peerIP, podIP, 50000, 80, 6, dirIngress, podEP); e.Expires < now+10*minute {
			t.Errorf("established: expires in %d s, want the TCP timeout", (e.Expires-now)/1e9)
		}
		// A stray SYN on the tuple (a duplicate, or forged) leaves the
		// established entry in conntrack (ct_create; until 2026-12-06 it
		// made the entry anew in conntrack_new, and only the pod's
		// challenge ACK moved it back); the pod's challenge ACK passes as
		// the connection's.
		f.run(f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 50000, 80, true, false, 500, 0))
		if w := where(); w != "conntrack" {
			t.Fatalf("a new SYN on the tuple: entry in %q, want conntrack still", w)
		}
		if r := f.run(f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 80, 50000, false, true, 90001, 11)); r != actOK {
			t.Fatalf("the pod's challenge ACK: verdict %d", r)
		}
		if w := where(); w != "conntrack" {
			t.Fatalf("after the pod's challenge ACK: entry in %q, want conntrack", w)
		}
	})
	t.Run("ICMP never: every pod answers an echo", func(t *testing.T) {
		f := floodFixture(t)
		f.rule(dirEgress, peerID, 1, 8, 24, false)
		f.run(f.objs.FromContainer, echo(t, podIP, peerIP, 8, 77))
		if r := f.run(f.objs.ToContainer, echo(t, peerIP, podIP, 0, 77)); r != actOK {
			t.Fatalf("echo reply: %d", r)
		}
		if w := f.inTable(podIP, peerIP, 77, 0xff08, 1, dirEgress); w != "conntrack_new" {
			t.Fatalf("an answered echo's entry is in %q, want conntrack_new", w)
		}
	})
	t.Run("UDP at its first reply", func(t *testing.T) {
		f := floodFixture(t)
		f.rule(dirEgress, peerID, 17, 53, 24, false)
		f.run(f.objs.FromContainer, udp(t, podIP, peerIP, 5000, 53))
		if w := f.inTable(podIP, peerIP, 5000, 53, 17, dirEgress); w != "conntrack_new" {
			t.Fatalf("an unanswered datagram's entry is in %q, want conntrack_new", w)
		}
		f.run(f.objs.ToContainer, udp(t, peerIP, podIP, 53, 5000))
		if w := f.inTable(podIP, peerIP, 5000, 53, 17, dirEgress); w != "conntrack" {
			t.Fatalf("after the answer the entry is in %q, want conntrack", w)
		}
	})
	t.Run("TCP picked up without its SYN: at a reply that is no RST", func(t *testing.T) {
		f := floodFixture(t)
		// Ingress enforced, egress not: a segment from the pod of a
		// connection the datapath never saw (say, from before an agent
		// upgrade) starts an entry of the egress direction.
		f.putPod(1)
		out := tcpSeq(t, podIP, peerIP, 41000, 443, false, true, 5, 5)
		if r := f.run(f.objs.FromContainer, out); r != actOK {
			t.Fatalf("the pod's mid-connection segment, egress not enforced: verdict %d", r)
		}
		where := func() string { return f.inTable(podIP, peerIP, 41000, 443, 6, dirEgress) }
		if w := where(); w != "conntrack_new" {
			t.Fatalf("picked up: entry in %q, want conntrack_new", w)
		}
		rst := serialize(t, eth(), ipv4(peerIP, podIP, layers.IPProtocolTCP), func() *layers.TCP {
			l4 := &layers.TCP{SrcPort: 443, DstPort: 41000, RST: true, Seq: 5, Window: 0}
			l4.SetNetworkLayerForChecksum(ipv4(peerIP, podIP, layers.IPProtocolTCP))
			return l4
		}())
		f.run(f.objs.ToContainer, rst)
		if w := where(); w != "conntrack_new" {
			t.Fatalf("an RST answered it: entry in %q, want conntrack_new still", w)
		}
		f.run(f.objs.FromContainer, out)
		f.run(f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 443, 41000, false, true, 5, 6))
		if w := where(); w != "conntrack" {
			t.Fatalf("after a reply that is no RST: entry in %q, want conntrack", w)
		}
	})
}
