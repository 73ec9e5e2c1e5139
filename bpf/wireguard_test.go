package bpf

import (
	"bytes"
	"encoding/binary"
	"math"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// wgPort is the WireGuard listen port these tests configure.
const wgPort = 51871

// setWireGuardPort writes the node config's wireguard_port (0: none).
func (f *fixture) setWireGuardPort(port uint16) {
	f.t.Helper()
	k := uint32(0)
	var v DatapathNodeConfig
	if err := f.objs.Config.Lookup(&k, &v); err != nil {
		f.t.Fatal(err)
	}
	v.WireguardPort = port
	putConfig(f.t, f.objs.Config, v)
}

// runOut runs prog on pkt and returns its verdict and the packet as it
// leaves.
func (f *fixture) runOut(prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	f.t.Helper()
	out := make([]byte, len(pkt)+64)
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out}
	ret, err := prog.Run(opts)
	if err != nil {
		f.t.Fatalf("test run: %v", err)
	}
	return ret, opts.DataOut
}

// destination returns the IPv4 destination address and port of an
// Ethernet frame carrying TCP or UDP.
func destination(t *testing.T, frame []byte) (net.IP, uint16) {
	t.Helper()
	if len(frame) < 14+20+4 {
		t.Fatalf("frame of %d bytes", len(frame))
	}
	ihl := int(frame[14]&0x0f) * 4
	return net.IP(frame[14+16 : 14+20]), binary.BigEndian.Uint16(frame[14+ihl+2:])
}

// nodePorts makes UDP and TCP NodePort frontends on port of this node's
// address (192.168.7.1), both to the pod's port 8080, and returns the
// address and the backend.
func (f *fixture) nodePorts(port uint16) (net.IP, netip.AddrPort) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	backend := netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), 8080)
	f.lbService(1, nodeIP, port, 17, lbFlagNodePort, backend)
	f.lbService(2, nodeIP, port, 6, lbFlagNodePort, backend)
	return nodeIP, backend
}

// translated checks that from_netdev translates pkt to backend.
func (f *fixture) translated(what string, pkt []byte, backend netip.AddrPort) {
	f.t.Helper()
	ret, out := f.runOut(f.objs.FromNetdev, pkt)
	if dst, port := destination(f.t, out); ret != actOK || !dst.Equal(net.IP(backend.Addr().AsSlice())) || port != backend.Port() {
		f.t.Fatalf("%s: verdict %d, to %s:%d, want translated to the backend %s", what, ret, dst, port, backend)
	}
}

// reverseNAT returns the one reverse NodePort translation's key.
func (f *fixture) reverseNAT() DatapathLbNatKey {
	f.t.Helper()
	var found DatapathLbNatKey
	n := 0
	f.natEach(func(_ *ebpf.Map, k DatapathLbNatKey, v DatapathLbNat) {
		if v.Reverse == 1 {
			found = k
			n++
		}
	})
	if n != 1 {
		f.t.Fatalf("%d reverse translations, want 1", n)
	}
	return found
}

// from_netdev passes WireGuard's own datagrams (UDP from and to the
// configured port) untouched, whatever they would match: here a NodePort
// frontend on that port, which a UDP datagram from another port, a TCP
// segment between the same ports, and the datagram itself before the port
// is configured, are all translated to (full processing).
func TestNetdevPassesWireGuardDatagrams(t *testing.T) {
	f := load(t)
	nodeIP, backend := f.nodePorts(wgPort)
	translated := func(what string, pkt []byte) { t.Helper(); f.translated(what, pkt, backend) }
	datagram := udp(t, peerIP, nodeIP, wgPort, wgPort)
	translated("a datagram between the WireGuard ports before the port is configured", datagram)
	f.setWireGuardPort(wgPort)
	for i := 0; i < 2; i++ {
		ret, out := f.runOut(f.objs.FromNetdev, udp(t, peerIP, nodeIP, wgPort, wgPort))
		if ret != actOK || !bytes.Equal(out, datagram) {
			t.Fatalf("WireGuard datagram %d: verdict %d, left as %x, want %x untouched", i, ret, out, datagram)
		}
	}
	translated("a datagram from another port", udp(t, peerIP, nodeIP, 40000, wgPort))
	translated("a TCP SYN between the WireGuard ports", tcp(t, peerIP, nodeIP, wgPort, wgPort, true, false))
}

// A NodePort flow to a backend on another node is translated from this
// node with a source port of the SNAT range (61000-65535), never the
// client's: the node's own connections to that backend take ports of the
// kernel's ephemeral range (32768-60999), and one that got a translated
// flow's tuple had its replies sent to that flow's client (seen in the lab:
// the node's connection to a remote pod timed out). Nor is it the
// WireGuard port, whose replies would pass as WireGuard datagrams (the
// default port lies below the range: a guard should either move).
func TestNodePortSourcePortFromSNATRange(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	for _, c := range []struct {
		name  string
		wg    uint16
		sport uint16 // the client's
	}{{"no WireGuard", 0, wgPort}, {"WireGuard", wgPort, wgPort}, {"a client port of the SNAT range", 0, 61000}, {"an ephemeral client port", 0, 40000}} {
		t.Run(c.name, func(t *testing.T) {
			f := load(t)
			f.setWireGuardPort(c.wg)
			f.lbService(1, nodeIP, 30090, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), 8080))
			seen := map[uint16]bool{}
			for i := range uint16(16) {
				// The verdict depends on the FIB of the test run; the
				// translation is made either way.
				f.run(f.objs.FromNetdev, udp(t, peerIP, nodeIP, c.sport+i, 30090))
			}
			f.natEach(func(_ *ebpf.Map, k DatapathLbNatKey, v DatapathLbNat) {
				if v.Reverse == 0 {
					return
				}
				if k.Saddr != ip4(remote) || k.Daddr != ip4(nodeIP) {
					t.Fatalf("reverse entry %+v: want from the backend to this node", k)
				}
				p := htons(k.Dport)
				if p < 61000 || (c.wg != 0 && p == c.wg) {
					t.Fatalf("translated source port %d (the client's from %d): want 61000-65535, never the WireGuard port", p, c.sport)
				}
				seen[p] = true
			})
			if len(seen) != 16 {
				t.Fatalf("%d distinct translated ports for 16 flows, want 16", len(seen))
			}
		})
	}
}

// In tunnel mode from_netdev passes datagrams to the overlay's UDP port
// (8472, agent/routing VXLANPort) untouched, whatever they would match:
// here a NodePort frontend on that port, which the same datagram is
// translated to without the tunnel, as is a TCP segment to that port in
// tunnel mode. And a NodePort flow to a backend that answers in the clear
// is never translated from that port, with the tunnel or without (its
// source port is one of the SNAT range).
func TestNetdevPassesVXLANDatagrams(t *testing.T) {
	const vxlanPort = 8472
	f := load(t)
	nodeIP, backend := f.nodePorts(vxlanPort)
	translated := func(what string, pkt []byte) { t.Helper(); f.translated(what, pkt, backend) }
	translated("a datagram to the overlay's port without the tunnel", udp(t, peerIP, nodeIP, 54321, vxlanPort))
	putConfig(t, f.objs.Config, DatapathNodeConfig{VxlanIfindex: 99})
	f.bump()
	datagram := udp(t, peerIP, nodeIP, 54322, vxlanPort)
	if ret, out := f.runOut(f.objs.FromNetdev, datagram); ret != actOK || !bytes.Equal(out, datagram) {
		t.Fatalf("VXLAN datagram: verdict %d, left as %x, want %x untouched", ret, out, datagram)
	}
	translated("a TCP SYN to the overlay's port", tcp(t, peerIP, nodeIP, 54323, vxlanPort, true, false))
	// A datagram to a pod's port 8472 is the pod's: its ingress L7 rule
	// on that port steers it to the proxy (none listens in a test run, so
	// it is dropped as such), never passed around it.
	k := DatapathPolicyKey{Prefixlen: 64 + 24, EpId: podEP, Dir: dirIngress, Identity: peerID, Proto: 17, Port: [2]uint8{vxlanPort >> 8, vxlanPort & 0xff}}
	if err := f.objs.Policy.Put(&k, &DatapathPolicyValue{ProxyPort: 15001}); err != nil {
		t.Fatal(err)
	}
	const reasonNoProxy = 13
	before := f.count(reasonNoProxy, dirIngress)
	if ret := f.run(f.objs.FromNetdev, udp(t, peerIP, podIP, 54324, vxlanPort)); ret != actShot || f.count(reasonNoProxy, dirIngress) != before+1 {
		t.Fatalf("a datagram to the pod's port 8472 with an L7 rule: verdict %d, no-proxy drops %d -> %d: want steered to the proxy", ret, before, f.count(reasonNoProxy, dirIngress))
	}

	remote := net.IPv4(10, 9, 9, 9).To4() // no ipcache entry: its replies come in the clear
	for _, c := range []struct {
		name  string
		vxlan uint32
	}{{"no tunnel", 0}, {"tunnel", 99}} {
		g := load(t)
		putConfig(t, g.objs.Config, DatapathNodeConfig{VxlanIfindex: c.vxlan})
		g.lbService(1, nodeIP, 30090, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), 8080))
		g.run(g.objs.FromNetdev, udp(t, peerIP, nodeIP, vxlanPort, 30090)) // the verdict is the FIB's; the translation is in lb_nats
		if k := g.reverseNAT(); htons(k.Dport) < 61000 {
			t.Fatalf("%s: translated source port %d (client's %d), want one of the SNAT range", c.name, htons(k.Dport), vxlanPort)
		}
	}
}

// A translation that has expired gives its source port back: with every
// port of the SNAT range held by an expired reverse entry of the backend,
// a new NodePort flow is still translated (nothing sweeps lb_nats, so
// otherwise a few thousand finished flows used the range up for good);
// with every port held by a live one, the flow is dropped as having no
// free port, never given one in use.
func TestNodePortSNATPortsReused(t *testing.T) {
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	for i, live := range []bool{false, true, false, true} {
		f := load(t)
		f.lbService(1, nodeIP, 30090, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), 8080))
		expires := uint64(1) // long past on the monotonic clock
		if live {
			expires = math.MaxUint64
		}
		m := f.objs.LbNatsNew // the holders in either table
		if i >= 2 {
			m = f.objs.LbNats
		}
		translated, dropped := f.snatFull(m, nodeIP, remote, 17, DatapathLbNat{Expires: expires})
		if live && (translated || dropped != 1) {
			t.Fatalf("every SNAT port live: translated %v, %d no-free-port drops; want dropped once", translated, dropped)
		}
		if !live && (!translated || dropped != 0) {
			t.Fatalf("every SNAT port expired: translated %v, %d no-free-port drops; want translated", translated, dropped)
		}
	}
}

// A NodePort translation to a remote backend made before the backend's
// node became an encryption peer went as VXLAN, which that node now drops
// as forged (from_overlay); the translation is made again, through the
// encryption device, with the client's next packet. Found 2026-12-06 by
// rereading the VXLAN refusal: a UDP client that kept sending kept the
// stale translation, and its flow dead, for good.
func TestNodePortTranslationRedoneAfterPeering(t *testing.T) {
	f := load(t)
	nodeIP := net.IPv4(192, 168, 7, 1).To4()
	remote := net.IPv4(10, 9, 9, 9).To4()
	node := net.IPv4(172, 30, 0, 9).To4()
	gw := net.IPv4(10, 244, 0, 1).To4()
	ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(remote)}
	if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: peerID, TunnelIp: ip4(node)}); err != nil {
		t.Fatal(err)
	}
	putConfig(t, f.objs.Config, DatapathNodeConfig{VxlanIfindex: 1, Encrypt: 1, EncryptSnat: ip4(gw)})
	f.lbService(1, nodeIP, 30100, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remote)), 8080))
	d := udp(t, peerIP, nodeIP, 40000, 30100)
	fwd := DatapathLbNatKey{Saddr: ip4(peerIP), Daddr: ip4(nodeIP), Sport: htons(40000), Dport: htons(30100), Proto: 17}
	source := func() net.IP {
		t.Helper()
		_, v := f.natEntry(fwd)
		b := make([]byte, 4)
		binary.NativeEndian.PutUint32(b, v.Saddr)
		return net.IP(b)
	}
	f.run(f.objs.FromNetdev, d)
	if s := source(); !s.Equal(nodeIP) {
		t.Fatalf("before the peering: translated from %s, want the node's %s (VXLAN)", s, nodeIP)
	}
	nk, one := ip4(node), uint32(1)
	if err := f.objs.EncryptPeers.Put(&nk, &one); err != nil {
		t.Fatal(err)
	}
	f.run(f.objs.FromNetdev, d) // (its FIB lookup has no route here; the translation is what counts)
	if s := source(); !s.Equal(gw) {
		t.Fatalf("after the peering: translated from %s, want the gateway %s (through the device)", s, gw)
	}
}
