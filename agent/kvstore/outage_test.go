package kvstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/kvstore/embedded"
	"github.com/filament-net/filament/internal/testutil"
)

// A kvstore restart shorter than the lease TTL, but longer than the client
// takes to give up on a keep-alive: the holder keeps its lease and its keys,
// with no OnRenew, and reads work again soon after the restart.
func TestLeaseKeptAcrossRestart(t *testing.T) {
	dir, clientURL, peerURL := t.TempDir(), testutil.FreeURL(t), testutil.FreeURL(t)
	start := func() *embedded.Server {
		s, err := embedded.Start(embedded.Config{Dir: dir, ClientURL: clientURL, PeerURL: peerURL, UnsafeNoFsync: true})
		if err != nil {
			t.Fatalf("embedded etcd: %v", err)
		}
		return s
	}
	s := start()
	c := testutil.Connect(t, s.Endpoints())
	x, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	// A TTL with room for a loaded machine: etcd gives the lease its whole
	// TTL again at restart, and the client must keep it alive within it.
	l, err := c.GrantLease(x, 6*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	renewed := make(chan int64, 1)
	l.OnRenew(func(_ context.Context, id int64) { renewed <- id })
	if err := c.Put(x, "filament/kept", []byte("v"), l.ID()); err != nil {
		t.Fatal(err)
	}
	id := l.ID()
	s.Close()
	// Down longer than the client waits for a keep-alive answer (the TTL).
	time.Sleep(7 * time.Second)
	s = start()
	t.Cleanup(s.Close)
	back := time.Now()
	for {
		gctx, cancel := context.WithTimeout(x, 500*time.Millisecond)
		_, err := c.Get(gctx, "filament/kept")
		cancel()
		if err == nil {
			break
		}
		if x.Err() != nil {
			t.Fatalf("the client never came back: %v", err)
		}
	}
	t.Logf("reads work again %v after the restart", time.Since(back).Round(10*time.Millisecond))
	// Past two TTLs: still the same lease, kept alive, key in place.
	time.Sleep(12 * time.Second)
	select {
	case nid := <-renewed:
		t.Fatalf("the lease was granted again (%x, was %x) although etcd still had it", nid, id)
	default:
	}
	if l.ID() != id {
		t.Fatalf("lease %x became %x", id, l.ID())
	}
	kv, err := c.Get(x, "filament/kept")
	if err != nil {
		t.Fatalf("key under the kept lease: %v", err)
	}
	if kv.Lease != id {
		t.Fatalf("key is under lease %x, want %x", kv.Lease, id)
	}
	l.Close(x)
}

// A watched delete says whether the key went with its lease: an explicit
// delete of a leased key does not, a revoked (or expired) lease does.
func TestLeaseEnded(t *testing.T) {
	c := testutil.EtcdClient(t)
	x := ctx(t)
	l, err := c.GrantLease(x, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Abandon()
	for _, k := range []string{"filament/e/explicit", "filament/e/leased"} {
		if err := c.Put(x, k, []byte("v"), l.ID()); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithCancel(x)
	defer cancel()
	ch := c.Watch(wctx, "filament/e/", kvstore.WatchOptions{})
	next := func() kvstore.Event {
		t.Helper()
		for ev := range ch {
			if ev.Type == kvstore.EventDelete {
				return ev
			}
		}
		t.Fatal("watch ended")
		return kvstore.Event{}
	}
	for ev := range ch {
		if ev.Type == kvstore.EventSynced {
			break
		}
	}
	if err := c.Delete(x, "filament/e/explicit"); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.PrevLease != l.ID() || c.LeaseEnded(x, ev) {
		t.Fatalf("explicit delete %+v: prev lease %x (want %x), said to be a lease end", ev, ev.PrevLease, l.ID())
	}
	if _, err := c.Raw().Revoke(x, clientLeaseID(l.ID())); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Key != "filament/e/leased" || !c.LeaseEnded(x, ev) {
		t.Fatalf("delete by a revoked lease %+v not said to be a lease end", ev)
	}
}
