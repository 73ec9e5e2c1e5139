package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/internal/testutil"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestGetPutDeleteCreate(t *testing.T) {
	c := testutil.EtcdClient(t)
	x := ctx(t)
	if _, err := c.Get(x, "filament/a"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("get absent: want ErrNotFound, got %v", err)
	}
	if err := c.Put(x, "filament/a", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	kv, err := c.Get(x, "filament/a")
	if err != nil || string(kv.Value) != "1" {
		t.Fatalf("get: %v %q", err, kv.Value)
	}
	if err := c.CreateIfAbsent(x, "filament/a", []byte("2"), 0); !errors.Is(err, kvstore.ErrExists) {
		t.Fatalf("create existing: want ErrExists, got %v", err)
	}
	if kv, _ := c.Get(x, "filament/a"); string(kv.Value) != "1" {
		t.Fatalf("failed create changed the value to %q", kv.Value)
	}
	if err := c.CreateIfAbsent(x, "filament/b", []byte("2"), 0); err != nil {
		t.Fatalf("create absent: %v", err)
	}
	if err := c.Delete(x, "filament/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(x, "filament/a"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	kvs, rev, err := c.List(x, "filament/")
	if err != nil || len(kvs) != 1 || kvs[0].Key != "filament/b" || rev == 0 {
		t.Fatalf("list: %v %v %d", err, kvs, rev)
	}
}

func next(t *testing.T, ch <-chan kvstore.Event) kvstore.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event within 10s")
	}
	return kvstore.Event{}
}

func expect(t *testing.T, ch <-chan kvstore.Event, typ kvstore.EventType, key, val string) kvstore.Event {
	t.Helper()
	ev := next(t, ch)
	if ev.Type != typ || ev.Key != key || (typ == kvstore.EventUpsert && string(ev.Value) != val) {
		t.Fatalf("want %s %s=%q, got %s %s=%q", typ, key, val, ev.Type, ev.Key, ev.Value)
	}
	return ev
}

func TestListWatch(t *testing.T) {
	c := testutil.EtcdClient(t)
	x := ctx(t)
	c.Put(x, "filament/w/a", []byte("1"), 0)
	c.Put(x, "filament/other", []byte("x"), 0)
	ch := c.Watch(x, "filament/w/", kvstore.WatchOptions{})
	expect(t, ch, kvstore.EventUpsert, "filament/w/a", "1")
	synced := expect(t, ch, kvstore.EventSynced, "", "")
	c.Put(x, "filament/w/b", []byte("2"), 0)
	c.Delete(x, "filament/w/a")
	expect(t, ch, kvstore.EventUpsert, "filament/w/b", "2")
	del := expect(t, ch, kvstore.EventDelete, "filament/w/a", "")

	// Resume from a revision: only later changes arrive, no list.
	ch2 := c.Watch(x, "filament/w/", kvstore.WatchOptions{Revision: synced.Revision})
	expect(t, ch2, kvstore.EventUpsert, "filament/w/b", "2")
	expect(t, ch2, kvstore.EventDelete, "filament/w/a", "")
	ch3 := c.Watch(x, "filament/w/", kvstore.WatchOptions{Revision: del.Revision})
	c.Put(x, "filament/w/c", []byte("3"), 0)
	expect(t, ch3, kvstore.EventUpsert, "filament/w/c", "3")
}

func TestWatchResyncsAfterCompaction(t *testing.T) {
	c := testutil.EtcdClient(t)
	x := ctx(t)
	c.Put(x, "filament/w/a", []byte("1"), 0)
	c.Put(x, "filament/w/b", []byte("1"), 0)
	_, rev, _ := c.List(x, "filament/w/")
	// Changes the watcher will never see as events.
	c.Delete(x, "filament/w/a")
	c.Put(x, "filament/w/b", []byte("2"), 0)
	c.Put(x, "filament/w/c", []byte("3"), 0)
	_, now, _ := c.List(x, "filament/w/")
	if err := c.Compact(x, now); err != nil {
		t.Fatal(err)
	}
	ch := c.Watch(x, "filament/w/", kvstore.WatchOptions{Revision: rev, Known: []string{"filament/w/a", "filament/w/b"}})
	got := map[string]string{}
	for {
		ev := next(t, ch)
		if ev.Type == kvstore.EventSynced {
			break
		}
		got[ev.Type.String()+" "+ev.Key] = string(ev.Value)
	}
	want := map[string]string{"upsert filament/w/b": "2", "upsert filament/w/c": "3", "delete filament/w/a": ""}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("resync: got %v want %v", got, want)
	}
	c.Put(x, "filament/w/d", []byte("4"), 0)
	expect(t, ch, kvstore.EventUpsert, "filament/w/d", "4")
}

// A watch with TrimPrefix reports keys without it, listed or changed, and
// the list's upserts carry etcd's count of the whole list.
func TestWatchTrimPrefix(t *testing.T) {
	c := testutil.EtcdClient(t)
	x := ctx(t)
	c.Put(x, "filament/copy/east/w/a", []byte("1"), 0)
	c.Put(x, "filament/copy/east/w/b", []byte("2"), 0)
	ch := c.Watch(x, "filament/copy/east/w/", kvstore.WatchOptions{TrimPrefix: "filament/copy/east/"})
	if ev := expect(t, ch, kvstore.EventUpsert, "w/a", "1"); ev.Listed != 2 {
		t.Errorf("a list of 2 keys: Listed %d", ev.Listed)
	}
	expect(t, ch, kvstore.EventUpsert, "w/b", "2")
	expect(t, ch, kvstore.EventSynced, "", "")
	c.Put(x, "filament/copy/east/w/c", []byte("3"), 0)
	if ev := expect(t, ch, kvstore.EventUpsert, "w/c", "3"); ev.Listed != 0 {
		t.Errorf("a change, not a list: Listed %d", ev.Listed)
	}
	c.Delete(x, "filament/copy/east/w/a")
	expect(t, ch, kvstore.EventDelete, "w/a", "")
}

// ListPages reads a prefix in pages, all at the first page's revision (a
// key written meanwhile is not listed), in key order, until told to stop.
func TestListPages(t *testing.T) {
	c := testutil.EtcdClient(t)
	x := ctx(t)
	for _, k := range []string{"e", "a", "d", "b", "c"} {
		c.Put(x, "filament/p/"+k, []byte(k), 0)
	}
	c.Put(x, "filament/pz", []byte("outside"), 0)
	var got []string
	rev, err := c.ListPages(x, "filament/p/", 2, func(kv kvstore.KeyValue) bool {
		got = append(got, kv.Key+"="+string(kv.Value))
		if len(got) == 1 {
			c.Put(x, "filament/p/f", []byte("later"), 0)
		}
		return true
	})
	want := "[filament/p/a=a filament/p/b=b filament/p/c=c filament/p/d=d filament/p/e=e]"
	if err != nil || fmt.Sprint(got) != want {
		t.Fatalf("pages of 2: got %v, %v; want %s", got, err, want)
	}
	if _, now, _ := c.List(x, "filament/p/"); now != rev+1 {
		t.Fatalf("listed at revision %d, want the one before the write during the list (%d)", rev, now-1)
	}
	got = nil
	if _, err := c.ListPages(x, "filament/p/", 2, func(kv kvstore.KeyValue) bool { got = append(got, kv.Key); return len(got) < 3 }); err != nil || len(got) != 3 {
		t.Fatalf("stopped after 3: got %v, %v", got, err)
	}
}

// An untracked watch keeps no keys: each list is preceded by EventResync
// and a resync after a compaction reports what is there, no deletions.
func TestUntrackedWatchResync(t *testing.T) {
	c := testutil.EtcdClient(t)
	x := ctx(t)
	c.Put(x, "filament/w/a", []byte("1"), 0)
	ch := c.Watch(x, "filament/w/", kvstore.WatchOptions{Untracked: true, Known: []string{"filament/w/z"}})
	expect(t, ch, kvstore.EventResync, "", "")
	expect(t, ch, kvstore.EventUpsert, "filament/w/a", "1")
	expect(t, ch, kvstore.EventSynced, "", "")
	c.Put(x, "filament/w/b", []byte("2"), 0)
	expect(t, ch, kvstore.EventUpsert, "filament/w/b", "2")
	c.Delete(x, "filament/w/b")
	expect(t, ch, kvstore.EventDelete, "filament/w/b", "")
	_, rev, _ := c.List(x, "filament/w/")

	// Resuming from a compacted revision: a list of what is there.
	c.Delete(x, "filament/w/a")
	c.Put(x, "filament/w/c", []byte("3"), 0)
	_, now, _ := c.List(x, "filament/w/")
	if err := c.Compact(x, now); err != nil {
		t.Fatal(err)
	}
	ch = c.Watch(x, "filament/w/", kvstore.WatchOptions{Untracked: true, Revision: rev})
	expect(t, ch, kvstore.EventResync, "", "")
	expect(t, ch, kvstore.EventUpsert, "filament/w/c", "3")
	expect(t, ch, kvstore.EventSynced, "", "")
	c.Put(x, "filament/w/d", []byte("4"), 0)
	expect(t, ch, kvstore.EventUpsert, "filament/w/d", "4")
}

func TestLeaseKeysVanish(t *testing.T) {
	c := testutil.EtcdClient(t)
	x := ctx(t)
	// 3 s: long enough that a busy machine does not miss a keepalive
	// (sent every third of the TTL), short enough to wait out.
	l, err := c.GrantLease(x, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Put(x, "filament/leased", []byte("v"), l.ID()); err != nil {
		t.Fatal(err)
	}
	// Kept alive past its TTL.
	time.Sleep(4500 * time.Millisecond)
	if _, err := c.Get(x, "filament/leased"); err != nil {
		t.Fatalf("key under a kept-alive lease vanished: %v", err)
	}
	// Abandoned like a dead node: gone after the TTL.
	l.Abandon()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Get(x, "filament/leased"); errors.Is(err, kvstore.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("key of an abandoned lease still there after 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	l2, _ := c.GrantLease(x, 10*time.Second)
	c.Put(x, "filament/leased2", []byte("v"), l2.ID())
	if err := l2.Close(x); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(x, "filament/leased2"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("revoked lease kept its key: %v", err)
	}
}

func TestLeaseRenewedAfterLoss(t *testing.T) {
	c := testutil.EtcdClient(t)
	x := ctx(t)
	l, err := c.GrantLease(x, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	renewed := make(chan int64, 1)
	l.OnRenew(func(_ context.Context, id int64) { renewed <- id })
	old := l.ID()
	// Revoke behind the holder's back, as etcd does when a lease expires.
	if _, err := c.Raw().Revoke(x, clientLeaseID(old)); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-renewed:
		if id == old || l.ID() != id {
			t.Fatalf("renewed lease id %x, old %x, current %x", id, old, l.ID())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("lost lease was not granted again")
	}
	l.Close(x)
}

func TestConfigErrors(t *testing.T) {
	x := ctx(t)
	if _, err := kvstore.Connect(x, kvstore.Config{}); !errors.Is(err, kvstore.ErrConfig) {
		t.Fatalf("no endpoints: %v", err)
	}
	if _, err := (kvstore.Config{CAFile: "/nonexistent/ca.pem"}).TLSConfig(); !errors.Is(err, kvstore.ErrConfig) {
		t.Fatalf("bad ca file: %v", err)
	}
	if _, err := (kvstore.Config{CertFile: "/x"}).TLSConfig(); !errors.Is(err, kvstore.ErrConfig) {
		t.Fatalf("cert without key: %v", err)
	}
}

func clientLeaseID(id int64) clientv3.LeaseID { return clientv3.LeaseID(id) }

// A list whose revision is compacted between its pages fails with the
// compaction error; a watch then lists again in one piece, so it ends
// (synced, with every key) however slow its reader.
func TestListCompactedBetweenPages(t *testing.T) {
	c := testutil.EtcdClient(t)
	x := ctx(t)
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		c.Put(x, "filament/q/"+k, []byte(k), 0)
	}
	compact := func() {
		c.Put(x, "filament/q/f", []byte("f"), 0)
		_, now, _ := c.List(x, "filament/q/")
		if err := c.Compact(x, now); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	_, err := c.ListPages(x, "filament/q/", 2, func(kvstore.KeyValue) bool {
		if n++; n == 1 {
			compact()
		}
		return true
	})
	if !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("list compacted between pages: %v, want ErrCompacted", err)
	}

	// More keys than the watch's channel holds: it is blocked in the
	// middle of its list when the compaction comes.
	for i := range 300 {
		c.Put(x, fmt.Sprintf("filament/q/k%03d", i), []byte("v"), 0)
	}
	defer kvstore.SetListPage(2)()
	ch := c.Watch(x, "filament/q/", kvstore.WatchOptions{})
	first := next(t, ch)
	compact()
	// And again every 100 events: a paged list read again would be
	// compacted again each time, and never end.
	seen := map[string]bool{first.Key: true}
	for n := 1; ; n++ {
		ev := next(t, ch)
		if ev.Type == kvstore.EventSynced {
			break
		}
		seen[ev.Key] = true
		if n%100 == 0 {
			compact()
		}
	}
	if len(seen) != 306 {
		t.Errorf("synced after %d keys, want 306", len(seen))
	}
}

// Watches sharing a ListGate of one slot list one at a time: a list
// whose reader has not taken its events holds the slot, and another
// watch's list waits for it (its EventResync comes, its keys do not);
// once the first list's last page is read, the second lists. Page sets
// the size of each read (here 10 keys, so the 200 keys take 20 pages).
func TestWatchListGate(t *testing.T) {
	c := testutil.EtcdClient(t)
	x := ctx(t)
	for i := range 200 {
		c.Put(x, fmt.Sprintf("filament/ga/%03d", i), []byte("a"), 0)
	}
	c.Put(x, "filament/gb/k", []byte("b"), 0)
	gate := kvstore.NewListGate(1)
	a := c.Watch(x, "filament/ga/", kvstore.WatchOptions{Untracked: true, Page: 10, Lists: gate})
	expect(t, a, kvstore.EventResync, "", "")
	// a's list now fills its channel and waits for this reader.
	time.Sleep(100 * time.Millisecond)
	if len(gate) != 1 {
		t.Fatalf("a's list holds %d slots, want the one", len(gate))
	}
	b := c.Watch(x, "filament/gb/", kvstore.WatchOptions{Untracked: true, Lists: gate})
	expect(t, b, kvstore.EventResync, "", "")
	select {
	case ev := <-b:
		t.Fatalf("b listed while a's list held the only slot: %s %s", ev.Type, ev.Key)
	case <-time.After(300 * time.Millisecond):
	}
	for i := range 200 {
		expect(t, a, kvstore.EventUpsert, fmt.Sprintf("filament/ga/%03d", i), "a")
	}
	expect(t, a, kvstore.EventSynced, "", "")
	expect(t, b, kvstore.EventUpsert, "filament/gb/k", "b")
	expect(t, b, kvstore.EventSynced, "", "")

	// A watch waiting for a slot ends with its context.
	for i := range 200 {
		c.Put(x, fmt.Sprintf("filament/gc/%03d", i), []byte("c"), 0)
	}
	held := c.Watch(x, "filament/gc/", kvstore.WatchOptions{Untracked: true, Page: 10, Lists: gate})
	expect(t, held, kvstore.EventResync, "", "")
	time.Sleep(100 * time.Millisecond)
	if len(gate) != 1 {
		t.Fatalf("held's list holds %d slots, want the one", len(gate))
	}
	wctx, cancel := context.WithCancel(x)
	waiting := c.Watch(wctx, "filament/gb/", kvstore.WatchOptions{Untracked: true, Lists: gate})
	expect(t, waiting, kvstore.EventResync, "", "")
	cancel()
	select {
	case ev, ok := <-waiting:
		if ok {
			t.Fatalf("a watch waiting for a slot went on after its context ended: %s %s", ev.Type, ev.Key)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a watch waiting for a slot did not end with its context")
	}
}
