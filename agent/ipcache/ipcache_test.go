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
	"github.com/filament-net/filament/internal/testutil"
)

// Remote entries: an explicit withdrawal goes at once; entries that vanish
// because their node's lease ended stay while the node is reachable (and
// are written again under its new lease), and go once it is seen down.
func TestHoldExpiredWhileReachable(t *testing.T) {
	ep := testutil.Etcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kvA, kvB := testutil.Connect(t, ep), testutil.Connect(t, ep)
	leaseA, err := kvA.GrantLease(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	leaseB, err := kvB.GrantLease(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	renewed := make(chan int64, 1)
	leaseB.OnRenew(func(_ context.Context, id int64) { renewed <- id })
	a := ipcache.New(ctx, kvA, leaseA, "c1", "a")
	b := ipcache.New(ctx, kvB, leaseB, "c1", "b")
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
		if err := b.Publish(ctx, ipcache.Entry{IP: ip, Identity: 1000, HostIP: netip.MustParseAddr("172.30.0.2")}); err != nil {
			t.Fatal(err)
		}
		expect(ip.String() + " deleted=false")
	}
	// A deleted endpoint: withdrawn at once, reachable node or not.
	if err := b.Withdraw(ctx, ip2); err != nil {
		t.Fatal(err)
	}
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
