package ipcache_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/kvstore/embedded"
	"github.com/filament-net/filament/internal/testutil"
)

// Remote entries: an explicit withdrawal goes at once; entries that vanish
// because their node's lease ended stay while the node is reachable (and
// are written again under its new lease), and go once it is seen down.
func TestHoldExpiredWhileReachable(t *testing.T) {
	ctx, kvA, leaseB, a, b := syncPair(t)
	renewed := make(chan int64, 1)
	leaseB.OnRenew(func(_ context.Context, id int64) { renewed <- id })
	var bAlive atomic.Bool
	bAlive.Store(true)
	a.HoldExpired(func(n string) bool { return n == "b" && bAlive.Load() }, time.Minute)
	events := make(chan string, 20)
	a.Subscribe(func(e ipcache.Entry, deleted bool) { events <- fmt.Sprintf("%s deleted=%v", e.IP, deleted) })
	expect := func(want string) {
		t.Helper()
		select {
		case ev := <-events:
			if ev != want {
				t.Fatalf("event %q, want %q", ev, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no event %q", want)
		}
	}
	ip1, ip2 := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2")
	for _, ip := range []netip.Addr{ip1, ip2} {
		b.Publish(ipcache.Entry{IP: ip, Identity: 1000, HostIP: netip.MustParseAddr("172.30.0.2")})
		expect(ip.String() + " deleted=false")
	}
	// Lookup: another node's entry (a) and this node's own (b).
	for name, s := range map[string]*ipcache.Sync{"a": a, "b": b} {
		if e, ok := s.Lookup(ip1); !ok || e.Identity != 1000 {
			t.Errorf("%s: Lookup(%s) = %+v, %v", name, ip1, e, ok)
		}
		if e, ok := s.Lookup(netip.MustParseAddr("10.1.0.9")); ok {
			t.Errorf("%s: Lookup of an unknown address found %+v", name, e)
		}
	}
	// A deleted endpoint: withdrawn at once, reachable node or not.
	b.Withdraw(ip2)
	expect(ip2.String() + " deleted=true")

	// b's lease ends behind its back: nothing is withdrawn, b writes its
	// entry again under a new lease.
	if _, err := kvA.Raw().Revoke(ctx, clientv3.LeaseID(leaseB.ID())); err != nil {
		t.Fatal(err)
	}
	select {
	case <-renewed:
	case <-time.After(10 * time.Second):
		t.Fatal("b's lease was not granted again")
	}
	select {
	case ev := <-events:
		t.Fatalf("event %q although b is reachable", ev)
	case <-time.After(2 * time.Second):
	}
	if r := a.Remote(); len(r) != 1 || r[0].IP != ip1 {
		t.Fatalf("remote entries: %+v", r)
	}

	// b's lease ends for good while b is reachable, then b is seen down.
	leaseB.Abandon()
	if _, err := kvA.Raw().Revoke(ctx, clientv3.LeaseID(leaseB.ID())); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		t.Fatalf("event %q although b is reachable", ev)
	case <-time.After(time.Second):
	}
	bAlive.Store(false)
	expect(ip1.String() + " deleted=true")
}

// Publish and Withdraw do not wait for the kvstore (the policy engine
// calls them holding its lock, which a kvstore outage held until it
// answered again): during an outage they return at once, and once the
// kvstore answers the node's keys match the last of each address's
// changes (a published entry written, a withdrawn one deleted, a
// replaced one with its last identity), under the node's lease.
func TestPublishDoesNotWaitForTheKVStore(t *testing.T) {
	dir, clientURL, peerURL := t.TempDir(), testutil.FreeURL(t), testutil.FreeURL(t)
	start := func() *embedded.Server {
		s, err := embedded.Start(embedded.Config{Dir: dir, ClientURL: clientURL, PeerURL: peerURL, UnsafeNoFsync: true})
		if err != nil {
			t.Fatalf("embedded etcd: %v", err)
		}
		return s
	}
	srv := start()
	kv := testutil.Connect(t, srv.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	lease, err := kv.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	s := ipcache.New(ctx, kv, lease, "c1", "n1")
	ip1, ip2, ip3 := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.1.0.3")
	s.Publish(ipcache.Entry{IP: ip1, Identity: 1000})
	s.Publish(ipcache.Entry{IP: ip2, Identity: 1000})
	waitWrites(t, s)
	srv.Close()
	began := time.Now()
	s.Publish(ipcache.Entry{IP: ip3, Identity: 1001})
	s.Withdraw(ip2)
	s.Publish(ipcache.Entry{IP: ip1, Identity: 1002})
	if d := time.Since(began); d > time.Second {
		t.Fatalf("Publish and Withdraw took %v with the kvstore down", d)
	}
	time.Sleep(2 * time.Second) // a failed round or two
	if s.Writes() == 0 {
		t.Fatal("nothing left to write while the kvstore is down")
	}
	// The withdrawn address is not to be handed out while the others
	// still map it to its gone endpoint; a published one is not withdrawing.
	if !s.Withdrawing(ip2) || s.Withdrawing(ip3) || s.Withdrawing(ip1) {
		t.Fatalf("withdrawing during the outage: %s %v (want true), %s %v, %s %v (want false)",
			ip2, s.Withdrawing(ip2), ip3, s.Withdrawing(ip3), ip1, s.Withdrawing(ip1))
	}
	srv = start()
	defer srv.Close()
	waitWrites(t, s)
	if s.Withdrawing(ip2) {
		t.Fatalf("%s still withdrawing once written", ip2)
	}
	kvs, _, err := kv.List(ctx, ipcache.Prefix+"c1/")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]ipcache.Entry{}
	for _, e := range kvs {
		d, err := ipcache.DecodeEntry(e.Value)
		if err != nil {
			t.Fatal(err)
		}
		if e.Lease != lease.ID() {
			t.Errorf("%s under lease %x, want %x", e.Key, e.Lease, lease.ID())
		}
		got[d.IP.String()] = d
	}
	if len(got) != 2 || got["10.1.0.1"].Identity != 1002 || got["10.1.0.3"].Identity != 1001 || got["10.1.0.1"].Node != "n1" {
		t.Fatalf("stored after the outage: %+v", got)
	}
}

// waitWrites waits until s has written every change.
func waitWrites(t *testing.T, s *ipcache.Sync) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); s.Writes() != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d writes still pending", s.Writes())
		}
	}
}

// syncPair is the Syncs of two agents, a and b, of cluster c1 on one
// etcd, with a's client and b's lease; ctx ends with the test.
func syncPair(t *testing.T) (ctx context.Context, kvA *kvstore.Client, leaseB *kvstore.Lease, a, b *ipcache.Sync) {
	ep := testutil.Etcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	kvA, kvB := testutil.Connect(t, ep), testutil.Connect(t, ep)
	leaseB = testutil.GrantLease(t, ctx, kvB, 5*time.Second)
	a = ipcache.New(ctx, kvA, testutil.GrantLease(t, ctx, kvA, 5*time.Second), "c1", "a")
	b = ipcache.New(ctx, kvB, leaseB, "c1", "b")
	return ctx, kvA, leaseB, a, b
}

// A change retires the address's pod when the entry goes, or names
// another pod or node; not when the same pod's entry changes (a relabel:
// a new identity) or comes from a store that names no pods (sparse
// compact entries).
func TestRetires(t *testing.T) {
	ip := netip.MustParseAddr("10.8.0.3")
	pod := ipcache.Entry{IP: ip, Identity: 70002, Node: "c2/n1", Namespace: "default", Pod: "db-0"}
	relabelled := pod
	relabelled.Identity = 70009
	other := pod
	other.Pod = "attacker"
	otherNS := pod
	otherNS.Namespace = "tenant"
	moved := pod
	moved.Node = "c2/n2"
	compact := ipcache.Entry{IP: ip, Identity: 70000, Node: "c2/n1"}
	for _, c := range []struct {
		name    string
		old     ipcache.Entry
		had     bool
		e       ipcache.Entry
		deleted bool
		want    bool
		samePod bool // SamePod(old, e)
	}{
		{"deleted", pod, true, pod, true, true, true},
		{"deleted, not known before", ipcache.Entry{}, false, pod, true, true, false},
		{"new", ipcache.Entry{}, false, pod, false, false, false},
		{"relabelled", pod, true, relabelled, false, false, true},
		{"another pod", pod, true, other, false, true, false},
		{"another namespace's pod of the name", pod, true, otherNS, false, true, false},
		{"another node's", pod, true, moved, false, true, false},
		{"compact entry of the node", compact, true, pod, false, false, true},
	} {
		if got := ipcache.Retires(c.old, c.had, c.e, c.deleted); got != c.want {
			t.Errorf("%s: Retires = %v, want %v", c.name, got, c.want)
		}
		if got := ipcache.SamePod(c.old, c.e); got != c.samePod {
			t.Errorf("%s: SamePod = %v, want %v", c.name, got, c.samePod)
		}
		if got := ipcache.SamePodKey(ipcache.PodKey(c.old), ipcache.PodKey(c.e)); got != c.samePod {
			t.Errorf("%s: SamePodKey = %v, want %v", c.name, got, c.samePod)
		}
	}
}
