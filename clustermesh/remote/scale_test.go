package remote_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/routing"
	"github.com/filament-net/filament/agent/sparse"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/apiserver/apiservertest"
	"github.com/filament-net/filament/clustermesh/cache"
	"github.com/filament-net/filament/clustermesh/remote"
)

// The synthetic mesh: cluster c (ID c, named sim<c>; this agent's cluster
// is 1) has nodes n = 0..99, node n the pod CIDR 10.0.0.0 + c<<17 + n<<10
// /22 (1,024 addresses) and the underlay address 172.16.c.(n+1); its
// endpoints are the first addresses of their node's CIDR, each with the
// identity of its node (one identity per node, 300+n).
func simPodAddr(c uint32, n, e int) netip.Addr {
	v := 0x0A000000 + c<<17 + uint32(n)<<10 + uint32(e)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func simHost(c uint32, n int) netip.Addr {
	return netip.AddrFrom4([4]byte{172, 16, byte(c), byte(n + 1)})
}

func simName(c uint32) string { return fmt.Sprintf("sim%d", c) }

func simIdentity(c uint32, n int) identity.NumericIdentity { return identity.Compose(c, uint32(300+n)) }

func simEntry(c uint32, n, e int, pod string, id identity.NumericIdentity) []byte {
	b, _ := json.Marshal(ipcache.Entry{IP: simPodAddr(c, n, e), Identity: id, HostIP: simHost(c, n), Node: fmt.Sprintf("n%d", n),
		Namespace: "default", Pod: pod})
	return b
}

// The synthetic layout: every endpoint lies in its node's pod CIDR, and
// no two nodes' CIDRs overlap each other or the agent's own node's
// (192.168.0.0/24), for every cluster ID a mesh can have.
func TestSimLayout(t *testing.T) {
	local := netip.MustParsePrefix("192.168.0.0/24")
	var prev netip.Prefix
	for _, c := range []uint32{2, 3, 128, 254, 255} {
		for _, n := range []int{0, 1, 99} {
			cidr := netip.PrefixFrom(simPodAddr(c, n, 0), 22)
			if cidr.Masked() != cidr {
				t.Fatalf("cluster %d node %d: pod CIDR %s is not aligned", c, n, cidr)
			}
			for _, e := range []int{0, 999, 1023} {
				if a := simPodAddr(c, n, e); !cidr.Contains(a) {
					t.Fatalf("cluster %d node %d endpoint %d: %s outside its node's %s", c, n, e, a, cidr)
				}
			}
			if cidr.Overlaps(local) || (prev.IsValid() && cidr.Overlaps(prev)) {
				t.Fatalf("cluster %d node %d: %s overlaps %s or %s", c, n, cidr, local, prev)
			}
			if !simHost(c, n).Is4() || simHost(c, n) == simHost(c, n+1) {
				t.Fatalf("cluster %d node %d: host %s", c, n, simHost(c, n))
			}
			prev = cidr
		}
	}
	if !identity.Compose(255, 399).InClusterRange(255) || !simIdentity(255, 99).InClusterRange(255) {
		t.Fatal("the synthetic identities are outside their cluster's range")
	}
}

// What the simulation writes as the cache's copy of a remote is accepted
// by an agent in cache mode as a real cache's: every remote ready, read
// through the cache, nothing rejected, everything passed on.
func TestCachedSimAccepted(t *testing.T) {
	local := apiservertest.Start(t, "local", 1)
	root, err := local.Connect(clustermesh.UserRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	for _, c := range []uint32{2, 3} {
		if err := writeCached(ctx, root, c, 2, 3); err != nil {
			t.Fatal(err)
		}
		writeCacheRemoteConfig(t, dir, simName(c))
	}
	var nodes, ids, entries atomic.Int64
	m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node:     func(node.Node, bool) { nodes.Add(1) },
		Identity: func(identity.Identity, bool) { ids.Add(1) },
		Entry:    func(ipcache.Entry, bool) { entries.Add(1) },
	})
	m.ViaCache(local.Agent)
	go m.Run(ctx)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := m.Status()
		ok := len(st) == 2 && nodes.Load() == 4 && ids.Load() == 4 && entries.Load() == 12
		for _, s := range st {
			ok = ok && s.Ready && s.Via == "cache" && s.CacheConnected && s.HeartbeatAge != "" && s.Rejected == 0 && s.Endpoints == 6 && s.Nodes == 2
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not followed through the cache in 30 s: status %+v; %d nodes, %d identities, %d entries passed on",
				st, nodes.Load(), ids.Load(), entries.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// txnWriter batches puts into transactions of 128 (etcd's limit), as
// many agents (or the cache) would write them.
type txnWriter struct {
	kv  *kvstore.Client
	ops []clientv3.Op
}

func (w *txnWriter) put(ctx context.Context, key string, value []byte) error {
	w.ops = append(w.ops, clientv3.OpPut(key, string(value)))
	if len(w.ops) == 128 {
		return w.flush(ctx)
	}
	return nil
}

func (w *txnWriter) flush(ctx context.Context) error {
	if len(w.ops) == 0 {
		return nil
	}
	_, err := w.kv.Txn(ctx, nil, w.ops)
	w.ops = w.ops[:0]
	return err
}

// writeState writes cluster c's nodes, identities and nodes × eps
// endpoints as its agents would, each key under prefix (empty: the
// cluster's own apiserver; CachePrefix+name+"/": the cache's copy).
func writeState(ctx context.Context, w *txnWriter, prefix string, c uint32, nodes, eps int) error {
	name := simName(c)
	for n := range nodes {
		nn := fmt.Sprintf("n%d", n)
		nb, _ := json.Marshal(node.Node{Name: nn, Cluster: name, ClusterID: c, IPs: []string{simHost(c, n).String()},
			PodCIDRs: []string{netip.PrefixFrom(simPodAddr(c, n, 0), 22).String()}, Routing: "tunnel"})
		if err := w.put(ctx, prefix+node.NodesPrefix+name+"/"+nn, nb); err != nil {
			return err
		}
		id := simIdentity(c, n)
		if err := w.put(ctx, prefix+identity.IDPrefix+strconv.Itoa(int(id)), fmt.Appendf(nil, "k8s:app=a%d;k8s:filament.io/cluster=%s", n, name)); err != nil {
			return err
		}
		for e := range eps {
			if err := w.put(ctx, prefix+ipcache.Prefix+name+"/"+simPodAddr(c, n, e).String(), simEntry(c, n, e, fmt.Sprintf("p%d-%d", n, e), id)); err != nil {
				return err
			}
		}
	}
	return w.flush(ctx)
}

// writeCached writes what the cache (clustermesh/cache) holds of remote
// cluster c once it follows it: its state under the cache prefix, its
// canaries and heartbeat, the cache's status of it, and last, as the cache
// does once every prefix is listed, its cluster-config.
func writeCached(ctx context.Context, kv *kvstore.Client, c uint32, nodes, eps int) error {
	name := simName(c)
	p := clustermesh.CachePrefix + name + "/"
	w := &txnWriter{kv: kv}
	if err := writeState(ctx, w, p, c, nodes, eps); err != nil {
		return err
	}
	now := []byte(time.Now().UTC().Format(time.RFC3339))
	for _, canary := range clustermesh.Canaries {
		w.put(ctx, p+clustermesh.SyncedPrefix+name+"/"+canary, now)
	}
	w.put(ctx, p+clustermesh.HeartbeatKey(name), clustermesh.FormatHeartbeat(1))
	st, _ := json.Marshal(cache.Status{Connected: true, Ready: true, Since: time.Now()})
	w.put(ctx, clustermesh.CacheStatusKey(name), st)
	if err := w.flush(ctx); err != nil {
		return err
	}
	cc, _ := json.Marshal(clustermesh.ClusterConfig{Name: name, ID: c, Capabilities: []string{"tunnel", "native"}})
	return kv.Put(ctx, p+clustermesh.ClusterConfigPrefix+name, cc, 0)
}

// writeCacheRemoteConfig puts the remote config of cluster name in dir: an
// agent in cache mode reads which remotes to follow there, but never
// dials them (so the credentials are placeholders).
func writeCacheRemoteConfig(b testing.TB, dir, name string) {
	doc := fmt.Sprintf("name: %s\nendpoints: [\"https://192.0.2.1:2379\"]\nca: unused\ncert: unused\nkey: unused\n", name)
	if err := os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(doc), 0o600); err != nil {
		b.Fatal(err)
	}
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func TestMain(m *testing.M) {
	apiservertest.RunChild() // BenchmarkMeshScaleCache's local apiserver
	os.Exit(m.Run())
}

// vmRSS is process pid's resident set (VmRSS of /proc/<pid>/status), in bytes.
func vmRSS(pid int) uint64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// procCPU is the CPU time process pid has used (user and system, every
// thread; utime and stime of /proc/<pid>/stat, in clock ticks of 10 ms).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(rest) // from the state, field 3 of the file
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// simRouter is the node's router (agent/routing, sparse remote ipcache, no
// policy telling remote pods apart) over in-memory maps of the BPF
// ipcache's capacity. It runs on one goroutine locked in a network
// namespace of its own (its route calls go to the kernel); the mesh's
// callbacks reach it through a queue, entries in batches (the agent calls
// its router directly: a queued function and a channel send per entry
// were the harness's cost, not the agent's). Without root it is off (nil).
type simRouter struct {
	maps    *routing.MemMaps
	ops     chan func(*routing.Router)
	sent    atomic.Int64
	applied atomic.Int64
	done    chan struct{}

	mu      sync.Mutex
	pending []entryChange // entries not queued yet
}

type entryChange struct {
	e       ipcache.Entry
	deleted bool
}

// simRouterBatch is how many entries go to the router in one queued
// function.
const simRouterBatch = 256

// entry passes an entry change on, in its batch.
func (s *simRouter) entry(e ipcache.Entry, deleted bool) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.pending = append(s.pending, entryChange{e, deleted})
	full := len(s.pending) >= simRouterBatch
	s.mu.Unlock()
	if full {
		s.flush()
	}
}

// flush queues the entries not queued yet (before anything else is, so
// that the router sees the callbacks' order).
func (s *simRouter) flush() {
	s.mu.Lock()
	batch := s.pending
	if len(batch) > 0 {
		s.pending = make([]entryChange, 0, simRouterBatch) // not grown an entry at a time
		s.sent.Add(1)
		s.ops <- func(r *routing.Router) {
			for _, c := range batch {
				r.EntryChanged(c.e, c.deleted)
			}
		}
	}
	s.mu.Unlock()
}

func startRouter(b *testing.B) (*simRouter, string) {
	if os.Geteuid() != 0 {
		return nil, "router not run: it needs root for a network namespace of its own (its route calls go to the kernel)"
	}
	s := &simRouter{maps: routing.NewMemMaps(routing.IPCacheMax), ops: make(chan func(*routing.Router), 1<<16), done: make(chan struct{})}
	started := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		defer close(s.done)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			started <- err
			return
		}
		r, err := routing.NewWithMaps(s.maps, routing.Tunnel, "local-n0")
		if err != nil {
			started <- err
			return
		}
		r.SetSparse(sparse.NewNeed(1, false), netip.MustParsePrefix("192.168.0.0/24"))
		started <- nil
		for op := range s.ops {
			op(r)
			s.applied.Add(1)
		}
	}()
	if err := <-started; err != nil {
		return nil, fmt.Sprintf("router not run: network namespace: %v", err)
	}
	return s, ""
}

func (s *simRouter) do(op func(*routing.Router)) {
	if s == nil {
		return
	}
	s.flush()
	s.sent.Add(1)
	s.ops <- op
}

// drained waits until every change is applied.
func (s *simRouter) drained() {
	if s == nil {
		return
	}
	s.flush()
	for s.applied.Load() < s.sent.Load() {
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *simRouter) stop() {
	if s != nil {
		close(s.ops)
		<-s.done
	}
}

// simAgent is one agent's view of the mesh: the remote-cluster manager
// (direct or through the cache) feeding the router, counting what it
// passes on and timing marked changes.
type simAgent struct {
	m       *remote.Manager
	router  *simRouter
	entries atomic.Int64 // upserts of ipcache entries passed on
	marking atomic.Bool
	marks   sync.Map // pod name of the marked write → its time
	mu      sync.Mutex
	lat     []time.Duration
}

func newSimAgent(b *testing.B, dir string) (*simAgent, string) {
	a := &simAgent{}
	var why string
	a.router, why = startRouter(b)
	a.m = remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node: func(n node.Node, deleted bool) {
			a.router.do(func(r *routing.Router) { r.NodeChanged(n, deleted) })
		},
		Identity: func(identity.Identity, bool) {},
		Entry: func(e ipcache.Entry, deleted bool) {
			if !deleted {
				a.entries.Add(1)
				if a.marking.Load() {
					if t, ok := a.marks.LoadAndDelete(e.Pod); ok {
						d := time.Since(t.(time.Time))
						a.mu.Lock()
						a.lat = append(a.lat, d)
						a.mu.Unlock()
					}
				}
			}
			a.router.entry(e, deleted)
		},
	})
	return a, why
}

// stepResult is what one step measured.
type stepResult struct {
	mode                  string
	clusters, nodes, eps  int
	endpoints             int
	sync, routerSync      time.Duration
	heap, rss, rssBefore  uint64
	etcdPid               int           // the local apiserver's process (0: in this one)
	etcdRSS, rssPeak      uint64        // rssPeak: this process's, sampled during the sync
	cpu, etcdCPU          time.Duration // used during the initial sync
	mallocs               uint64        // this process's allocations during the initial sync
	ipc                   routing.IPCacheStats
	routerOff             string
	p50, p99, pmax        time.Duration
	samples, marked       int
	churnRate, churnAsked int
	etcdBytes             int64
	notReady, rejected    int
	fillRate              float64
}

// follow starts the agent on dir and waits for the initial sync: every
// remote ready and every entry passed on (then the router drained).
func (a *simAgent) follow(b *testing.B, ctx context.Context, st *stepResult) {
	before := heap()
	debug.FreeOSMemory() // what the fill left behind is not counted
	st.rssBefore = vmRSS(os.Getpid())
	cpu0, etcd0 := procCPU(os.Getpid()), procCPU(st.etcdPid)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs0 := ms.Mallocs
	stopProfile := syncProfile(b, st)
	start := time.Now()
	go a.m.Run(ctx)
	deadline := start.Add(10 * time.Minute)
	for {
		ready := 0
		if a.entries.Load() >= int64(st.endpoints) {
			for _, s := range a.m.Status() {
				if s.Ready {
					ready++
				}
			}
		}
		st.rssPeak = max(st.rssPeak, vmRSS(os.Getpid()))
		if ready == st.clusters {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d entries passed on, %d of %d remotes ready in 10 minutes", a.entries.Load(), st.endpoints, ready, st.clusters)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st.sync = time.Since(start)
	a.router.drained()
	st.routerSync = time.Since(start)
	stopProfile()
	st.cpu, st.etcdCPU = procCPU(os.Getpid())-cpu0, procCPU(st.etcdPid)-etcd0
	runtime.ReadMemStats(&ms)
	st.mallocs = ms.Mallocs - mallocs0
	st.heap = heap() - before
	st.rss = vmRSS(os.Getpid())
	if st.etcdPid != 0 {
		st.etcdRSS = vmRSS(st.etcdPid)
	}
	for _, s := range a.m.Status() {
		st.rejected += s.Rejected + s.CacheRejected
	}
	if a.router != nil {
		st.ipc = a.router.maps.Stats()
		// Refused counts the map's refusals and the router's, past the
		// remote clusters' share (routing.MaxRemoteIPCacheEntries).
		got := make(chan uint64, 1)
		a.router.do(func(r *routing.Router) { got <- r.RemoteIPCacheRefused() })
		st.ipc.Refused += int(<-got)
	}
}

// syncProfile starts a CPU profile of the initial sync alone (not the
// fill nor the churn) when $FILAMENT_SYNC_CPUPROFILE names a directory:
// one file per step, named after it. The returned func stops it.
func syncProfile(b *testing.B, st *stepResult) func() {
	dir := os.Getenv("FILAMENT_SYNC_CPUPROFILE")
	if dir == "" {
		return func() {}
	}
	f, err := os.Create(filepath.Join(dir, fmt.Sprintf("sync-%s-%dx%dx%d.prof", st.mode, st.clusters, st.nodes, st.eps)))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// churn rewrites endpoints of random clusters at rate per second for d
// (each with a new pod name and the identity of the next node), marking
// each write, and records the time from the write to the Entry callback.
// put writes one entry of cluster c under key (as its agent, or the
// cache, would); beat, when set, is called every heartbeat interval.
func (a *simAgent) churn(ctx context.Context, st *stepResult, rate int, d time.Duration, put func(ctx context.Context, c uint32, key string, v []byte) error, beat func(ctx context.Context)) error {
	a.marking.Store(true)
	defer a.marking.Store(false)
	rng := rand.New(rand.NewPCG(1, 2))
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	perTick := max(rate/100, 1)
	end := time.Now().Add(d)
	lastBeat := time.Now()
	seq := 0
	for now := range tick.C {
		if now.After(end) {
			break
		}
		if beat != nil && now.Sub(lastBeat) >= clustermesh.HeartbeatInterval {
			beat(ctx)
			lastBeat = now
		}
		for range perTick {
			c := uint32(2 + rng.IntN(st.clusters))
			n, e := rng.IntN(st.nodes), rng.IntN(st.eps)
			seq++
			ip, pod := simPodAddr(c, n, e), fmt.Sprintf("churn-%d", seq)
			a.marks.Store(pod, time.Now())
			v := simEntry(c, n, e, pod, simIdentity(c, (n+seq)%st.nodes))
			if err := put(ctx, c, ipcache.Prefix+simName(c)+"/"+ip.String(), v); err != nil {
				return err
			}
		}
	}
	// The last changes get a second to arrive.
	time.Sleep(time.Second)
	a.mu.Lock()
	lat := slices.Clone(a.lat)
	a.mu.Unlock()
	slices.Sort(lat)
	// The rate achieved (a loaded machine writes fewer than asked).
	st.churnRate, st.churnAsked = int(float64(seq)/d.Seconds()), perTick*100
	if len(lat) > 0 {
		st.p50, st.p99, st.pmax = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	}
	st.samples, st.marked = len(lat), seq
	return nil
}

// report prints a step and reports its metrics.
func (st *stepResult) report(b *testing.B) {
	b.ReportMetric(st.sync.Seconds(), "sync-s")
	b.ReportMetric(float64(st.heap)/float64(st.endpoints), "heap-B/endpoint")
	b.ReportMetric(float64(st.rss)/(1<<20), "RSS-MiB")
	b.ReportMetric(float64(st.ipc.Entries), "ipcache-entries")
	b.ReportMetric(float64(st.p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(0, "ns/op")
	where := "the apiservers' etcds in this process too"
	if st.etcdPid != 0 {
		where = fmt.Sprintf("the local apiserver's etcd in a process of its own: RSS %.0f MiB, %.1f s of CPU during the sync",
			float64(st.etcdRSS)/(1<<20), st.etcdCPU.Seconds())
	}
	fmt.Printf("    %s %d clusters x %d nodes x %d endpoints (%d endpoints, %d nodes): initial sync %.2f s (router drained %.2f s), "+
		"%.1f s of CPU (%.2f us/endpoint; %.1f allocations/endpoint); heap +%.1f MiB (%.1f B/endpoint); RSS %.0f MiB (peak %.0f MiB during the sync, %.0f MiB before the agent started; %s); "+
		"etcd db %.0f B/endpoint; fill %.0f writes/s; rejected %d\n",
		st.mode, st.clusters, st.nodes, st.eps, st.endpoints, st.clusters*st.nodes, st.sync.Seconds(), st.routerSync.Seconds(),
		st.cpu.Seconds(), st.cpu.Seconds()*1e6/float64(st.endpoints), float64(st.mallocs)/float64(st.endpoints),
		float64(st.heap)/(1<<20), float64(st.heap)/float64(st.endpoints), float64(st.rss)/(1<<20), float64(st.rssPeak)/(1<<20), float64(st.rssBefore)/(1<<20), where,
		float64(st.etcdBytes)/float64(st.endpoints), st.fillRate, st.rejected)
	if st.routerOff != "" {
		fmt.Printf("      %s\n", st.routerOff)
	} else {
		fmt.Printf("      BPF ipcache (sparse, capacity %d, remote clusters' share %d): %d entries (%d covers, %d /32s), peak %d, refused %d; nodes map %d\n",
			routing.IPCacheMax, routing.MaxRemoteIPCacheEntries, st.ipc.Entries, st.ipc.Covers, st.ipc.Slash32s, st.ipc.Peak, st.ipc.Refused, st.ipc.Nodes)
	}
	fmt.Printf("      propagation under churn (%d endpoint writes/s across the clusters, %d asked): p50 %.1f ms, p99 %.1f ms, max %.1f ms over %d samples "+
		"(of %d marked writes; from before the write to its Entry callback)\n",
		st.churnRate, st.churnAsked, float64(st.p50.Microseconds())/1000, float64(st.p99.Microseconds())/1000, float64(st.pmax.Microseconds())/1000, st.samples, st.marked)
}

// quietLogs silences the process's logs for a benchmark (the router's
// route errors in its bare namespace, one line per remote connected).
func quietLogs(b *testing.B) {
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	b.Cleanup(func() { slog.SetDefault(old) })
}

const (
	churnRate = 500
	churnFor  = 10 * time.Second
)

// BenchmarkMeshScale is the direct mode of the simulation (no datapath
// but the router over in-memory maps): synthetic clusters with real TLS
// apiservers (embedded etcd, in this process) filled as their agents
// would, and one agent's remote-cluster watchers following each of them
// over a connection of its own. It is the same-run baseline of
// BenchmarkMeshScaleCache.
func BenchmarkMeshScale(b *testing.B) {
	quietLogs(b)
	for _, sz := range []struct{ clusters, nodes, eps int }{{8, 100, 1000}} {
		b.Run(fmt.Sprintf("direct-%dclusters-x-%dnodes-x-%deps", sz.clusters, sz.nodes, sz.eps), func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st := &stepResult{mode: "direct", clusters: sz.clusters, nodes: sz.nodes, eps: sz.eps, endpoints: sz.clusters * sz.nodes * sz.eps}
			sims := map[uint32]*apiservertest.Server{}
			for i := range sz.clusters {
				c := uint32(i + 2)
				sims[c] = apiservertest.Start(b, simName(c), c)
			}
			start := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, len(sims))
			for c, s := range sims {
				wg.Add(1)
				go func() { defer wg.Done(); errs <- writeState(ctx, &txnWriter{kv: s.Agent}, "", c, sz.nodes, sz.eps) }()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
			st.fillRate = float64(st.endpoints) / time.Since(start).Seconds()
			for _, s := range sims {
				sr, err := s.Agent.Raw().Status(ctx, s.Endpoint)
				if err != nil {
					b.Fatal(err)
				}
				st.etcdBytes += sr.DbSizeInUse
			}
			dir := b.TempDir()
			for _, s := range sims {
				s.WriteRemoteConfig(b, dir)
			}
			a, why := newSimAgent(b, dir)
			st.routerOff = why
			defer a.router.stop()
			mctx, mcancel := context.WithCancel(ctx)
			defer mcancel()
			a.follow(b, mctx, st)
			err := a.churn(ctx, st, churnRate, churnFor, func(ctx context.Context, c uint32, key string, v []byte) error {
				return sims[c].Agent.Put(ctx, key, v, 0)
			}, nil)
			if err != nil {
				b.Fatal(err)
			}
			st.report(b)
			mcancel()
		})
	}
}

// meshSteps of the cache mode: the cluster count (254 remotes: a mesh of
// 255 clusters, IDs 1-255 with this agent's cluster 1) with few endpoints,
// and the endpoint volume (100 x 1,000 per cluster) with fewer clusters.
var meshSteps = []struct{ clusters, nodes, eps int }{{254, 100, 10}, {8, 100, 1000}, {24, 100, 1000}}

// BenchmarkMeshScaleCache is the cache mode of the simulation: ONE local
// apiserver (real TLS embedded etcd, in this process) holding what the
// cluster mesh cache (clustermesh/cache) writes once it follows each
// remote — cluster-config, canaries, heartbeat, status, nodes, identities
// and ipcache entries under filament/cache/<remote>/ — and one agent's
// remote.Manager in ViaCache mode following all of them over its one
// connection, feeding the router (sparse remote ipcache) over in-memory
// maps. The remote apiservers and the cache process themselves are not
// run: the cache's copy is written directly. It prints the extrapolation
// to 255 clusters x 100 nodes x 1,000 endpoints from the steps measured.
func BenchmarkMeshScaleCache(b *testing.B) {
	quietLogs(b)
	var results []*stepResult
	for _, sz := range meshSteps {
		b.Run(fmt.Sprintf("cache-%dclusters-x-%dnodes-x-%deps", sz.clusters, sz.nodes, sz.eps), func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st := &stepResult{mode: "cache", clusters: sz.clusters, nodes: sz.nodes, eps: sz.eps, endpoints: sz.clusters * sz.nodes * sz.eps}
			local := apiservertest.StartProcess(b, "local", 1)
			st.etcdPid = local.Pid()
			root, err := local.Connect(clustermesh.UserRoot) // the cache writes as the apiserver
			if err != nil {
				b.Fatal(err)
			}
			defer root.Close()
			start := time.Now()
			var wg sync.WaitGroup
			next := make(chan uint32)
			errs := make(chan error, 4)
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for c := range next {
						if err := writeCached(ctx, root, c, sz.nodes, sz.eps); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			for i := range sz.clusters {
				next <- uint32(i + 2)
			}
			close(next)
			wg.Wait()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			st.fillRate = float64(st.endpoints) / time.Since(start).Seconds()
			sr, err := root.Raw().Status(ctx, local.Endpoint)
			if err != nil {
				b.Fatal(err)
			}
			st.etcdBytes = sr.DbSizeInUse
			dir := b.TempDir()
			for i := range sz.clusters {
				writeCacheRemoteConfig(b, dir, simName(uint32(i+2)))
			}
			a, why := newSimAgent(b, dir)
			st.routerOff = why
			defer a.router.stop()
			a.m.ViaCache(local.Agent) // the agent's own connection, with its read-only view of the cache
			mctx, mcancel := context.WithCancel(ctx)
			defer mcancel()
			a.follow(b, mctx, st)
			hb := uint64(1)
			err = a.churn(ctx, st, churnRate, churnFor, func(ctx context.Context, c uint32, key string, v []byte) error {
				return root.Put(ctx, clustermesh.CachePrefix+simName(c)+"/"+key, v, 0)
			}, func(ctx context.Context) {
				hb++
				w := &txnWriter{kv: root}
				for i := range sz.clusters {
					name := simName(uint32(i + 2))
					w.put(ctx, clustermesh.CachePrefix+name+"/"+clustermesh.HeartbeatKey(name), clustermesh.FormatHeartbeat(hb))
				}
				w.flush(ctx)
			})
			if err != nil {
				b.Fatal(err)
			}
			st.report(b)
			results = append(results, st)
			mcancel()
		})
	}
	extrapolate(results)
}

// extrapolate prints what 254 remotes x 100 nodes x 1,000 endpoints would
// need, from the cluster-count step (the most clusters) and the endpoint-
// volume step (the most endpoints): heap and sync time as
// a x endpoints + b x nodes fitted exactly through those two steps.
func extrapolate(results []*stepResult) {
	var count, volume *stepResult
	for _, r := range results {
		if count == nil || r.clusters > count.clusters {
			count = r
		}
		if volume == nil || r.endpoints > volume.endpoints {
			volume = r
		}
	}
	if count == nil || count == volume {
		return
	}
	const clusters, nodes, eps = 254, 100, 1000
	E, K := float64(clusters*nodes*eps), float64(clusters*nodes)
	fit := func(y1, y2 float64) (float64, float64) {
		e1, k1 := float64(count.endpoints), float64(count.clusters*count.nodes)
		e2, k2 := float64(volume.endpoints), float64(volume.clusters*volume.nodes)
		det := e1*k2 - e2*k1
		a := (y1*k2 - y2*k1) / det
		bb := (e1*y2 - e2*y1) / det
		if a < 0 || bb < 0 { // noise: per endpoint only, from the volume step
			return y2 / e2, 0
		}
		return a, bb
	}
	ha, hb := fit(float64(count.heap), float64(volume.heap))
	sa, sb := fit(count.routerSync.Seconds(), volume.routerSync.Seconds())
	ca, cb := fit(count.cpu.Seconds(), volume.cpu.Seconds())
	ra, rb := fit(float64(count.rss)-float64(count.rssBefore), float64(volume.rss)-float64(volume.rssBefore))
	heapT := ha*E + hb*K
	syncT := sa*E + sb*K
	cpuT := ca*E + cb*K
	fmt.Printf("    extrapolation to 255 clusters (254 remotes) x 100 nodes x 1,000 endpoints (%.1f M remote endpoints, %d remote nodes), "+
		"fitted as a x endpoints + b x nodes through the steps cache %dx%dx%d and cache %dx%dx%d:\n",
		E/1e6, int(K), count.clusters, count.nodes, count.eps, volume.clusters, volume.nodes, volume.eps)
	fmt.Printf("      agent heap %.2f GiB (%.1f B/endpoint + %.0f B/node; goal < 2 GiB: %s)\n", heapT/(1<<30), ha, hb, verdict(heapT < 2<<30))
	fmt.Printf("      agent RSS growth %.2f GiB (%.0f B/endpoint + %.0f B/node; the Go heap's headroom over the live heap included)\n",
		(ra*E+rb*K)/(1<<30), ra, rb)
	fmt.Printf("      initial sync %.0f s on this machine as loaded (%.2f us/endpoint + %.1f us/node; goal < 60 s: %s)\n", syncT, sa*1e6, sb*1e6, verdict(syncT < 60))
	fmt.Printf("      agent CPU for the sync %.0f s (%.2f us/endpoint + %.1f us/node): at least that long on one core of its own (goal < 60 s: %s)\n",
		cpuT, ca*1e6, cb*1e6, verdict(cpuT < 60))
	if count.routerOff == "" {
		perNode := float64(count.ipc.Covers) / float64(count.clusters*count.nodes)
		fmt.Printf("      BPF ipcache: %.0f entries (one cover per remote node's pod CIDR, measured at %d nodes: %d covers, %d /32s, peak %d; "+
			"no /32 since no policy tells remote pods apart; remote clusters' share of the map %d: %s)\n",
			perNode*K, count.clusters*count.nodes, count.ipc.Covers, count.ipc.Slash32s, count.ipc.Peak, routing.MaxRemoteIPCacheEntries,
			verdict(perNode*K < routing.MaxRemoteIPCacheEntries && count.ipc.Refused == 0 && volume.ipc.Refused == 0))
	}
	fmt.Printf("      local etcd (the cache) %.1f GiB for the remote endpoints at %.0f B/endpoint (measured at step %dx%dx%d)\n",
		float64(volume.etcdBytes)/float64(volume.endpoints)*E/(1<<30), float64(volume.etcdBytes)/float64(volume.endpoints), volume.clusters, volume.nodes, volume.eps)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
