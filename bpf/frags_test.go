package bpf

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// fragment is an IPv4 fragment of a datagram (id, protocol proto) from src
// to dst: the first, carrying l4 (and MF set), or, with l4 nil, one at
// offset (8-byte units) carrying payload only.
func fragment(t *testing.T, src, dst net.IP, proto layers.IPProtocol, id, offset uint16, l4 gopacket.SerializableLayer, payload []byte) []byte {
	t.Helper()
	ip := ipv4(src, dst, proto)
	ip.Id = id
	ip.FragOffset = offset
	if l4 == nil {
		return serialize(t, eth(), ip, gopacket.Payload(payload))
	}
	ip.Flags = layers.IPv4MoreFragments
	if u, ok := l4.(*layers.UDP); ok {
		u.SetNetworkLayerForChecksum(ip)
	}
	if tc, ok := l4.(*layers.TCP); ok {
		tc.SetNetworkLayerForChecksum(ip)
	}
	return serialize(t, eth(), ip, l4, gopacket.Payload(payload))
}

// A UDP datagram in fragments is judged, fragment by fragment, as the
// datagram its first fragment begins: the later fragments take the first's
// ports (the frags map), so an allowed datagram passes whole and a denied
// one is denied whole (policy denied, not "fragment"). A later fragment
// whose first was never seen, or one of a TCP segment (never followed), is
// dropped as a fragment. Before, every later fragment was dropped, so no
// datagram bigger than the MTU ever arrived.
func TestFragmentsFollowTheirFirst(t *testing.T) {
	f := load(t)
	f.rule(dirEgress, peerID, 17, 80, 24, false)
	f.rule(dirEgress, peerID, 6, 80, 24, false)
	payload := make([]byte, 32)
	later := func(proto layers.IPProtocol, id uint16) []byte {
		return fragment(t, podIP, peerIP, proto, id, 5, nil, payload)
	}
	udpTo := func(port uint16) *layers.UDP { return &layers.UDP{SrcPort: 4000, DstPort: layers.UDPPort(port)} }

	if r := f.run(f.objs.FromContainer, fragment(t, podIP, peerIP, layers.IPProtocolUDP, 100, 0, udpTo(80), payload)); r != actOK {
		t.Fatalf("the first fragment of an allowed datagram: %d", r)
	}
	for i := 0; i < 3; i++ {
		if r := f.run(f.objs.FromContainer, later(layers.IPProtocolUDP, 100)); r != actOK {
			t.Fatalf("a later fragment of an allowed datagram: %d", r)
		}
	}
	if r := f.run(f.objs.FromContainer, fragment(t, podIP, peerIP, layers.IPProtocolUDP, 101, 0, udpTo(81), payload)); r != actShot {
		t.Fatalf("the first fragment of a denied datagram: %d", r)
	}
	if r := f.run(f.objs.FromContainer, later(layers.IPProtocolUDP, 101)); r != actShot {
		t.Fatalf("a later fragment of a denied datagram: %d", r)
	}
	if n := f.count(reasonDenied, dirEgress); n != 2 {
		t.Errorf("%d policy-denied drops, want 2 (the denied datagram's two fragments)", n)
	}
	if r := f.run(f.objs.FromContainer, later(layers.IPProtocolUDP, 102)); r != actShot {
		t.Fatalf("a later fragment whose first was never seen: %d", r)
	}
	tcpFirst := &layers.TCP{SrcPort: 4000, DstPort: 80, SYN: true, Window: 1000}
	if r := f.run(f.objs.FromContainer, fragment(t, podIP, peerIP, layers.IPProtocolTCP, 103, 0, tcpFirst, payload)); r != actOK {
		t.Fatalf("the first fragment of an allowed TCP segment: %d", r)
	}
	if r := f.run(f.objs.FromContainer, later(layers.IPProtocolTCP, 103)); r != actShot {
		t.Fatalf("a later fragment of a TCP segment: %d", r)
	}
	if n := f.count(reasonFragment, dirEgress); n != 2 {
		t.Errorf("%d fragment drops, want 2 (no first seen; TCP)", n)
	}
}

// A NodePort datagram in fragments is translated whole: the first
// fragment's ports and checksum as any packet's, the later fragments'
// addresses only (they have no L4 header: their bytes after the IPv4
// header are the datagram's, untouched), with a right IPv4 checksum.
func TestNodePortFragmentsTranslated(t *testing.T) {
	const fe, be = 30096, 8080
	f, nodeIP, remote := routedUDPNodePort(t, fe, be)
	payload := bytes.Repeat([]byte{0xab}, 64)
	first := fragment(t, peerIP, nodeIP, layers.IPProtocolUDP, 200, 0, &layers.UDP{SrcPort: 40000, DstPort: fe}, payload)
	ret, out := f.runOut(f.objs.FromNetdev, first)
	if dst, port := destination(t, out); ret != actRedirect || !dst.Equal(remote) || port != be {
		t.Fatalf("the first fragment: verdict %d, to %s:%d; want redirected to %s:%d", ret, dst, port, remote, be)
	}
	snat := net.IP(append([]byte(nil), out[14+12:14+16]...))
	in := fragment(t, peerIP, nodeIP, layers.IPProtocolUDP, 200, 9, nil, payload)
	ret, out = f.runOut(f.objs.FromNetdev, in)
	if ret != actRedirect || len(out) != len(in) {
		t.Fatalf("a later fragment: verdict %d, %d bytes out of %d; want redirected whole", ret, len(out), len(in))
	}
	if src, dst := net.IP(out[14+12:14+16]), net.IP(out[14+16:14+20]); !src.Equal(snat) || !dst.Equal(remote) {
		t.Errorf("a later fragment went from %s to %s, want from %s (as its first) to %s", src, dst, snat, remote)
	}
	if s := onesComplement(out[14:34]); s != 0xffff {
		t.Errorf("a later fragment's IPv4 checksum is wrong (sum %#x)", s)
	}
	if !bytes.Equal(out[34:], in[34:]) {
		t.Errorf("a later fragment's payload changed: % x, want % x", out[34:], in[34:])
	}
}

// A pod cannot give another pod's fragments its own choice of ports: the
// attack forges, on the attacker's veth, a first fragment with the
// victim's address and the IPv4 identification of the victim's datagram,
// to an allowed port, after the victim's first fragment to a denied port;
// the victim's later fragments must still be judged by their own first
// fragment (denied). The frags map is keyed by the device as well, so the
// forged first fragment (dropped: not the attacker's address) records
// nothing the victim's fragments read.
func TestFragmentPortsNotForgedFromAnotherVeth(t *testing.T) {
	f := load(t)
	other := otherInterface(t)
	f.rule(dirEgress, peerID, 17, 80, 24, false)
	payload := make([]byte, 32)
	victimFirst := fragment(t, podIP, peerIP, layers.IPProtocolUDP, 300, 0, &layers.UDP{SrcPort: 4000, DstPort: 81}, payload)
	if r := f.run(f.objs.FromContainer, victimFirst); r != actShot {
		t.Fatalf("the victim's first fragment to a denied port: %d", r)
	}
	forged := fragment(t, podIP, peerIP, layers.IPProtocolUDP, 300, 0, &layers.UDP{SrcPort: 4000, DstPort: 80}, payload)
	if ret, err := f.objs.FromContainer.Run(&ebpf.RunOptions{Data: forged, Context: &skbIfCtx{Ifindex: uint32(other)}}); err != nil || ret != actShot {
		t.Fatalf("the forged first fragment on another veth: %d %v", ret, err)
	}
	if r := f.run(f.objs.FromContainer, fragment(t, podIP, peerIP, layers.IPProtocolUDP, 300, 5, nil, payload)); r != actShot {
		t.Fatalf("the victim's later fragment passed with the forged first fragment's port: %d", r)
	}
	if n := f.count(reasonDenied, dirEgress); n != 2 {
		t.Errorf("%d policy-denied drops, want 2 (the victim's two fragments)", n)
	}
}

// A first fragment arriving on the VXLAN device from an outer source that
// is no known node records nothing: from_overlay recorded its ports before
// it checked the tunnel source, so a host able to send VXLAN to the node
// could have the real later fragments of a datagram judged with its ports
// (found 2026-12-05 by reading from_overlay; a denial of service).
func TestOverlayFragmentFromUnknownSourceNotRecorded(t *testing.T) {
	x := loadFuzz(t)
	first := fragment(t, fzPeer, fzPod, layers.IPProtocolUDP, 700, 0, &layers.UDP{SrcPort: 4000, DstPort: 81}, make([]byte, 32))
	for _, c := range []struct {
		outer  uint32
		reason uint32
		kept   bool
	}{{binary.BigEndian.Uint32(fzNode) + 1, reasonTunnelSource, false}, {binary.BigEndian.Uint32(fzNode), reasonDenied, true}} {
		var p [8]byte
		binary.NativeEndian.PutUint32(p[:], c.outer)
		binary.NativeEndian.PutUint32(p[4:], fzPeerID)
		if err := x.params.Put(uint32(0), p[:]); err != nil {
			t.Fatal(err)
		}
		before := x.count(t, c.reason)
		if v, _ := x.run(t, x.overlay, first); v != actShot || x.count(t, c.reason) != before+1 {
			t.Fatalf("outer %#x: verdict %d, reason %d counted %d -> %d", c.outer, v, c.reason, before, x.count(t, c.reason))
		}
		var k DatapathFragKey
		n := 0
		for it := x.objs.Frags.Iterate(); it.Next(&k, new(DatapathFragPorts)); {
			n++
		}
		if kept := n > 0; kept != c.kept {
			t.Errorf("outer %#x: %d fragment entries recorded, want any: %v", c.outer, n, c.kept)
		}
	}
}
