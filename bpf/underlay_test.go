package bpf

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// from_netdev refuses what comes from the underlay with the address of a
// pod that never sends that way: a pod of this node always (whatever the
// protocol, on the WireGuard port, in a fragment, to a NodePort, whichever
// backend it gets, to the node, or to be forwarded to another node's pod);
// to a pod of this node, a remote pod whose traffic
// comes through the tunnel (tunnel mode) or the WireGuard device (its node
// a peer; in strict mode one not yet a peer too, reported as that), by its
// own entry or its node's cover. Native
// routing without encryption, and IPsec (whose decrypted packets come
// back on the device), take a remote pod's address as it comes; packets
// to other addresses are not its business.
func TestUnderlayForgedSource(t *testing.T) {
	f := load(t)
	const reasonForgedSource = 15
	local2 := f.secondPod()
	remotePod := net.IPv4(10, 9, 1, 5).To4()
	coveredPod := net.IPv4(10, 9, 2, 7).To4()
	node := net.IPv4(172, 30, 0, 9).To4()
	ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(remotePod)}
	if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: peerID, TunnelIp: ip4(node)}); err != nil {
		t.Fatal(err)
	}
	ck := DatapathIpcacheKey{Prefixlen: 24, Ip: ip4(net.IPv4(10, 9, 2, 0))}
	if err := f.objs.Ipcache.Put(&ck, &DatapathIpcacheValue{Identity: 0x20001, TunnelIp: ip4(node), Flags: 1}); err != nil {
		t.Fatal(err)
	}
	const wgPort = 51871
	setCfg := func(vxlan, encrypt uint32, wg uint16) {
		putConfig(t, f.objs.Config, DatapathNodeConfig{VxlanIfindex: vxlan, Encrypt: encrypt, WireguardPort: wg})
	}
	icmp := func(src, dst net.IP) []byte {
		return serialize(t, eth(), ipv4(src, dst, layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 77, Seq: 1})
	}
	// A first fragment too short for a TCP header (parse: invalid).
	tinyFragment := func(src, dst net.IP) []byte {
		ip := ipv4(src, dst, layers.IPProtocolTCP)
		ip.Flags = layers.IPv4MoreFragments
		return serialize(t, eth(), ip, gopacket.Payload([]byte{1, 2, 3, 4, 5, 6, 7, 8}))
	}
	// A non-first fragment (parse: not supported).
	laterFragment := func(src, dst net.IP) []byte {
		ip := ipv4(src, dst, layers.IPProtocolUDP)
		ip.FragOffset = 100
		return serialize(t, eth(), ip, gopacket.Payload([]byte{1, 2, 3, 4, 5, 6, 7, 8}))
	}
	nodeIP := net.IPv4(172, 30, 0, 1).To4()
	// This node's own address, identity host in the ipcache as the agent
	// writes it.
	hk := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(nodeIP)}
	if err := f.objs.Ipcache.Put(&hk, &DatapathIpcacheValue{Identity: 1}); err != nil {
		t.Fatal(err)
	}
	f.lbService(1, nodeIP, 30080, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(podIP)), 8080))
	f.lbService(2, nodeIP, 30081, 17, lbFlagNodePort, netip.AddrPortFrom(netip.AddrFrom4([4]byte(remotePod)), 8080))
	nk, one := ip4(node), uint32(1)
	const reasonNoEncryptPeer = 11
	const F, P = reasonForgedSource, 0 // forged, passes
	drops := map[uint32]uint64{}
	for _, c := range []struct {
		name           string
		vxlan, encrypt uint32
		wg             uint16
		peer           bool
		pkt            []byte
		reason         uint32 // 0: passes
	}{
		{"native: a local pod's address, UDP", 0, 0, 0, false, udp(t, local2, podIP, 5000, 53), F},
		{"native: a local pod's address, TCP SYN", 0, 0, 0, false, tcp(t, local2, podIP, 5000, 80, true, false), F},
		{"native: a local pod's address, ICMP", 0, 0, 0, false, icmp(local2, podIP), F},
		{"native: a local pod's address, a tiny first fragment", 0, 0, 0, false, tinyFragment(local2, podIP), F},
		{"native: a local pod's address to a NodePort with a local backend", 0, 0, 0, false, udp(t, local2, nodeIP, 5000, 30080), F},
		{"native: a local pod's address to a NodePort with a remote backend", 0, 0, 0, false, udp(t, local2, nodeIP, 5000, 30081), F},
		{"native: a local pod's address, a later fragment", 0, 0, 0, false, laterFragment(local2, podIP), F},
		{"native: an outside address to a NodePort with a local backend", 0, 0, 0, false, udp(t, peerIP, nodeIP, 5000, 30080), P},
		// Found 2026-12-06: a translation claimed for the node's own
		// address took the backend's replies to the node's own
		// connections with it (kubelet's probes), as if to a client.
		{"native: this node's own address to a NodePort with a local backend", 0, 0, 0, false, udp(t, nodeIP, nodeIP, 45000, 30080), F},
		{"tunnel: this node's own address to a NodePort with a remote backend", 7, 0, 0, false, udp(t, nodeIP, nodeIP, 45000, 30081), F},
		{"native: a local pod's address to the node, not to a pod", 0, 0, 0, false, udp(t, local2, nodeIP, 5000, 53), F},
		{"native: a local pod's address to a remote pod (to be forwarded)", 0, 0, 0, false, udp(t, local2, remotePod, 5000, 53), F},
		{"tunnel: a local pod's address to a remote pod (to be forwarded)", 7, 0, 0, false, udp(t, local2, remotePod, 5000, 53), F},
		{"tunnel: an outside address to a remote pod (forwarded as the world)", 7, 0, 0, false, udp(t, peerIP, remotePod, 5000, 53), P},
		{"native: the pod's own address to itself", 0, 0, 0, false, udp(t, podIP, podIP, 5000, 53), F},
		{"native: an outside address", 0, 0, 0, false, udp(t, peerIP, podIP, 5000, 53), P},
		{"native: a remote pod (trusted underlay)", 0, 0, 0, false, udp(t, remotePod, podIP, 5000, 53), P},
		{"native: a covered remote pod (trusted underlay)", 0, 0, 0, false, udp(t, coveredPod, podIP, 5000, 53), P},
		{"tunnel: a remote pod in the clear", 7, 0, 0, false, udp(t, remotePod, podIP, 5000, 53), F},
		{"tunnel: a covered remote pod in the clear", 7, 0, 0, false, udp(t, coveredPod, podIP, 5000, 53), F},
		{"tunnel: a remote pod in the clear, ICMP", 7, 0, 0, false, icmp(remotePod, podIP), F},
		{"tunnel: an outside address", 7, 0, 0, false, udp(t, peerIP, podIP, 5000, 53), P},
		{"tunnel: a remote pod to the node, not to a pod", 7, 0, 0, false, udp(t, remotePod, nodeIP, 5000, 53), P},
		{"WireGuard: a local pod's address on the WireGuard port", 0, 1, wgPort, false, udp(t, local2, podIP, wgPort, wgPort), F},
		{"WireGuard: a real datagram to the node", 0, 1, wgPort, true, udp(t, node, nodeIP, wgPort, wgPort), P},
		{"WireGuard: a remote pod of a peer in the clear", 0, 1, wgPort, true, udp(t, remotePod, podIP, 5000, 53), F},
		{"WireGuard: a covered remote pod of a peer in the clear", 0, 1, wgPort, true, udp(t, coveredPod, podIP, 5000, 53), F},
		{"WireGuard strict: a remote pod of a peer in the clear", 0, 3, wgPort, true, udp(t, remotePod, podIP, 5000, 53), F},
		{"WireGuard strict: a remote pod of a node not yet a peer (reported as such)", 0, 3, wgPort, false, udp(t, remotePod, podIP, 5000, 53), reasonNoEncryptPeer},
		{"WireGuard: a remote pod of a node not a peer (not strict: in the clear)", 0, 1, wgPort, false, udp(t, remotePod, podIP, 5000, 53), P},
		{"IPsec: a remote pod of a peer (decrypted packets come back on the device)", 0, 1, 0, true, udp(t, remotePod, podIP, 5000, 53), P},
		{"IPsec: a local pod's address", 0, 1, 0, true, udp(t, local2, podIP, 5000, 53), F},
	} {
		setCfg(c.vxlan, c.encrypt, c.wg)
		if c.peer {
			if err := f.objs.EncryptPeers.Put(&nk, &one); err != nil {
				t.Fatal(err)
			}
		} else {
			f.objs.EncryptPeers.Delete(&nk)
		}
		r := f.run(f.objs.FromNetdev, c.pkt)
		if c.reason != 0 {
			drops[c.reason]++
		}
		for _, reason := range []uint32{reasonForgedSource, reasonNoEncryptPeer} {
			if got := f.count(reason, dirIngress); (r == actShot) != (c.reason != 0) || got != drops[reason] {
				t.Errorf("%s: verdict %d, %d drops of reason %d counted (want reason %d, %d)", c.name, r, got, reason, c.reason, drops[reason])
				drops[reason] = got
			}
		}
	}
}

// to_container refuses a packet with a local pod's address that did not
// come in on that pod's veth (another interface, or one the tunnel passed
// up); the pod's own veth and the node's own sockets (ingress interface 0:
// the L7 proxy's upstream connections) keep it.
func TestToContainerForgedLocalSource(t *testing.T) {
	f := load(t)
	const reasonForgedSource = 15
	local2 := f.secondPod()
	f.rule(dirIngress, peerID, 17, 53, 24, false)
	for i, c := range []struct {
		name    string
		ingress uint32
		forged  bool
	}{
		{"from its own veth", 5, false},
		{"from the node's own socket", 0, false},
		{"from another interface", 9, true},
	} {
		ret, err := f.objs.ToContainer.Run(&ebpf.RunOptions{Data: udp(t, local2, podIP, uint16(5000+i), 53), Context: &skbIfCtx{IngressIfindex: c.ingress, Ifindex: 1}})
		if err != nil {
			t.Fatal(err)
		}
		n := f.count(reasonForgedSource, dirIngress)
		if (ret == actShot) != c.forged || (n > 0) != c.forged {
			t.Fatalf("%s: verdict %d, %d forged-source drops", c.name, ret, n)
		}
	}
}

// secondPod adds a second pod of this node (host veth ifindex 5, the
// peer's identity) and returns its address.
func (f *fixture) secondPod() net.IP {
	f.t.Helper()
	ip := net.IPv4(10, 0, 0, 3).To4()
	k := ip4(ip)
	if err := f.objs.Endpoints.Put(&k, &DatapathEndpointInfo{Ifindex: 5, Identity: peerID, EpId: 8}); err != nil {
		f.t.Fatal(err)
	}
	return ip
}

// to_container's fast path leaves a flow with a pod of this node to its
// slow path when the packet came in on an interface (the pod's own
// packets come through the stack only from its veth): an established
// flow's exact packet from another interface is refused as forged, not
// passed on its conntrack entry.
func TestToContainerFastPathForgedLocalPeer(t *testing.T) {
	f := load(t)
	const reasonForgedSource = 15
	other := uint32(otherInterface(t))
	local2 := net.IPv4(10, 0, 0, 3).To4()
	k := ip4(local2)
	if err := f.objs.Endpoints.Put(&k, &DatapathEndpointInfo{Ifindex: other, Identity: peerID, EpId: 8}); err != nil {
		t.Fatal(err)
	}
	f.rule(dirIngress, peerID, 17, 53, 24, false)
	run := func(prog *ebpf.Program, ctx *skbIfCtx, pkt []byte) uint32 {
		t.Helper()
		ret, err := prog.Run(&ebpf.RunOptions{Data: pkt, Context: ctx})
		if err != nil {
			t.Fatal(err)
		}
		return ret
	}
	// The pod sends once, so that to_container knows its interface (its
	// fast path needs that); the packet itself is dropped by its egress
	// policy, which has no rule.
	run(f.objs.FromContainer, &skbIfCtx{Ifindex: 1}, udp(t, podIP, peerIP, 6000, 53))
	// local2 -> pod, delivered by from_container: the flow is established
	// in conntrack at the pod's ingress.
	if r := run(f.objs.FromContainer, &skbIfCtx{Ifindex: other}, udp(t, local2, podIP, 5000, 53)); r == actShot {
		t.Fatalf("local2 -> pod: %d", r)
	}
	pkt := udp(t, local2, podIP, 5000, 53)
	if r := run(f.objs.ToContainer, &skbIfCtx{IngressIfindex: other, Ifindex: 1}, pkt); r != actOK || f.count(reasonForgedSource, dirIngress) != 0 {
		t.Fatalf("the flow's packet through the stack from local2's veth: %d", r)
	}
	if r := run(f.objs.ToContainer, &skbIfCtx{IngressIfindex: 77, Ifindex: 1}, pkt); r != actShot || f.count(reasonForgedSource, dirIngress) != 1 {
		t.Fatalf("the flow's exact packet from another interface: verdict %d, %d forged-source drops", r, f.count(reasonForgedSource, dirIngress))
	}
}
