package bpf

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// A local backend's NodePort translation keeps the client's address and
// port (DNAT only), and from_container translates back whatever the
// backend sends on that pair. A peer that may come to a node address in
// the clear (another node, a remote pod in native routing) also talks to
// the backend directly; a sweep of forged SYNs or datagrams from its
// address to the NodePort made translations on the tuples of its direct
// connections, and the backend's packets on them then left as the
// frontend's: the peer's connections were cut (found 2026-12-06 by
// reading; docs/architecture.md listed it open). Now no translation is
// made on a tuple that is a live established connection of the backend's,
// either way (the peer's to it, or its own from the backend port); the
// forged packet is dropped (REASON_LB_NAT). A closed connection's tuple
// is translated again.
func TestNodePortSweepLeavesDirectConnectionsAlone(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	backend := netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), 8080)
	const reasonLBNat = 10
	f := load(t)
	f.unenforce()
	f.lbService(1, nodeIP, 30090, 6, lbFlagNodePort, backend)
	f.lbService(2, nodeIP, 30091, 17, lbFlagNodePort, backend)
	steps := func(what string, hops ...hop) {
		t.Helper()
		for i, h := range hops {
			if r := f.run(h.prog, h.pkt); r != actOK {
				t.Fatalf("%s, step %d (%s): %d", what, i, h.what, r)
			}
		}
	}
	// The peer's TCP connection to the pod's port 8080 from port 41000
	// (the peer's numbers from 10, the pod's from 9000).
	steps("the peer's TCP connection",
		hop{"SYN", f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 41000, 8080, true, false, 10, 0)},
		hop{"SYN-ACK", f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 8080, 41000, true, true, 9000, 11)},
		hop{"ACK", f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 41000, 8080, false, true, 11, 9001)})
	// The peer's UDP flow to the pod's port 8080 from port 41001, answered.
	steps("the peer's UDP flow",
		hop{"datagram", f.objs.ToContainer, udp(t, peerIP, podIP, 41001, 8080)},
		hop{"answer", f.objs.FromContainer, udp(t, podIP, peerIP, 8080, 41001)})
	// The pod's own UDP flow from its port 8080 to the peer's 41002, answered.
	steps("the pod's UDP flow",
		hop{"datagram", f.objs.FromContainer, udp(t, podIP, peerIP, 8080, 41002)},
		hop{"answer", f.objs.ToContainer, udp(t, peerIP, podIP, 41002, 8080)})

	// The pod's next packet on a flow leaves as it is: from the pod's
	// address and port 8080, not the frontend's.
	untranslated := func(what string, pkt []byte) {
		t.Helper()
		_, out := f.runOut(f.objs.FromContainer, pkt)
		if src, port := source(t, out); !src.Equal(podIP) || port != 8080 {
			t.Errorf("%s: the pod's packet left from %s:%d, want %s:8080 (the peer's direct flow, untranslated)", what, src, port, podIP)
		}
	}
	for _, c := range []struct {
		what   string
		forged []byte
		next   []byte
	}{
		{"a forged SYN on the tuple of the peer's TCP connection",
			tcpSeq(t, peerIP, nodeIP, 41000, 30090, true, false, 5555, 0),
			tcpData(t, podIP, peerIP, 8080, 41000, 9001, 11, 10, false)},
		{"a forged datagram on the tuple of the peer's UDP flow",
			udp(t, peerIP, nodeIP, 41001, 30091), udp(t, podIP, peerIP, 8080, 41001)},
		{"a forged datagram on the tuple of the pod's own UDP flow",
			udp(t, peerIP, nodeIP, 41002, 30091), udp(t, podIP, peerIP, 8080, 41002)},
	} {
		before := f.count(reasonLBNat, dirIngress)
		if r := f.run(f.objs.FromNetdev, c.forged); r != actShot || f.count(reasonLBNat, dirIngress)-before != 1 {
			t.Errorf("%s: verdict %d, %d drops of REASON_LB_NAT; want it dropped, 1", c.what, r, f.count(reasonLBNat, dirIngress)-before)
		}
		untranslated(c.what, c.next)
	}
	f.natEach(func(_ *ebpf.Map, k DatapathLbNatKey, v DatapathLbNat) {
		t.Errorf("a translation made: %+v -> %+v", k, v)
	})

	// Closed (the pod's RST), the tuple is a NodePort client's again.
	steps("the pod's RST", hop{"RST", f.objs.FromContainer, tcpRST(t, podIP, peerIP, 8080, 41000, 9001, 11, true)})
	f.translated("a SYN on the closed connection's tuple", tcpSeq(t, peerIP, nodeIP, 41000, 30090, true, false, 7777, 0), backend)
	// A new client's flows are translated as before.
	f.translated("another client port's SYN", tcpSeq(t, peerIP, nodeIP, 41003, 30090, true, false, 1, 0), backend)
	f.translated("another client port's datagram", udp(t, peerIP, nodeIP, 41004, 30091), backend)
}

// A NodePort flow's own conntrack entry does not hold its tuple: from the
// review of the check above, a NodePort connection whose FIN conntrack
// did not count (its segment not at the followed number) is left
// established for 6 h after its translation closed, and the client's next
// connection from that port was refused. from_netdev marks the packets it
// translates to a local backend (MARK_NODEPORT_MAGIC), to_container flags
// the entry they make CT_F_NODEPORT, and the check passes such entries;
// the peer's own SYN on the tuple takes the flag away again.
func TestNodePortFlowsOwnEntryHoldsNoTuple(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	backend := netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), 8080)
	const reasonLBNat = 10
	const ctFNodePort = 128
	f := load(t)
	f.unenforce()
	f.lbService(1, nodeIP, 30090, 6, lbFlagNodePort, backend)
	// The translated packet leaves from_netdev marked.
	var ctx struct { // the whole struct __sk_buff, of which mark is the third field
		sysSkBuff
		Rest [180]byte
	}
	ret, err := f.objs.FromNetdev.Run(&ebpf.RunOptions{Data: tcpSeq(t, peerIP, nodeIP, 41005, 30090, true, false, 10, 0), Context: &sysSkBuff{}, ContextOut: &ctx})
	if err != nil || ret != actOK || ctx.Mark != 0xFC000000 {
		t.Fatalf("a SYN translated to the local backend: verdict %d (%v), mark %#x; want %#x", ret, err, ctx.Mark, 0xFC000000)
	}
	marked := func(pkt []byte) uint32 {
		t.Helper()
		ret, err := f.objs.ToContainer.Run(&ebpf.RunOptions{Data: pkt, Context: &sysSkBuff{Mark: 0xFC000000}})
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	// The connection: SYN, SYN-ACK, ACK (the client's numbers from 10, the
	// pod's from 9000).
	if r := marked(tcpSeq(t, peerIP, podIP, 41005, 8080, true, false, 10, 0)); r != actOK {
		t.Fatalf("the translated SYN into the pod: %d", r)
	}
	f.run(f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 8080, 41005, true, true, 9000, 11))
	f.translated("the client's ACK", tcpSeq(t, peerIP, nodeIP, 41005, 30090, false, true, 11, 9001), backend)
	if r := marked(tcpSeq(t, peerIP, podIP, 41005, 8080, false, true, 11, 9001)); r != actOK {
		t.Fatalf("the translated ACK into the pod: %d", r)
	}
	if e := f.ctEntry(peerIP, podIP, 41005, 8080, 6, dirIngress, podEP); e.State != 1 || e.Flags&ctFNodePort == 0 {
		t.Fatalf("the NodePort connection's entry: state %d flags %#x; want established, CT_F_NODEPORT", e.State, e.Flags)
	}
	// Its translation gone (closed, 10 s later deleted), the entry still
	// established: the client's next connection from that port.
	f.natEach(func(_ *ebpf.Map, k DatapathLbNatKey, _ DatapathLbNat) { f.natDelete(k) })
	before := f.count(reasonLBNat, dirIngress)
	f.translated("the client's next SYN from that port", tcpSeq(t, peerIP, nodeIP, 41005, 30090, true, false, 5000, 0), backend)
	if got := f.count(reasonLBNat, dirIngress) - before; got != 0 {
		t.Errorf("%d REASON_LB_NAT drops, want 0", got)
	}
	// The peer's own SYN to the pod on that tuple (a direct connection)
	// takes the flag away: the tuple is held against NodePort SYNs again.
	f.natEach(func(_ *ebpf.Map, k DatapathLbNatKey, _ DatapathLbNat) { f.natDelete(k) })
	f.run(f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 41005, 8080, true, false, 77, 0))
	if e := f.ctEntry(peerIP, podIP, 41005, 8080, 6, dirIngress, podEP); e.Flags&ctFNodePort != 0 {
		t.Errorf("after the peer's own SYN the entry keeps CT_F_NODEPORT (flags %#x)", e.Flags)
	}
	if r := f.run(f.objs.FromNetdev, tcpSeq(t, peerIP, nodeIP, 41005, 30090, true, false, 6000, 0)); r != actShot || f.count(reasonLBNat, dirIngress)-before != 1 {
		t.Errorf("a NodePort SYN on the direct connection's tuple: verdict %d, %d REASON_LB_NAT drops; want dropped, 1", r, f.count(reasonLBNat, dirIngress)-before)
	}
}
