package bpf

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/filament-net/filament/internal/testutil"
)

// Program unit tests with BPF_PROG_TEST_RUN on crafted packets. The test
// run's skb arrives on lo (ifindex 1), so the source endpoint lives there.

const (
	actOK   = 0
	actShot = 2

	reasonForwarded   = 0
	reasonDenied      = 1
	reasonDenyRule    = 2
	reasonCTMissing   = 3
	reasonInvalid     = 4
	reasonFragment    = 5
	reasonUnsupported = 6
	reasonBadSource   = 7

	dirEgress  = 0
	dirIngress = 1
)

var (
	podIP   = net.IPv4(10, 0, 0, 2).To4()
	peerIP  = net.IPv4(192, 168, 7, 9).To4()
	podMAC  = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	hostMAC = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	podID   = uint32(0x10100)
	peerID  = uint32(0x10200)
	podEP   = uint16(7)
)

func ip4(b net.IP) uint32 { return binary.NativeEndian.Uint32(b.To4()) }

type fixture struct {
	t    *testing.T
	objs DatapathObjects
}

func load(t *testing.T) *fixture {
	t.Helper()
	return loadSpec(t, nil)
}

// loadSpec is load with the collection's spec changed by edit first (nil:
// as built), e.g. a map made smaller.
func loadSpec(t *testing.T, edit func(*ebpf.CollectionSpec)) *fixture {
	t.Helper()
	testutil.RequireRoot(t)
	f := &fixture{t: t}
	spec, err := LoadDatapath()
	if err != nil {
		t.Fatalf("spec: %v", err)
	}
	if edit != nil {
		edit(spec)
	}
	if err := spec.LoadAndAssign(&f.objs, nil); err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { f.objs.Close() })
	putConfig(t, f.objs.Config, DatapathNodeConfig{})
	f.putPod(3) // egress and ingress enforced
	ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(peerIP)}
	iv := DatapathIpcacheValue{Identity: peerID}
	if err := f.objs.Ipcache.Put(&ik, &iv); err != nil {
		t.Fatal(err)
	}
	return f
}

// putPod writes the pod's endpoint, on lo, with the EP_* flags (1:
// ingress enforced, 2: egress).
func (f *fixture) putPod(flags uint8) {
	f.t.Helper()
	k := ip4(podIP)
	v := DatapathEndpointInfo{Ifindex: 1, Identity: podID, EpId: podEP, Flags: flags}
	copy(v.Mac[:], podMAC)
	copy(v.HostMac[:], hostMAC)
	if err := f.objs.Endpoints.Put(&k, &v); err != nil {
		f.t.Fatal(err)
	}
}

// putConfig writes the node config for test runs, with kernel_forwarding
// on: with it off, native routing's from_container would forward a remote
// pod's packet with the FIB of whichever namespace runs the test (the
// host's routes and forwarding settings). TestNativeForwarding turns it
// off, in a network namespace of its own.
func putConfig(tb testing.TB, m *ebpf.Map, v DatapathNodeConfig) {
	tb.Helper()
	v.KernelForwarding = 1
	k := uint32(0)
	if err := m.Put(&k, &v); err != nil {
		tb.Fatal(err)
	}
}

// allow adds a policy entry for the pod: dir, peer identity (0 = any),
// protocol and port with prefixBits over proto+port.
func (f *fixture) rule(dir uint8, peer uint32, proto uint8, port uint16, l4bits uint32, deny bool) {
	k := DatapathPolicyKey{Prefixlen: 64 + l4bits, EpId: podEP, Dir: dir, Identity: peer, Proto: proto, Port: [2]uint8{uint8(port >> 8), uint8(port)}}
	v := DatapathPolicyValue{}
	if deny {
		v.Deny = 1
	}
	if err := f.objs.Policy.Put(&k, &v); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) run(prog *ebpf.Program, pkt []byte) uint32 {
	f.t.Helper()
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt})
	if err != nil {
		f.t.Fatalf("test run: %v", err)
	}
	return ret
}

func (f *fixture) count(reason, dir uint32) uint64 {
	key := reason*2 + dir
	var per []DatapathCounter
	if err := f.objs.Counters.Lookup(&key, &per); err != nil {
		f.t.Fatal(err)
	}
	var n uint64
	for _, c := range per {
		n += c.Packets
	}
	return n
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func eth() *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: podMAC, DstMAC: hostMAC, EthernetType: layers.EthernetTypeIPv4}
}

func ipv4(src, dst net.IP, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: src, DstIP: dst}
}

func tcp(t *testing.T, src, dst net.IP, sport, dport uint16, syn, ack bool) []byte {
	return tcpPacket(t, src, dst, sport, dport, syn, ack)
}

func tcpPacket(t testing.TB, src, dst net.IP, sport, dport uint16, syn, ack bool) []byte {
	ip := ipv4(src, dst, layers.IPProtocolTCP)
	l4 := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: syn, ACK: ack, Window: 1000, Ack: ackNumber(ack)}
	l4.SetNetworkLayerForChecksum(ip)
	return serialize(t, eth(), ip, l4, gopacket.Payload([]byte("x")))
}

// ackNumber is the number the test packets with ACK set acknowledge:
// every side's sequence numbers start at 0, so an opener's ACK
// acknowledges the SYN-ACK (0 + 1) and establishes the connection (ct_settle).
func ackNumber(ack bool) uint32 {
	if ack {
		return 1
	}
	return 0
}

func udp(t *testing.T, src, dst net.IP, sport, dport uint16) []byte {
	return udpPacket(t, src, dst, sport, dport)
}

func udpPacket(t testing.TB, src, dst net.IP, sport, dport uint16) []byte {
	ip := ipv4(src, dst, layers.IPProtocolUDP)
	l4 := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	l4.SetNetworkLayerForChecksum(ip)
	return serialize(t, eth(), ip, l4, gopacket.Payload([]byte("hello")))
}

func TestEgressPolicyAndConntrack(t *testing.T) {
	f := load(t)
	f.rule(dirEgress, peerID, 6, 80, 24, false) // TCP 80 to the peer
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 40000, 80, true, false)); r != actOK {
		t.Fatalf("allowed SYN: %d", r)
	}
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 40001, 81, true, false)); r != actShot {
		t.Fatalf("SYN to an unallowed port: %d", r)
	}
	if f.count(reasonDenied, dirEgress) != 1 {
		t.Fatal("default-deny drop not counted")
	}
	// The reply of the allowed connection comes back through to_container:
	// ingress is enforced with no rule, yet conntrack lets it in.
	if r := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 80, 40000, true, true)); r != actOK {
		t.Fatalf("reply of an allowed connection: %d", r)
	}
	// A SYN-ACK of a connection that was never made: no conntrack entry.
	if r := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 80, 40009, true, true)); r != actShot {
		t.Fatalf("reply of an unknown connection: %d", r)
	}
	// A non-SYN segment of an unknown connection.
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 40002, 80, false, true)); r != actShot || f.count(reasonCTMissing, dirEgress) != 1 {
		t.Fatalf("mid-stream segment without conntrack: %d", r)
	}
	// Established packets of the allowed connection keep flowing.
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 40000, 80, false, true)); r != actOK {
		t.Fatalf("established segment: %d", r)
	}
}

func TestDenyWinsAndWildcards(t *testing.T) {
	f := load(t)
	f.rule(dirEgress, 0, 17, 0, 8, false)       // any peer, any UDP port
	f.rule(dirEgress, peerID, 17, 53, 24, true) // but not UDP 53 to the peer
	f.rule(dirEgress, peerID, 0, 0, 0, false)   // any L4 to the peer
	if r := f.run(f.objs.FromContainer, udp(t, podIP, peerIP, 5000, 53)); r != actShot || f.count(reasonDenyRule, dirEgress) != 1 {
		t.Fatalf("deny rule must win over allows: %d", r)
	}
	if r := f.run(f.objs.FromContainer, udp(t, podIP, peerIP, 5000, 54)); r != actOK {
		t.Fatalf("UDP 54: %d", r)
	}
	other := net.IPv4(172, 16, 0, 1).To4() // world: only the any-peer UDP rule
	if r := f.run(f.objs.FromContainer, udp(t, podIP, other, 5000, 9999)); r != actOK {
		t.Fatalf("UDP to world: %d", r)
	}
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, other, 5000, 80, true, false)); r != actShot {
		t.Fatalf("TCP to world: %d", r)
	}
}

func TestPortRangeBlocks(t *testing.T) {
	f := load(t)
	// 8080-8083 as one block: port prefix 14 bits.
	f.rule(dirEgress, peerID, 6, 8080, 8+14, false)
	for port, want := range map[uint16]uint32{8079: actShot, 8080: actOK, 8083: actOK, 8084: actShot} {
		if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 30000+port, port, true, false)); r != want {
			t.Errorf("port %d: got %d want %d", port, r, want)
		}
	}
}

func TestParsingEdgeCases(t *testing.T) {
	f := load(t)
	f.rule(dirEgress, peerID, 6, 80, 24, false)
	f.rule(dirEgress, peerID, 47, 0, 8, false) // GRE, an L4 protocol the parser does not know

	// IP options: the L4 header is found after them.
	ip := ipv4(podIP, peerIP, layers.IPProtocolTCP)
	ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}} // NOP NOP NOP EOL
	l4 := &layers.TCP{SrcPort: 41000, DstPort: 80, SYN: true, Window: 1}
	l4.SetNetworkLayerForChecksum(ip)
	withOpts := serialize(t, eth(), ip, l4)
	if withOpts[14]&0x0f != 6 {
		t.Fatalf("crafted packet has IHL %d, want 6", withOpts[14]&0x0f)
	}
	if r := f.run(f.objs.FromContainer, withOpts); r != actOK {
		t.Fatalf("TCP 80 behind IP options: %d", r)
	}

	// Truncated: an IPv4 header claiming 60 bytes of options that are not
	// there (the test run refuses frames shorter than a full IPv4 header);
	// TCP cut after 8 bytes.
	full := tcp(t, podIP, peerIP, 41001, 80, true, false)
	short := append([]byte{}, full[:14+20]...)
	short[14] = 0x4f // IHL 15
	if r := f.run(f.objs.FromContainer, short); r != actShot {
		t.Fatalf("truncated IPv4: %d", r)
	}
	if r := f.run(f.objs.FromContainer, full[:14+20+8]); r != actShot {
		t.Fatalf("truncated TCP: %d", r)
	}
	if f.count(reasonInvalid, dirEgress) != 2 {
		t.Fatalf("invalid drops counted: %d", f.count(reasonInvalid, dirEgress))
	}

	// Fragments: the first (with ports) is judged; a later one whose first
	// was never seen is dropped (TestFragmentsFollowTheirFirst: those
	// whose first was).
	first := ipv4(podIP, peerIP, layers.IPProtocolUDP)
	first.Flags = layers.IPv4MoreFragments
	first.Id = 7
	u := &layers.UDP{SrcPort: 1, DstPort: 80}
	u.SetNetworkLayerForChecksum(first)
	f.rule(dirEgress, peerID, 17, 80, 24, false)
	if r := f.run(f.objs.FromContainer, serialize(t, eth(), first, u, gopacket.Payload(make([]byte, 32)))); r != actOK {
		t.Fatalf("first fragment: %d", r)
	}
	later := ipv4(podIP, peerIP, layers.IPProtocolUDP)
	later.FragOffset = 4
	later.Id = 8
	if r := f.run(f.objs.FromContainer, serialize(t, eth(), later, gopacket.Payload(make([]byte, 32)))); r != actShot || f.count(reasonFragment, dirEgress) != 1 {
		t.Fatalf("non-first fragment of no first seen: %d", r)
	}

	// Unknown protocol: judged on protocol only.
	if r := f.run(f.objs.FromContainer, serialize(t, eth(), ipv4(podIP, peerIP, layers.IPProtocolGRE), gopacket.Payload(make([]byte, 8)))); r != actOK {
		t.Fatalf("GRE allowed by an L3/proto rule: %d", r)
	}
	if r := f.run(f.objs.FromContainer, serialize(t, eth(), ipv4(podIP, peerIP, layers.IPProtocol(99)), gopacket.Payload(make([]byte, 8)))); r != actShot {
		t.Fatalf("protocol 99 without a rule: %d", r)
	}

	// ARP passes; IPv6 is refused; a spoofed source is refused.
	arp := serialize(t, &layers.Ethernet{SrcMAC: podMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: podMAC, SourceProtAddress: podIP,
			DstHwAddress: make([]byte, 6), DstProtAddress: net.IPv4(10, 0, 0, 1).To4()})
	if r := f.run(f.objs.FromContainer, arp); r != actOK {
		t.Fatalf("ARP: %d", r)
	}
	v6 := serialize(t, &layers.Ethernet{SrcMAC: podMAC, DstMAC: hostMAC, EthernetType: layers.EthernetTypeIPv6},
		&layers.IPv6{Version: 6, NextHeader: layers.IPProtocolNoNextHeader, HopLimit: 1, SrcIP: net.ParseIP("fd00::2"), DstIP: net.ParseIP("fd00::1")})
	if r := f.run(f.objs.FromContainer, v6); r != actShot || f.count(reasonUnsupported, dirEgress) != 1 {
		t.Fatalf("IPv6: %d", r)
	}
	if r := f.run(f.objs.FromContainer, tcp(t, net.IPv4(10, 0, 0, 99).To4(), peerIP, 1, 80, true, false)); r != actShot || f.count(reasonBadSource, dirEgress) != 1 {
		t.Fatalf("spoofed source: %d", r)
	}
}

func TestICMPEchoTracked(t *testing.T) {
	f := load(t)
	f.rule(dirEgress, peerID, 1, 8, 24, false) // ICMP type 8 (echo request)
	icmp := func(src, dst net.IP, typ uint8) []byte {
		return serialize(t, eth(), ipv4(src, dst, layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: 77, Seq: 1})
	}
	if r := f.run(f.objs.FromContainer, icmp(podIP, peerIP, 8)); r != actOK {
		t.Fatalf("echo request: %d", r)
	}
	if r := f.run(f.objs.ToContainer, icmp(peerIP, podIP, 0)); r != actOK {
		t.Fatalf("echo reply through conntrack: %d", r)
	}
	if r := f.run(f.objs.ToContainer, icmp(peerIP, podIP, 8)); r != actShot {
		t.Fatalf("echo request into the pod with ingress enforced and no rule: %d", r)
	}
}

// An allowed ICMP type's conntrack entry stands for that type's exchange
// only. Found 2026-12-05 by reading the datapath: every ICMP message
// but echo had the tuple (0, 0), as did an echo request of identifier 0,
// so after one such allowed message every other ICMP type between the
// two passed as established both ways (redirects, errors quoting any
// flow), past the policy and its deny rules.
func TestICMPTypesTrackedApart(t *testing.T) {
	f := load(t)                                // both directions enforced
	f.rule(dirEgress, peerID, 1, 8, 24, false)  // echo request
	f.rule(dirEgress, peerID, 1, 13, 24, false) // timestamp request
	icmp := func(src, dst net.IP, typ, code uint8, id uint16) []byte {
		return serialize(t, eth(), ipv4(src, dst, layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code), Id: id, Seq: 1})
	}
	if r := f.run(f.objs.FromContainer, icmp(podIP, peerIP, 8, 0, 0)); r != actOK {
		t.Fatalf("echo request of identifier 0: %d", r)
	}
	if r := f.run(f.objs.FromContainer, icmp(podIP, peerIP, 13, 0, 0)); r != actOK {
		t.Fatalf("timestamp request: %d", r)
	}
	for _, c := range []struct {
		name     string
		prog     *ebpf.Program
		src, dst net.IP
		typ      uint8
	}{
		{"a redirect from the pod", f.objs.FromContainer, podIP, peerIP, 5},
		{"a source quench from the pod", f.objs.FromContainer, podIP, peerIP, 4},
		{"a timestamp reply from the pod", f.objs.FromContainer, podIP, peerIP, 14},
		{"an echo reply from the pod", f.objs.FromContainer, podIP, peerIP, 0},
		{"a redirect to the pod", f.objs.ToContainer, peerIP, podIP, 5},
		{"a timestamp request to the pod", f.objs.ToContainer, peerIP, podIP, 13},
		{"an echo request to the pod", f.objs.ToContainer, peerIP, podIP, 8},
	} {
		if r := f.run(c.prog, icmp(c.src, c.dst, c.typ, 0, 0)); r != actShot {
			t.Errorf("%s (type %d, no rule): %d, want dropped", c.name, c.typ, r)
		}
	}
	// An error about no flow is judged as ICMP, not as the pod's
	// allowed messages.
	if r := f.run(f.objs.FromContainer, icmpError(t, podIP, peerIP, peerIP, podIP, 5000, 53)); r != actShot {
		t.Errorf("the pod's port unreachable about no flow: %d, want dropped", r)
	}
	// The replies to what the pod sent still pass.
	if r := f.run(f.objs.ToContainer, icmp(peerIP, podIP, 0, 0, 0)); r != actOK {
		t.Errorf("the echo reply (identifier 0): %d, want passed", r)
	}
	if r := f.run(f.objs.ToContainer, icmp(peerIP, podIP, 14, 0, 0)); r != actOK {
		t.Errorf("the timestamp reply: %d, want passed", r)
	}
}

// Events: a drop and a policy verdict reach the ring buffer.
func TestEventsRingBuffer(t *testing.T) {
	f := load(t)
	f.rule(dirEgress, peerID, 6, 80, 24, false)
	f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 42000, 80, true, false))
	f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 42001, 81, true, false))
	r, err := newRingReader(f.objs.Events)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var types []uint8
	for i := 0; i < 2; i++ {
		ev, err := r.next()
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, ev.Type)
		if ev.EpId != podEP || ev.SrcIdentity != podID || ev.DstIdentity != peerID {
			t.Fatalf("event %+v", ev)
		}
		if ev.Type == 1 && (ev.Reason != reasonDenied || ev.Dport != 81) {
			t.Fatalf("drop event %+v", ev)
		}
	}
	if types[0] != 2 || types[1] != 1 {
		t.Fatalf("event types %v, want verdict then drop", types)
	}
}

// Encryption: a pod's packet for a pod on another node goes to the kernel
// (which routes it through the WireGuard device) when that node is an
// encryption peer; in strict mode it is dropped and counted while the node
// is not one yet; without strict mode it takes the usual way.
func TestEncryptionStrictMode(t *testing.T) {
	f := load(t)
	const reasonNoEncryptPeer = 11
	remotePod := net.IPv4(10, 9, 1, 5).To4()
	node := net.IPv4(172, 30, 0, 9).To4()
	ik := DatapathIpcacheKey{Prefixlen: 32, Ip: ip4(remotePod)}
	iv := DatapathIpcacheValue{Identity: peerID, TunnelIp: ip4(node)}
	if err := f.objs.Ipcache.Put(&ik, &iv); err != nil {
		t.Fatal(err)
	}
	setCfg := func(encrypt uint32) {
		v := DatapathNodeConfig{Encrypt: encrypt}
		putConfig(t, f.objs.Config, v)
	}
	f.rule(dirEgress, peerID, 17, 53, 24, false) // the pod may send DNS to the remote pod
	setCfg(3)                                    // on, strict
	if r := f.run(f.objs.FromContainer, udp(t, podIP, remotePod, 5000, 53)); r != actShot || f.count(reasonNoEncryptPeer, dirEgress) != 1 {
		t.Fatalf("strict, node not a peer: verdict %d, counted %d", r, f.count(reasonNoEncryptPeer, dirEgress))
	}
	nk, one := ip4(node), uint32(1)
	if err := f.objs.EncryptPeers.Put(&nk, &one); err != nil {
		t.Fatal(err)
	}
	if r := f.run(f.objs.FromContainer, udp(t, podIP, remotePod, 5001, 53)); r != actOK {
		t.Fatalf("strict, node a peer: verdict %d", r)
	}
	f.objs.EncryptPeers.Delete(&nk)
	setCfg(1) // on, not strict: no peer yet, the usual way (no tunnel here: the kernel routes it)
	if r := f.run(f.objs.FromContainer, udp(t, podIP, remotePod, 5002, 53)); r != actOK || f.count(reasonNoEncryptPeer, dirEgress) != 1 {
		t.Fatalf("not strict, no peer: verdict %d", r)
	}
}

// The L7 proxy's upstream connection has its client's address as source:
// to_container flags its conntrack entry (the proxy's mark, which only the
// host's sockets carry), and from_container sends the pod's replies to the
// proxy's socket that owns their tuple, never on to the client: with no
// such socket here, a flagged reply is dropped; an unflagged one (the
// client's own connection) goes on.
func TestProxyUpstreamReply(t *testing.T) {
	const (
		reasonNoProxy = 13
		markUpstream  = 0xFA000000
		ctUpstream    = 2 // CT_F_UPSTREAM
	)
	f := load(t)
	f.rule(dirIngress, peerID, 6, 80, 24, false)
	syn := func(sport uint16, mark uint32) {
		t.Helper()
		ret, err := f.objs.ToContainer.Run(&ebpf.RunOptions{
			Data: tcp(t, peerIP, podIP, sport, 80, true, false), Context: &sysSkBuff{Mark: mark},
		})
		if err != nil || ret != actOK {
			t.Fatalf("SYN from port %d, mark %#x: %d %v", sport, mark, ret, err)
		}
	}
	flags := func(sport uint16) uint8 {
		t.Helper()
		k := DatapathCtKey{Saddr: ip4(peerIP), Daddr: ip4(podIP), Sport: htons(sport), Dport: htons(80), Proto: 6, Dir: dirIngress, EpId: podEP}
		var e DatapathCtEntry
		if err := f.ctMap(k).Lookup(&k, &e); err != nil {
			t.Fatalf("conntrack entry of port %d: %v", sport, err)
		}
		return e.Flags
	}
	syn(50000, markUpstream|peerID) // the proxy's upstream, speaking for the peer
	syn(50001, 0)                   // the peer itself
	if flags(50000)&ctUpstream == 0 || flags(50001)&ctUpstream != 0 {
		t.Fatalf("upstream flag: proxied %#x, direct %#x; want it on the proxied entry only", flags(50000), flags(50001))
	}
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 80, 50000, true, true)); r != actShot || f.count(reasonNoProxy, dirEgress) != 1 {
		t.Fatalf("reply to an upstream whose socket is gone: %d, want dropped (no proxy)", r)
	}
	// Its drop event says it is a reply, with its TCP flags.
	ring, err := newRingReader(f.objs.Events)
	if err != nil {
		t.Fatal(err)
	}
	defer ring.Close()
	evs := f.eventsUntil(ring, reasonNoProxy)
	if drop := evs[len(evs)-1]; drop.Flags&eventFlagReply == 0 || drop.TcpFlags != tcpFlagSYN|tcpFlagACK {
		t.Fatalf("drop of a reply: flags %#x, TCP flags %#x; want a reply, SYN|ACK", drop.Flags, drop.TcpFlags)
	}
	if r := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 80, 50001, true, true)); r != actOK {
		t.Fatalf("reply to the peer's own connection: %d, want forwarded", r)
	}
}

// sysSkBuff is the head of struct __sk_buff, up to the mark a test run
// may set (the kernel takes a shorter context).
type sysSkBuff struct {
	Len, PktType, Mark uint32
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// A client pod sending on its upstream's tuple itself (its address, the
// port the proxy's connection got) does not reach the server around the
// proxy: with egress L7 its egress is enforced and it has no conntrack
// entry of its own on that tuple (a mid-stream segment: dropped); with
// ingress L7 the server's entry of the upstream sends it to the proxy,
// where no socket owns it.
func TestProxyUpstreamTupleNotForgeable(t *testing.T) {
	const (
		markUpstream = 0xFA000000
		proxyPort    = 15001
		clientEP     = uint16(8)
		clientID     = uint32(0x10300)
		actRedirect  = 7
	)
	clientIP := net.IPv4(10, 0, 0, 3).To4()
	for _, tc := range []struct {
		name        string
		clientFlags uint8
		egressProxy uint16 // the client's egress entry to the pod
		podProxy    uint16 // the pod's ingress entry from the client
	}{
		{"egress L7", 2, proxyPort, 0},
		{"ingress L7", 0, 0, proxyPort},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := load(t)
			k := ip4(clientIP)
			if err := f.objs.Endpoints.Put(&k, &DatapathEndpointInfo{Ifindex: 1, Identity: clientID, EpId: clientEP, Flags: tc.clientFlags}); err != nil {
				t.Fatal(err)
			}
			put := func(ep uint16, dir uint8, peer uint32, port uint16) {
				pk := DatapathPolicyKey{Prefixlen: 88, EpId: ep, Dir: dir, Identity: peer, Proto: 6, Port: [2]uint8{0, 80}}
				if err := f.objs.Policy.Put(&pk, &DatapathPolicyValue{Flags: 1, ProxyPort: port}); err != nil {
					t.Fatal(err)
				}
			}
			put(clientEP, dirEgress, podID, tc.egressProxy)
			put(podEP, dirIngress, clientID, tc.podProxy)
			// The proxy's upstream for the client opens to the pod.
			ret, err := f.objs.ToContainer.Run(&ebpf.RunOptions{
				Data: tcp(t, clientIP, podIP, 50000, 80, true, false), Context: &sysSkBuff{Mark: markUpstream | clientID},
			})
			if err != nil || ret != actOK {
				t.Fatalf("upstream SYN: %d %v", ret, err)
			}
			// The client itself, on that tuple, mid-stream.
			if r := f.run(f.objs.FromContainer, tcp(t, clientIP, podIP, 50000, 80, false, true)); r != actShot {
				t.Fatalf("the client's own segment on its upstream's tuple: %d, want dropped", r)
			}
			// The pod's reply is not the client's either.
			if r := f.run(f.objs.FromContainer, tcp(t, podIP, clientIP, 80, 50000, false, true)); r == actRedirect || r == actOK {
				t.Fatalf("the pod's reply to the upstream: %d, want it kept from the client", r)
			}
		})
	}
}

// The proxy's upstream connection speaking for a peer with a node-local
// CIDR identity (fromCIDR, fromGroups; bit 24) carries it in the mark
// under its own magic (0xFB), and to_container judges the flow with that
// identity; under the proxy's magic (0xFA) the low 24 bits are a cluster
// identity. Found 2026-12-06 by reading the proxy: such identities were
// carried as world, so ingress L7 from a fromCIDR peer was allowed by the
// proxy and then dropped at the pod.
func TestProxyUpstreamLocalScopeIdentity(t *testing.T) {
	const cidrID = 1<<24 | 7
	f := load(t)
	f.rule(dirIngress, cidrID, 6, 80, 24, false)
	for _, c := range []struct {
		mark uint32
		want uint32
	}{{0xFB000000 | 7, actOK}, {0xFA000000 | 2, actShot}, {0xFA000000 | 7, actShot}} {
		ret, err := f.objs.ToContainer.Run(&ebpf.RunOptions{
			Data: tcp(t, peerIP, podIP, uint16(50000+c.mark&0xff), 80, true, false), Context: &sysSkBuff{Mark: c.mark},
		})
		if err != nil || ret != c.want {
			t.Errorf("SYN with mark %#x: verdict %d (%v), want %d", c.mark, ret, err, c.want)
		}
	}
}
