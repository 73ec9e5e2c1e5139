package datapath_test

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"

	"github.com/filament-net/filament/agent/service/maglev"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/bpf"
	"github.com/filament-net/filament/internal/testutil"
)

func load(t *testing.T) *datapath.Datapath {
	t.Helper()
	testutil.RequireRoot(t)
	root := t.TempDir()
	dp, err := datapath.Load(datapath.Config{BPFRoot: root, Node: "t", MaglevSize: maglev.DefaultSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dp.Close()
		unix.Unmount(root, unix.MNT_DETACH)
	})
	return dp
}

func ident(t *testing.T, id uint32, ls ...string) identity.Identity {
	l, err := labels.ParseList(ls...)
	if err != nil {
		t.Fatal(err)
	}
	return identity.Identity{ID: identity.NumericIdentity(id), Labels: l}
}

const pol = `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}, {port: "8000", endPort: 8003, protocol: UDP}]}]
`

// A new identity, endpoint or rule writes only the entries it affects: the
// writes that reach the kernel map are counted.
func TestIncrementalMapWrites(t *testing.T) {
	dp := load(t)
	res := policy.NewResolver(policy.ModeDefault)
	ps, err := api.Parse([]byte(pol))
	if err != nil {
		t.Fatal(err)
	}
	apply := func(c policy.Change) int {
		t.Helper()
		n, err := dp.ApplyPolicy(c.Upserts, c.Deletes)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for i := uint32(0); i < 20; i++ {
		apply(res.UpsertIdentity(ident(t, 0x10100+i, "app=other", "n="+string(rune('a'+i)))))
	}
	db := ident(t, 0x10200, "app=db")
	apply(res.UpsertIdentity(db))
	apply(res.UpsertIdentity(ident(t, 0x10300, "app=api", "v=1")))
	apply(res.SetPolicies(ps))
	if n := apply(res.UpsertEndpoint(policy.EndpointInfo{ID: 1, Identity: db.ID, Labels: db.Labels})); n != 2 {
		t.Fatalf("new endpoint: %d writes, want 2 (TCP 5432, one UDP 8000-8003 block for the one api identity)", n)
	}
	before := dp.PolicyWrites()
	// A second api identity: two entries for it, nothing else.
	if n := apply(res.UpsertIdentity(ident(t, 0x10301, "app=api", "v=2"))); n != 2 {
		t.Fatalf("new matching identity: %d writes, want 2", n)
	}
	// An identity no rule selects: no write at all.
	if n := apply(res.UpsertIdentity(ident(t, 0x10400, "app=unrelated"))); n != 0 {
		t.Fatalf("unrelated identity: %d writes, want 0", n)
	}
	if got := dp.PolicyWrites() - before; got != 2 {
		t.Fatalf("map writes counted %d, want 2", got)
	}
	entries, err := dp.PolicyEntries()
	if err != nil || len(entries) != 4 {
		t.Fatalf("policy map holds %d entries (%v), want 4", len(entries), err)
	}
	// Deleting the identity deletes exactly its entries.
	if n := apply(res.DeleteIdentity(0x10301)); n != 2 {
		t.Fatalf("deleted identity: %d writes, want 2", n)
	}
	// Re-applying the same policies writes nothing.
	if n := apply(res.SetPolicies(ps)); n != 0 {
		t.Fatalf("unchanged policies: %d writes", n)
	}
}

// Expired conntrack entries and NodePort translations are collected; live
// ones stay.
func TestConntrackGC(t *testing.T) {
	dp := load(t)
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	now := uint64(ts.Nano())
	ct := dp.Objects().Conntrack
	checkGC(t, "conntrack", ct, dp.GCConntrack,
		bpf.DatapathCtKey{Saddr: 1, Daddr: 2, Sport: 3, Dport: 4, Proto: 6}, &bpf.DatapathCtEntry{Expires: now - 1},
		bpf.DatapathCtKey{Saddr: 1, Daddr: 2, Sport: 3, Dport: 5, Proto: 6}, &bpf.DatapathCtEntry{Expires: now + 60e9})
	if dp.ConntrackEntries() != 1 {
		t.Fatalf("live entries: %d", dp.ConntrackEntries())
	}
	// Flows not established yet (conntrack_new) are swept and counted too.
	checkGC(t, "conntrack_new", dp.Objects().ConntrackNew, dp.GCConntrack,
		bpf.DatapathCtKey{Saddr: 1, Daddr: 2, Sport: 3, Dport: 6, Proto: 6}, &bpf.DatapathCtEntry{Expires: now - 1},
		bpf.DatapathCtKey{Saddr: 1, Daddr: 2, Sport: 3, Dport: 7, Proto: 6}, &bpf.DatapathCtEntry{Expires: now + 60e9})
	if dp.ConntrackEntries() != 2 {
		t.Fatalf("live entries of both tables: %d, want 2", dp.ConntrackEntries())
	}
	checkGC(t, "lb_nats", dp.Objects().LbNats, dp.GCLBNAT,
		bpf.DatapathLbNatKey{Saddr: 1, Daddr: 2, Sport: 3, Dport: 4, Proto: 6}, &bpf.DatapathLbNat{Expires: now - 1, Reverse: 1},
		bpf.DatapathLbNatKey{Saddr: 1, Daddr: 2, Sport: 3, Dport: 5, Proto: 6}, &bpf.DatapathLbNat{Expires: now + 60e9, Reverse: 1})
	// Translations of flows not established yet (lb_nats_new) too.
	checkGC(t, "lb_nats_new", dp.Objects().LbNatsNew, dp.GCLBNAT,
		bpf.DatapathLbNatKey{Saddr: 1, Daddr: 2, Sport: 3, Dport: 6, Proto: 6}, &bpf.DatapathLbNat{Expires: now - 1, Reverse: 1},
		bpf.DatapathLbNatKey{Saddr: 1, Daddr: 2, Sport: 3, Dport: 7, Proto: 6}, &bpf.DatapathLbNat{Expires: now + 60e9, Reverse: 1})
}

// checkGC puts an expired and a live entry in m and requires gc to delete
// the expired one only.
func checkGC[K any](t *testing.T, name string, m *ebpf.Map, gc func() (int, error), old K, oldV any, live K, liveV any) {
	t.Helper()
	if err := m.Put(&old, oldV); err != nil {
		t.Fatal(err)
	}
	if err := m.Put(&live, liveV); err != nil {
		t.Fatal(err)
	}
	n, err := gc()
	if err != nil || n != 1 {
		t.Fatalf("%s: gc removed %d (%v), want 1", name, n, err)
	}
	if m.Lookup(&old, oldV) == nil || m.Lookup(&live, liveV) != nil {
		t.Fatalf("%s: gc removed the wrong entry", name)
	}
}

// Maps are pinned: a second load (a restarted agent) sees the first one's entries.
func TestMapsSurviveReload(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	defer unix.Unmount(root, unix.MNT_DETACH)
	dp, err := datapath.Load(datapath.Config{BPFRoot: root, Node: "t", MaglevSize: maglev.DefaultSize})
	if err != nil {
		t.Fatal(err)
	}
	p := netipPrefix("10.1.2.0/24")
	if err := dp.UpsertIPCache(p, 77); err != nil {
		t.Fatal(err)
	}
	dp.Close()
	dp2, err := datapath.Load(datapath.Config{BPFRoot: root, Node: "t", MaglevSize: maglev.DefaultSize})
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	got, err := dp2.IPCache()
	if err != nil || got[p] != 77 {
		t.Fatalf("after reload: %v %v", got, err)
	}
	if _, err := os.Stat(datapath.PinDir(root, "default", "t")); err != nil {
		t.Fatal(err)
	}
}

func netipPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// The ipcache snapshot follows the agent's writes and is not listed again
// without one: an entry written behind the datapath's back (here straight
// into the map) shows only after the next write through it, while
// IPCache lists the kernel's map every time.
func TestIPCacheSnapshot(t *testing.T) {
	dp := load(t)
	a, b, c := netipPrefix("10.1.0.0/24"), netipPrefix("10.2.0.0/24"), netipPrefix("10.3.0.0/24")
	if err := dp.UpsertIPCache(a, 70); err != nil {
		t.Fatal(err)
	}
	if got, _, err := dp.IPCacheSnapshot(); err != nil || len(got) != 1 || got[a] != 70 {
		t.Fatalf("snapshot after a write: %v %v", got, err)
	}
	k := bpf.DatapathIpcacheKey{Prefixlen: 24, Ip: binary.NativeEndian.Uint32([]byte{10, 2, 0, 0})}
	if err := dp.Objects().Ipcache.Put(&k, &bpf.DatapathIpcacheValue{Identity: 71}); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := dp.IPCacheSnapshot(); len(got) != 1 {
		t.Fatalf("snapshot listed again without a write of the datapath's: %v", got)
	}
	if got, _ := dp.IPCache(); got[b] != 71 {
		t.Fatalf("IPCache does not list the kernel's map: %v", got)
	}
	if err := dp.UpsertIPCache(c, 72); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := dp.IPCacheSnapshot(); len(got) != 3 || got[b] != 71 || got[c] != 72 {
		t.Fatalf("snapshot after another write: %v", got)
	}
	if err := dp.DeleteIPCache(a); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := dp.IPCacheSnapshot(); len(got) != 2 || got[a] != 0 {
		t.Fatalf("snapshot after a delete: %v", got)
	}
}

// An entry of an exact port opens the nodes' control ports on it
// (POLICY_F_PORT) unless it is Wide (an any-peer allow written per peer);
// the state read back says which, so a start-up reconcile rewrites an
// entry whose flag is stale.
func TestWideEntryDoesNotNameItsPort(t *testing.T) {
	dp := load(t)
	key := func(id identity.NumericIdentity) policy.MapKey {
		return policy.MapKey{Endpoint: 1, Dir: policy.Egress, Identity: id, L4: policy.L4{PrefixLen: 24, Proto: 6, Port: 7946}}
	}
	named, wide := key(identity.Host), key(identity.RemoteNode)
	if _, err := dp.ApplyPolicy(map[policy.MapKey]policy.MapValue{named: {}, wide: {Wide: true}}, nil); err != nil {
		t.Fatal(err)
	}
	vs, err := dp.PolicyValues()
	if err != nil {
		t.Fatal(err)
	}
	if !vs[named].Named || vs[wide].Named || vs[named] != datapath.StateOf(named, policy.MapValue{}) || vs[wide] != datapath.StateOf(wide, policy.MapValue{Wide: true}) {
		t.Errorf("named %+v, wide %+v: want only the first to name its port, as StateOf says", vs[named], vs[wide])
	}
}
