package bpf

import (
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/filament-net/filament/internal/testutil"
)

// inNetns runs the rest of the test on a thread of its own in a new network
// namespace (test runs use its lo, and bpf_fib_lookup its routes), with IP
// forwarding on, and a device "out0" (172.30.0.1/24, up) whose
// index it returns with the namespace; the namespace goes when the test
// ends. (Subtests and sub-benchmarks run on goroutines of their own, in
// the process's namespace: they enter it with onNetns.)
func inNetns(t testing.TB) (int, netns.NsHandle) {
	t.Helper()
	testutil.RequireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New() // and switches this thread into it
	if err != nil {
		orig.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A thread that cannot go back stays locked: it ends with its
		// goroutine instead of serving others in the test's namespace.
		if err := netns.Set(orig); err != nil {
			t.Errorf("back to the original network namespace: %v", err)
		} else {
			runtime.UnlockOSThread()
		}
		ns.Close()
		orig.Close()
	})
	for _, f := range []string{"/proc/sys/net/ipv4/conf/all/forwarding", "/proc/sys/net/ipv4/conf/lo/forwarding"} {
		if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// (No dummy driver on every kernel: a veth pair, both ends here.)
	d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "out0", HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 0x77}}, PeerName: "out1"}
	if err := netlink.LinkAdd(d); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName("out0")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("172.30.0.1/24")
	if err := netlink.AddrAdd(l, addr); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"out0", "out1"} {
		if l, err := netlink.LinkByName(name); err != nil {
			t.Fatal(err)
		} else if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return l.Attrs().Index, ns
}

// onNetns runs fn on a thread locked in network namespace ns.
func onNetns(tb testing.TB, ns netns.NsHandle, fn func()) {
	tb.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	prev, err := netns.Get()
	if err != nil {
		tb.Fatal(err)
	}
	defer prev.Close()
	if err := netns.Set(ns); err != nil {
		tb.Fatal(err)
	}
	defer func() {
		if err := netns.Set(prev); err != nil {
			// Stay locked: the thread ends with this goroutine.
			runtime.LockOSThread()
			tb.Errorf("back to the original network namespace: %v", err)
		}
	}()
	fn()
}

// The remote pods and nodes of the native tests, routed out of device out
// (inNetns): remotePod's CIDR via nodeA, whose neighbour entry is known,
// remotePod2's via nodeB, which has none.
var (
	remotePod, remotePod2 = net.IPv4(10, 9, 1, 5).To4(), net.IPv4(10, 9, 2, 5).To4()
	nodeA, nodeB          = net.IPv4(172, 30, 0, 9).To4(), net.IPv4(172, 30, 0, 10).To4()
)

func nativeRoutes(tb testing.TB, out int) {
	tb.Helper()
	for _, r := range []struct {
		dst string
		gw  net.IP
	}{{"10.9.1.0/24", nodeA}, {"10.9.2.0/24", nodeB}} {
		_, dst, _ := net.ParseCIDR(r.dst)
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: out, Dst: dst, Gw: r.gw}); err != nil {
			tb.Fatal(err)
		}
	}
	if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: out, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: nodeA, HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 0x99}}); err != nil {
		tb.Fatal(err)
	}
}

// Native routing without encryption: from_container sends a pod's packet
// for a pod or node elsewhere out of the device the FIB chooses, TTL down by
// one (checksum kept), through bpf_redirect_neigh (which writes the MACs),
// on the slow path and on the established fast path alike; from_netdev
// takes a packet from the mesh for a pod here into its namespace after its
// ingress policy. Left to the kernel: the world and policies' CIDRs, ICMP,
// first fragments, TTL 1, sources outside the mesh (this node's own
// address among them), the kernel's forwarding asked for, encryption on, a
// frame not addressed to the node.
func TestNativeForwarding(t *testing.T) {
	out, _ := inNetns(t)
	f := load(t)
	nativeRoutes(t, out)
	// As native routing without encryption writes them: no tunnel
	// endpoint. A remote node's address; a CIDR of a policy (node-local
	// identity) and an address the ipcache does not know (world), both
	// routed through node A too.
	nodeAddr := net.IPv4(172, 30, 0, 11).To4()
	cidrHost, worldHost := net.IPv4(10, 9, 1, 77).To4(), net.IPv4(10, 9, 1, 78).To4()
	for _, c := range []struct {
		ip net.IP
		id uint32
	}{{remotePod, peerID}, {remotePod2, peerID}, {nodeAddr, 6}, {cidrHost, 1<<24 | 5}} {
		ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(c.ip)}
		if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: c.id}); err != nil {
			t.Fatal(err)
		}
	}
	f.rule(dirEgress, 6, 0, 0, 0, false) // anything to the remote node
	f.rule(dirEgress, 1<<24|5, 6, 80, 24, false)
	f.rule(dirEgress, 2, 6, 80, 24, false)
	f.rule(dirEgress, peerID, 6, 80, 24, false)
	f.rule(dirIngress, peerID, 17, 53, 24, false)
	cfg := func(v DatapathNodeConfig) { // as the agent does: written, then the revision bumped
		k := uint32(0)
		if err := f.objs.Config.Put(&k, &v); err != nil {
			t.Fatal(err)
		}
		f.bump()
	}
	frame := func(dstMAC net.HardwareAddr, ip *layers.IPv4, l4 gopacket.SerializableLayer) []byte {
		return serialize(t, &layers.Ethernet{SrcMAC: podMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}, ip, l4, gopacket.Payload([]byte("x")))
	}
	var frag layers.IPv4Flag // set: the packets built are first fragments
	egress := func(dst net.IP, sport uint16, syn bool, ttl uint8) []byte {
		ip := ipv4(podIP, dst, layers.IPProtocolTCP)
		ip.TTL, ip.Flags = ttl, frag
		l4 := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: 80, SYN: syn, ACK: !syn, Window: 1000}
		l4.SetNetworkLayerForChecksum(ip)
		return frame(hostMAC, ip, l4)
	}
	ingressFrom := func(src net.IP, dstMAC net.HardwareAddr, dport uint16, ttl uint8) []byte {
		ip := ipv4(src, podIP, layers.IPProtocolUDP)
		ip.TTL, ip.Flags = ttl, frag
		l4 := &layers.UDP{SrcPort: 4000, DstPort: layers.UDPPort(dport)}
		l4.SetNetworkLayerForChecksum(ip)
		return frame(dstMAC, ip, l4)
	}
	ingress := func(dstMAC net.HardwareAddr, dport uint16) []byte { return ingressFrom(remotePod, dstMAC, dport, 64) }
	run := func(prog *ebpf.Program, pkt []byte) (uint32, []byte) {
		t.Helper()
		outBuf := make([]byte, len(pkt)+256)
		ret, err := prog.Run(&ebpf.RunOptions{Data: pkt, DataOut: outBuf})
		if err != nil {
			t.Fatalf("test run: %v", err)
		}
		return ret, outBuf[:len(pkt)]
	}
	// check: the verdict, and the frame's MACs and TTL as they leave (nil
	// MACs: unchanged).
	check := func(name string, prog *ebpf.Program, pkt []byte, want uint32, dmac, smac net.HardwareAddr, ttl uint8) {
		t.Helper()
		ret, got := run(prog, pkt)
		if ret != want {
			t.Fatalf("%s: verdict %d, want %d", name, ret, want)
		}
		p := gopacket.NewPacket(got, layers.LayerTypeEthernet, gopacket.Default)
		e, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if e == nil || ip == nil {
			t.Fatalf("%s: output does not parse: % x", name, got)
		}
		if dmac == nil {
			dmac, smac = net.HardwareAddr(pkt[0:6]), net.HardwareAddr(pkt[6:12])
		}
		if e.DstMAC.String() != dmac.String() || e.SrcMAC.String() != smac.String() {
			t.Errorf("%s: MACs %s > %s, want %s > %s", name, e.SrcMAC, e.DstMAC, smac, dmac)
		}
		if ip.TTL != ttl {
			t.Errorf("%s: TTL %d, want %d", name, ip.TTL, ttl)
		}
		// The header checksum still holds: summed with it, all ones.
		hdr := got[14 : 14+20]
		var sum uint32
		for i := 0; i < 20; i += 2 {
			sum += uint32(hdr[i])<<8 | uint32(hdr[i+1])
		}
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		if sum != 0xffff {
			t.Errorf("%s: IPv4 header checksum wrong after the TTL change: % x", name, hdr)
		}
	}
	icmp := func(dst net.IP) []byte {
		return frame(hostMAC, ipv4(podIP, dst, layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 9, Seq: 1})
	}
	// unrule removes a policy entry of the pod, without bumping the
	// revision: the fast path still passes what it cached, the slow path
	// would not.
	unrule := func(dir uint8, peer uint32, proto uint8, port uint16) {
		k := DatapathPolicyKey{Prefixlen: 64 + 24, EpId: podEP, Dir: dir, Identity: peer, Proto: proto, Port: [2]uint8{uint8(port >> 8), uint8(port)}}
		if err := f.objs.Policy.Delete(&k); err != nil {
			t.Fatal(err)
		}
	}
	hostSrc := net.IPv4(10, 0, 0, 1).To4() // this node's address (its gateway): identity host
	ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(hostSrc)}
	if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: 1}); err != nil {
		t.Fatal(err)
	}
	f.rule(dirIngress, 1, 17, 53, 24, false)
	f.rule(dirIngress, 2, 17, 53, 24, false)
	f.rule(dirIngress, 6, 17, 53, 24, false)

	// The MACs are bpf_redirect_neigh's to write (the kernel's neighbour
	// table, as it forwards): the frames leave unchanged but for the TTL.
	cfg(DatapathNodeConfig{})
	check("SYN", f.objs.FromContainer, egress(remotePod, 40000, true, 64), actRedirect, nil, nil, 63)
	check("established, slow path", f.objs.FromContainer, egress(remotePod, 40000, false, 64), actRedirect, nil, nil, 63)
	check("established, fast path", f.objs.FromContainer, egress(remotePod, 40000, false, 64), actRedirect, nil, nil, 63)
	check("no neighbour entry", f.objs.FromContainer, egress(remotePod2, 40001, true, 64), actRedirect, nil, nil, 63)
	check("a remote node", f.objs.FromContainer, egress(nodeAddr, 40005, true, 64), actRedirect, nil, nil, 63)
	check("a CIDR of a policy: the stack", f.objs.FromContainer, egress(cidrHost, 40006, true, 64), actOK, nil, nil, 64)
	check("the world: the stack", f.objs.FromContainer, egress(worldHost, 40007, true, 64), actOK, nil, nil, 64)
	check("ICMP: the stack", f.objs.FromContainer, icmp(nodeAddr), actOK, nil, nil, 64)
	check("TTL 1: the kernel answers", f.objs.FromContainer, egress(remotePod, 40002, true, 1), actOK, nil, nil, 1)
	check("fast path, TTL 1", f.objs.FromContainer, egress(remotePod, 40000, false, 1), actOK, nil, nil, 1)
	lo := net.HardwareAddr{0, 0, 0, 0, 0, 0} // the test run's frames arrive on lo: addressed to it, they are for this host
	check("from another node, allowed", f.objs.FromNetdev, ingress(lo, 53), actRedirect, podMAC, hostMAC, 64)
	check("from another node, established", f.objs.FromNetdev, ingress(lo, 53), actRedirect, podMAC, hostMAC, 64)
	check("from a remote node's address", f.objs.FromNetdev, ingressFrom(nodeAddr, lo, 53, 64), actRedirect, podMAC, hostMAC, 64)
	denied := f.count(reasonDenied, dirIngress)
	check("from another node, denied", f.objs.FromNetdev, ingress(lo, 54), actShot, nil, nil, 64)
	if f.count(reasonDenied, dirIngress) != denied+1 {
		t.Errorf("the denied datagram was not counted as denied")
	}
	// Not from the mesh: up the stack (which refuses this node's own
	// address from outside as a martian; to_container judges the rest).
	check("from this node's own address", f.objs.FromNetdev, ingressFrom(hostSrc, lo, 53, 64), actOK, nil, nil, 64)
	check("from the world", f.objs.FromNetdev, ingressFrom(worldHost, lo, 53, 64), actOK, nil, nil, 64)
	check("from another node, TTL 1", f.objs.FromNetdev, ingressFrom(remotePod, lo, 53, 1), actOK, nil, nil, 1)
	check("a frame for another host", f.objs.FromNetdev, ingress(hostMAC, 53), actOK, nil, nil, 64)
	frag = layers.IPv4MoreFragments // the stack has the rest of the datagram
	check("a first fragment: the stack", f.objs.FromContainer, egress(remotePod, 40008, true, 64), actOK, nil, nil, 64)
	check("from another node, a first fragment: the stack", f.objs.FromNetdev, ingress(lo, 53), actOK, nil, nil, 64)
	frag = 0
	// The fast paths: with the allows gone but the revision not bumped,
	// the established flows still pass on what their entries cached; once
	// it is bumped (as the agent does after a policy change), they drop.
	unrule(dirEgress, peerID, 6, 80)
	unrule(dirIngress, peerID, 17, 53)
	check("established, fast path, allow gone", f.objs.FromContainer, egress(remotePod, 40000, false, 64), actRedirect, nil, nil, 63)
	check("from another node, fast path, allow gone", f.objs.FromNetdev, ingress(lo, 53), actRedirect, podMAC, hostMAC, 64)
	f.bump()
	check("established, allow gone, revision bumped", f.objs.FromContainer, egress(remotePod, 40000, false, 64), actShot, nil, nil, 64)
	check("from another node, allow gone, revision bumped", f.objs.FromNetdev, ingress(lo, 53), actShot, nil, nil, 64)
	f.rule(dirEgress, peerID, 6, 80, 24, false)
	f.rule(dirIngress, peerID, 17, 53, 24, false)

	cfg(DatapathNodeConfig{KernelForwarding: 1})
	check("kernel forwarding, new", f.objs.FromContainer, egress(remotePod, 40003, true, 64), actOK, nil, nil, 64)
	check("kernel forwarding, established", f.objs.FromContainer, egress(remotePod, 40003, false, 64), actOK, nil, nil, 64)
	check("kernel forwarding, established, fast path", f.objs.FromContainer, egress(remotePod, 40003, false, 64), actOK, nil, nil, 64)
	check("kernel forwarding, from another node", f.objs.FromNetdev, ingress(lo, 53), actOK, nil, nil, 64)

	cfg(DatapathNodeConfig{Encrypt: 1})
	check("encryption on", f.objs.FromContainer, egress(remotePod, 40004, true, 64), actOK, nil, nil, 64)
	check("encryption on, from another node", f.objs.FromNetdev, ingress(lo, 53), actOK, nil, nil, 64)
}

// BenchmarkNativeForwarding: native routing's established packets, timed
// one test run at a time (BPF_PROG_TEST_RUN repeats a run on the same
// packet, whose TTL the FIB path lowers: after 63 repeats it would time
// the TTL-1 path), in a network namespace with the route and neighbour of
// TestNativeForwarding. from_container to a remote pod with the programs
// forwarding (the FIB lookup, TTL, MACs, redirect) beside the same packet
// left to the kernel (--native-forwarding kernel: the stack then forwards
// it, at a cost no test run shows), and from_netdev to a pod here,
// delivered (bpf_redirect_peer) beside passed up the stack (to_container
// then runs too); the baseline is a program that only returns, timed the
// same way.
func BenchmarkNativeForwarding(b *testing.B) {
	out, ns := inNetns(b)
	f := loadB(b)
	defer f.objs.Close()
	nativeRoutes(b, out)
	ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(remotePod)}
	if err := f.objs.Ipcache.Put(&ik, &DatapathIpcacheValue{Identity: peerID}); err != nil {
		b.Fatal(err)
	}
	for _, k := range []DatapathPolicyKey{
		{Prefixlen: 64 + 24, EpId: podEP, Dir: dirEgress, Identity: peerID, Proto: 6, Port: [2]uint8{0, 80}},
		{Prefixlen: 64 + 24, EpId: podEP, Dir: dirIngress, Identity: peerID, Proto: 17, Port: [2]uint8{0, 53}},
	} {
		if err := f.objs.Policy.Put(&k, &DatapathPolicyValue{}); err != nil {
			b.Fatal(err)
		}
	}
	egress := func(syn bool) []byte { return tcpPacket(b, podIP, remotePod, 40000, 80, syn, !syn) }
	ingress := func() []byte {
		ip := ipv4(remotePod, podIP, layers.IPProtocolUDP)
		l4 := &layers.UDP{SrcPort: 4000, DstPort: 53}
		l4.SetNetworkLayerForChecksum(ip)
		return serialize(b, &layers.Ethernet{SrcMAC: podMAC, DstMAC: net.HardwareAddr{0, 0, 0, 0, 0, 0}, EthernetType: layers.EthernetTypeIPv4}, ip, l4, gopacket.Payload([]byte("x")))
	}
	// one times prog on pkt one run at a time, in the namespace.
	one := func(b *testing.B, prog *ebpf.Program, pkt []byte, want uint32) {
		onNetns(b, ns, func() { timedRuns(b, prog, func(int) []byte { return pkt }, want, nil) })
	}
	b.Run("baseline-return-ok-one-run", func(b *testing.B) { one(b, returnOK(b), egress(false), actOK) })
	for _, mode := range []struct {
		name   string
		kernel uint16
		want   uint32
	}{{"kernel-forwarding", 1, actOK}, {"bpf-forwarding", 0, actRedirect}} {
		k := uint32(0)
		if err := f.objs.Config.Put(&k, &DatapathNodeConfig{KernelForwarding: mode.kernel}); err != nil {
			b.Fatal(err)
		}
		clearConntrack(b, f.objs.Conntrack, f.objs.ConntrackNew)
		// The flow opened (SYN, SYN-ACK back), then one established
		// packet so that it is established and its entry caches the
		// forwarding: the runs take the fast path.
		if ret, _, err := runRepeat(f.objs.FromContainer, egress(true), 1); err != nil || ret != mode.want {
			b.Fatal(ret, err)
		}
		if ret, _, err := runRepeat(f.objs.ToContainer, tcpPacket(b, remotePod, podIP, 80, 40000, true, true), 1); err != nil || ret != actOK {
			b.Fatal("SYN-ACK: ", ret, err)
		}
		if ret, _, err := runRepeat(f.objs.FromContainer, egress(false), 1); err != nil || ret != mode.want {
			b.Fatal(ret, err)
		}
		if ret, _, err := runRepeat(f.objs.FromNetdev, ingress(), 1); err != nil || ret != mode.want {
			b.Fatal(ret, err)
		}
		b.Run("from-container-established-"+mode.name, func(b *testing.B) { one(b, f.objs.FromContainer, egress(false), mode.want) })
		b.Run("from-netdev-established-"+mode.name, func(b *testing.B) { one(b, f.objs.FromNetdev, ingress(), mode.want) })
	}
}
