package proxy

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/filament-net/filament/internal/testutil"
)

type liveIdentities map[netip.Addr]uint32

func (l liveIdentities) Identity(a netip.Addr) (uint32, bool) {
	id, ok := l[a.Unmap()]
	return id, ok
}

// The upstream connection's source is decided with the datapath's own
// ipcache when the proxy has it, not only the ipcache the agent pushed
// (every second): a destination pod the pushed one does not hold yet was
// dialled from the node's address, which the destination's node (native
// routing: identity by source address) judges as remote-node, a peer
// policies often allow, instead of the client pod. Found 2026-12-06 by
// reading upstreamSource.
func TestUpstreamSourceFromTheDatapathsIPCache(t *testing.T) {
	client, newPod := netip.MustParseAddr("10.0.1.5"), netip.MustParseAddr("10.0.2.9")
	cfg, err := compile(Config{})
	if err != nil {
		t.Fatal(err)
	}
	p := New(Options{TransparentSource: true, IPCache: liveIdentities{newPod: 0x10_0123}})
	if got := p.upstreamSource(cfg, client, newPod); got != client {
		t.Errorf("to a pod only the datapath knows yet: source %v, want the client's %v", got, client)
	}
	world := netip.MustParseAddr("192.0.2.1")
	if got := p.upstreamSource(cfg, client, world); got.IsValid() {
		t.Errorf("to an address outside the pods: source %v, want the node's (none)", got)
	}
}

// IPCacheMap reads an LPM trie laid out as the datapath's ipcache.
func TestIPCacheMapLookup(t *testing.T) {
	testutil.RequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 12, MaxEntries: 16, Flags: 1 /* BPF_F_NO_PREALLOC */})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	put := func(p string, id uint32) {
		pf := netip.MustParsePrefix(p)
		k := ipcacheKey{Prefixlen: uint32(pf.Bits()), IP: addrKey(pf.Addr())}
		if err := m.Put(&k, &ipcacheValue{Identity: id}); err != nil {
			t.Fatal(err)
		}
	}
	put("10.0.0.0/16", 2)
	put("10.0.2.9/32", 0x10_0123)
	c := &IPCacheMap{m: m}
	for _, tc := range []struct {
		addr string
		id   uint32
		ok   bool
	}{{"10.0.2.9", 0x10_0123, true}, {"10.0.3.3", 2, true}, {"192.0.2.1", 0, false}, {"::ffff:10.0.2.9", 0x10_0123, true}} {
		id, ok := c.Identity(netip.MustParseAddr(tc.addr))
		if id != tc.id || ok != tc.ok {
			t.Errorf("Identity(%s) = %#x, %v; want %#x, %v", tc.addr, id, ok, tc.id, tc.ok)
		}
	}
}
