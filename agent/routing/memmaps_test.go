package routing

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/bpf"
)

// The in-memory maps count what they hold and, like the BPF ipcache,
// refuse a new prefix once full (a rewrite of a held one still goes).
func TestMemMapsCapacity(t *testing.T) {
	m := NewMemMaps(3)
	id := identity.Compose(2, 300)
	tun := netip.MustParseAddr("172.30.2.1")
	for _, p := range []string{"10.2.0.1/32", "10.2.0.2/32"} {
		if err := m.UpsertIPCacheTunnel(netip.MustParsePrefix(p), id, tun); err != nil {
			t.Fatalf("put %s: %v", p, err)
		}
	}
	if err := m.UpsertIPCacheCover(netip.MustParsePrefix("10.2.4.0/22"), id, tun); err != nil {
		t.Fatalf("put cover: %v", err)
	}
	if err := m.UpsertIPCacheTunnel(netip.MustParsePrefix("10.2.0.3/32"), id, tun); !errors.Is(err, ErrMapFull) {
		t.Fatalf("a fourth prefix in a map of 3: err %v, want ErrMapFull", err)
	}
	if err := m.UpsertIPCacheTunnel(netip.MustParsePrefix("10.2.0.1/32"), id+1, tun); err != nil {
		t.Fatalf("rewriting a held prefix in a full map: %v", err)
	}
	m.UpsertNode(tun, true, 0)
	want := IPCacheStats{Entries: 3, Covers: 1, Slash32s: 2, Peak: 3, Refused: 1, Nodes: 1}
	if got := m.Stats(); got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
	m.DeleteIPCache(netip.MustParsePrefix("10.2.0.2/32"))
	m.DeleteNode(tun)
	if err := m.UpsertIPCacheTunnel(netip.MustParsePrefix("10.2.0.3/32"), id, tun); err != nil {
		t.Fatalf("put after a delete made room: %v", err)
	}
	want = IPCacheStats{Entries: 3, Covers: 1, Slash32s: 2, Peak: 3, Refused: 1}
	if got := m.Stats(); got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
}

// A router over in-memory maps takes only the two modes and writes there.
func TestNewWithMaps(t *testing.T) {
	if _, err := NewWithMaps(NewMemMaps(1), "vxlan", "n1"); !errors.Is(err, ErrMode) {
		t.Fatalf("mode vxlan: err %v, want ErrMode", err)
	}
	m := NewMemMaps(IPCacheMax)
	r, err := NewWithMaps(m, Tunnel, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if r.Mode() != Tunnel || r.dp != m {
		t.Fatalf("router mode %q over %T", r.Mode(), r.dp)
	}
}

// IPCacheMax is the ipcache's max_entries in the committed BPF object, so
// that the simulations refuse where the kernel would.
func TestIPCacheMaxIsTheBPFMap(t *testing.T) {
	spec, err := bpf.LoadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	m, ok := spec.Maps["ipcache"]
	if !ok {
		t.Fatal("no map ipcache in the datapath object")
	}
	if m.MaxEntries != IPCacheMax {
		t.Fatalf("ipcache max_entries %d, IPCacheMax %d", m.MaxEntries, IPCacheMax)
	}
}
