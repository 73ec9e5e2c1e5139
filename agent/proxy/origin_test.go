package proxy

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/filament-net/filament/internal/testutil"
)

// A connection's origin is read once: the entry the datapath wrote for a
// tuple gives its identity and is gone after; a datagram's stays for the
// next datagram of the tuple; another tuple has none.
func TestOriginReadOnce(t *testing.T) {
	testutil.RequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 12, ValueSize: 4, MaxEntries: 16})
	if err != nil {
		testutil.SkipMissingFeature(t, "BPF LRU hash maps", err)
	}
	o := &OriginMap{m: m}
	defer o.Close()
	src, dst := netip.MustParseAddrPort("10.244.0.3:40000"), netip.MustParseAddrPort("10.244.0.4:53")
	k, _ := keyOf(src, dst)
	if err := m.Put(&k, uint32(65793)); err != nil {
		t.Fatal(err)
	}
	if id, ok := o.Origin(src, netip.MustParseAddrPort("10.244.0.4:54"), false); ok {
		t.Fatalf("another tuple's origin: %d", id)
	}
	// Datagrams: glibc and musl send a name's A and AAAA queries from one
	// socket at once, so the datapath writes the tuple's entry twice
	// before the proxy reads either; each read finds it.
	for i := range 2 {
		if id, ok := o.Origin(src, dst, true); !ok || id != 65793 {
			t.Fatalf("datagram %d: origin %d, %v; want 65793", i, id, ok)
		}
	}
	// The map's entry is gone all the same: resolvers take a new source
	// port for each query, and entries left in place filled the LRU map
	// and pushed out the origins of TCP connections not yet accepted.
	var id uint32
	if err := m.Lookup(&k, &id); err == nil {
		t.Fatal("a datagram's origin was left in the datapath's map")
	}
	if err := m.Put(&k, uint32(65793)); err != nil {
		t.Fatal(err)
	}
	if id, ok := o.Origin(src, dst, false); !ok || id != 65793 {
		t.Fatalf("origin %d, %v; want 65793", id, ok)
	}
	if id, ok := o.Origin(src, dst, false); ok {
		t.Fatalf("a connection's origin read twice: %d", id)
	}
}

// The datagram origins kept are bounded, the oldest going first, without
// a walk of them all per datagram (before: a full table was scanned at
// each read, then cleared, others' origins with it).
func TestRecentOriginsBounded(t *testing.T) {
	o := &OriginMap{}
	key := func(i int) originKey { return originKey{Saddr: uint32(i), Sport: 53} }
	for i := range maxRecentOrigins + 10 {
		o.seen(key(i), uint32(i), true)
		o.seen(key(0), 0, true) // one tuple read again and again
	}
	if n := len(o.recent); n > maxRecentOrigins {
		t.Fatalf("%d origins kept, at most %d", n, maxRecentOrigins)
	}
	if len(o.order) > 2*maxRecentOrigins+1 {
		t.Fatalf("%d queued", len(o.order))
	}
	if id, ok := o.seen(key(maxRecentOrigins+9), 0, false); !ok || id != uint32(maxRecentOrigins+9) {
		t.Errorf("the newest origin: %d, %v", id, ok)
	}
	if _, ok := o.seen(key(1), 0, false); ok {
		t.Error("the oldest origin was kept past the bound")
	}
	if id, ok := o.seen(key(100), 0, false); !ok || id != 100 {
		t.Errorf("an origin younger than the bound went with the oldest: %d, %v", id, ok)
	}
}
