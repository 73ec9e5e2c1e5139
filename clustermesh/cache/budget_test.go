package cache_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/apiserver/apiservertest"
	"github.com/filament-net/filament/clustermesh/cache"
)

// The cache's etcd is this cluster's own kvstore: a remote holds at most a
// budget of bytes there, each ipcache value at most what agents take
// (ipcache.MaxValueLen), and writes at most at a rate, so a hostile
// remote's large values or rewrites without end cannot fill the
// database (past its quota etcd refuses every write of the cluster).
// Found 2026-12-05 by reading the cache: only the number of keys and 1 MiB
// a value were bounded.
func TestCacheHoldsBoundedBytes(t *testing.T) {
	defer cache.SetBudget(25<<10, 2<<10, 16<<10)() // 25 KiB held, 2 KiB/s after 16 KiB
	home, root := homeRoot(t)
	east := apiservertest.Start(t, "east", 7)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// An ipcache value over what agents take.
	east.Agent.Put(ctx, ipcache.Prefix+"east/10.7.0.1", []byte(`{"pad":"`+strings.Repeat("x", ipcache.MaxValueLen)+`"}`), 0)
	// Node records of 6 KiB: 16 KiB pass at once, the rest at 2 KiB/s, and
	// past 25 KiB none.
	big := func(i int) []byte {
		return []byte(fmt.Sprintf(`{"name":"n%d","pad":"%s"}`, i, strings.Repeat("y", 6<<10)))
	}
	for i := 1; i <= 5; i++ {
		east.Agent.Put(ctx, fmt.Sprintf("%seast/n%d", node.NodesPrefix, i), big(i), 0)
	}
	remotes := t.TempDir()
	east.WriteRemoteConfig(t, remotes)
	start := time.Now()
	go cache.Run(ctx, remotes, root, func() int64 { return 0 })
	cachedNodes := clustermesh.CachePrefix + "east/" + node.NodesPrefix + "east/"
	count := func() int {
		kvs, _, _ := home.Agent.List(ctx, cachedNodes)
		return len(kvs)
	}
	deadline := time.Now().Add(20 * time.Second)
	for count() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	// The third record (18 KiB in all) waits for the rate: about 2 KiB
	// at 2 KiB/s.
	time.Sleep(300 * time.Millisecond)
	if n := count(); n != 2 {
		t.Errorf("%d node records copied %v after the start, want 2 (the burst; the third waits a second for the rate)", n, time.Since(start))
	}
	for count() < 4 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(4 * time.Second) // the fifth would have had the rate by now
	if n := count(); n != 4 {
		t.Errorf("%d node records of 6 KiB held, want 4 (a budget of 25 KiB)", n)
	}
	if _, err := home.Agent.Get(ctx, clustermesh.CachePrefix+"east/"+ipcache.Prefix+"east/10.7.0.1"); err == nil {
		t.Error("an ipcache value over ipcache.MaxValueLen was copied")
	}
}

// A key's bytes count toward a remote's budget and its rate, and a key
// longer than any a remote's agents write is not copied: until
// 2026-12-07 only values were counted, so keys of 60 MiB with empty
// values passed every bound and about 140 filled this cluster's etcd.
func TestCacheCountsKeyBytes(t *testing.T) {
	defer cache.SetBudget(25<<10, 64<<10, 64<<10)() // 25 KiB held, no wait
	home, root := homeRoot(t)
	east := apiservertest.Start(t, "east", 7)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// 40 node keys of 1,000 bytes with empty values, and two over
	// clustermesh.MaxRemoteKey.
	for i := range 40 {
		name := fmt.Sprintf("n%02d-%s", i, strings.Repeat("k", 1000-len(node.NodesPrefix+"east/")-4))
		east.Agent.Put(ctx, node.NodesPrefix+"east/"+name, nil, 0)
	}
	for i := range 2 {
		east.Agent.Put(ctx, fmt.Sprintf("%seast/long%d-%s", node.NodesPrefix, i, strings.Repeat("l", clustermesh.MaxRemoteKey)), nil, 0)
	}
	remotes := t.TempDir()
	east.WriteRemoteConfig(t, remotes)
	go cache.Run(ctx, remotes, root, func() int64 { return 0 })
	cachedNodes := clustermesh.CachePrefix + "east/" + node.NodesPrefix + "east/"
	var kvs []kvstore.KeyValue
	deadline := time.Now().Add(20 * time.Second)
	for {
		kvs, _, _ = home.Agent.List(ctx, cachedNodes)
		if len(kvs) >= 20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second) // what was going to be copied is by now
	kvs, _, _ = home.Agent.List(ctx, cachedNodes)
	if len(kvs) < 20 || len(kvs) > 25 {
		t.Errorf("%d keys of 1,000 bytes copied, want 20-25 (a budget of 25 KiB)", len(kvs))
	}
	for _, kv := range kvs {
		if strings.Contains(kv.Key, "/long") {
			t.Errorf("a key of %d bytes copied", len(kv.Key))
		}
	}
}

// The keys the cache refuses are not remembered by its watches: until
// 2026-12-07 every key a remote wrote under a copied prefix stayed in the
// watch's set of keys (to report its deletion after a resync), past
// every bound on what is copied, and in the first list's set of keys
// seen. Nor does each refusal write the status to this cluster's etcd or
// a warning to the log, as until 2026-12-07 (2,000 refusals, 2,000
// writes).
func TestCacheRefusedKeysNotRemembered(t *testing.T) {
	defer cache.SetLimit(node.NodesPrefix+"east/", 3)()
	_, root := homeRoot(t)
	east := apiservertest.Start(t, "east", 7)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 2000
	apiservertest.PutEmpty(t, east.Root(t), n, func(i int) string { return fmt.Sprintf("%seast/x%d", node.NodesPrefix, i) })
	before := kvstore.TrackedKeys()
	warnings := apiservertest.CountWarnings(t)
	remotes := t.TempDir()
	east.WriteRemoteConfig(t, remotes)
	go cache.Run(ctx, remotes, root, func() int64 { return 0 })
	deadline := time.Now().Add(30 * time.Second)
	for {
		var st cache.Status
		if v, err := root.Get(ctx, clustermesh.CacheStatusKey("east")); err == nil {
			json.Unmarshal(v.Value, &st)
		}
		if st.Ready && st.Rejected >= n-3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("east not copied: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d := kvstore.TrackedKeys() - before; d > n/4 {
		t.Errorf("the cache's watches remember %d keys of east's, which wrote %d node keys (3 copied)", d, n)
	}
	// The refusals are counted in the status, written at most once a
	// second, and logged up to a rate.
	raw, err := root.Raw().Get(ctx, clustermesh.CacheStatusKey("east"))
	if err != nil || len(raw.Kvs) != 1 {
		t.Fatalf("status: %v %v", raw, err)
	}
	if v := raw.Kvs[0].Version; v > 20 {
		t.Errorf("the status was written %d times, want at most 20 (once a second at most for the refusals)", v)
	}
	if w := warnings(); w > 100 {
		t.Errorf("%d warnings logged for %d refused keys, want at most 100 (a burst, then one a second)", w, n-3)
	}
}

// homeRoot starts the apiserver of the cache's own cluster, home (ID 1),
// and connects to it as root (closed at cleanup).
func homeRoot(t *testing.T) (*apiservertest.Server, *kvstore.Client) {
	t.Helper()
	home := apiservertest.Start(t, "home", 1)
	return home, home.Root(t)
}
