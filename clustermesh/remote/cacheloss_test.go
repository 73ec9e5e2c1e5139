package remote

import (
	"context"
	"testing"

	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/internal/testutil"
)

// TestCacheConfirmsLoss: in cache mode the TTL withdraws a remote only when
// this cluster's kvstore answers that the cache lost it (its cached
// cluster-config is absent). A kvstore that does not answer confirms
// nothing: an outage of the local kvstore is not the loss of every remote.
func TestCacheConfirmsLoss(t *testing.T) {
	eps := testutil.Etcd(t)
	kv := testutil.Connect(t, eps)
	m := NewManager(t.TempDir(), "local", 1, 0, Callbacks{})
	c := &cluster{m: m, name: "east"}
	if !c.cacheConfirmsLoss() {
		t.Fatal("direct mode: the loss needs no confirmation")
	}
	m.ViaCache(kv)
	if !c.cacheConfirmsLoss() {
		t.Fatal("no cached cluster-config: the cache lost the remote, but the loss is not confirmed")
	}
	key := clustermesh.CachePrefix + "east/" + clustermesh.ClusterConfigPrefix + "east"
	if err := kv.Put(context.Background(), key, []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	if c.cacheConfirmsLoss() {
		t.Fatal("the cache holds the remote's cluster-config, yet its loss is confirmed")
	}
	down := testutil.Connect(t, eps)
	down.Close() // a kvstore that does not answer
	m.ViaCache(down)
	if c.cacheConfirmsLoss() {
		t.Fatal("the local kvstore does not answer, yet the remote's loss is confirmed")
	}
}
