package datapath_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/agent/service/maglev"
	"github.com/filament-net/filament/bpf"
)

var nodePortFE = datapath.Frontend{IP: netip.MustParseAddr("172.16.0.1"), Port: 30080, Proto: unix.IPPROTO_TCP}

func syn(t *testing.T, client netip.Addr, sport uint16) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: client.AsSlice(), DstIP: nodePortFE.IP.AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(nodePortFE.Port), SYN: true, Window: 1024}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type flow struct {
	client netip.Addr
	sport  uint16
}

// pick runs from_netdev on a SYN of each flow and reads back, from the NAT
// table, which backend the program chose; the NAT table is emptied first so
// every flow is new.
func pick(t *testing.T, dp *datapath.Datapath, flows []flow) []netip.Addr {
	t.Helper()
	objs := dp.Objects()
	for _, m := range natTables(dp) {
		var k bpf.DatapathLbNatKey
		var keys []bpf.DatapathLbNatKey
		it := m.Iterate()
		var v bpf.DatapathLbNat
		for it.Next(&k, &v) {
			keys = append(keys, k)
		}
		for _, k := range keys {
			m.Delete(&k)
		}
	}
	out := make([]netip.Addr, len(flows))
	for i, f := range flows {
		if _, err := objs.FromNetdev.Run(&ebpf.RunOptions{Data: syn(t, f.client, f.sport)}); err != nil {
			t.Fatal(err)
		}
		c, fe := f.client.As4(), nodePortFE.IP.As4()
		key := bpf.DatapathLbNatKey{Saddr: nat(c), Daddr: nat(fe), Sport: htons(f.sport), Dport: htons(nodePortFE.Port), Proto: unix.IPPROTO_TCP}
		val, ok := natLookup(dp, key)
		if !ok {
			t.Fatalf("flow %v: no NAT entry", f)
		}
		out[i] = addrOf(val.Daddr)
	}
	return out
}

// Maglev in the kernel: removing one of 20 backends moves the flows that
// were on it and almost no others; adding it back returns almost all of
// them. Random selection, for contrast, moves most flows.
func TestMaglevDisruptionInDatapath(t *testing.T) {
	dp := load(t)
	var backends []netip.AddrPort
	for i := 1; i <= 20; i++ {
		backends = append(backends, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), 8080))
	}
	write := func(bs []netip.AddrPort, alg datapath.Algorithm) {
		t.Helper()
		s := datapath.LBService{NodePort: true, Algorithm: alg}
		for _, b := range bs {
			s.Backends = append(s.Backends, datapath.LBBackend{IP: b.Addr(), Port: b.Port()})
		}
		if alg == datapath.AlgMaglev {
			table, err := service.MaglevTable(bs, dp.MaglevSize())
			if err != nil {
				t.Fatal(err)
			}
			s.Maglev = table
		}
		if err := dp.UpsertService(nodePortFE, s); err != nil {
			t.Fatal(err)
		}
	}
	var flows []flow
	for i := range 4000 {
		flows = append(flows, flow{netip.AddrFrom4([4]byte{198, 51, byte(i / 250), byte(i%250 + 1)}), uint16(20000 + i)})
	}
	moved := func(a, b []netip.Addr, removed netip.Addr) (onRemoved, others int) {
		for i := range a {
			if a[i] == b[i] {
				continue
			}
			if a[i] == removed {
				onRemoved++
			} else {
				others++
			}
		}
		return
	}
	if dp.MaglevSize() != maglev.DefaultSize {
		t.Fatalf("maglev size %d", dp.MaglevSize())
	}
	write(backends, datapath.AlgMaglev)
	before := pick(t, dp, flows)
	again := pick(t, dp, flows)
	if a, b := moved(before, again, netip.Addr{}); a+b != 0 {
		t.Fatalf("maglev is not stable: %d flows changed backend with nothing changed", a+b)
	}
	removed := backends[6]
	write(append(append([]netip.AddrPort{}, backends[:6]...), backends[7:]...), datapath.AlgMaglev)
	after := pick(t, dp, flows)
	onRemoved, others := moved(before, after, removed.Addr())
	t.Logf("maglev, 1 of 20 backends removed: %d flows were on it and moved, %d others moved (of %d)", onRemoved, others, len(flows))
	for i := range before {
		if before[i] == removed.Addr() && after[i] == removed.Addr() {
			t.Fatal("a flow still goes to the removed backend")
		}
	}
	if onRemoved == 0 || float64(others) > 0.03*float64(len(flows)) {
		t.Fatalf("maglev disruption: %d flows moved off the removed backend, %d others moved (bound 3%%)", onRemoved, others)
	}
	write(backends, datapath.AlgMaglev)
	back := pick(t, dp, flows)
	if a, b := moved(before, back, netip.Addr{}); float64(a+b) > 0.03*float64(len(flows)) {
		t.Fatalf("maglev: %d flows differ after the backend came back", a+b)
	}

	// Random, same change: most flows land somewhere else.
	write(backends, datapath.AlgRandom)
	r1 := pick(t, dp, flows)
	r2 := pick(t, dp, flows)
	_, rmoved := moved(r1, r2, netip.Addr{})
	t.Logf("random: %d of %d flows changed backend between two runs", rmoved, len(flows))
	if rmoved < len(flows)/2 {
		t.Fatalf("random selection moved only %d of %d flows", rmoved, len(flows))
	}
	if got := fmt.Sprint(len(uniq(r1))); got != "20" {
		t.Fatalf("random selection used %s backends, want 20", got)
	}
}

func uniq(a []netip.Addr) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	for _, x := range a {
		out[x] = true
	}
	return out
}

func nat(b [4]byte) uint32 { return binary.NativeEndian.Uint32(b[:]) }

func htons(p uint16) uint16 { return p<<8 | p>>8 }

func addrOf(u uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}
