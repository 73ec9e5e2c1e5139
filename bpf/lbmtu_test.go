package bpf

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// backendRoute runs the rest of the test in a network namespace of its
// own (inNetns, returned) with a route to each of dsts' /24 out of its
// device out0 (MTU 1,400), so that the FIB lets a NodePort packet
// translated to one out.
func backendRoute(t testing.TB, dsts ...net.IP) netns.NsHandle {
	t.Helper()
	out, ns := inNetns(t)
	link, err := netlink.LinkByIndex(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetMTU(link, 1400); err != nil {
		t.Fatal(err)
	}
	for _, dst := range dsts {
		r := &netlink.Route{LinkIndex: out, Dst: &net.IPNet{IP: dst.Mask(net.CIDRMask(24, 32)), Mask: net.CIDRMask(24, 32)}, Gw: nodeA}
		if err := netlink.RouteAdd(r); err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

// routedUDPNodePort loads the programs with a UDP NodePort frontend fe on
// this node's address (returned) whose one backend, port be, is on another
// node (remote, returned) that the FIB routes out of a device of MTU 1,400
// (backendRoute), as it does the client (peerIP).
func routedUDPNodePort(t *testing.T, fe, be uint16) (f *fixture, nodeIP, remote net.IP) {
	t.Helper()
	nodeIP = net.IPv4(192, 168, 7, 1).To4()
	remote = net.IPv4(10, 9, 9, 9).To4()
	backendRoute(t, remote, peerIP)
	f = load(t)
	f.lbService(1, nodeIP, fe, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), be))
	return f, nodeIP, remote
}

// udpSized is a UDP datagram with payload bytes of payload, DF set or not.
func udpSized(t *testing.T, src, dst net.IP, sport, dport uint16, payload int, df bool) []byte {
	t.Helper()
	ip := ipv4(src, dst, layers.IPProtocolUDP)
	if df {
		ip.Flags = layers.IPv4DontFragment
	}
	l4 := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	l4.SetNetworkLayerForChecksum(ip)
	return serialize(t, eth(), ip, l4, gopacket.Payload(bytes.Repeat([]byte{'x'}, payload)))
}

// onesComplement is the Internet checksum's sum of b: 0xffff over a header
// whose checksum is right.
func onesComplement(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// A NodePort datagram too big for the device the FIB chooses towards its
// backend (MTU 1,400) is answered as the kernel's forwarding would: with
// DF, an ICMP "fragmentation needed" naming 1,400, from the frontend's
// address to the client, quoting the datagram as the client sent it, out
// of the device it came in on; without DF it is dropped. Both are counted
// as REASON_FRAG_NEEDED. One that fits is translated and sent; one with no
// route is dropped as REASON_NO_ROUTE. Before, lb_out dropped all of these
// without a word (TC_ACT_SHOT, no event, no ICMP).
func TestNodePortTooBigAnswered(t *testing.T) {
	const fe, be = 30095, 8080
	f, nodeIP, remote := routedUDPNodePort(t, fe, be)
	tooBig := func() uint64 { return f.count(uint32(DatapathReasonREASON_FRAG_NEEDED), dirIngress) }

	in := udpSized(t, peerIP, nodeIP, 40000, fe, 1400-28+1, true)
	ret, out := f.runOut(f.objs.FromNetdev, in)
	if ret != actRedirect {
		t.Fatalf("a datagram too big with DF: verdict %d, want the ICMP redirected out (%d)", ret, actRedirect)
	}
	if len(out) != 14+20+8+28 {
		t.Fatalf("the answer is %d bytes, want 70: % x", len(out), out)
	}
	p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	e, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if e == nil || ip == nil || icmp == nil {
		t.Fatalf("the answer is not Ethernet, IPv4, ICMP: %v", p)
	}
	if !bytes.Equal(e.DstMAC, podMAC) || !bytes.Equal(e.SrcMAC, hostMAC) {
		t.Errorf("the answer goes from %s to %s, want back from %s to %s", e.SrcMAC, e.DstMAC, hostMAC, podMAC)
	}
	if !ip.SrcIP.Equal(nodeIP) || !ip.DstIP.Equal(peerIP) || ip.TTL == 0 || ip.Length != 56 {
		t.Errorf("the answer's IPv4 header: %s -> %s, TTL %d, length %d", ip.SrcIP, ip.DstIP, ip.TTL, ip.Length)
	}
	if s := onesComplement(out[14:34]); s != 0xffff {
		t.Errorf("the answer's IPv4 checksum is wrong (sum %#x)", s)
	}
	if icmp.TypeCode != layers.CreateICMPv4TypeCode(3, 4) || binary.BigEndian.Uint16(out[14+20+6:]) != 1400 {
		t.Errorf("the answer is ICMP %v, MTU %d; want fragmentation needed, MTU 1400", icmp.TypeCode, binary.BigEndian.Uint16(out[14+20+6:]))
	}
	if s := onesComplement(out[34:]); s != 0xffff {
		t.Errorf("the answer's ICMP checksum is wrong (sum %#x)", s)
	}
	if q := out[14+20+8:]; !bytes.Equal(q, in[14:14+28]) {
		t.Errorf("the answer quotes % x, want the datagram as sent: % x", q, in[14:14+28])
	}
	if n := tooBig(); n != 1 {
		t.Errorf("%d fragmentation-needed drops counted, want 1", n)
	}

	if ret, _ := f.runOut(f.objs.FromNetdev, udpSized(t, peerIP, nodeIP, 40001, fe, 1400-28+1, false)); ret != actShot {
		t.Errorf("a datagram too big without DF: verdict %d, want dropped", ret)
	}
	if n := tooBig(); n != 2 {
		t.Errorf("%d fragmentation-needed drops counted, want 2", n)
	}

	ret, out = f.runOut(f.objs.FromNetdev, udpSized(t, peerIP, nodeIP, 40002, fe, 1400-28, true))
	if dst, port := destination(t, out); ret != actRedirect || !dst.Equal(remote) || port != be {
		t.Errorf("a datagram that fits: verdict %d, sent to %s:%d; want redirected to the backend %s:%d", ret, dst, port, remote, be)
	}

	// A backend the FIB has no route to.
	f.lbService(2, nodeIP, fe+1, 17, lbFlagNodePort, netip.MustParseAddrPort("10.8.8.8:8080"))
	if ret, _ := f.runOut(f.objs.FromNetdev, udpSized(t, peerIP, nodeIP, 40003, fe+1, 10, true)); ret != actShot {
		t.Errorf("a datagram to a backend with no route: verdict %d, want dropped", ret)
	}
	if n := f.count(uint32(DatapathReasonREASON_NO_ROUTE), dirIngress); n != 1 {
		t.Errorf("%d no-route drops counted, want 1", n)
	}
}
