package proxy

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/filament-net/filament/internal/testutil"
)

// An origin is read once: the entry the datapath wrote for a tuple gives
// its identity and is gone after; another tuple has none.
func TestOriginReadOnce(t *testing.T) {
	testutil.RequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 12, ValueSize: 4, MaxEntries: 16})
	if err != nil {
		testutil.SkipMissingFeature(t, "BPF LRU hash maps", err)
	}
	o := &OriginMap{m}
	defer o.Close()
	src, dst := netip.MustParseAddrPort("10.244.0.3:40000"), netip.MustParseAddrPort("10.244.0.4:53")
	k, _ := keyOf(src, dst)
	if err := m.Put(&k, uint32(65793)); err != nil {
		t.Fatal(err)
	}
	if id, ok := o.Origin(src, netip.MustParseAddrPort("10.244.0.4:54")); ok {
		t.Fatalf("another tuple's origin: %d", id)
	}
	if id, ok := o.Origin(src, dst); !ok || id != 65793 {
		t.Fatalf("origin %d, %v; want 65793", id, ok)
	}
	if id, ok := o.Origin(src, dst); ok {
		t.Fatalf("origin read twice: %d", id)
	}
}
