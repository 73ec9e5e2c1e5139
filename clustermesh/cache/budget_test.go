package cache_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/ipcache"
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
	home := apiservertest.Start(t, "home", 1)
	east := apiservertest.Start(t, "east", 7)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root, err := home.Connect(clustermesh.UserRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
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
