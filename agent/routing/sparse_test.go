package routing

import (
	"fmt"
	"maps"
	"math/rand"
	"net/netip"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/sparse"
	"github.com/filament-net/filament/internal/testutil"
)

type fakeValue struct {
	id     identity.NumericIdentity
	tunnel netip.Addr
	cover  bool
}

// fakeMaps is the ipcache as a prefix table.
type fakeMaps struct {
	ipc     map[netip.Prefix]fakeValue
	nodes   map[netip.Addr]bool // the known-node addresses, when not nil
	deletes []netip.Prefix      // ipcache deletes, in order
	local   map[netip.Addr]bool // node_local_addrs, when not nil
}

func (f *fakeMaps) UpsertNodeLocalAddr(a netip.Addr) error {
	if f.local != nil {
		f.local[a] = true
	}
	return nil
}
func (f *fakeMaps) DeleteNodeLocalAddr(a netip.Addr) error { delete(f.local, a); return nil }
func (f *fakeMaps) NodeLocalAddrs() (map[netip.Addr]bool, error) {
	return maps.Clone(f.local), nil
}

func (f *fakeMaps) UpsertNode(a netip.Addr, _ bool, _ uint32) error {
	if f.nodes != nil {
		f.nodes[a] = true
	}
	return nil
}
func (f *fakeMaps) DeleteNode(a netip.Addr) error      { delete(f.nodes, a); return nil }
func (f *fakeMaps) UpsertEncryptPeer(netip.Addr) error { return nil }
func (f *fakeMaps) DeleteEncryptPeer(netip.Addr)       {}
func (f *fakeMaps) UpsertIPCacheTunnel(p netip.Prefix, id identity.NumericIdentity, t netip.Addr) error {
	f.ipc[p] = fakeValue{id, t, false}
	return nil
}
func (f *fakeMaps) UpsertIPCacheCover(p netip.Prefix, id identity.NumericIdentity, t netip.Addr) error {
	f.ipc[p] = fakeValue{id, t, true}
	return nil
}
func (f *fakeMaps) DeleteIPCache(p netip.Prefix) error {
	delete(f.ipc, p)
	f.deletes = append(f.deletes, p)
	return nil
}

// lookup is the datapath's longest-prefix match.
func (f *fakeMaps) lookup(a netip.Addr) (fakeValue, bool) {
	for bits := 32; bits >= 0; bits-- {
		if v, ok := f.ipc[netip.PrefixFrom(a, bits).Masked()]; ok {
			return v, true
		}
	}
	return fakeValue{}, false
}

func (f *fakeMaps) slash32s() int {
	n := 0
	for p := range f.ipc {
		if p.Bits() == 32 {
			n++
		}
	}
	return n
}

// inNetns runs the test in a network namespace of its own: the router
// adds and deletes kernel routes for the nodes it learns.
func inNetns(t testing.TB) {
	testutil.RequireRoot(t)
	runtime.LockOSThread() // never unlocked: the thread ends with the test
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("unshare a network namespace: %v", err)
	}
}

func sparseRouter(need *sparse.Need) (*Router, *fakeMaps) {
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}}
	r := &Router{dp: f, mode: Tunnel, self: "n1", nodes: map[string]node.Node{}, down: map[string]bool{}, entries: map[netip.Addr]ipcache.Entry{}}
	r.SetSparse(need, netip.MustParsePrefix("10.1.1.0/24"))
	return r, f
}

// distinguish makes need tell id apart from its cover (an egress entry
// only id has) or not.
func distinguish(need *sparse.Need, id identity.NumericIdentity, on bool) sparse.Diff {
	k := policy.MapKey{Endpoint: 1, Dir: policy.Egress, Identity: id}
	if on {
		return need.Apply(policy.Change{Upserts: map[policy.MapKey]policy.MapValue{k: {}}})
	}
	return need.Apply(policy.Change{Deletes: []policy.MapKey{k}})
}

// check: every remote entry resolves in the sparse datapath as in the full
// one (fullMaps, the same changes without SetSparse), or to its cluster's
// cover identity where the full one has the entry's own identity and the
// need does not tell them apart; with the same tunnel endpoint.
func check(t *testing.T, step string, r *Router, f, full *fakeMaps, need *sparse.Need, live map[netip.Addr]ipcache.Entry) {
	t.Helper()
	checkHeld(t, step, r)
	for ip, e := range live {
		if r.down[e.Node] {
			// The full router keeps what the address had before it moved
			// to a node that is down; not compared.
			continue
		}
		v, found := f.lookup(ip)
		w, wfound := full.lookup(ip)
		if !wfound && found && v.cover {
			// An address no valid entry holds (here: refused, outside its
			// node's CIDRs) inside another remote node's covered pod CIDR:
			// the cover's, not world (documented).
			continue
		}
		if found != wfound || v.tunnel != w.tunnel {
			t.Fatalf("%s: %s (%+v) resolves to %+v (%v), full to %+v (%v)", step, ip, e, v, found, w, wfound)
		}
		switch {
		case v.id == w.id:
		case v.cover && v.id == sparse.Cover(w.id.ClusterID()) && !need.Needed(w.id):
		default:
			t.Fatalf("%s: %s resolves to %+v, full to %+v (needed %v)", step, ip, v, w, need.Needed(w.id))
		}
	}
}

// checkHeld: the index of held entries by node is exactly the held
// entries.
func checkHeld(t *testing.T, step string, r *Router) {
	t.Helper()
	n := 0
	for name, m := range r.held {
		if len(m) == 0 {
			t.Fatalf("%s: node %s indexed with no entries", step, name)
		}
		for ip := range m {
			if e, ok := r.entries[ip]; !ok || e.Node != name {
				t.Fatalf("%s: %s indexed under %s, held as %+v (%v)", step, ip, name, e, ok)
			}
			n++
		}
	}
	if n != len(r.entries) {
		t.Fatalf("%s: %d entries held, %d indexed", step, len(r.entries), n)
	}
}

// pair runs the same changes on a sparse and a full router.
type pair struct{ sparse, full *Router }

func (p pair) NodeChanged(n node.Node, deleted bool) {
	p.sparse.NodeChanged(n, deleted)
	p.full.NodeChanged(n, deleted)
}

func (p pair) EntryChanged(e ipcache.Entry, deleted bool) {
	p.sparse.EntryChanged(e, deleted)
	p.full.EntryChanged(e, deleted)
}

func (p pair) SetNodeDown(name string, down bool) {
	p.sparse.SetNodeDown(name, down)
	p.full.SetNodeDown(name, down)
}

func newPair(need *sparse.Need) (pair, *fakeMaps, *fakeMaps) {
	r, f := sparseRouter(need)
	full := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}}
	return pair{r, &Router{dp: full, mode: Tunnel, self: "n1", nodes: map[string]node.Node{}, down: map[string]bool{},
		entries: map[netip.Addr]ipcache.Entry{}}}, f, full
}

func TestSparseRouter(t *testing.T) {
	inNetns(t)
	need := sparse.NewNeed(1, false)
	pr, f, full := newPair(need)
	r := pr.sparse
	live := map[netip.Addr]ipcache.Entry{}
	web, db := identity.Compose(2, 300), identity.Compose(2, 301)
	n2 := node.Node{Name: "c2/n1", IPs: []string{"192.168.2.1"}, PodCIDRs: []string{"10.2.1.0/24"}}
	host := netip.MustParseAddr("192.168.2.1")
	entry := func(ip string, id identity.NumericIdentity) {
		e := ipcache.Entry{IP: netip.MustParseAddr(ip), Identity: id, HostIP: host, Node: "c2/n1"}
		live[e.IP] = e
		pr.EntryChanged(e, false)
	}
	// An entry before its node: held, not written (a remote cluster's
	// entry waits for its node).
	entry("10.2.1.5", web)
	if _, ok := f.ipc[netip.MustParsePrefix("10.2.1.5/32")]; ok {
		t.Fatal("a remote entry of a node not known yet was written")
	}
	pr.NodeChanged(n2, false)
	entry("10.2.1.6", db)
	check(t, "node known", r, f, full, need, live)
	if v := f.ipc[netip.MustParsePrefix("10.2.1.0/24")]; !v.cover || v.id != sparse.Cover(2) || v.tunnel != host {
		t.Fatalf("cover entry %+v", v)
	}
	if f.slash32s() != 0 {
		t.Fatalf("%d remote /32s with no policy: %v", f.slash32s(), f.ipc)
	}
	// Policy tells web apart: its /32 is written in the install phase.
	d := distinguish(need, web, true)
	r.Reneed(d, true)
	r.Reneed(d, false)
	check(t, "web distinguished", r, f, full, need, live)
	if f.slash32s() != 1 {
		t.Fatalf("want web's /32 only: %v", f.ipc)
	}
	d = distinguish(need, web, false)
	r.Reneed(d, true)
	if f.slash32s() != 1 {
		t.Fatal("an unneeded /32 removed before the policy change is written")
	}
	r.Reneed(d, false)
	if f.slash32s() != 0 {
		t.Fatalf("web's /32 stays after the policy went: %v", f.ipc)
	}
	// Another node of its cluster claims an overlapping CIDR: neither is
	// taken while both claim it (TestRemoteNodeCannotTakeItsNeighbours),
	// so the holder's cover goes and the claimant's entry is not written;
	// once the claimant went, the holder is taken again with its cover.
	n3 := node.Node{Name: "c2/x", IPs: []string{"192.168.3.1"}, PodCIDRs: []string{"10.2.1.128/25"}}
	e3 := ipcache.Entry{IP: netip.MustParseAddr("10.2.1.200"), Identity: identity.Compose(2, 400), HostIP: netip.MustParseAddr("192.168.3.1"), Node: "c2/x"}
	pr.NodeChanged(n3, false)
	pr.EntryChanged(e3, false)
	check(t, "overlap", r, f, full, need, live)
	if _, ok := f.ipc[netip.MustParsePrefix("10.2.1.0/24")]; ok {
		t.Fatal("a cover of a node whose CIDR another node of its cluster claims")
	}
	if _, ok := f.ipc[netip.MustParsePrefix("10.2.1.200/32")]; ok {
		t.Fatal("the refused overlapping node's entry was written")
	}
	pr.EntryChanged(e3, true)
	pr.NodeChanged(n3, true)
	if _, ok := f.ipc[netip.MustParsePrefix("10.2.1.0/24")]; !ok {
		t.Fatal("the holder's cover not back once the claimant went")
	}
	check(t, "overlap gone", r, f, full, need, live)
	if f.slash32s() != 0 {
		t.Fatalf("/32s after the overlap went: %v", f.ipc)
	}
	// A node claiming a /8: no cover.
	big := node.Node{Name: "c3/big", IPs: []string{"192.168.3.2"}, PodCIDRs: []string{"11.0.0.0/8"}}
	pr.NodeChanged(big, false)
	pr.EntryChanged(ipcache.Entry{IP: netip.MustParseAddr("11.0.0.9"), Identity: identity.Compose(3, 401), HostIP: netip.MustParseAddr("192.168.3.2"), Node: "c3/big"}, false)
	if _, ok := f.ipc[netip.MustParsePrefix("11.0.0.0/8")]; ok {
		t.Fatal("a cover for a /8")
	}
	if _, ok := f.ipc[netip.MustParsePrefix("11.0.0.9/32")]; !ok {
		t.Fatal("an entry of an uncovered node is not written")
	}
	// Down and up again.
	pr.SetNodeDown("c2/n1", true)
	check(t, "down", r, f, full, need, live)
	pr.SetNodeDown("c2/n1", false)
	check(t, "up", r, f, full, need, live)
	// Hubble's lookup still finds a compact entry (without pod names).
	if e, ok := r.Entry(netip.MustParseAddr("10.2.1.6")); !ok || e.Identity != db || e.Node != "c2/n1" {
		t.Fatalf("Entry of a compact address: %+v %v", e, ok)
	}
	// Deleted entries go.
	for ip, e := range live {
		pr.EntryChanged(e, true)
		delete(live, ip)
	}
	if f.slash32s() != 1 { // 11.0.0.9
		t.Fatalf("entries left after their deletion: %v", f.ipc)
	}
}

// Random sequences of node, entry and need changes keep every entry
// resolving to its identity or, where the need allows, its cover.
func TestSparseRouterRandom(t *testing.T) {
	inNetns(t)
	for seed := range int64(60) {
		rng := rand.New(rand.NewSource(seed))
		need := sparse.NewNeed(1, false)
		pr, f, full := newPair(need)
		r := pr.sparse
		live := map[netip.Addr]ipcache.Entry{}
		nodes := []node.Node{}
		for i := range 4 {
			c := 2 + i%2
			nodes = append(nodes, node.Node{Name: fmt.Sprintf("c%d/n%d", c, i), IPs: []string{fmt.Sprintf("192.168.%d.%d", c, i+1)},
				PodCIDRs: []string{fmt.Sprintf("10.%d.%d.0/24", c, i)}})
		}
		ids := []identity.NumericIdentity{identity.Compose(2, 300), identity.Compose(2, 301), identity.Compose(3, 300), identity.Compose(3, 301)}
		for step := range 80 {
			i := rng.Intn(len(nodes))
			n := nodes[i]
			switch rng.Intn(7) {
			case 0:
				pr.NodeChanged(n, false)
			case 1:
				pr.NodeChanged(n, true)
			case 2: // its CIDR moves (or overlaps a neighbour's)
				n.PodCIDRs = []string{fmt.Sprintf("10.%d.%d.0/%d", 2+i%2, rng.Intn(4), 23+rng.Intn(2))}
				nodes[i] = n
				pr.NodeChanged(n, false)
			case 3:
				pr.SetNodeDown(n.Name, rng.Intn(2) == 0)
			case 4, 5:
				p, _ := netip.ParsePrefix(n.PodCIDRs[0])
				b := p.Addr().As4()
				b[3] = byte(1 + rng.Intn(20))
				cl := uint32(2 + i%2)
				e := ipcache.Entry{IP: netip.AddrFrom4(b), Identity: ids[2*(cl-2)+uint32(rng.Intn(2))], HostIP: n.IP(), Node: n.Name}
				if old, ok := live[e.IP]; ok && rng.Intn(2) == 0 {
					pr.EntryChanged(old, true)
					delete(live, e.IP)
				} else {
					pr.EntryChanged(e, false)
					live[e.IP] = e
				}
			default:
				d := distinguish(need, ids[rng.Intn(len(ids))], rng.Intn(2) == 0)
				r.Reneed(d, true)
				r.Reneed(d, false)
			}
			check(t, fmt.Sprintf("seed %d step %d", seed, step), r, f, full, need, live)
		}
	}
}

// FuzzSparseHostileCIDRs: a remote node (whoever holds the remote's
// kvstore credentials writes it) claims any pod CIDRs and addresses. No
// cover is ever shorter than MinCoverBits, overlaps this node's pod CIDR
// or another node's pod CIDR, and every entry of the honest node resolves
// as with the full ipcache.
func FuzzSparseHostileCIDRs(f *testing.F) {
	f.Add("10.2.1.0/24", "10.2.1.9", uint8(0))
	f.Add("0.0.0.0/0", "10.2.1.9", uint8(1))
	f.Add("10.1.1.0/25", "10.1.1.3", uint8(2))
	f.Add("10.2.0.0/16", "10.2.1.7", uint8(3))
	f.Add("10.2.1.128/25", "10.2.1.200", uint8(4))
	f.Fuzz(func(t *testing.T, cidr, addr string, op uint8) {
		inNetns(t)
		need := sparse.NewNeed(1, op&1 == 1)
		pr, sp, full := newPair(need)
		honest := node.Node{Name: "c2/ok", IPs: []string{"192.168.2.1"}, PodCIDRs: []string{"10.2.1.0/24"}}
		hostile := node.Node{Name: "c3/evil", IPs: []string{"192.168.3.1"}, PodCIDRs: []string{cidr}}
		if hostile.Check() != nil {
			return // the mesh refuses such a record before the router sees it
		}
		live := map[netip.Addr]ipcache.Entry{}
		for _, a := range []string{"10.2.1.5", "10.2.1.200"} {
			e := ipcache.Entry{IP: netip.MustParseAddr(a), Identity: identity.Compose(2, 300), HostIP: honest.IP(), Node: honest.Name}
			live[e.IP] = e
		}
		steps := []func(){
			func() { pr.NodeChanged(honest, false) },
			func() { pr.NodeChanged(hostile, false) },
			func() {
				for _, e := range live {
					pr.EntryChanged(e, false)
				}
			},
			func() {
				if ip, err := netip.ParseAddr(addr); err == nil && ip.Is4() {
					pr.EntryChanged(ipcache.Entry{IP: ip, Identity: identity.Compose(3, 300), HostIP: hostile.IP(), Node: hostile.Name}, false)
				}
			},
		}
		for i := range steps {
			steps[(i+int(op))%len(steps)]()
		}
		local := netip.MustParsePrefix("10.1.1.0/24")
		for p, v := range sp.ipc {
			if !v.cover {
				continue
			}
			if p.Bits() < MinCoverBits || p.Overlaps(local) {
				t.Fatalf("cover %s (hostile CIDR %q)", p, cidr)
			}
			for q, w := range sp.ipc {
				if w.cover && q != p && q.Overlaps(p) {
					t.Fatalf("covers %s and %s overlap", p, q)
				}
			}
		}
		check(t, "hostile "+cidr, pr.sparse, sp, full, need, live)
	})
}

// A node of this cluster that goes leaves no claim in the overlap index:
// a remote node taking its pod CIDR later gets its cover. Before, a local
// node's pod CIDRs stayed indexed after its delete, and such a remote
// node's pods each needed a /32.
func TestSparseLocalNodeGoneLeavesNoOverlap(t *testing.T) {
	inNetns(t)
	r, f := sparseRouter(sparse.NewNeed(1, false))
	local := node.Node{Name: "n2", IPs: []string{"192.168.1.2"}, PodCIDRs: []string{"10.3.0.0/24"}}
	r.NodeChanged(local, false)
	r.NodeChanged(local, true)
	r.NodeChanged(node.Node{Name: "c2/x", IPs: []string{"192.168.2.1"}, PodCIDRs: []string{"10.3.0.0/24"}}, false)
	r.EntryChanged(ipcache.Entry{IP: netip.MustParseAddr("10.3.0.5"), Identity: identity.Compose(2, 300), HostIP: netip.MustParseAddr("192.168.2.1"), Node: "c2/x"}, false)
	if v, ok := f.ipc[netip.MustParsePrefix("10.3.0.0/24")]; !ok || !v.cover {
		t.Fatalf("no cover for a remote pod CIDR a gone local node had: %v", f.ipc)
	}
}
