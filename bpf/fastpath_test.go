package bpf

import (
	"bytes"
	"net"
	"testing"

	"github.com/cilium/ebpf"
)

// The established fast path (lib/fastpath.h): what a conntrack entry
// caches is used only at the datapath revision it was decided at; the
// agent bumps the revision after changing a map, and the next packet
// sees the change.

const (
	fastPass  = 1 // FAST_PASS
	fastEncap = 2 // FAST_ENCAP

	reasonNoEncryptPeer = 11
)

// bump does what the agent does after changing a map.
func (f *fixture) bump() {
	f.t.Helper()
	var zero, rev uint32
	if err := f.objs.Revision.Lookup(&zero, &rev); err != nil {
		f.t.Fatal(err)
	}
	rev++
	if err := f.objs.Revision.Put(&zero, &rev); err != nil {
		f.t.Fatal(err)
	}
}

// ctEntry is the entry of the flow src:sport -> dst:dport at endpoint ep
// in direction dir.
func (f *fixture) ctEntry(src, dst net.IP, sport, dport uint16, proto, dir uint8, ep uint16) DatapathCtEntry {
	f.t.Helper()
	k := DatapathCtKey{Saddr: ip4(src), Daddr: ip4(dst), Sport: htons(sport), Dport: htons(dport), Proto: proto, Dir: dir, EpId: ep}
	var v DatapathCtEntry
	if err := f.ctMap(k).Lookup(&k, &v); err != nil {
		f.t.Fatalf("conntrack entry %v:%d -> %v:%d: %v", src, sport, dst, dport, err)
	}
	return v
}

// ctMap is the table holding k's entry: conntrack, or conntrack_new for
// a flow not established yet (conntrack when neither has it).
func (f *fixture) ctMap(k DatapathCtKey) *ebpf.Map {
	var v DatapathCtEntry
	if f.objs.Conntrack.Lookup(&k, &v) != nil && f.objs.ConntrackNew.Lookup(&k, &v) == nil {
		return f.objs.ConntrackNew
	}
	return f.objs.Conntrack
}

func (f *fixture) deleteRule(dir uint8, peer uint32, proto uint8, port uint16, l4bits uint32) {
	f.t.Helper()
	k := DatapathPolicyKey{Prefixlen: 64 + l4bits, EpId: podEP, Dir: dir, Identity: peer, Proto: proto, Port: [2]uint8{uint8(port >> 8), uint8(port)}}
	if err := f.objs.Policy.Delete(&k); err != nil {
		f.t.Fatal(err)
	}
}

// A policy change applies to an established flow from the first packet
// after the revision bump, in both directions: the pod's packets
// (from_container, the fast path) and the replies (to_container).
func TestEstablishedFlowFollowsPolicyRevision(t *testing.T) {
	f := load(t)
	f.rule(dirEgress, peerID, 6, 80, 24, false)
	ack := tcp(t, podIP, peerIP, 40000, 80, false, true)
	reply := tcp(t, peerIP, podIP, 80, 40000, false, true)
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 40000, 80, true, false)); r != actOK {
		t.Fatalf("allowed SYN: %d", r)
	}
	if r := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 80, 40000, true, true)); r != actOK {
		t.Fatalf("SYN-ACK: %d", r)
	}
	if r := f.run(f.objs.FromContainer, ack); r != actOK {
		t.Fatalf("first ACK: %d", r)
	}
	if e := f.ctEntry(podIP, peerIP, 40000, 80, 6, dirEgress, podEP); e.FastAction != fastPass {
		t.Fatalf("the established packet's forwarding is not cached: %+v", e)
	}
	// The allow goes; until the agent bumps the revision, the cached
	// decision stands (the bound is the bump, which follows every change).
	f.deleteRule(dirEgress, peerID, 6, 80, 24)
	if r := f.run(f.objs.FromContainer, ack); r != actOK {
		t.Fatalf("established, before the bump: %d", r)
	}
	f.bump()
	denied := f.count(reasonDenied, dirEgress)
	if r := f.run(f.objs.FromContainer, ack); r != actShot || f.count(reasonDenied, dirEgress) != denied+1 {
		t.Fatalf("established after the allow went: verdict %d, default-deny drops %d (want %d)", r, f.count(reasonDenied, dirEgress), denied+1)
	}
	if r := f.run(f.objs.ToContainer, reply); r != actShot {
		t.Fatalf("reply after the allow went: %d", r)
	}
	// Allowed again: the revoked connection stays over (its entry marked
	// revoked at the revocation, whatever a later revision says); a new
	// connection of the same tuple goes.
	const ctRevoked = 16
	if e := f.ctEntry(podIP, peerIP, 40000, 80, 6, dirEgress, podEP); e.Flags&ctRevoked == 0 || e.FastAction != 0 {
		t.Fatalf("the revoked flow's entry: %+v, want marked revoked with nothing cached", e)
	}
	f.rule(dirEgress, peerID, 6, 80, 24, false)
	f.bump()
	if r := f.run(f.objs.FromContainer, ack); r != actShot {
		t.Fatalf("the revoked flow's packet, allowed again: %d, want dropped (no connection)", r)
	}
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 40000, 80, true, false)); r != actOK {
		t.Fatalf("a new SYN, allowed again: %d", r)
	}
	if r := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 80, 40000, true, true)); r != actOK {
		t.Fatalf("its SYN-ACK: %d", r)
	}
	if r := f.run(f.objs.FromContainer, ack); r != actOK {
		t.Fatalf("its ACK: %d", r)
	}
	if r := f.run(f.objs.ToContainer, reply); r != actOK {
		t.Fatalf("reply, allowed again: %d", r)
	}
	// A deny rule over the allow.
	f.rule(dirEgress, peerID, 6, 80, 24, true)
	f.bump()
	rules := f.count(reasonDenyRule, dirEgress)
	if r := f.run(f.objs.FromContainer, ack); r != actShot || f.count(reasonDenyRule, dirEgress) != rules+1 {
		t.Fatalf("established under a deny rule: verdict %d", r)
	}
	if r := f.run(f.objs.FromContainer, ack); r != actShot {
		t.Fatalf("established under a deny rule, again: %d", r)
	}
}

// The pod's replies on a flow it accepted follow its ingress policy too.
func TestAcceptedFlowFollowsPolicyRevision(t *testing.T) {
	f := load(t)
	f.rule(dirIngress, peerID, 6, 80, 24, false)
	if r := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 50000, 80, true, false)); r != actOK {
		t.Fatalf("allowed SYN in: %d", r)
	}
	synack := tcp(t, podIP, peerIP, 80, 50000, true, true)
	if r := f.run(f.objs.FromContainer, synack); r != actOK {
		t.Fatalf("SYN-ACK out: %d", r)
	}
	if r := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 50000, 80, false, true)); r != actOK {
		t.Fatalf("ACK in: %d", r)
	}
	out := tcp(t, podIP, peerIP, 80, 50000, false, true)
	for i := 0; i < 2; i++ {
		if r := f.run(f.objs.FromContainer, out); r != actOK {
			t.Fatalf("reply data out: %d", r)
		}
	}
	if e := f.ctEntry(peerIP, podIP, 50000, 80, 6, dirIngress, podEP); e.FastAction != fastPass {
		t.Fatalf("the reply's forwarding is not cached: %+v", e)
	}
	f.deleteRule(dirIngress, peerID, 6, 80, 24)
	f.bump()
	if r := f.run(f.objs.FromContainer, out); r != actShot {
		t.Fatalf("reply data after the ingress allow went: %d", r)
	}
}

// An established flow to a remote pod follows the pod's move to another
// node: the cached tunnel endpoint and the encryption route are decided
// again after the bump.
func TestEstablishedFlowFollowsIpcache(t *testing.T) {
	f := load(t)
	remotePod := net.IPv4(10, 9, 1, 5).To4()
	nodeA, nodeB, nodeC := net.IPv4(172, 30, 0, 9).To4(), net.IPv4(172, 30, 0, 10).To4(), net.IPv4(172, 30, 0, 11).To4()
	place := func(node net.IP) {
		ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(remotePod)}
		if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: peerID, TunnelIp: ip4(node)}); err != nil {
			t.Fatal(err)
		}
	}
	setCfg := func(v DatapathNodeConfig) {
		putConfig(t, f.objs.Config, v)
	}
	f.rule(dirEgress, peerID, 17, 53, 24, false)
	place(nodeA)
	setCfg(DatapathNodeConfig{Encrypt: 3}) // on, strict
	nk, one := ip4(nodeA), uint32(1)
	if err := f.objs.EncryptPeers.Put(&nk, &one); err != nil {
		t.Fatal(err)
	}
	pkt := udp(t, podIP, remotePod, 5000, 53)
	for i := 0; i < 3; i++ {
		if r := f.run(f.objs.FromContainer, pkt); r != actOK {
			t.Fatalf("to node A, an encryption peer: %d", r)
		}
	}
	if e := f.ctEntry(podIP, remotePod, 5000, 53, 17, dirEgress, podEP); e.FastAction != fastPass {
		t.Fatalf("not cached: %+v", e)
	}
	// To node B, not a peer: strict encryption drops it.
	place(nodeB)
	f.bump()
	if r := f.run(f.objs.FromContainer, pkt); r != actShot || f.count(reasonNoEncryptPeer, dirEgress) != 1 {
		t.Fatalf("moved to a node that is not a peer: verdict %d", r)
	}
	// Tunnel mode without encryption: encapsulated to the pod's node,
	// which follows the pod.
	setCfg(DatapathNodeConfig{VxlanIfindex: 1})
	f.bump()
	for _, node := range []net.IP{nodeB, nodeC} {
		place(node)
		f.bump()
		for i := 0; i < 2; i++ {
			if r := f.run(f.objs.FromContainer, pkt); r != actRedirect {
				t.Fatalf("tunnelled to %v: verdict %d", node, r)
			}
		}
		e := f.ctEntry(podIP, remotePod, 5000, 53, 17, dirEgress, podEP)
		if e.FastAction != fastEncap || e.FastOut != ip4(node) || e.FastIdentity != podID {
			t.Fatalf("cached forwarding to %v: %+v", node, e)
		}
	}
}

// skbIfCtx is __sk_buff up to ifindex: the device a test run's packet
// arrives on.
type skbIfCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTci, VlanProto, Priority, IngressIfindex, Ifindex uint32
}

// otherInterface is the index of an interface besides lo (a test run's
// packet can arrive on it); the test skips when there is none.
func otherInterface(t *testing.T) int {
	t.Helper()
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 {
			return i.Index
		}
	}
	t.Skip("skipped: no interface besides lo to send from")
	return 0
}

// Source-address validation holds on the fast path: an established
// flow's exact packet from another endpoint's interface is dropped, and
// so is it from the pod's old interface once the endpoint moved.
func TestFastPathChecksSource(t *testing.T) {
	f := load(t)
	other := otherInterface(t)
	from := func(ifindex int, pkt []byte) uint32 {
		t.Helper()
		ret, err := f.objs.FromContainer.Run(&ebpf.RunOptions{Data: pkt, Context: &skbIfCtx{Ifindex: uint32(ifindex)}})
		if err != nil {
			t.Fatalf("test run: %v", err)
		}
		return ret
	}
	// Another endpoint (enforcing nothing) behind the other interface.
	otherIP := net.IPv4(10, 0, 0, 3).To4()
	k := ip4(otherIP)
	if err := f.objs.Endpoints.Put(&k, &DatapathEndpointInfo{Ifindex: uint32(other), Identity: podID, EpId: 8}); err != nil {
		t.Fatal(err)
	}
	f.rule(dirEgress, peerID, 6, 80, 24, false)
	ack := tcp(t, podIP, peerIP, 40000, 80, false, true)
	if r := from(1, tcp(t, podIP, peerIP, 40000, 80, true, false)); r != actOK {
		t.Fatalf("SYN: %d", r)
	}
	for i := 0; i < 2; i++ {
		if r := from(1, ack); r != actOK {
			t.Fatalf("established: %d", r)
		}
	}
	if r := from(other, tcp(t, otherIP, peerIP, 41000, 80, true, false)); r != actOK {
		t.Fatalf("the other endpoint's own SYN: %d", r)
	}
	bad := f.count(reasonBadSource, dirEgress)
	if r := from(other, ack); r != actShot || f.count(reasonBadSource, dirEgress) != bad+1 {
		t.Fatalf("the pod's established packet from the other endpoint's interface: verdict %d", r)
	}
	if r := from(1, ack); r != actOK {
		t.Fatalf("established, from the pod's interface again: %d", r)
	}
	// The pod moves to the other interface (the agent rewrites it and bumps).
	pk := ip4(podIP)
	if err := f.objs.Endpoints.Put(&pk, &DatapathEndpointInfo{Ifindex: uint32(other), Identity: podID, EpId: podEP, Flags: 3}); err != nil {
		t.Fatal(err)
	}
	f.bump()
	if r := from(1, ack); r != actShot || f.count(reasonBadSource, dirEgress) != bad+2 {
		t.Fatalf("established, from the pod's old interface: verdict %d", r)
	}
	// Cached again from the new interface, at the new revision: the old
	// interface (whose hint still names the pod's endpoint) stays refused.
	for i := 0; i < 2; i++ {
		if r := from(other, ack); r != actOK {
			t.Fatalf("established, from the pod's new interface: %d", r)
		}
	}
	if r := from(1, ack); r != actShot || f.count(reasonBadSource, dirEgress) != bad+3 {
		t.Fatalf("established, from the pod's old interface after it was cached on the new one: verdict %d", r)
	}
}

// A flow between two pods of the node is cached too (the destination's
// MACs and host veth): its established packets are delivered with the
// destination's MACs, and the destination's ingress policy still applies
// after a bump.
func TestEstablishedLocalDelivery(t *testing.T) {
	const (
		fastLocal = 3 // FAST_LOCAL
		dstEP     = uint16(9)
		dstID     = uint32(0x10400)
		dstIf     = 4242 // redirect_peer only records it in a test run
	)
	f := load(t)
	dstIP := net.IPv4(10, 0, 0, 4).To4()
	dstMAC, dstHostMAC := net.HardwareAddr{2, 0, 0, 0, 0, 4}, net.HardwareAddr{2, 0, 0, 0, 0, 5}
	k := ip4(dstIP)
	v := DatapathEndpointInfo{Ifindex: dstIf, Identity: dstID, EpId: dstEP, Flags: 1} // ingress enforced
	copy(v.Mac[:], dstMAC)
	copy(v.HostMac[:], dstHostMAC)
	if err := f.objs.Endpoints.Put(&k, &v); err != nil {
		t.Fatal(err)
	}
	f.rule(dirEgress, dstID, 6, 80, 24, false)
	ingress := DatapathPolicyKey{Prefixlen: 64 + 24, EpId: dstEP, Dir: dirIngress, Identity: podID, Proto: 6, Port: [2]uint8{0, 80}}
	if err := f.objs.Policy.Put(&ingress, &DatapathPolicyValue{}); err != nil {
		t.Fatal(err)
	}
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, dstIP, 40000, 80, true, false)); r != actRedirect {
		t.Fatalf("SYN to the local pod: %d", r)
	}
	// Its SYN-ACK back to the pod: the pod's ACK of it establishes the
	// flow (ct_settle), and only an established flow's entry is cached.
	if r := f.run(f.objs.ToContainer, tcp(t, dstIP, podIP, 80, 40000, true, true)); r != actOK {
		t.Fatalf("SYN-ACK from the local pod: %d", r)
	}
	ack := tcp(t, podIP, dstIP, 40000, 80, false, true)
	if r := f.run(f.objs.FromContainer, ack); r != actRedirect {
		t.Fatalf("first ACK: %d", r)
	}
	if e := f.ctEntry(podIP, dstIP, 40000, 80, 6, dirEgress, podEP); e.FastAction != fastLocal || e.FastOut != dstIf {
		t.Fatalf("local delivery not cached: %+v", e)
	}
	out := make([]byte, len(ack))
	ret, err := f.objs.FromContainer.Run(&ebpf.RunOptions{Data: ack, DataOut: out})
	if err != nil || ret != actRedirect {
		t.Fatalf("established ACK: %d %v", ret, err)
	}
	if !bytes.Equal(out[:6], dstMAC) || !bytes.Equal(out[6:12], dstHostMAC) {
		t.Fatalf("delivered with MACs %x %x, want %v %v", out[:6], out[6:12], dstMAC, dstHostMAC)
	}
	if err := f.objs.Policy.Delete(&ingress); err != nil {
		t.Fatal(err)
	}
	f.bump()
	denied := f.count(reasonDenied, dirIngress)
	if r := f.run(f.objs.FromContainer, ack); r != actShot || f.count(reasonDenied, dirIngress) != denied+1 {
		t.Fatalf("established after the destination's ingress allow went: verdict %d", r)
	}
}

// enforceOnly makes the pod's endpoint enforce the given flags only
// (1: ingress, 2: egress).
func (f *fixture) enforceOnly(flags uint8) {
	f.t.Helper()
	k := ip4(podIP)
	var v DatapathEndpointInfo
	if err := f.objs.Endpoints.Lookup(&k, &v); err != nil {
		f.t.Fatal(err)
	}
	v.Flags = flags
	if err := f.objs.Endpoints.Put(&k, &v); err != nil {
		f.t.Fatal(err)
	}
}

// A flow the policy revoked stays revoked whichever side sends next, also
// when the other direction is not enforced: found 2026-12-06 by reading
// enforce, the revoked entry only expired, so the peer's next packet in
// the unenforced direction made a new entry of its own, on which the
// pod's packets then passed as replies, past the policy and its deny
// rules. A new TCP connection is judged anew (and passes when allowed
// again).
func TestRevokedFlowStaysRevoked(t *testing.T) {
	t.Run("egress revoked, ingress not enforced", func(t *testing.T) {
		f := load(t)
		f.enforceOnly(2)
		f.rule(dirEgress, peerID, 17, 53, 24, false)
		out, in := udp(t, podIP, peerIP, 5000, 53), udp(t, peerIP, podIP, 53, 5000)
		if f.run(f.objs.FromContainer, out) != actOK || f.run(f.objs.ToContainer, in) != actOK || f.run(f.objs.FromContainer, out) != actOK {
			t.Fatal("the allowed flow did not pass")
		}
		f.rule(dirEgress, peerID, 17, 53, 24, true) // a deny rule over the allow
		f.bump()
		if r := f.run(f.objs.FromContainer, out); r != actShot {
			t.Fatalf("the pod's datagram under the deny rule: %d", r)
		}
		// The peer's datagram is a flow of its own (ingress is not
		// enforced), which does not carry the pod's.
		if r := f.run(f.objs.ToContainer, in); r != actOK {
			t.Errorf("the peer's datagram, a flow of its own direction: %d", r)
		}
		f.staysDropped(t, hop{"the pod's datagram", f.objs.FromContainer, out}, hop{"the pod's datagram again", f.objs.FromContainer, out})
		// The pod silent past its flow's timeout, the peer's flow going on:
		// the peer's entry carries none of the pod's datagrams either
		// (found rereading the reply rule the same day).
		tomb := DatapathCtKey{Saddr: ip4(podIP), Daddr: ip4(peerIP), Sport: htons(5000), Dport: htons(53), Proto: 17, Dir: dirEgress, EpId: podEP}
		if err := f.objs.Conntrack.Delete(&tomb); err != nil {
			t.Fatal(err)
		}
		if r := f.run(f.objs.ToContainer, in); r != actOK {
			t.Errorf("the peer's datagram, its flow going on: %d", r)
		}
		if r := f.run(f.objs.FromContainer, out); r != actShot {
			t.Errorf("the pod's datagram after its tombstone expired: %d, want dropped (the deny rule)", r)
		}
		// Allowed again: a datagram flow goes on (it has no opening packet
		// to start anew with).
		f.deleteRule(dirEgress, peerID, 17, 53, 24)
		f.rule(dirEgress, peerID, 17, 53, 24, false)
		f.bump()
		if f.run(f.objs.FromContainer, out) != actOK || f.run(f.objs.ToContainer, in) != actOK {
			t.Error("the datagram flow, allowed again, does not pass")
		}
	})
	t.Run("egress revoked, the peer still allowed in", func(t *testing.T) {
		// Both enforced; the pod and its peer use one UDP port each way
		// (7946, say); the egress allow goes, the ingress one stays: the
		// peer's datagrams still come in, the pod's no longer go out.
		// Found 2026-12-06 by rereading the tombstone: the peer's were
		// taken as the revoked flow's replies and dropped, each one
		// keeping the tombstone alive.
		f := load(t)
		f.rule(dirEgress, peerID, 17, 7946, 24, false)
		f.rule(dirIngress, peerID, 17, 7946, 24, false)
		out, in := udp(t, podIP, peerIP, 7946, 7946), udp(t, peerIP, podIP, 7946, 7946)
		if f.run(f.objs.FromContainer, out) != actOK || f.run(f.objs.ToContainer, in) != actOK {
			t.Fatal("the allowed flow did not pass")
		}
		f.deleteRule(dirEgress, peerID, 17, 7946, 24)
		f.bump()
		if r := f.run(f.objs.FromContainer, out); r != actShot {
			t.Fatalf("the pod's datagram after its allow went: %d", r)
		}
		for i := 0; i < 2; i++ {
			if r := f.run(f.objs.ToContainer, in); r != actOK {
				t.Errorf("the peer's datagram, still allowed in (%d): %d", i, r)
			}
		}
		f.staysDropped(t, hop{"the pod's datagram", f.objs.FromContainer, out})
	})
	t.Run("ingress revoked, egress not enforced", func(t *testing.T) {
		f := load(t)
		f.enforceOnly(1)
		f.rule(dirIngress, peerID, 6, 80, 24, false)
		for _, c := range []struct {
			prog *ebpf.Program
			pkt  []byte
		}{
			{f.objs.ToContainer, tcp(t, peerIP, podIP, 50000, 80, true, false)},
			{f.objs.FromContainer, tcp(t, podIP, peerIP, 80, 50000, true, true)},
			{f.objs.ToContainer, tcp(t, peerIP, podIP, 50000, 80, false, true)},
		} {
			if r := f.run(c.prog, c.pkt); r != actOK {
				t.Fatalf("handshake: %d", r)
			}
		}
		f.deleteRule(dirIngress, peerID, 6, 80, 24)
		f.bump()
		in, out := tcp(t, peerIP, podIP, 50000, 80, false, true), tcp(t, podIP, peerIP, 80, 50000, false, true)
		if r := f.run(f.objs.ToContainer, in); r != actShot {
			t.Fatalf("the peer's segment after the allow went: %d", r)
		}
		f.staysDropped(t, hop{"the pod's segment", f.objs.FromContainer, out}, hop{"the peer's segment", f.objs.ToContainer, in})
		// Allowed again: a new connection passes.
		f.rule(dirIngress, peerID, 6, 80, 24, false)
		f.bump()
		if r := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 50001, 80, true, false)); r != actOK {
			t.Fatalf("a new connection, allowed again: %d", r)
		}
	})
}

// hop is a packet sent through a program.
type hop struct {
	what string
	prog *ebpf.Program
	pkt  []byte
}

// staysDropped sends the hops in turn, twice, and wants every one dropped.
func (f *fixture) staysDropped(t *testing.T, hops ...hop) {
	t.Helper()
	for i := 0; i < 2; i++ {
		for _, h := range hops {
			if r := f.run(h.prog, h.pkt); r != actShot {
				t.Errorf("%s after the revocation (round %d): verdict %d, want dropped", h.what, i, r)
			}
		}
	}
}

// A reply judged again after a bump (with the identity the flow was
// admitted with) does not stand for the flow's own direction: the pod's
// next packet is judged with the peer's identity now. Found 2026-12-06
// by reading enforce: the reply's check marked the entry checked at the
// new revision, so when a relabelled peer (quarantined, or a new pod
// given the old one's address) spoke first, the pod's packets to it
// never met the policy again.
func TestReplyCheckDoesNotStandForTheFlow(t *testing.T) {
	f := load(t)
	f.rule(dirEgress, peerID, 17, 53, 24, false)
	out, in := udp(t, podIP, peerIP, 5000, 53), udp(t, peerIP, podIP, 53, 5000)
	if f.run(f.objs.FromContainer, out) != actOK || f.run(f.objs.ToContainer, in) != actOK || f.run(f.objs.FromContainer, out) != actOK {
		t.Fatal("the allowed flow did not pass")
	}
	ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(peerIP)}
	if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: 0x10999}); err != nil {
		t.Fatal(err)
	}
	f.bump()
	if r := f.run(f.objs.ToContainer, in); r != actOK {
		t.Fatalf("the peer's datagram first (judged as the flow was admitted): %d", r)
	}
	if r := f.run(f.objs.FromContainer, out); r != actShot {
		t.Fatalf("the pod's datagram to the relabelled peer: %d, want dropped", r)
	}
}
