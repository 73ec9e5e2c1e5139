package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/bpf"
)

// floodWhile fills m (an LRU table of the datapath) and keeps two
// goroutines putting new keys (put(seed, i)) into it, evicting, while f
// runs: what a pod opening new flows as fast as it can does to the
// tables' walks.
func floodWhile(m *ebpf.Map, put func(m *ebpf.Map, seed uint32, i int), f func()) {
	for i := range int(m.MaxEntries()) {
		put(m, 1, i)
	}
	stop := make(chan struct{})
	done := make(chan struct{}, 2)
	for g := range 2 {
		go func() {
			defer func() { done <- struct{}{} }()
			for seed := uint32(100 + g*1_000_000); ; seed++ {
				select {
				case <-stop:
					return
				default:
				}
				for i := range 256 {
					put(m, seed, i)
				}
			}
		}()
	}
	f()
	close(stop)
	<-done
	<-done
}

// loadTemp loads the datapath with its maps pinned under a directory of
// t's, removed after it.
func loadTemp(t *testing.T) *Datapath {
	root := t.TempDir()
	d := loadAt(t, root)
	t.Cleanup(func() { d.Close(); unix.Unmount(root, unix.MNT_DETACH) })
	return d
}

func putCt(m *ebpf.Map, seed uint32, i int) {
	k := bpf.DatapathCtKey{Saddr: seed, Daddr: uint32(i), Sport: uint16(i), Dport: 80, Proto: unix.IPPROTO_TCP, EpId: 9}
	m.Put(&k, &bpf.DatapathCtEntry{Expires: 1 << 62})
}

func putNat(m *ebpf.Map, seed uint32, i int) {
	k := bpf.DatapathLbNatKey{Saddr: seed, Daddr: uint32(i), Sport: uint16(i), Dport: 80, Proto: unix.IPPROTO_TCP}
	m.Put(&k, &bpf.DatapathLbNat{Expires: 1 << 62})
}

// A pod flooding conntrack_new with new flows made the walk by key
// (MapIterator) of the conntrack tables give up: EgressFlows failed, and
// with it every expiry of learned DNS names (dnsNames.expire), so a
// toFQDNs address stayed allowed past its TTL for as long as the flood
// went on. Found 2026-12-07 by a review of the scrubber's walk. The
// tables are read in batches now; the established flow is seen.
func TestEgressFlowsUnderAFlood(t *testing.T) {
	d := loadTemp(t)
	dst := netip.MustParseAddr("192.0.2.80")
	est := bpf.DatapathCtKey{Saddr: ipv4(netip.MustParseAddr("10.7.0.2")), Daddr: ipv4(dst), Sport: 5000, Dport: 443, Proto: unix.IPPROTO_TCP, EpId: 1}
	if err := d.objs.Conntrack.Put(&est, &bpf.DatapathCtEntry{Expires: 1 << 62}); err != nil {
		t.Fatal(err)
	}
	var flows map[netip.Addr][]Flow
	var err error
	floodWhile(d.objs.ConntrackNew, putCt, func() {
		for range 5 {
			if flows, err = d.EgressFlows(); err != nil {
				return
			}
		}
	})
	if err != nil {
		t.Fatalf("conntrack unreadable under a flood of new flows: %v", err)
	}
	if len(flows[dst]) != 1 {
		t.Fatalf("the established flow to %s not seen: %v", dst, flows[dst])
	}
}

// The same flood, of lb_nats_new, kept the forgetter's walk from ever
// deleting a gone backend's NodePort translation (it tried again every
// second, and gave up every time), the hole the forgetter closes
// (TestNodePortTranslationsOfGoneBackendsForgotten).
func TestForgetReachesTranslationsUnderAFlood(t *testing.T) {
	d := loadTemp(t)
	fe := Frontend{IP: netip.MustParseAddr("172.16.0.1"), Port: 30053, Proto: unix.IPPROTO_UDP}
	gone := netip.MustParseAddrPort("10.1.0.1:53")
	fwd := bpf.DatapathLbNatKey{Saddr: ipv4(netip.MustParseAddr("198.51.100.7")), Daddr: ipv4(fe.IP), Sport: htons(40001), Dport: htons(fe.Port), Proto: fe.Proto}
	if err := d.objs.LbNats.Put(&fwd, &bpf.DatapathLbNat{Saddr: fwd.Saddr, Daddr: ipv4(gone.Addr()), Sport: fwd.Sport, Dport: htons(gone.Port()), Expires: 1 << 62}); err != nil {
		t.Fatal(err)
	}
	var err error
	floodWhile(d.objs.LbNatsNew, putNat, func() {
		err = d.forgetFlows(map[Frontend]map[netip.AddrPort]bool{fe: {gone: true}})
	})
	if err != nil {
		t.Fatalf("the walk gave up under a flood of new flows: %v", err)
	}
	var v bpf.DatapathLbNat
	if d.objs.LbNats.Lookup(&fwd, &v) == nil {
		t.Fatalf("the translation to the gone backend %s stays", gone)
	}
}

// And the sweeps of expired entries gave up too, leaving expired entries
// in place until the LRU needed room.
func TestGCUnderAFlood(t *testing.T) {
	d := loadTemp(t)
	old := bpf.DatapathCtKey{Saddr: 7, Daddr: 8, Sport: 1, Dport: 2, Proto: unix.IPPROTO_UDP, EpId: 1}
	if err := d.objs.Conntrack.Put(&old, &bpf.DatapathCtEntry{Expires: 1}); err != nil {
		t.Fatal(err)
	}
	var err error
	floodWhile(d.objs.ConntrackNew, putCt, func() {
		for range 3 {
			if _, err = d.GCConntrack(); err != nil {
				return
			}
		}
	})
	if err != nil {
		t.Fatalf("the sweep gave up under a flood of new flows: %v", err)
	}
	var v bpf.DatapathCtEntry
	if d.objs.Conntrack.Lookup(&old, &v) == nil {
		t.Fatal("the expired entry stays")
	}
}
