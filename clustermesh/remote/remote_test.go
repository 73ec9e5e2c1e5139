package remote_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/clustermesh"
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
	// In its range, but posing as another cluster's (this one's, local)
	// or as a reserved identity: policies that name no cluster select
	// the local cluster's by its label.
	spoofs := map[identity.NumericIdentity]string{
		identity.Compose(7, 301): "k8s:app=db-client;k8s:filament.io/cluster=local",
		identity.Compose(7, 302): "k8s:filament.io/cluster=east;reserved:host",
		identity.Compose(7, 303): "k8s:app=db-client",
		identity.Compose(7, 304): "k8s:app=db-client;k8s:filament.io/cluster=east;k8s:io.cilium.k8s.policy.cluster=local",
		identity.Compose(7, 305): "cidr:10.0.0.0/8;k8s:filament.io/cluster=east",
	}
	for id, ls := range spoofs {
		kv.Put(ctx, fmt.Sprintf("%s%d", identity.IDPrefix, id), []byte(ls), 0)
	}
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
	for id := range spoofs {
		if has(fmt.Sprintf("id %d", id)) {
			t.Errorf("identity %d taken with labels %s", id, spoofs[id])
		}
	}
	if has(fmt.Sprintf("id %d", bad)) || has("ip 10.7.0.3 east/n1") || st.Rejected != 3+len(spoofs) || st.Services != 1 || st.ClusterID != 7 || st.Nodes != 1 || st.Endpoints != 1 || st.Identities != 1 {
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

// gatedProxy forwards TCP connections to a backend until cut: then it stops
// passing bytes either way (and new connections get no answer), as a
// partition of the network would, until healed.
type gatedProxy struct {
	ln   net.Listener
	mu   sync.Mutex
	cond *sync.Cond
	cut  bool
}

func startGatedProxy(t *testing.T, backend string) *gatedProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &gatedProxy{ln: ln}
	p.cond = sync.NewCond(&p.mu)
	t.Cleanup(func() { p.set(false); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				p.wait()
				b, err := net.Dial("tcp", backend)
				if err != nil {
					return
				}
				defer b.Close()
				done := make(chan struct{}, 2)
				go func() { p.pipe(b, c); done <- struct{}{} }()
				go func() { p.pipe(c, b); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return p
}

func (p *gatedProxy) set(cut bool) {
	p.mu.Lock()
	p.cut = cut
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *gatedProxy) wait() {
	p.mu.Lock()
	for p.cut {
		p.cond.Wait()
	}
	p.mu.Unlock()
}

// pipe copies src to dst, holding what it read while the proxy is cut.
func (p *gatedProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.wait()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// tally counts the callbacks for each key, by kind.
type tally struct {
	mu      sync.Mutex
	adds    map[string]int
	deletes map[string]int
}

func (t *tally) record(key string, deleted bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if deleted {
		t.deletes[key]++
	} else {
		t.adds[key]++
	}
}

func (t *tally) snapshot() (adds, deletes map[string]int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.adds), maps.Clone(t.deletes)
}

// A partition shorter than the TTL (the connection lost, then the canary
// stale) changes nothing: no callback, status shows the loss and the TTL
// left. One longer than the TTL withdraws every entry once; the heal adds
// each back exactly once.
func TestPartitionShortAndLong(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	kv := srv.Agent
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id := identity.Compose(7, 300)
	kv.Put(ctx, fmt.Sprintf("%s%d", identity.IDPrefix, id), []byte("k8s:app=web;k8s:filament.io/cluster=east"), 0)
	nb, _ := json.Marshal(node.Node{Name: "n1", Cluster: "east", IPs: []string{"172.30.7.1"}, PodCIDRs: []string{"10.7.0.0/24"}})
	kv.Put(ctx, node.NodesPrefix+"east/n1", nb, 0)
	b, _ := json.Marshal(ipcache.Entry{IP: netip.MustParseAddr("10.7.0.2"), Identity: id, Node: "n1"})
	kv.Put(ctx, ipcache.Prefix+"east/10.7.0.2", b, 0)
	kv.Put(ctx, service.Prefix+"east/shop/api", []byte(svcDoc), 0)
	const keys = 4

	proxy := startGatedProxy(t, strings.TrimPrefix(srv.Endpoint, "https://"))
	tl := &tally{adds: map[string]int{}, deletes: map[string]int{}}
	dir := t.TempDir()
	const ttl = 10 * time.Second
	m := remote.NewManager(dir, "local", 1, ttl, remote.Callbacks{
		Node:     func(n node.Node, d bool) { tl.record("node "+n.Name, d) },
		Identity: func(x identity.Identity, d bool) { tl.record(fmt.Sprint("id ", x.ID), d) },
		Entry:    func(e ipcache.Entry, d bool) { tl.record("ip "+e.IP.String(), d) },
		Service:  func(_ string, s *service.Service, d bool) { tl.record("svc "+s.Key(), d) },
	})
	// The config, pointed at the proxy, goes into dir whole.
	staging := t.TempDir()
	srv.WriteRemoteConfig(t, staging)
	rc, err := os.ReadFile(filepath.Join(staging, "east.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(staging, "east.yaml"), []byte(strings.ReplaceAll(string(rc), srv.Endpoint, "https://"+proxy.ln.Addr().String())), 0o600)
	if err := os.Rename(filepath.Join(staging, "east.yaml"), filepath.Join(dir, "east.yaml")); err != nil {
		t.Fatal(err)
	}
	go m.Run(ctx)
	status := func() remote.Status {
		st := m.Status()
		if len(st) != 1 {
			return remote.Status{}
		}
		return st[0]
	}
	waitFor := func(what string, within time.Duration, cond func(remote.Status) bool) remote.Status {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			st := status()
			if cond(st) {
				return st
			}
			if time.Now().After(deadline) {
				adds, dels := tl.snapshot()
				t.Fatalf("%s: status %+v; adds %v deletes %v", what, st, adds, dels)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	synced := func(st remote.Status) bool {
		return st.Connected && st.Ready && st.Nodes == 1 && st.Identities == 1 && st.Endpoints == 1 && st.Services == 1
	}
	waitFor("synced", 20*time.Second, func(st remote.Status) bool { return synced(st) && st.HeartbeatAge != "" && !st.CanaryStale })
	adds0, _ := tl.snapshot()
	if len(adds0) != keys {
		t.Fatalf("adds %v, want %d keys", adds0, keys)
	}

	// Short: cut until the loss is seen, then 3 s more.
	proxy.set(true)
	cutAt := time.Now()
	st := waitFor("loss seen", 15*time.Second, func(st remote.Status) bool { return !st.Connected && !st.LostSince.IsZero() })
	t.Logf("loss seen %v after the cut", time.Since(cutAt).Round(10*time.Millisecond))
	time.Sleep(3 * time.Second)
	st = status()
	left, err := time.ParseDuration(st.TTLLeft)
	if st.Withdrawn || err != nil || left <= 0 || left > ttl+clustermeshStale {
		t.Fatalf("during a short partition: %+v", st)
	}
	proxy.set(false)
	waitFor("back after the short partition", 20*time.Second, func(st remote.Status) bool {
		return synced(st) && st.LostSince.IsZero() && st.TTLLeft == "" && !st.CanaryStale
	})
	if adds, dels := tl.snapshot(); !maps.Equal(adds, adds0) || len(dels) != 0 {
		t.Fatalf("a partition shorter than the TTL changed entries: adds %v (before %v), deletes %v", adds, adds0, dels)
	}
	if st := status(); st.Upserts != keys || st.Deletes != 0 {
		t.Fatalf("status counts %d upserts, %d deletes; want %d, 0", st.Upserts, st.Deletes, keys)
	}

	// Long: withdrawn after the loss, the canary going stale and the TTL.
	proxy.set(true)
	cutAt = time.Now()
	waitFor("withdrawn", ttl+clustermeshStale+20*time.Second, func(st remote.Status) bool { return st.Withdrawn })
	took := time.Since(cutAt)
	t.Logf("withdrawn %v after the cut", took.Round(10*time.Millisecond))
	if took < ttl {
		t.Fatalf("withdrawn %v after the cut, before the TTL %v", took, ttl)
	}
	if _, dels := tl.snapshot(); len(dels) != keys {
		t.Fatalf("withdrawal deleted %v, want each of %d keys", dels, keys)
	}
	proxy.set(false)
	st = waitFor("back after the long partition", 40*time.Second, func(st remote.Status) bool { return synced(st) && !st.Withdrawn })
	adds, dels := tl.snapshot()
	for k := range adds0 {
		if adds[k] != 2 || dels[k] != 1 {
			t.Fatalf("%s: %d adds, %d deletes across withdrawal and heal; want 2, 1 (adds %v deletes %v)", k, adds[k], dels[k], adds, dels)
		}
	}
	if len(adds) != keys || st.Upserts != 2*keys || st.Deletes != keys {
		t.Fatalf("after the heal: adds %v, status %+v", adds, st)
	}
}

const clustermeshStale = clustermesh.HeartbeatStale

// Status answers for the directory as it is now: a config written, changed
// or removed since the manager last read it is Pending and not Ready, so
// `filament clustermesh status --wait` right after a connect waits for the
// new remote instead of answering for the ones read before (lab flake of
// TestClusterMeshThreeClusters, 2026-12-02).
func TestStatusShowsConfigsNotReadYet(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("east", "not: [a config")
	write("west", "not: [a config either")
	m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{})
	byName := func() map[string]remote.Status {
		out := map[string]remote.Status{}
		for _, st := range m.Status() {
			out[st.Name] = st
		}
		return out
	}
	if st := byName(); len(st) != 2 || !st["east"].Pending || !st["east"].Configured || st["east"].Ready || st["east"].Connected {
		t.Fatalf("before the first scan: %+v", st)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for st := byName(); st["east"].Pending || st["west"].Pending || st["east"].LastFailure == ""; st = byName() {
		if time.Now().After(deadline) {
			t.Fatalf("configs never read: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done // no scan after this: what follows is what the directory says.
	write("east", "changed: [still not a config")
	write("north", "new")
	if err := os.Remove(filepath.Join(dir, "west.yaml")); err != nil {
		t.Fatal(err)
	}
	st := byName()
	if len(st) != 3 {
		t.Fatalf("want east, north, west: %+v", st)
	}
	if e := st["east"]; !e.Pending || !e.Configured || e.Ready || e.LastFailure == "" {
		t.Fatalf("changed config: %+v", e)
	}
	if n := st["north"]; !n.Pending || !n.Configured || n.Ready {
		t.Fatalf("new config: %+v", n)
	}
	if w := st["west"]; !w.Pending || w.Configured || w.Ready {
		t.Fatalf("removed config: %+v", w)
	}
}

// TestRemoteHoldsBoundedCounts: a remote cluster holds at most so many
// nodes, ipcache entries and services in an agent; what comes past the
// bound is rejected (counted), a change of what it holds is still taken,
// and a delete makes room. Before, nothing bounded them: a hostile (or
// broken) remote writing entries without end ran every agent of the mesh
// out of memory.
func TestRemoteHoldsBoundedCounts(t *testing.T) {
	defer remote.SetLimits(2, 3, 1)()
	srv := apiservertest.Start(t, "east", 7)
	kv := srv.Agent
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id := identity.Compose(7, 300)
	kv.Put(ctx, fmt.Sprintf("%s%d", identity.IDPrefix, id), []byte("k8s:app=web;k8s:filament.io/cluster=east"), 0)
	putNode := func(i int) {
		b, _ := json.Marshal(node.Node{Name: fmt.Sprintf("n%d", i), Cluster: "east", IPs: []string{fmt.Sprintf("172.30.7.%d", i)}, PodCIDRs: []string{fmt.Sprintf("10.7.%d.0/24", i)}})
		kv.Put(ctx, fmt.Sprintf("%seast/n%d", node.NodesPrefix, i), b, 0)
	}
	putEntry := func(i int, id identity.NumericIdentity) {
		b, _ := json.Marshal(ipcache.Entry{IP: netip.AddrFrom4([4]byte{10, 7, 1, byte(i)}), Identity: id, Node: "n1"})
		kv.Put(ctx, fmt.Sprintf("%seast/10.7.1.%d", ipcache.Prefix, i), b, 0)
	}
	for i := 1; i <= 3; i++ {
		putNode(i)
	}
	for i := 1; i <= 5; i++ {
		putEntry(i, id)
	}
	kv.Put(ctx, service.Prefix+"east/shop/api", []byte(svcDoc), 0)
	kv.Put(ctx, service.Prefix+"east/shop/api2", []byte(strings.ReplaceAll(svcDoc, `"api"`, `"api2"`)), 0)

	var mu sync.Mutex
	entries := map[string]identity.NumericIdentity{}
	dir := t.TempDir()
	m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node:     func(node.Node, bool) {},
		Identity: func(identity.Identity, bool) {},
		Entry: func(e ipcache.Entry, d bool) {
			mu.Lock()
			defer mu.Unlock()
			if d {
				delete(entries, e.IP.String())
			} else {
				entries[e.IP.String()] = e.Identity
			}
		},
		Service: func(string, *service.Service, bool) {},
	})
	go m.Run(ctx)
	srv.WriteRemoteConfig(t, dir)
	wait := func(what string, cond func(remote.Status) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			st := m.Status()
			if len(st) == 1 && st[0].Ready && cond(st[0]) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: status %+v", what, st)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	wait("bounded", func(st remote.Status) bool {
		return st.Nodes == 2 && st.Endpoints == 3 && st.Services == 1 && st.Rejected == 1+2+1
	})
	// A change of a held entry is taken at the bound.
	mu.Lock()
	var held string
	for ip := range entries {
		held = ip
	}
	mu.Unlock()
	id2 := identity.Compose(7, 301)
	kv.Put(ctx, fmt.Sprintf("%s%d", identity.IDPrefix, id2), []byte("k8s:app=db;k8s:filament.io/cluster=east"), 0)
	b, _ := json.Marshal(ipcache.Entry{IP: netip.MustParseAddr(held), Identity: id2, Node: "n1"})
	kv.Put(ctx, ipcache.Prefix+"east/"+held, b, 0)
	wait("a held entry changed", func(remote.Status) bool {
		mu.Lock()
		defer mu.Unlock()
		return entries[held] == id2
	})
	// A delete makes room for a new entry.
	kv.Delete(ctx, ipcache.Prefix+"east/"+held)
	putEntry(9, id)
	wait("room after a delete", func(remote.Status) bool {
		mu.Lock()
		defer mu.Unlock()
		_, ok := entries["10.7.1.9"]
		return ok && len(entries) == 3
	})
}

// TestPinnedClusterIDs: a remote picks its own cluster ID, first come
// first served, so a remote claiming a legitimate remote's ID before it
// (after an agent's restart, or while it is lost) held the ID and the
// legitimate remote was refused. With IDs pinned (--clustermesh-cluster-ids
// east=7), only east may have 7, and east only 7.
func TestPinnedClusterIDs(t *testing.T) {
	squat := apiservertest.Start(t, "squat", 7)
	east := apiservertest.Start(t, "east", 7)
	wrong := apiservertest.Start(t, "west", 9) // pinned to 8
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node: func(node.Node, bool) {}, Identity: func(identity.Identity, bool) {},
		Entry: func(ipcache.Entry, bool) {}, Service: func(string, *service.Service, bool) {},
	})
	m.PinClusterIDs(map[string]uint32{"east": 7, "west": 8})
	go m.Run(ctx)
	status := func(name string) remote.Status {
		for _, s := range m.Status() {
			if s.Name == name {
				return s
			}
		}
		return remote.Status{}
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s; status %+v", what, m.Status())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// The squatter first: refused, naming the pin.
	squat.WriteRemoteConfig(t, dir)
	waitFor("squat refused", func() bool { return strings.Contains(status("squat").LastFailure, "pinned") })
	east.WriteRemoteConfig(t, dir)
	waitFor("east followed", func() bool { return status("east").Ready })
	wrong.WriteRemoteConfig(t, dir)
	waitFor("west refused", func() bool { return strings.Contains(status("west").LastFailure, "pinned") })
	if s := status("squat"); s.Ready {
		t.Fatalf("the squatter is followed: %+v", s)
	}
}

// TestRemoteNodeNamesChecked: a remote node's name came from its etcd
// key unchecked. A key "east/\xff" made a name that is not UTF-8: the
// Hubble peer service could not encode it, and every relay's peer list
// stopped there. A name must be a DNS label and the record's own.
func TestRemoteNodeNamesChecked(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	kv := srv.Agent
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	got := map[string]bool{}
	dir := t.TempDir()
	m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node:     func(n node.Node, d bool) { mu.Lock(); got[n.Name] = !d; mu.Unlock() },
		Identity: func(identity.Identity, bool) {}, Entry: func(ipcache.Entry, bool) {}, Service: func(string, *service.Service, bool) {},
	})
	go m.Run(ctx)
	srv.WriteRemoteConfig(t, dir)
	put := func(key, name, ip string) {
		b, _ := json.Marshal(node.Node{Name: name, Cluster: "east", IPs: []string{ip}})
		kv.Put(ctx, node.NodesPrefix+"east/"+key, b, 0)
	}
	put("\xff", "\xff", "172.30.7.1")
	put("a\x1bb", "a\x1bb", "172.30.7.2")
	put("Upper", "Upper", "172.30.7.3")
	put("other", "n9", "172.30.7.4") // under another node's key
	put("n1", "n1", "172.30.7.5")
	// A record naming another cluster (its certificate's name, which node
	// authentication reads from the record, would be that cluster's):
	// until 2026-12-05 taken.
	b, _ := json.Marshal(node.Node{Name: "n2", Cluster: "west", IPs: []string{"172.30.7.6"}})
	kv.Put(ctx, node.NodesPrefix+"east/n2", b, 0)
	// Until the valid node and the five refusals are in (a list sorts
	// the keys: n1 may come before "other" and "\xff").
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		ok := got["east/n1"]
		mu.Unlock()
		if st := m.Status(); ok && len(st) == 1 && st[0].Rejected >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the valid node and five refusals never came; status %+v", m.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for name := range got {
		if name != "east/n1" {
			t.Errorf("node %q taken", name)
		}
	}
	if st := m.Status()[0]; st.Rejected < 5 || st.Nodes != 1 {
		t.Errorf("status %+v, want 5 rejected and 1 node", st)
	}
}

// A remote cluster's revocation list (node.CRLPrefix) is read before its
// nodes, so a node it revokes is never taken, and a later list withdraws
// the nodes it revokes. Before 2026-12-05 only the local cluster's list
// was checked: a remote cluster's revoked node stayed a peer everywhere
// else.
func TestRemoteRevocationListWithdrawsNodes(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	kv := srv.Agent
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, name := range []string{"n1", "n2"} {
		nb, _ := json.Marshal(node.Node{Name: name, Cluster: "east", IPs: []string{"172.30.7.1"}})
		kv.Put(ctx, node.NodesPrefix+"east/"+name, nb, 0)
	}
	kv.Put(ctx, node.CRLPrefix+"east", []byte("n1"), 0)
	// The fake list is the revoked names; a list never shrinks here.
	var mu sync.Mutex
	revoked := map[string]bool{}
	live := map[string]bool{}
	everN1 := false
	dir := t.TempDir()
	m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node: func(n node.Node, deleted bool) {
			mu.Lock()
			defer mu.Unlock()
			live[n.Name] = !deleted
			everN1 = everN1 || n.Name == "east/n1"
		},
		Identity: func(identity.Identity, bool) {}, Entry: func(ipcache.Entry, bool) {},
		Authenticate: func(cluster string, _ []byte, n node.Node) error {
			mu.Lock()
			defer mu.Unlock()
			if revoked[n.Name] {
				return fmt.Errorf("%s/%s is revoked", cluster, n.Name)
			}
			return nil
		},
		Revocations: func(cluster string, _ []byte, crl []byte) (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			changed := false
			for _, name := range strings.Split(string(crl), ",") {
				changed = changed || !revoked[name]
				revoked[name] = true
			}
			return changed, nil
		},
	})
	go m.Run(ctx)
	srv.WriteRemoteConfig(t, dir)
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s; nodes %v, status %+v", what, live, m.Status())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	wait("n2 taken", func() bool { return live["east/n2"] })
	mu.Lock()
	if everN1 {
		t.Error("a node the cluster's list revokes was taken before the list was read")
	}
	mu.Unlock()
	kv.Put(ctx, node.CRLPrefix+"east", []byte("n1,n2"), 0)
	wait("n2 withdrawn once its certificate is revoked", func() bool { return !live["east/n2"] })
}
