package cache_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/apiserver/apiservertest"
	"github.com/filament-net/filament/clustermesh/cache"
	"github.com/filament-net/filament/clustermesh/remote"
)

const svcDoc = `{"metadata":{"name":"api","namespace":"shop","annotations":{"service.cilium.io/global":"true"}},
"spec":{"clusterIP":"10.96.0.20","ports":[{"port":80}]},"backends":[{"ip":"10.7.0.2","node":"n1"}]}`

// The home cluster's apiserver caches remote cluster east: its agents read
// the copy (and cannot write it), an agent's manager follows east through
// the cache alone, sees its loss when the cache loses it, and withdraws it
// after the TTL.
func TestCacheServesRemote(t *testing.T) {
	home := apiservertest.Start(t, "home", 1)
	east := apiservertest.Start(t, "east", 7)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	kv := east.Agent
	id := identity.Compose(7, 300)
	kv.Put(ctx, fmt.Sprintf("%s%d", identity.IDPrefix, id), []byte("k8s:app=web;k8s:filament.io/cluster=east"), 0)
	nb, _ := json.Marshal(node.Node{Name: "n1", Cluster: "east", IPs: []string{"172.30.7.1"}, PodCIDRs: []string{"10.7.0.0/24"}})
	kv.Put(ctx, node.NodesPrefix+"east/n1", nb, 0)
	b, _ := json.Marshal(ipcache.Entry{IP: netip.MustParseAddr("10.7.0.2"), Identity: id, Node: "n1"})
	kv.Put(ctx, ipcache.Prefix+"east/10.7.0.2", b, 0)
	kv.Put(ctx, service.Prefix+"east/shop/api", []byte(svcDoc), 0)
	// Too large to copy: refused and counted.
	kv.Put(ctx, ipcache.Prefix+"east/10.7.0.9", []byte(strings.Repeat("x", cache.MaxValue+1)), 0)

	root, err := home.Connect(clustermesh.UserRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	remotes := t.TempDir()
	east.WriteRemoteConfig(t, remotes)
	lease, err := root.GrantLease(ctx, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Close(context.Background())
	go cache.Run(ctx, remotes, root, lease.ID)

	cached := clustermesh.CachePrefix + "east/" + ipcache.Prefix + "east/10.7.0.2"
	deadline := time.Now().Add(20 * time.Second)
	for {
		if got, err := home.Agent.Get(ctx, cached); err == nil && string(got.Value) == string(b) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not cached", cached)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := home.Agent.Put(ctx, cached, []byte("{}"), 0); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("an agent wrote the cache: %v", err)
	}
	if err := home.Agent.Put(ctx, "filament/state/ip/v1/home/10.1.0.2", []byte("{}"), 0); err != nil {
		t.Fatalf("an agent can no longer write its own state: %v", err)
	}
	if _, err := home.Agent.Get(ctx, clustermesh.CachePrefix+"east/"+ipcache.Prefix+"east/10.7.0.9"); err == nil {
		t.Fatal("a value over MaxValue was cached")
	}
	// The cached cluster-config is under the lease (it goes if the cache dies).
	deadline = time.Now().Add(20 * time.Second)
	for {
		cc, err := home.Agent.Get(ctx, clustermesh.CachePrefix+"east/"+clustermesh.ClusterConfigPrefix+"east")
		if err == nil && cc.Lease == lease.ID() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cached cluster-config %+v %v, want it under lease %x", cc, err, lease.ID())
		}
		time.Sleep(50 * time.Millisecond)
	}

	var mu sync.Mutex
	got := map[string]bool{}
	record := func(what string, deleted bool) { mu.Lock(); got[what] = !deleted; mu.Unlock() }
	has := func(k string) bool { mu.Lock(); defer mu.Unlock(); return got[k] }
	m := remote.NewManager(remotes, "home", 1, 3*time.Second, remote.Callbacks{
		Node:     func(n node.Node, d bool) { record("node "+n.Name, d) },
		Identity: func(x identity.Identity, d bool) { record(fmt.Sprint("id ", x.ID), d) },
		Entry:    func(e ipcache.Entry, d bool) { record("ip "+e.IP.String(), d) },
		Service:  func(c string, s *service.Service, d bool) { record("svc "+c+" "+s.Key(), d) },
	})
	m.ViaCache(home.Agent)
	go m.Run(ctx)
	wait := func(what string, within time.Duration, cond func(remote.Status) bool) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			st := m.Status()
			if len(st) == 1 && cond(st[0]) {
				return
			}
			if time.Now().After(deadline) {
				mu.Lock()
				t.Fatalf("%s: status %+v, got %v", what, st, got)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	wait("followed through the cache", 20*time.Second, func(st remote.Status) bool {
		return st.Ready && st.Via == "cache" && st.CacheConnected && st.CacheRejected == 1 && st.HeartbeatAge != "" &&
			has("node east/n1") && has(fmt.Sprint("id ", id)) && has("ip 10.7.0.2") && has("svc east shop/api")
	})
	// A change reaches the agent through the cache.
	kv.Delete(ctx, ipcache.Prefix+"east/10.7.0.2")
	wait("deletion through the cache", 10*time.Second, func(remote.Status) bool { return !has("ip 10.7.0.2") })
	// The cache loses east: the agent sees the loss, then withdraws east
	// once the TTL has run (from the heartbeat going stale).
	east.Stop()
	wait("loss seen through the cache", 20*time.Second, func(st remote.Status) bool { return !st.Connected && !st.CacheConnected })
	wait("withdrawn", 30*time.Second, func(st remote.Status) bool {
		return st.Withdrawn && !has("node east/n1") && !has("svc east shop/api")
	})
}

// A copy of a remote that is no longer configured (removed while the
// apiserver was down) goes when the cache starts; keys of other clusters'
// copies are listed by cluster, one read each, and a key directly under
// the prefix is no cluster's and stays.
func TestCacheRemovesStaleCopies(t *testing.T) {
	_, root := homeRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, k := range []string{"a/1", "a/2", "a-x/1", "b/" + ipcache.Prefix + "b/10.9.0.1", ".odd"} {
		if err := root.Put(ctx, clustermesh.CachePrefix+k, []byte("{}"), 0); err != nil {
			t.Fatal(err)
		}
	}
	names, err := cache.CachedClusters(ctx, root)
	if err != nil || fmt.Sprint(names) != "[a-x a b]" {
		t.Fatalf("CachedClusters: %v %v, want [a-x a b]", names, err)
	}
	go cache.Run(ctx, t.TempDir(), root, func() int64 { return 0 })
	deadline := time.Now().Add(10 * time.Second)
	for {
		names, err := cache.CachedClusters(ctx, root)
		if err == nil && len(names) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("copies of unconfigured clusters left: %v %v", names, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := root.Get(ctx, clustermesh.CachePrefix+".odd"); err != nil {
		t.Errorf("the key directly under the prefix went: %v", err)
	}
}

// TestCacheHoldsBoundedCounts: the cache copies at most so many keys of a
// remote's prefix; what comes past the bound is refused and counted, a
// held key's change is still copied, and a delete makes room. Before,
// nothing bounded what a remote stored in the cache's etcd.
func TestCacheHoldsBoundedCounts(t *testing.T) {
	defer cache.SetLimit(ipcache.Prefix+"east/", 3)()
	home := apiservertest.Start(t, "home", 1)
	east := apiservertest.Start(t, "east", 7)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	put := func(i int, id identity.NumericIdentity) {
		b, _ := json.Marshal(ipcache.Entry{IP: netip.AddrFrom4([4]byte{10, 7, 0, byte(i)}), Identity: id, Node: "n1"})
		east.Agent.Put(ctx, fmt.Sprintf("%seast/10.7.0.%d", ipcache.Prefix, i), b, 0)
	}
	id := identity.Compose(7, 300)
	for i := 1; i <= 5; i++ {
		put(i, id)
	}
	root, err := home.Connect(clustermesh.UserRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	remotes := t.TempDir()
	east.WriteRemoteConfig(t, remotes)
	cached := clustermesh.CachePrefix + "east/" + ipcache.Prefix + "east/"
	// A copy left by an earlier process of a key now past the bound (the
	// list comes in key order: .4 and .5 are refused) is not served stale.
	if err := root.Put(ctx, cached+"10.7.0.5", []byte(`{"stale":true}`), 0); err != nil {
		t.Fatal(err)
	}
	go cache.Run(ctx, remotes, root, func() int64 { return 0 })
	wait := func(what string, cond func(keys []string, st cache.Status) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			kvs, _, _ := home.Agent.List(ctx, cached)
			var keys []string
			for _, kv := range kvs {
				keys = append(keys, strings.TrimPrefix(kv.Key, cached))
			}
			var st cache.Status
			if v, err := home.Agent.Get(ctx, clustermesh.CachePrefix+"east/.status"); err == nil {
				json.Unmarshal(v.Value, &st)
			}
			if cond(keys, st) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: cached %v, status %+v", what, keys, st)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	var held []string
	wait("bounded", func(keys []string, st cache.Status) bool {
		held = keys
		return st.Rejected == 2 && len(keys) == 3
	})
	// A held key's change is copied at the bound.
	id2 := identity.Compose(7, 301)
	var i int
	fmt.Sscanf(held[0], "10.7.0.%d", &i)
	put(i, id2)
	want := fmt.Sprintf(`"identity":%d`, id2)
	wait("a held key changed", func([]string, cache.Status) bool {
		v, err := home.Agent.Get(ctx, cached+held[0])
		return err == nil && strings.Contains(string(v.Value), want)
	})
	// A delete makes room.
	east.Agent.Delete(ctx, ipcache.Prefix+"east/"+held[0])
	put(9, id)
	wait("room after a delete", func(keys []string, _ cache.Status) bool {
		return len(keys) == 3 && slices.Contains(keys, "10.7.0.9")
	})
}
