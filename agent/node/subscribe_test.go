package node_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/internal/testutil"
)

// A subscriber gets the nodes known, then every later change, in that
// order: a change during the replay (a starting agent's, which vets each
// node: signatures, routes, peers) waits for it. Found 2026-12-06 by
// reading Subscribe, as in the ipcache the same day: a node changed or
// deleted during the replay kept the replay's older record.
func TestRegistrySubscribeReplayFirst(t *testing.T) {
	ep := testutil.Etcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kvA, kvB := testutil.Connect(t, ep), testutil.Connect(t, ep)
	a, err := node.NewRegistry(ctx, kvA, testutil.GrantLease(t, ctx, kvA, 5*time.Second), node.Node{Name: "a", Cluster: "c1", IPs: []string{"172.30.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := node.NewRegistry(ctx, kvB, testutil.GrantLease(t, ctx, kvB, 5*time.Second), node.Node{Name: "b", Cluster: "c1", IPs: []string{"172.30.0.2"}})
	if err != nil {
		t.Fatal(err)
	}
	bIP := func(ns []node.Node) string {
		i := slices.IndexFunc(ns, func(n node.Node) bool { return n.Name == "b" })
		if i < 0 {
			return ""
		}
		return ns[i].IPs[0]
	}
	testutil.Eventually(t, func() bool { return bIP(a.List()) == "172.30.0.2" })
	var mu sync.Mutex
	last := ""
	testutil.SubscribeDuringChange(t, a.Subscribe, func() {
		if err := b.UpdateSelf(ctx, func(n *node.Node) { n.IPs = []string{"172.30.0.9"} }); err != nil {
			t.Error(err)
		}
		testutil.Eventually(t, func() bool { return bIP(a.List()) == "172.30.0.9" })
	}, func(n node.Node, deleted bool) {
		mu.Lock()
		defer mu.Unlock()
		if n.Name == "b" && !deleted {
			last = n.IPs[0]
		}
	})
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if last != "172.30.0.9" {
		t.Fatalf("the subscriber's last record of b has %s, the registry's 172.30.0.9", last)
	}
}
