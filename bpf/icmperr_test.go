package bpf

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// icmpError is an ICMP port unreachable from src to dst quoting a UDP
// datagram from qsrc:qsport to qdst:qdport (its IPv4 header and first 8
// bytes).
func icmpError(t *testing.T, src, dst, qsrc, qdst net.IP, qsport, qdport uint16) []byte {
	t.Helper()
	quoted := serialize(t, ipv4(qsrc, qdst, layers.IPProtocolUDP))
	quoted = append(quoted, make([]byte, 8)...)
	binary.BigEndian.PutUint16(quoted[20:], qsport)
	binary.BigEndian.PutUint16(quoted[22:], qdport)
	binary.BigEndian.PutUint16(quoted[24:], 8)
	return serialize(t, eth(), ipv4(src, dst, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(quoted))
}

// An ICMP error about a live flow of a pod passes its policy in either
// direction as that flow's (conntrack's RELATED), though no rule allows
// ICMP: a port unreachable coming in about the pod's own datagram, and one
// the pod sends about a datagram it received. One about no flow of the pod
// (another port pair), or quoting a packet the pod did not send while
// coming to it, is judged as any ICMP (denied).
func TestICMPErrorOfTrackedFlow(t *testing.T) {
	f := load(t) // the pod enforces both directions
	f.rule(dirEgress, peerID, 17, 9999, 24, false)
	f.rule(dirIngress, peerID, 17, 53, 24, false)
	if r := f.run(f.objs.FromContainer, udp(t, podIP, peerIP, 4000, 9999)); r != actOK {
		t.Fatalf("the pod's datagram: %d", r)
	}
	if r := f.run(f.objs.ToContainer, icmpError(t, peerIP, podIP, podIP, peerIP, 4000, 9999)); r != actOK {
		t.Errorf("port unreachable about the pod's datagram: %d, want passed", r)
	}
	if r := f.run(f.objs.ToContainer, icmpError(t, peerIP, podIP, podIP, peerIP, 4001, 9999)); r != actShot {
		t.Errorf("port unreachable about a datagram the pod never sent: %d, want dropped", r)
	}
	other := net.IPv4(10, 0, 0, 77).To4()
	if r := f.run(f.objs.ToContainer, icmpError(t, peerIP, podIP, other, peerIP, 4000, 9999)); r != actShot {
		t.Errorf("an error to the pod quoting another sender's datagram: %d, want dropped", r)
	}
	if n := f.count(reasonDenied, dirIngress); n != 2 {
		t.Errorf("%d policy-denied drops at ingress, want 2", n)
	}

	if r := f.run(f.objs.ToContainer, udp(t, peerIP, podIP, 5000, 53)); r != actOK {
		t.Fatalf("the peer's datagram: %d", r)
	}
	if r := f.run(f.objs.FromContainer, icmpError(t, podIP, peerIP, peerIP, podIP, 5000, 53)); r != actOK {
		t.Errorf("the pod's port unreachable about the datagram it received: %d, want passed", r)
	}
	if r := f.run(f.objs.FromContainer, icmpError(t, podIP, peerIP, peerIP, podIP, 5001, 53)); r != actShot {
		t.Errorf("the pod's port unreachable about no datagram it received: %d, want dropped", r)
	}
}

// A backend's ICMP error about a NodePort flow's translated datagram goes
// to the client translated back, as the kernel's NAT would: from the
// frontend to the client, quoting the datagram as the client sent it
// (its IPv4 header byte for byte, checksum included, and its ports), with
// a right ICMP checksum. An error quoting a tuple no translation knows is
// left to the stack untouched.
func TestNodePortICMPErrorTranslatedBack(t *testing.T) {
	const fe, be = 30097, 9999
	f, nodeIP, remote := routedUDPNodePort(t, fe, be)
	sent := udp(t, peerIP, nodeIP, 40000, fe)
	ret, fwd := f.runOut(f.objs.FromNetdev, sent)
	if dst, port := destination(t, fwd); ret != actRedirect || !dst.Equal(remote) || port != be {
		t.Fatalf("the client's datagram: verdict %d, to %s:%d", ret, dst, port)
	}
	snat := net.IP(append([]byte(nil), fwd[14+12:14+16]...))
	snatPort := binary.BigEndian.Uint16(fwd[14+20:])
	quoted := append([]byte(nil), fwd[14:14+28]...)
	in := serialize(t, eth(), ipv4(remote, snat, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(quoted))
	ret, out := f.runOut(f.objs.FromNetdev, in)
	if ret != actRedirect || len(out) != len(in) {
		t.Fatalf("the backend's port unreachable: verdict %d, %d bytes; want redirected, %d", ret, len(out), len(in))
	}
	checkICMPHeaders(t, out, nodeIP, peerIP)
	q := out[14+20+8:]
	if want := sent[14 : 14+20]; !bytes.Equal(q[:20], want) {
		t.Errorf("the error quotes the IPv4 header % x, want the client's % x", q[:20], want)
	}
	if want := sent[14+20 : 14+20+4]; !bytes.Equal(q[20:24], want) {
		t.Errorf("the error quotes the ports % x, want the client's % x", q[20:24], want)
	}

	other := serialize(t, eth(), ipv4(remote, snat, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(quotedWithPort(quoted, snatPort+1)))
	if ret, out := f.runOut(f.objs.FromNetdev, other); ret != actOK || !bytes.Equal(out, other) {
		t.Errorf("an error about no translated flow: verdict %d, changed %v; want passed untouched", ret, !bytes.Equal(out, other))
	}
}

// quotedWithPort is a copy of quoted (an IPv4 header and 8 bytes of UDP)
// with source port sport.
func quotedWithPort(quoted []byte, sport uint16) []byte {
	q := append([]byte(nil), quoted...)
	binary.BigEndian.PutUint16(q[20:], sport)
	return q
}

// An ICMP error about a NodePort flow is translated back to the client
// only when a pod did not forge it: from a local backend's veth it must
// come from the backend itself, and from elsewhere it must come from the
// backend or from an address that is no pod's (a node, a router on the
// underlay, the world: the kernel's NAT translates those too). Found
// 2026-12-05 by reading the datapath: any pod could send a NodePort
// flow's client an error from the frontend (a port unreachable refusing
// its UDP flow, a fragmentation needed lowering its path MTU), needing
// only the flow's tuple, or for a remote backend only a sweep of the SNAT
// ports.
func TestNodePortICMPErrorFromAPodNotTranslated(t *testing.T) {
	const reasonForgedSource = 15
	t.Run("remote backend", func(t *testing.T) {
		const fe, be = 30098, 9999
		f, nodeIP, remote := routedUDPNodePort(t, fe, be)
		attacker := net.IPv4(10, 9, 9, 50).To4() // another node's pod
		ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(attacker)}
		if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: 0x10300}); err != nil {
			t.Fatal(err)
		}
		ret, fwd := f.runOut(f.objs.FromNetdev, udp(t, peerIP, nodeIP, 40001, fe))
		if ret != actRedirect {
			t.Fatalf("the client's datagram: verdict %d", ret)
		}
		snat := net.IP(append([]byte(nil), fwd[14+12:14+16]...))
		quoted := append([]byte(nil), fwd[14:14+28]...)
		errorFrom := func(src net.IP) []byte {
			return serialize(t, eth(), ipv4(src, snat, layers.IPProtocolICMPv4),
				&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(quoted))
		}
		before := f.count(reasonForgedSource, dirIngress)
		if ret, out := f.runOut(f.objs.FromNetdev, errorFrom(attacker)); ret != actShot {
			t.Errorf("an error from another pod: verdict %d, to %s; want dropped", ret, net.IP(out[14+16:14+20]))
		}
		if n := f.count(reasonForgedSource, dirIngress) - before; n != 1 {
			t.Errorf("%d forged-source drops, want 1", n)
		}
		router := net.IPv4(198, 51, 100, 1).To4() // no ipcache entry: the world
		for _, src := range []net.IP{remote, router} {
			ret, out := f.runOut(f.objs.FromNetdev, errorFrom(src))
			if dst := net.IP(out[14+16 : 14+20]); ret != actRedirect || !dst.Equal(peerIP) {
				t.Errorf("an error from %s: verdict %d, to %s; want translated to the client %s", src, ret, dst, peerIP)
			}
		}
	})
	t.Run("local backend", func(t *testing.T) {
		f := load(t)
		f.unenforce()
		attacker := net.IPv4(10, 0, 0, 3).To4() // another pod of the node
		k := ip4(attacker)
		v := DatapathEndpointInfo{Ifindex: 1, Identity: 0x10300, EpId: podEP + 1}
		if err := f.objs.Endpoints.Put(&k, &v); err != nil {
			t.Fatal(err)
		}
		nodeIP := net.IPv4(192, 168, 7, 1).To4()
		f.lbService(1, nodeIP, 30099, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), 8080))
		if ret := f.run(f.objs.FromNetdev, udp(t, peerIP, nodeIP, 51000, 30099)); ret != actOK {
			t.Fatalf("the client's datagram: %d", ret)
		}
		before := f.count(reasonForgedSource, dirEgress)
		_, out := f.runOut(f.objs.FromContainer, icmpError(t, attacker, peerIP, peerIP, podIP, 51000, 8080))
		if src := net.IP(out[14+12 : 14+16]); src.Equal(nodeIP) {
			t.Errorf("another pod's error about the flow left translated, from the frontend %s", src)
		}
		if n := f.count(reasonForgedSource, dirEgress) - before; n != 1 {
			t.Errorf("%d forged-source drops, want 1", n)
		}
		// The backend's own error is translated (the verdict depends on
		// the test run's FIB, lb_out; the rewrite is in the packet).
		_, out = f.runOut(f.objs.FromContainer, icmpError(t, podIP, peerIP, peerIP, podIP, 51000, 8080))
		if src := net.IP(out[14+12 : 14+16]); !src.Equal(nodeIP) {
			t.Errorf("the backend's error left from %s, want the frontend %s", src, nodeIP)
		}
	})
}

// fragNeeded is an ICMP fragmentation needed (MTU 1400) from src to dst
// quoting quoted (an IPv4 header and 8 bytes).
func fragNeeded(t *testing.T, src, dst net.IP, quoted []byte) []byte {
	t.Helper()
	return fragNeededMTU(t, src, dst, quoted, 1400)
}

// fragNeededMTU is fragNeeded naming mtu.
func fragNeededMTU(t *testing.T, src, dst net.IP, quoted []byte, mtu uint16) []byte {
	t.Helper()
	return serialize(t, eth(), ipv4(src, dst, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 4), Seq: mtu}, gopacket.Payload(quoted))
}

// untouched checks that from_netdev passes pkt on unchanged.
func (f *fixture) untouched(what string, pkt []byte) {
	f.t.Helper()
	if ret, out := f.runOut(f.objs.FromNetdev, pkt); ret != actOK || !bytes.Equal(out, pkt) {
		f.t.Errorf("%s: verdict %d, changed %v; want passed on untouched (to the node's stack)", what, ret, !bytes.Equal(out, pkt))
	}
}

// checkICMPHeaders checks that out, an ICMP error (Ethernet frame), goes
// from src to dst with its IPv4 and ICMP checksums right.
func checkICMPHeaders(t *testing.T, out []byte, src, dst net.IP) {
	t.Helper()
	if s, d := net.IP(out[14+12:14+16]), net.IP(out[14+16:14+20]); !s.Equal(src) || !d.Equal(dst) {
		t.Errorf("the error goes from %s to %s, want from %s to %s", s, d, src, dst)
	}
	if s := onesComplement(out[14:34]); s != 0xffff {
		t.Errorf("the error's IPv4 checksum is wrong (sum %#x)", s)
	}
	if s := onesComplement(out[34:]); s != 0xffff {
		t.Errorf("the error's ICMP checksum is wrong (sum %#x)", s)
	}
}

// checkICMPToBackend checks out, an ICMP error from_netdev sent on, as the
// backend's: to backend, from router, quoting backend:bport -> to:toPort,
// its checksums right.
func checkICMPToBackend(t *testing.T, out []byte, router, backend net.IP, bport uint16, to net.IP, toPort uint16) {
	t.Helper()
	checkICMPHeaders(t, out, router, backend)
	q := out[14+20+8:]
	if s := onesComplement(q[:20]); s != 0xffff {
		t.Errorf("the quoted IPv4 header's checksum is wrong (sum %#x)", s)
	}
	qsrc, qdst := net.IP(q[12:16]), net.IP(q[16:20])
	qs, qd := binary.BigEndian.Uint16(q[20:]), binary.BigEndian.Uint16(q[22:])
	if !qsrc.Equal(backend) || qs != bport || !qdst.Equal(to) || qd != toPort {
		t.Errorf("the error quotes %s:%d -> %s:%d, want the reply as the backend sent it, %s:%d -> %s:%d", qsrc, qs, qdst, qd, backend, bport, to, toPort)
	}
}

// An ICMP error from the underlay about a NodePort flow's reply (a router
// on the way to the client lowering the path MTU; what it quotes is the
// reply as this node sent it, from the frontend) goes to the backend
// translated: to the backend, quoting the reply as the backend sent it,
// so that its kernel learns the path MTU. Until 2026-12-06 it went to the
// node's stack untranslated. One a pod sends (no client, no router) is
// dropped as forged.
func TestNodePortICMPErrorAboutAReplyGoesToTheBackend(t *testing.T) {
	router := net.IPv4(198, 51, 100, 1).To4()
	t.Run("local backend", func(t *testing.T) {
		const fe, be, cport = 30099, 9999, 40000
		nodeIP := net.IPv4(192, 168, 7, 1).To4()
		f := load(t)
		f.rule(dirIngress, peerID, 17, be, 24, false)
		f.rule(dirEgress, peerID, 17, cport, 24, false)
		f.lbService(1, nodeIP, fe, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), be))
		f.translated("the client's datagram", udp(t, peerIP, nodeIP, cport, fe), netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), be))
		_, reply := f.runOut(f.objs.FromContainer, udp(t, podIP, peerIP, be, cport))
		if src, port := net.IP(reply[14+12:14+16]), binary.BigEndian.Uint16(reply[14+20:]); !src.Equal(nodeIP) || port != fe {
			t.Fatalf("the backend's reply left from %s:%d, want the frontend", src, port)
		}
		ret, out := f.runOut(f.objs.FromNetdev, fragNeeded(t, router, nodeIP, reply[14:14+28]))
		if ret != actOK {
			t.Fatalf("the router's fragmentation needed: verdict %d, want passed on to the local backend", ret)
		}
		checkICMPToBackend(t, out, router, podIP, be, peerIP, cport)
		// The client's own port unreachable about the reply: translated
		// too (it is no pod's forgery: the client sends it).
		unreach := serialize(t, eth(), ipv4(peerIP, nodeIP, layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 3)}, gopacket.Payload(reply[14:14+28]))
		if ret, out := f.runOut(f.objs.FromNetdev, unreach); ret != actOK {
			t.Fatalf("the client's port unreachable: verdict %d", ret)
		} else {
			checkICMPToBackend(t, out, peerIP, podIP, be, peerIP, cport)
		}
		// A fragmentation needed below 1280 bytes is left to the stack.
		f.untouched("fragmentation needed naming 576 bytes", fragNeededMTU(t, router, nodeIP, reply[14:14+28], 576))
		// A pod (not the client) sending the same error: forged.
		podElsewhere := net.IPv4(10, 0, 9, 9).To4()
		ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(podElsewhere)}
		if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: 0x10300}); err != nil {
			t.Fatal(err)
		}
		f.bump()
		const reasonForgedSource = 15
		if ret := f.run(f.objs.FromNetdev, fragNeeded(t, podElsewhere, nodeIP, reply[14:14+28])); ret != actShot || f.count(reasonForgedSource, dirIngress) != 1 {
			t.Fatalf("the same error from a pod: verdict %d, want dropped as forged", ret)
		}
	})
	t.Run("remote backend", func(t *testing.T) {
		const fe, be, cport = 30097, 9999, 40000
		f, nodeIP, remote := routedUDPNodePort(t, fe, be)
		ret, fwd := f.runOut(f.objs.FromNetdev, udp(t, peerIP, nodeIP, cport, fe))
		if dst, port := destination(t, fwd); ret != actRedirect || !dst.Equal(remote) || port != be {
			t.Fatalf("the client's datagram: verdict %d, to %s:%d", ret, dst, port)
		}
		snat := net.IP(append([]byte(nil), fwd[14+12:14+16]...))
		snatPort := binary.BigEndian.Uint16(fwd[14+20:])
		ret, reply := f.runOut(f.objs.FromNetdev, udp(t, remote, snat, be, snatPort))
		if src, port := net.IP(reply[14+12:14+16]), binary.BigEndian.Uint16(reply[14+20:]); ret != actRedirect || !src.Equal(nodeIP) || port != fe {
			t.Fatalf("the backend's reply: verdict %d, from %s:%d, want redirected from the frontend", ret, src, port)
		}
		ret, out := f.runOut(f.objs.FromNetdev, fragNeeded(t, router, nodeIP, reply[14:14+28]))
		if ret != actRedirect {
			t.Fatalf("the router's fragmentation needed: verdict %d, want redirected to the backend", ret)
		}
		checkICMPToBackend(t, out, router, remote, be, snat, snatPort)
		// The forward half alone (its reverse tuple gone, as when another
		// flow took it): nothing is translated.
		rk := DatapathLbNatKey{Saddr: ip4(remote), Daddr: ip4(snat), Sport: htons(be), Dport: htons(snatPort), Proto: 17}
		f.natDelete(rk)
		f.untouched("an error about a flow whose reverse half is gone", fragNeeded(t, router, nodeIP, reply[14:14+28]))
	})
}

// TestNodePortICMPErrorAboutAReplyGoesToTheBackend through the ways its
// lab test and its first cases do not take: a remote backend on a
// WireGuard peer (the flow translated from the node's gateway address,
// the error sent to the backend from that address, out of the FIB's
// device: the route to the peer's pods is the WireGuard device's), and
// TCP flows, whose quoted header is a segment's (ports and sequence
// number), to a local and a remote backend.
func TestNodePortICMPErrorAboutAReplyWireGuardAndTCP(t *testing.T) {
	router := net.IPv4(198, 51, 100, 1).To4()
	t.Run("remote backend through WireGuard", func(t *testing.T) {
		nodeIP, gateway, remotePod, backendNode := replyNodeIP, replyGateway, replyRemotePod, replyBackendNode
		const fe, be, cport = 30096, 8080, 40000
		backendRoute(t, remotePod, peerIP)
		cfg := DatapathNodeConfig{Encrypt: 1, WireguardPort: wgPort, EncryptSnat: ip4(gateway)}
		f := natUDPFlow(t, cfg, nodeIP, remotePod, backendNode, remotePod, fe, be, cport)
		rk := f.reverseNAT()
		snat := net.IP(binary.NativeEndian.AppendUint32(nil, rk.Daddr))
		if !snat.Equal(gateway) {
			t.Fatalf("translated from %s, want the gateway %s", snat, gateway)
		}
		// The backend's reply, through the WireGuard device (a layer 3
		// device: no MAC header), to the client.
		if ret := f.run(f.objs.FromWireguard, udp(t, remotePod, gateway, be, htons(rk.Dport))[14:]); ret == actShot {
			t.Fatalf("the backend's reply through WireGuard: dropped")
		}
		// What this node sent the client, as a router quotes it.
		quote := udp(t, nodeIP, peerIP, fe, cport)[14 : 14+28]
		ret, out := f.runOut(f.objs.FromNetdev, fragNeeded(t, router, nodeIP, quote))
		if ret != actRedirect {
			t.Fatalf("the router's fragmentation needed: verdict %d, want redirected to the backend", ret)
		}
		// From the gateway (the peer's WireGuard takes only this node's
		// own addresses from it), quoting the reply as the backend sent it.
		checkICMPToBackend(t, out, gateway, remotePod, be, gateway, htons(rk.Dport))
	})
	t.Run("TCP, local backend", func(t *testing.T) {
		const fe, be, cport = 30095, 8080, 40000
		nodeIP := net.IPv4(192, 168, 7, 1).To4()
		f := load(t)
		f.rule(dirEgress, peerID, 6, cport, 24, false)
		f.lbService(1, nodeIP, fe, 6, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), be))
		f.run(f.objs.FromNetdev, tcpSeq(t, peerIP, nodeIP, cport, fe, true, false, 1000, 0))
		_, synack := f.runOut(f.objs.FromContainer, tcpSeq(t, podIP, peerIP, be, cport, true, true, 5000, 1001))
		if src, port := net.IP(synack[14+12:14+16]), binary.BigEndian.Uint16(synack[14+20:]); !src.Equal(nodeIP) || port != fe {
			t.Fatalf("the backend's SYN-ACK left from %s:%d, want the frontend", src, port)
		}
		f.run(f.objs.FromNetdev, tcpSeq(t, peerIP, nodeIP, cport, fe, false, true, 1001, 5001))
		ret, out := f.runOut(f.objs.FromNetdev, fragNeeded(t, router, nodeIP, synack[14:14+28]))
		if ret != actOK {
			t.Fatalf("the router's fragmentation needed: verdict %d, want passed on to the local backend", ret)
		}
		checkICMPToBackend(t, out, router, podIP, be, peerIP, cport)
		if seq := binary.BigEndian.Uint32(out[14+20+8+20+4:]); seq != 5000 {
			t.Errorf("the quoted segment's sequence number is %d, want the SYN-ACK's 5000", seq)
		}
	})
	t.Run("TCP, remote backend", func(t *testing.T) {
		const fe, be, cport = 30094, 8080, 40000
		nodeIP := net.IPv4(192, 168, 7, 1).To4()
		remote := net.IPv4(10, 9, 9, 9).To4()
		backendRoute(t, remote, peerIP)
		f := load(t)
		client, backend := f.nodePortFlow(nodeIP, remote, fe, be, cport)
		natHandshake(client, backend, 1000, 5000)
		rk := f.reverseNAT()
		snat := net.IP(binary.NativeEndian.AppendUint32(nil, rk.Daddr))
		// The backend's data, as this node sent it on to the client.
		ret, reply := f.runOut(f.objs.FromNetdev, tcpSeq(t, remote, snat, be, htons(rk.Dport), false, true, 5001, 1001))
		if src, port := net.IP(reply[14+12:14+16]), binary.BigEndian.Uint16(reply[14+20:]); ret != actRedirect || !src.Equal(nodeIP) || port != fe {
			t.Fatalf("the backend's segment: verdict %d, from %s:%d, want redirected from the frontend", ret, src, port)
		}
		ret, out := f.runOut(f.objs.FromNetdev, fragNeeded(t, router, nodeIP, reply[14:14+28]))
		if ret != actRedirect {
			t.Fatalf("the router's fragmentation needed: verdict %d, want redirected to the backend", ret)
		}
		checkICMPToBackend(t, out, router, remote, be, snat, htons(rk.Dport))
	})
}

// localPeer puts a second pod of the node, ingress enforced, in the
// endpoints map (and both pods in the ipcache, as the agent does): the
// pod under test (podIP) may reach it on UDP 53, and nothing allows ICMP.
func (f *fixture) localPeer(ip net.IP, ep uint16, id uint32) {
	f.t.Helper()
	k := ip4(ip)
	v := DatapathEndpointInfo{Ifindex: 4242, Identity: id, EpId: ep, Flags: 1}
	copy(v.Mac[:], []byte{2, 0, 0, 0, 0, 4})
	copy(v.HostMac[:], []byte{2, 0, 0, 0, 0, 5})
	if err := f.objs.Endpoints.Put(&k, &v); err != nil {
		f.t.Fatal(err)
	}
	for _, e := range []struct {
		ip net.IP
		id uint32
	}{{ip, id}, {podIP, podID}} {
		ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(e.ip)}
		if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: e.id}); err != nil {
			f.t.Fatal(err)
		}
	}
	in := DatapathPolicyKey{Prefixlen: 64 + 24, EpId: ep, Dir: dirIngress, Identity: podID, Proto: 17, Port: [2]uint8{0, 53}}
	if err := f.objs.Policy.Put(&in, &DatapathPolicyValue{}); err != nil {
		f.t.Fatal(err)
	}
}

// The attack, found 2026-12-07 by a hunt of packet parsing: pod A, whose
// ICMP pod B's ingress policy denies, sends B an error about nothing
// (dropped at B, but its egress entry stays), then one about a flow of
// theirs (its own datagram to B's UDP 53, quoted as B's reply), which
// passes as related; the same-node path then cached the delivery for the
// error's ICMP tuple, and every later destination unreachable A sent B,
// whatever it quoted, went straight into B (port unreachables refusing
// B's UDP sockets, fragmentation needed lowering its path MTU), B's
// ingress policy never asked. Errors are never cached now: each is judged.
func TestRelatedICMPErrorNotCachedLocally(t *testing.T) {
	const bEP, bID = uint16(9), uint32(0x10400)
	f := load(t)
	f.enforceOnly(1) // A's egress is not enforced
	b := net.IPv4(10, 0, 0, 4).To4()
	f.localPeer(b, bEP, bID)
	if r := f.run(f.objs.FromContainer, udp(t, podIP, b, 4000, 53)); r != actRedirect {
		t.Fatalf("A's datagram to B's UDP 53: %d", r)
	}
	// A first error about nothing: dropped at B, but A's (unenforced)
	// egress keeps an entry for the error's ICMP tuple.
	junk := icmpError(t, podIP, b, b, podIP, 53, 4001)
	if r := f.run(f.objs.FromContainer, junk); r != actShot {
		t.Fatalf("A's error about no flow of B's: %d, want dropped by B's ingress policy", r)
	}
	related := icmpError(t, podIP, b, b, podIP, 53, 4000)
	for i := range 2 {
		if r := f.run(f.objs.FromContainer, related); r != actRedirect {
			t.Fatalf("A's port unreachable about B's reply (%d): %d, want delivered as related", i+1, r)
		}
	}
	for i := range 3 {
		if r := f.run(f.objs.FromContainer, junk); r != actShot {
			t.Fatalf("A's error about no flow of B's, after a related one (%d): %d, want dropped by B's ingress policy", i+1, r)
		}
	}
}

// An error about a pod's flow with a third party passes as related only
// when the quoted packet's destination (the party) sent it, or an address
// that is no pod's (a node, a router, the world): until 2026-12-07 any pod
// knowing (or sweeping) the tuple of B's flow to T could send B errors
// about it, its ingress policy never asked.
func TestRelatedICMPErrorFromAnotherPodRefused(t *testing.T) {
	const bEP, bID = uint16(9), uint32(0x10400)
	f := load(t)
	f.enforceOnly(1)
	b := net.IPv4(10, 0, 0, 4).To4()
	f.localPeer(b, bEP, bID)
	// B's flow to the peer (T, a pod of another node): its egress entry.
	k := DatapathCtKey{Saddr: ip4(b), Daddr: ip4(peerIP), Sport: htons(5000), Dport: htons(53), Proto: 17, Dir: dirEgress, EpId: bEP}
	if err := f.objs.Conntrack.Put(&k, &DatapathCtEntry{Expires: 1 << 62, PeerIdentity: peerID}); err != nil {
		t.Fatal(err)
	}
	if r := f.run(f.objs.FromContainer, icmpError(t, podIP, b, b, peerIP, 5000, 53)); r != actShot {
		t.Fatalf("A's error about B's flow with another pod: %d, want dropped by B's ingress policy", r)
	}
	// The party itself (from another node) still may, and so may a
	// router on the way (no pod's address), and a node's gateway that a
	// remote cluster's cover prefix covers.
	if r := f.run(f.objs.ToContainer, icmpError(t, peerIP, b, b, peerIP, 5000, 53)); r == actShot {
		t.Fatalf("T's error about B's flow with it: dropped, want delivered as related")
	}
	router := net.IPv4(172, 31, 0, 1).To4()
	if r := f.run(f.objs.ToContainer, icmpError(t, router, b, b, peerIP, 5000, 53)); r == actShot {
		t.Fatalf("a router's error about B's flow: dropped, want delivered as related")
	}
	gw := net.IPv4(10, 9, 3, 1).To4()
	cover := DatapathIpcacheKey{Prefixlen: 24, Ip: ip4(net.IPv4(10, 9, 3, 0).To4())}
	if err := f.objs.Ipcache.Put(&cover, &DatapathIpcacheValue{Identity: 0x20000}); err != nil {
		t.Fatal(err)
	}
	gwKey := ip4(gw)
	if err := f.objs.NodeLocalAddrs.Put(&gwKey, uint32(1)); err != nil {
		t.Fatal(err)
	}
	if r := f.run(f.objs.ToContainer, icmpError(t, gw, b, b, peerIP, 5000, 53)); r == actShot {
		t.Fatalf("a remote node's gateway's error about B's flow: dropped, want delivered as related")
	}
}
