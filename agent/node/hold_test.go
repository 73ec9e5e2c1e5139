package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/internal/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A node whose lease ended while failure detection still reaches it keeps
// its record (no deletion reaches subscribers) and writes it again under a
// new lease; once it is seen down, a record that ends goes.
func TestRegistryHoldsExpiredRecordOfReachableNode(t *testing.T) {
	ep := testutil.Etcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kvA, kvB := testutil.Connect(t, ep), testutil.Connect(t, ep)
	leaseA, err := kvA.GrantLease(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	a, err := node.NewRegistry(ctx, kvA, leaseA, node.Node{Name: "a", Cluster: "c1", IPs: []string{"172.30.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	a.HoldExpired(time.Minute)
	events := make(chan string, 20)
	a.Subscribe(func(n node.Node, deleted bool) { events <- fmt.Sprintf("%s deleted=%v", n.Name, deleted) })
	leaseB, err := kvB.GrantLease(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	renewed := make(chan int64, 1)
	leaseB.OnRenew(func(_ context.Context, id int64) { renewed <- id })
	if _, err := node.NewRegistry(ctx, kvB, leaseB, node.Node{Name: "b", Cluster: "c1", IPs: []string{"172.30.0.2"}}); err != nil {
		t.Fatal(err)
	}
	expect := func(want string) {
		t.Helper()
		for {
			select {
			case ev := <-events:
				if ev == want {
					return
				}
				if ev != "a deleted=false" && ev != "b deleted=false" {
					t.Fatalf("event %q while waiting for %q", ev, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no event %q", want)
			}
		}
	}
	expect("b deleted=false")

	// b's lease ends behind its back (as when etcd expires it); b is
	// reachable: nobody hears of a deletion, and b writes its record again.
	if _, err := kvA.Raw().Revoke(ctx, clientv3.LeaseID(leaseB.ID())); err != nil {
		t.Fatal(err)
	}
	select {
	case <-renewed:
	case <-time.After(10 * time.Second):
		t.Fatal("b's lease was not granted again")
	}
	deadline := time.After(2 * time.Second)
	for done := false; !done; {
		select {
		case ev := <-events:
			if ev == "b deleted=true" {
				t.Fatal("b's record was withdrawn although b is reachable")
			}
		case <-deadline:
			done = true
		}
	}
	if !a.Reachable("b") {
		t.Fatal("b is not listed any more")
	}

	// b's lease ends again for good (b stops keeping it alive), then
	// failure detection says b is down: the held record goes.
	leaseB.Abandon()
	if _, err := kvA.Raw().Revoke(ctx, clientv3.LeaseID(leaseB.ID())); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	a.SetReachable("b", false)
	expect("b deleted=true")
}
