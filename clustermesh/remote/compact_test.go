package remote

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/clustermesh"
)

func entry(ip string, id uint32, node, pod string) ipcache.Entry {
	return ipcache.Entry{IP: netip.MustParseAddr(ip), Identity: identity.NumericIdentity(id), HostIP: netip.MustParseAddr("172.31.0.1"),
		Node: node, Namespace: "default", Pod: pod}
}

// Every field of an entry counts: a change of any passes on, a repeat
// does not.
func TestIPMirrorPut(t *testing.T) {
	m := newIPMirror()
	e := entry("10.2.0.1", 0x20100, "c2/n1", "p1")
	if !m.put(e) || m.put(e) {
		t.Fatal("first put passes on, an equal one does not")
	}
	changes := []func(*ipcache.Entry){
		func(e *ipcache.Entry) { e.Identity++ },
		func(e *ipcache.Entry) { e.HostIP = netip.MustParseAddr("172.31.0.2") },
		func(e *ipcache.Entry) { e.HostIP = netip.Addr{} },
		func(e *ipcache.Entry) { e.Node = "c2/n2" },
		func(e *ipcache.Entry) { e.Namespace = "other" },
		func(e *ipcache.Entry) { e.Pod = "p2" },
		// Moved between fields: lengths are hashed too.
		func(e *ipcache.Entry) { e.Namespace, e.Pod = "defaultp", "1" },
	}
	for i, change := range changes {
		x := e
		change(&x)
		if !m.put(x) {
			t.Errorf("change %d not passed on", i)
		}
		if !m.put(e) {
			t.Errorf("change %d: going back not passed on", i)
		}
	}
	got, ok := m.remove(e.IP)
	if !ok || got.IP != e.IP || got.Node != e.Node {
		t.Fatalf("remove: %+v %v", got, ok)
	}
	if _, ok := m.remove(e.IP); ok || m.len() != 0 {
		t.Fatal("removed twice")
	}
	if len(m.nodes.index) != 0 {
		t.Fatalf("node names left: %v", m.nodes.index)
	}
}

// A list's count is the remote's claim: room is made ahead only in an
// empty mirror, no more than maxPresize whatever the claim, and given
// back when the list ends holding much less; a mirror that holds entries
// keeps them.
func TestIPMirrorExpect(t *testing.T) {
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	m := newIPMirror()
	before := heap()
	m.startListing()
	m.expect(1 << 62) // a lie: must not panic (the room is bounded)
	e := entry("10.2.0.1", 0x20100, "c2/n1", "p1")
	if !m.put(e) {
		t.Fatal("put after expect not passed on")
	}
	if during := heap() - before; during < 1<<20 {
		t.Fatalf("room made ahead: %d bytes, expected some MiB (the test would not see it given back)", during)
	}
	if gone := m.endListing(); len(gone) != 0 || !m.has(e.IP) {
		t.Fatalf("the list's entry not kept: gone %v", gone)
	}
	if after := int64(heap()) - int64(before); after > 256<<10 {
		t.Errorf("a list of 1 entry that claimed 2^62 keeps %d bytes after it ended", after)
	}
	m.expect(1000)
	if _, ok := m.remove(e.IP); !ok {
		t.Fatal("expect on a mirror holding entries dropped them")
	}
	runtime.KeepAlive(m)
}

// A session's first list keeps what it holds, repeated or changed, and
// forgets the rest; a list that did not end leaves no marks for the next.
func TestIPMirrorListing(t *testing.T) {
	m := newIPMirror()
	for _, e := range []ipcache.Entry{entry("10.2.0.1", 0x20100, "c2/n1", "a"), entry("10.2.0.2", 0x20100, "c2/n1", "b"), entry("10.2.0.3", 0x20100, "c2/n2", "c")} {
		m.put(e)
	}
	m.startListing()
	m.put(entry("10.2.0.2", 0x20100, "c2/n1", "b")) // unchanged
	// a list that broke off here: 10.2.0.2 marked
	m.startListing()
	m.put(entry("10.2.0.1", 0x20101, "c2/n1", "a")) // changed
	gone := m.endListing()
	if len(gone) != 2 || m.len() != 1 {
		t.Fatalf("gone %+v, held %d", gone, m.len())
	}
	for _, g := range gone {
		if g.IP.String() == "10.2.0.1" {
			t.Fatalf("a listed entry went: %+v", g)
		}
	}
	// Marks are cleared: a later list that misses it drops it.
	m.startListing()
	if gone := m.endListing(); len(gone) != 1 || gone[0].Node != "c2/n1" || gone[0].IP.String() != "10.2.0.1" {
		t.Fatalf("gone after an empty list: %+v", gone)
	}
	if len(m.nodes.index) != 0 || len(m.nodes.free) != len(m.nodes.names) {
		t.Fatalf("node names left: %v, free %v of %v", m.nodes.index, m.nodes.free, m.nodes.names)
	}
}

// A remote churning node names cannot grow the table past the names its
// entries use.
func TestNodeNamesReused(t *testing.T) {
	m := newIPMirror()
	for i := 0; i < 1000; i++ {
		m.put(entry("10.2.0.1", 0x20100, "c2/n"+string(rune('a'+i%26))+string(rune('a'+i/26)), "p"))
	}
	if len(m.nodes.names) > 2 || len(m.nodes.index) != 1 {
		t.Fatalf("names table: %d slots, %d in use", len(m.nodes.names), len(m.nodes.index))
	}
}

// The mirror's heap per entry (issue 19 part 2: ≤ 64 B per remote
// endpoint not installed, with the router's compact store beside it),
// beside the same entries held in full as the mirror did before (baseline,
// same run).
func BenchmarkIPMirrorHeap(b *testing.B) {
	const n = 1 << 20
	fill := func(put func(ipcache.Entry)) float64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		before := ms.HeapAlloc
		for i := 0; i < n; i++ {
			ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
			put(ipcache.Entry{IP: ip, Identity: 0x20100, HostIP: netip.MustParseAddr("172.31.0.1"), Node: "c2/n" + strconv.Itoa(i%100),
				Namespace: "default", Pod: "pod-" + strconv.Itoa(i)})
		}
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return float64(ms.HeapAlloc-before) / n
	}
	m := newIPMirror()
	compact := fill(func(e ipcache.Entry) { m.put(e) })
	runtime.KeepAlive(m)
	m = nil
	full := map[netip.Addr]ipcache.Entry{}
	baseline := fill(func(e ipcache.Entry) { full[e.IP] = e })
	runtime.KeepAlive(full)
	b.ReportMetric(compact, "compact-B/entry")
	b.ReportMetric(baseline, "full-entries-B/entry")
	b.ReportMetric(0, "ns/op")
}

// FuzzIPMirror runs operations from the fuzzer's bytes (put, remove, a
// refused value, a listing begun or ended) on the mirror and on a plain map of full entries
// side by side: what each passes on, and what a listing's end forgets,
// must be the same.
func FuzzIPMirror(f *testing.F) {
	f.Add([]byte{0, 1, 2, 0, 1, 3, 1, 1, 0, 2, 0, 2, 5, 3, 0, 0})
	f.Add([]byte{2, 0, 0, 0, 1, 1, 0, 2, 2, 3, 3, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		m := newIPMirror()
		ref := map[netip.Addr]ipcache.Entry{}
		var listed map[netip.Addr]bool
		for len(ops) >= 3 {
			op, a, v := ops[0]%5, ops[1]%8, ops[2]
			ops = ops[3:]
			ip := netip.AddrFrom4([4]byte{10, 2, 0, a})
			switch op {
			case 0: // put
				e := entry(ip.String(), 0x20100+uint32(v%3), "c2/n"+string(rune('0'+v%4)), "p"+string(rune('0'+v%5)))
				old, had := ref[ip]
				want := !had || old != e
				ref[ip] = e
				if listed != nil {
					listed[ip] = true
				}
				if got := m.put(e); got != want {
					t.Fatalf("put %+v passed on %v, want %v", e, got, want)
				}
			case 1: // remove
				old, had := ref[ip]
				delete(ref, ip)
				got, ok := m.remove(ip)
				if ok != had || (ok && (got.IP != old.IP || got.Node != old.Node)) {
					t.Fatalf("remove %s: %+v %v, want %+v %v", ip, got, ok, old, had)
				}
			case 4: // a refused value: what the key held stays
				if _, had := ref[ip]; had && listed != nil {
					listed[ip] = true
				}
				m.keepListed(ip)
			case 2:
				m.startListing()
				listed = map[netip.Addr]bool{}
			case 3:
				if listed == nil {
					continue
				}
				want := map[netip.Addr]string{}
				for ip, e := range ref {
					if !listed[ip] {
						want[ip] = e.Node
						delete(ref, ip)
					}
				}
				gone := m.endListing()
				if len(gone) != len(want) {
					t.Fatalf("listing's end forgot %+v, want %v", gone, want)
				}
				for _, g := range gone {
					if want[g.IP] != g.Node {
						t.Fatalf("listing's end forgot %+v, want %v", gone, want)
					}
				}
				listed = nil
			}
			if m.len() != len(ref) {
				t.Fatalf("holds %d, want %d", m.len(), len(ref))
			}
			marked := 0
			for _, c := range m.entries {
				if c.node&listedBit != 0 {
					marked++
				}
			}
			if marked != m.marked {
				t.Fatalf("%d entries marked, counted %d", marked, m.marked)
			}
		}
		used := map[string]bool{}
		for _, e := range ref {
			used[e.Node] = true
		}
		if len(m.nodes.index) != len(used) {
			t.Fatalf("node names %v, in use %v", m.nodes.index, used)
		}
	})
}

// scripted is a source whose watch replays events (and checks the
// ipcache prefix is watched untracked).
type scripted struct {
	t   *testing.T
	evs []kvstore.Event
}

func (s scripted) Get(context.Context, string) (kvstore.KeyValue, error) {
	return kvstore.KeyValue{}, kvstore.ErrNotFound
}

func (s scripted) Watch(_ context.Context, prefix string, o kvstore.WatchOptions) <-chan kvstore.Event {
	if !o.Untracked {
		s.t.Errorf("the ipcache prefix %s is watched with a set of its keys", prefix)
	}
	ch := make(chan kvstore.Event, len(s.evs))
	for _, ev := range s.evs {
		ch <- ev
	}
	close(ch)
	return ch
}

// The ipcache entries are watched untracked: a resync after a compaction
// (EventResync, the list, EventSynced) removes, through the mirror's
// marks, the entries the list no longer holds, and only those; the first
// list signals the session once.
func TestFollowUntrackedResync(t *testing.T) {
	var got []string
	m := NewManager(t.TempDir(), "local", 1, 0, Callbacks{Entry: func(e ipcache.Entry, deleted bool) {
		got = append(got, fmt.Sprintf("%s %v %v", e.IP, e.Node, deleted))
	}})
	c := &cluster{m: m, name: "east", id: 7, ips: newIPMirror()}
	c.ips.startListing() // as the session does
	put := func(ip string) kvstore.Event {
		b, _ := json.Marshal(entry(ip, uint32(identity.Compose(7, 300)), "n1", "p"))
		return kvstore.Event{Type: kvstore.EventUpsert, Key: ipcache.Prefix + "east/" + ip, Value: b}
	}
	src := scripted{t: t, evs: []kvstore.Event{
		{Type: kvstore.EventResync}, put("10.7.0.1"), put("10.7.0.2"), {Type: kvstore.EventSynced},
		put("10.7.0.3"),
		// Compacted: listed again, 10.7.0.2 gone meanwhile.
		{Type: kvstore.EventResync}, put("10.7.0.1"), put("10.7.0.3"), {Type: kvstore.EventSynced},
	}}
	synced := make(chan string, 2)
	c.follow(context.Background(), src, ipcache.Prefix+"east/", c.ipEvent, synced)
	want := []string{"10.7.0.1 east/n1 false", "10.7.0.2 east/n1 false", "10.7.0.3 east/n1 false", "10.7.0.2 east/n1 true"}
	if !slices.Equal(got, want) {
		t.Fatalf("passed on %q, want %q", got, want)
	}
	if len(synced) != 1 || c.ips.len() != 2 || c.ips.listing {
		t.Fatalf("%d synced signals, %d entries mirrored, listing %v; want 1, 2, false", len(synced), c.ips.len(), c.ips.listing)
	}
}

// A refused value (outside the cluster's range, too long, unreadable)
// changes nothing, in a list as in the watch: the entry the key held stays
// through a relist that brings only a refused value for it.
func TestRefusedValueKeepsEntryInList(t *testing.T) {
	var got []string
	m := NewManager(t.TempDir(), "local", 1, 0, Callbacks{Entry: func(e ipcache.Entry, deleted bool) {
		got = append(got, fmt.Sprintf("%s %v", e.IP, deleted))
	}})
	c := &cluster{m: m, name: "east", id: 7, ips: newIPMirror()}
	val := func(ip string, cluster uint32, pod string) kvstore.Event {
		b, _ := json.Marshal(entry(ip, uint32(identity.Compose(cluster, 300)), "n1", pod))
		return kvstore.Event{Type: kvstore.EventUpsert, Key: ipcache.Prefix + "east/" + ip, Value: b}
	}
	long := val("10.7.0.2", 7, strings.Repeat("p", ipcache.MaxValueLen))
	src := scripted{t: t, evs: []kvstore.Event{
		{Type: kvstore.EventResync}, val("10.7.0.1", 7, "a"), val("10.7.0.2", 7, "b"), val("10.7.0.3", 7, "c"), {Type: kvstore.EventSynced},
		{Type: kvstore.EventResync}, val("10.7.0.1", 8, "a"), long,
		{Type: kvstore.EventUpsert, Key: ipcache.Prefix + "east/10.7.0.3", Value: []byte("{")}, {Type: kvstore.EventSynced},
	}}
	c.follow(context.Background(), src, ipcache.Prefix+"east/", c.ipEvent, make(chan string, 2))
	want := []string{"10.7.0.1 false", "10.7.0.2 false", "10.7.0.3 false"}
	if !slices.Equal(got, want) {
		t.Fatalf("passed on %q, want %q", got, want)
	}
	if c.ips.len() != 3 || c.status.Rejected != 2 {
		t.Fatalf("%d entries held, %d rejected; want 3, 2", c.ips.len(), c.status.Rejected)
	}
}

// Identities, node records and services are watched untracked too (a
// tracked watch remembered every key a remote wrote): a list after a
// compaction removes the identities it no longer holds, and a refused
// key in it takes nothing with it but its own.
func TestFollowResyncDropsUnlisted(t *testing.T) {
	var got []string
	m := NewManager(t.TempDir(), "local", 1, 0, Callbacks{Identity: func(x identity.Identity, deleted bool) {
		got = append(got, fmt.Sprintf("%d %v", x.ID-identity.Compose(7, 0), deleted))
	}})
	c := &cluster{m: m, name: "east", id: 7, ips: newIPMirror(), ids: map[identity.NumericIdentity]identity.Identity{}}
	id := func(n uint32) kvstore.Event {
		return kvstore.Event{Type: kvstore.EventUpsert, Key: fmt.Sprintf("%s%d", identity.IDPrefix, identity.Compose(7, n)),
			Value: []byte(fmt.Sprintf("k8s:app=a%d;k8s:filament.io/cluster=east", n))}
	}
	over := id(303)
	over.Value = append(over.Value, strings.Repeat("x", clustermesh.MaxRemoteIdentityValue)...)
	src := scripted{t: t, evs: []kvstore.Event{
		{Type: kvstore.EventResync}, id(300), id(301), id(302), {Type: kvstore.EventSynced},
		// Compacted: listed again, 301 gone meanwhile, 303 refused.
		{Type: kvstore.EventResync}, id(300), id(302), over, {Type: kvstore.EventSynced},
	}}
	synced := make(chan string, 2)
	c.follow(context.Background(), src, identity.IDPrefix, c.identityEvent, synced)
	want := []string{"300 false", "301 false", "302 false", "301 true"}
	if !slices.Equal(got, want) {
		t.Fatalf("passed on %q, want %q", got, want)
	}
	if len(synced) != 1 || len(c.ids) != 2 || len(c.held) != 2 {
		t.Fatalf("%d synced signals, %d identities, %d keys' bytes held; want 1, 2, 2", len(synced), len(c.ids), len(c.held))
	}
}
