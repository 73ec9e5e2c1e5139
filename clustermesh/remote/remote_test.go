package remote_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/clustermesh/apiserver/apiservertest"
	"github.com/filament-net/filament/clustermesh/remote"
)

// A remote cluster's nodes, identities, ipcache entries and services reach
// the callbacks; identities (and entries) outside its cluster's range and
// invalid services are rejected and counted; removing the config withdraws
// everything.
func TestFollowAndRejectOutOfRange(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	kv := srv.Agent
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	good := identity.Compose(7, 300)
	bad := identity.Compose(5, 300)
	kv.Put(ctx, fmt.Sprintf("%s%d", identity.IDPrefix, good), []byte("k8s:app=web;k8s:filament.io/cluster=east"), 0)
	kv.Put(ctx, fmt.Sprintf("%s%d", identity.IDPrefix, bad), []byte("k8s:app=spoof;k8s:filament.io/cluster=west"), 0)
	nb, _ := json.Marshal(node.Node{Name: "n1", Cluster: "east", IPs: []string{"172.30.7.1"}, PodCIDRs: []string{"10.7.0.0/24"}})
	kv.Put(ctx, node.NodesPrefix+"east/n1", nb, 0)
	for _, e := range []ipcache.Entry{{IP: netip.MustParseAddr("10.7.0.2"), Identity: good, Node: "n1"}, {IP: netip.MustParseAddr("10.7.0.3"), Identity: bad, Node: "n1"}} {
		b, _ := json.Marshal(e)
		kv.Put(ctx, ipcache.Prefix+"east/"+e.IP.String(), b, 0)
	}

	kv.Put(ctx, service.Prefix+"east/shop/api", []byte(svcDoc), 0)
	kv.Put(ctx, service.Prefix+"east/shop/bad", []byte(`{"metadata":{"name":"bad","namespace":"shop"},"spec":{"ports":[]}}`), 0)

	var mu sync.Mutex
	got := map[string]bool{}
	record := func(what string, deleted bool) {
		mu.Lock()
		got[what] = !deleted
		mu.Unlock()
	}
	dir := t.TempDir()
	m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node:     func(n node.Node, d bool) { record("node "+n.Name, d) },
		Identity: func(id identity.Identity, d bool) { record(fmt.Sprintf("id %d", id.ID), d) },
		Entry:    func(e ipcache.Entry, d bool) { record("ip "+e.IP.String()+" "+e.Node, d) },
		Service: func(cluster string, s *service.Service, d bool) {
			record("svc "+cluster+" "+s.Key()+" "+s.Backends[0].IP, d)
		},
	})
	go m.Run(ctx)
	srv.WriteRemoteConfig(t, dir)
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				mu.Lock()
				t.Fatalf("%s; got %v, status %+v", what, got, m.Status())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	has := func(k string) bool { mu.Lock(); defer mu.Unlock(); return got[k] }
	wait("remote followed", func() bool {
		st := m.Status()
		return len(st) == 1 && st[0].Ready && has("node east/n1") && has(fmt.Sprintf("id %d", good)) && has("ip 10.7.0.2 east/n1") &&
			has("svc east shop/api 10.7.0.2")
	})
	st := m.Status()[0]
	if has(fmt.Sprintf("id %d", bad)) || has("ip 10.7.0.3 east/n1") || st.Rejected != 3 || st.Services != 1 || st.ClusterID != 7 || st.Nodes != 1 || st.Endpoints != 1 || st.Identities != 1 {
		t.Fatalf("out-of-range entries: got %v, status %+v", got, st)
	}
	// Deletions propagate.
	kv.Delete(ctx, ipcache.Prefix+"east/10.7.0.2")
	wait("entry deleted", func() bool { return !has("ip 10.7.0.2 east/n1") })
	// Removing the config withdraws the rest.
	os.Remove(filepath.Join(dir, "east.yaml"))
	wait("withdrawn", func() bool {
		return len(m.Status()) == 0 && !has("node east/n1") && !has(fmt.Sprintf("id %d", good)) && !has("svc east shop/api 10.7.0.2")
	})
}

const svcDoc = `{"metadata":{"name":"api","namespace":"shop","annotations":{"service.cilium.io/global":"true"}},
"spec":{"clusterIP":"10.96.0.20","ports":[{"port":80}]},"backends":[{"ip":"10.7.0.2","node":"n1"}]}`

// A refused remote node whose record is deleted is forgotten: its refusal
// does not stay listed (issue 13, item 7).
func TestRefusedNodeForgottenOnDelete(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	kv := srv.Agent
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	refused := map[string]bool{}
	dir := t.TempDir()
	m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node: func(node.Node, bool) {}, Identity: func(identity.Identity, bool) {}, Entry: func(ipcache.Entry, bool) {},
		Authenticate: func(cluster string, _ []byte, n node.Node) error {
			mu.Lock()
			defer mu.Unlock()
			refused[cluster+"/"+n.Name] = true
			return fmt.Errorf("has no certificate")
		},
		Forget: func(name string) { mu.Lock(); delete(refused, name); mu.Unlock() },
	})
	go m.Run(ctx)
	srv.WriteRemoteConfig(t, dir)
	nb, _ := json.Marshal(node.Node{Name: "rogue", Cluster: "east", IPs: []string{"172.30.7.9"}})
	kv.Put(ctx, node.NodesPrefix+"east/rogue", nb, 0)
	is := func() bool { mu.Lock(); defer mu.Unlock(); return refused["east/rogue"] }
	deadline := time.Now().Add(20 * time.Second)
	for !is() {
		if time.Now().After(deadline) {
			t.Fatal("the rogue node was never vetted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	kv.Delete(ctx, node.NodesPrefix+"east/rogue")
	deadline = time.Now().Add(20 * time.Second)
	for is() {
		if time.Now().After(deadline) {
			t.Fatal("the refusal stays after the refused record was deleted")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A lost remote cluster keeps its entries until the TTL, then they are
// withdrawn and status says so.
func TestTTLWithdrawsLostCluster(t *testing.T) {
	srv := apiservertest.Start(t, "gone", 9)
	kv := srv.Agent
	actx := context.Background()
	id := identity.Compose(9, 300)
	b, _ := json.Marshal(ipcache.Entry{IP: netip.MustParseAddr("10.9.0.2"), Identity: id, Node: "n1"})
	kv.Put(actx, ipcache.Prefix+"gone/10.9.0.2", b, 0)
	kv.Put(actx, service.Prefix+"gone/shop/api", []byte(svcDoc), 0)

	var live, services atomic.Int64
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := remote.NewManager(dir, "local", 1, 3*time.Second, remote.Callbacks{
		Node: func(node.Node, bool) {}, Identity: func(identity.Identity, bool) {},
		Entry: func(_ ipcache.Entry, deleted bool) {
			if deleted {
				live.Add(-1)
			} else {
				live.Add(1)
			}
		},
		Service: func(_ string, _ *service.Service, deleted bool) {
			if deleted {
				services.Add(-1)
			} else {
				services.Add(1)
			}
		},
	})
	go m.Run(ctx)
	srv.WriteRemoteConfig(t, dir)
	waitFor := func(what string, cond func() bool, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: status %+v, live entries %d", what, m.Status(), live.Load())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("synced", func() bool {
		s := m.Status()
		return len(s) == 1 && s[0].Ready && live.Load() == 1 && services.Load() == 1
	}, 20*time.Second)
	srv.Stop()
	waitFor("seen disconnected, entries kept", func() bool {
		s := m.Status()
		return !s[0].Connected && live.Load() == 1 && services.Load() == 1
	}, 10*time.Second)
	// Withdrawn: the cluster's services go with its entries, so its backends
	// leave global services at once.
	waitFor("withdrawn after the TTL", func() bool {
		s := m.Status()
		return s[0].Withdrawn && live.Load() == 0 && services.Load() == 0
	}, 20*time.Second)
}

// A remote cluster's services reach the agent only after its nodes,
// identities and ipcache entries (the routes to its pods) are listed: a
// backend in the load balancer before the route to it takes connections
// whose packets go nowhere.
func TestServicesAfterRoutes(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	kv := srv.Agent
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id := identity.Compose(7, 300)
	kv.Put(ctx, fmt.Sprintf("%s%d", identity.IDPrefix, id), []byte("k8s:app=web;k8s:filament.io/cluster=east"), 0)
	for i := range 2 {
		nb, _ := json.Marshal(node.Node{Name: fmt.Sprint("n", i), Cluster: "east", IPs: []string{fmt.Sprint("172.30.7.", i+1)},
			PodCIDRs: []string{fmt.Sprintf("10.7.%d.0/24", i)}})
		kv.Put(ctx, fmt.Sprint(node.NodesPrefix, "east/n", i), nb, 0)
	}
	// Many entries, so their list takes longer than the services'.
	const entries = 300
	for i := range entries {
		ip := netip.AddrFrom4([4]byte{10, 7, byte(i / 200), byte(2 + i%200)})
		b, _ := json.Marshal(ipcache.Entry{IP: ip, Identity: id, Node: fmt.Sprint("n", i/200)})
		kv.Put(ctx, ipcache.Prefix+"east/"+ip.String(), b, 0)
	}
	kv.Put(ctx, service.Prefix+"east/shop/api", []byte(svcDoc), 0)

	var mu sync.Mutex
	var order []string
	record := func(what string) { mu.Lock(); order = append(order, what); mu.Unlock() }
	dir := t.TempDir()
	m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node:     func(node.Node, bool) { record("node") },
		Identity: func(identity.Identity, bool) { record("identity") },
		Entry:    func(ipcache.Entry, bool) { record("entry") },
		Service:  func(string, *service.Service, bool) { record("service") },
	})
	go m.Run(ctx)
	srv.WriteRemoteConfig(t, dir)
	deadline := time.Now().Add(20 * time.Second)
	for st := m.Status(); len(st) != 1 || !st[0].Ready; st = m.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("remote not ready: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	count := map[string]int{}
	for i, what := range order {
		if what == "service" && (count["node"] != 2 || count["identity"] != 1 || count["entry"] != entries) {
			t.Fatalf("the service came as callback %d, after only %v of 2 nodes, 1 identity, %d entries", i, count, entries)
		}
		count[what]++
	}
	if count["service"] != 1 {
		t.Fatalf("callbacks %v, want one service", count)
	}
}
