package datapath_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/bpf"
)

var udpFE = datapath.Frontend{IP: netip.MustParseAddr("172.16.0.1"), Port: 30053, Proto: unix.IPPROTO_UDP}

func udpTo(t *testing.T, fe datapath.Frontend, client netip.AddrPort) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: client.Addr().AsSlice(), DstIP: fe.IP.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(client.Port()), DstPort: layers.UDPPort(fe.Port)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload("q")); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// translatedTo sends one datagram of client's flow to fe through
// from_netdev and returns the backend its translation names (invalid:
// none).
func translatedTo(t *testing.T, dp *datapath.Datapath, fe datapath.Frontend, client netip.AddrPort) netip.AddrPort {
	t.Helper()
	objs := dp.Objects()
	if _, err := objs.FromNetdev.Run(&ebpf.RunOptions{Data: udpTo(t, fe, client)}); err != nil {
		t.Fatal(err)
	}
	return natOf(t, dp, fe, client)
}

func natOf(t *testing.T, dp *datapath.Datapath, fe datapath.Frontend, client netip.AddrPort) netip.AddrPort {
	t.Helper()
	c, f := client.Addr().As4(), fe.IP.As4()
	key := bpf.DatapathLbNatKey{Saddr: nat(c), Daddr: nat(f), Sport: htons(client.Port()), Dport: htons(fe.Port), Proto: fe.Proto}
	v, ok := natLookup(dp, key)
	if !ok {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(addrOf(v.Daddr), htons(v.Dport))
}

// natTables are the datapath's NodePort translation tables: established
// flows' (lb_nats), then new ones' (lb_nats_new).
func natTables(dp *datapath.Datapath) []*ebpf.Map {
	return []*ebpf.Map{dp.Objects().LbNats, dp.Objects().LbNatsNew}
}

// natLookup returns the translation of key, from either table.
func natLookup(dp *datapath.Datapath, key bpf.DatapathLbNatKey) (bpf.DatapathLbNat, bool) {
	var v bpf.DatapathLbNat
	for _, m := range natTables(dp) {
		if m.Lookup(&key, &v) == nil {
			return v, true
		}
	}
	return v, false
}

// A NodePort translation outlived its backend's removal from the service:
// a UDP client that kept sending stayed pinned to the address, and a pod
// later given that address received its datagrams and answered as the
// service. Found 2026-12-06 by reading the tc LB (the socket path checks
// membership; the tc one did not). A backend the service still lists
// (terminating, maintenance, on a dead node) keeps its flows; one it no
// longer lists loses them; a deleted frontend loses all of its.
func TestNodePortTranslationsOfGoneBackendsForgotten(t *testing.T) {
	dp := load(t)
	a := netip.MustParseAddrPort("10.1.0.1:53")
	b := netip.MustParseAddrPort("10.1.0.2:53")
	write := func(backends []netip.AddrPort, keep ...netip.AddrPort) {
		t.Helper()
		s := datapath.LBService{NodePort: true}
		for _, x := range backends {
			s.Backends = append(s.Backends, datapath.LBBackend{IP: x.Addr(), Port: x.Port()})
		}
		for _, x := range keep {
			s.Keep = append(s.Keep, datapath.LBBackend{IP: x.Addr(), Port: x.Port()})
		}
		if err := dp.UpsertService(udpFE, s); err != nil {
			t.Fatal(err)
		}
		if err := dp.ForgetPendingFlows(); err != nil { // the walk the write queued
			t.Fatal(err)
		}
	}
	// One client pinned to each backend.
	write([]netip.AddrPort{a})
	onA := netip.MustParseAddrPort("198.51.100.7:40001")
	if got := translatedTo(t, dp, udpFE, onA); got != a {
		t.Fatalf("first flow translated to %v, want %v", got, a)
	}
	write([]netip.AddrPort{b}, a) // a terminating: listed, no new flows
	onB := netip.MustParseAddrPort("198.51.100.7:40002")
	if got := translatedTo(t, dp, udpFE, onB); got != b {
		t.Fatalf("second flow translated to %v, want %v", got, b)
	}
	if got := translatedTo(t, dp, udpFE, onA); got != a {
		t.Fatalf("a flow of a backend the service still lists moved to %v", got)
	}

	write([]netip.AddrPort{b}) // a deleted
	if got := natOf(t, dp, udpFE, onA); got == a {
		t.Fatalf("the translation to %v stays after the service stopped listing it", a)
	}
	if got := translatedTo(t, dp, udpFE, onA); got != b {
		t.Fatalf("the gone backend's client's next datagram translated to %v, want %v", got, b)
	}
	if got := natOf(t, dp, udpFE, onB); got != b {
		t.Fatalf("a flow of a backend still there lost its translation (%v)", got)
	}

	if err := dp.DeleteService(udpFE); err != nil {
		t.Fatal(err)
	}
	if err := dp.ForgetPendingFlows(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []netip.AddrPort{onA, onB} {
		if got := natOf(t, dp, udpFE, c); got.IsValid() {
			t.Errorf("the deleted frontend's flow from %v still translates to %v", c, got)
		}
	}
	// Both halves went: nothing of the frontend's flows is left.
	var k bpf.DatapathLbNatKey
	var v bpf.DatapathLbNat
	n := 0
	for _, m := range natTables(dp) {
		for it := m.Iterate(); it.Next(&k, &v); {
			n++
		}
	}
	if n != 0 {
		t.Errorf("%d NodePort translation entries left after the frontend went", n)
	}
}

// A gone flow's reverse key may be another live flow's now (its own
// expired, then claimed by a flow of another frontend to the same backend
// from the same SNAT port): forgetting the gone flow leaves it, as
// lb_nat_lookup only takes a reverse entry pointing back at its forward
// one. Found 2026-12-06 by the change's review.
func TestForgetLeavesAnotherFlowsReverseEntry(t *testing.T) {
	dp := load(t)
	m := dp.Objects().LbNats
	n4 := func(s string) uint32 { return nat(netip.MustParseAddr(s).As4()) }
	client, fe, other := "198.51.100.7", "172.16.0.1", "172.16.0.2"
	backend, snat := "10.1.0.1", "172.16.0.1"
	if err := dp.UpsertService(udpFE, datapath.LBService{NodePort: true, Backends: []datapath.LBBackend{{IP: netip.MustParseAddr(backend), Port: 53}}}); err != nil {
		t.Fatal(err)
	}
	// The gone flow's forward entry (client's tuple -> backend via SNAT
	// port 40000), whose reverse key another frontend's flow holds.
	fwd := bpf.DatapathLbNatKey{Saddr: n4(client), Daddr: n4(fe), Sport: htons(5000), Dport: htons(udpFE.Port), Proto: unix.IPPROTO_UDP}
	if err := m.Put(&fwd, &bpf.DatapathLbNat{Expires: 1, Saddr: n4(snat), Daddr: n4(backend), Sport: htons(40000), Dport: htons(53)}); err != nil {
		t.Fatal(err)
	}
	rev := bpf.DatapathLbNatKey{Saddr: n4(backend), Daddr: n4(snat), Sport: htons(53), Dport: htons(40000), Proto: unix.IPPROTO_UDP}
	theirs := bpf.DatapathLbNat{Expires: 1 << 62, Reverse: 1, Saddr: n4(other), Daddr: n4("203.0.113.5"), Sport: htons(30099), Dport: htons(6000)}
	if err := m.Put(&rev, &theirs); err != nil {
		t.Fatal(err)
	}
	if err := dp.DeleteService(udpFE); err != nil {
		t.Fatal(err)
	}
	if err := dp.ForgetPendingFlows(); err != nil {
		t.Fatal(err)
	}
	var v bpf.DatapathLbNat
	if err := m.Lookup(&fwd, &v); err == nil {
		t.Error("the gone frontend's forward entry stays")
	}
	if err := m.Lookup(&rev, &v); err != nil {
		t.Errorf("another frontend's live reverse entry was deleted with the gone flow: %v", err)
	}
}
