// Package remote owns an agent's view of remote clusters: it watches a
// config directory (one file per remote cluster), connects to each remote
// cluster's apiserver with backoff, checks its cluster-config (no clash of
// name or ID with the local cluster or another remote), waits for its sync
// canaries, and then follows its nodes, identities and ipcache entries
// and, once those are listed (the routes to its pods are known), its
// services, handing every change to the agent. Reconnects resume the
// watches, so entries that did not change are never removed and re-added.
// A cluster whose connection is lost and whose heartbeat (the canary that
// goes stale) is stale has its entries withdrawn once that has lasted the
// TTL (liveness.go).
package remote

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/cache"
)

// Callbacks receive the remote clusters' state. Node names are qualified
// as <cluster>/<node>.
type Callbacks struct {
	Node     func(n node.Node, deleted bool)
	Identity func(id identity.Identity, deleted bool)
	// Entry receives the remote cluster's ipcache entries; a deletion
	// carries the address and the (qualified) node name only.
	Entry func(e ipcache.Entry, deleted bool)
	// Service receives the remote cluster's services (nil: not followed).
	Service func(cluster string, s *service.Service, deleted bool)
	// Authenticate, when set, vets each node record (as published, name
	// unqualified) against the remote cluster's CA; a refused node is not
	// passed on, and one refused after it was accepted is withdrawn.
	Authenticate func(cluster string, caPEM []byte, n node.Node) error
	// Revocations, when set, is given the revocation list the remote
	// cluster publishes (node.CRLPrefix + its name) before its nodes are
	// read and whenever it changes, with the cluster's CA; when it says
	// the revoked set changed, the cluster's node records are vetted
	// again (Authenticate) and those it refuses now withdrawn.
	Revocations func(cluster string, caPEM, crlPEM []byte) (changed bool, err error)
	// Forget, when set, is told every node record deleted from a remote
	// cluster (name qualified), refused or not: its refusal goes too.
	Forget func(name string)
}

// Status of one remote cluster.
type Status struct {
	Name       string `json:"name"`
	ClusterID  uint32 `json:"clusterID,omitempty"`
	Configured bool   `json:"configured"`
	// Pending: the config on disk is new, changed or removed since the
	// agent last read the directory (it does every second).
	Pending     bool      `json:"pending,omitempty"`
	Connected   bool      `json:"connected"`
	Ready       bool      `json:"ready"`
	Withdrawn   bool      `json:"withdrawn,omitempty"`
	Nodes       int       `json:"nodes"`
	Endpoints   int       `json:"endpoints"`
	Identities  int       `json:"identities"`
	Services    int       `json:"services"`
	Rejected    int       `json:"rejected"`
	LastFailure string    `json:"lastFailure,omitempty"`
	FailureTime time.Time `json:"lastFailureTime,omitzero"`
	Since       time.Time `json:"connectedSince,omitzero"`
	// Via is how the remote is read: "direct" (its apiserver) or "cache"
	// (the local apiserver's cache); then the Cache fields are the cache's
	// own view of the remote (connected to it, values it refused, its last
	// failure).
	Via              string `json:"via"`
	CacheConnected   bool   `json:"cacheConnected,omitempty"`
	CacheRejected    int    `json:"cacheRejected,omitempty"`
	CacheLastFailure string `json:"cacheLastFailure,omitempty"`
	// TTL after which a lost cluster's entries are withdrawn ("0s": never).
	TTL string `json:"ttl"`
	// LostSince: health checks have failed since then (zero: connected,
	// or never connected).
	LostSince time.Time `json:"lostSince,omitzero"`
	// HeartbeatAge: how long ago this agent received the remote's last new
	// heartbeat (its own clock); empty: none received.
	HeartbeatAge string `json:"heartbeatAge,omitempty"`
	// CanaryStale: no new heartbeat for clustermesh.HeartbeatStale.
	CanaryStale bool `json:"canaryStale"`
	// TTLLeft: how long until the entries are withdrawn if nothing changes
	// (empty: the TTL is not running).
	TTLLeft string `json:"ttlLeft,omitempty"`
	// Upserts and Deletes count the changes passed on to the agent (nodes,
	// identities, ipcache entries, services) since the config was read.
	Upserts int `json:"upserts"`
	Deletes int `json:"deletes"`
}

// Manager follows every remote cluster configured in a directory.
type Manager struct {
	dir       string
	localName string
	localID   uint32
	ttl       time.Duration
	cb        Callbacks
	// via, when set, is the local cluster's kvstore whose apiserver caches
	// the remote clusters (clustermesh/cache): remotes are read there, under
	// clustermesh.CachePrefix, instead of from their own apiservers.
	via *kvstore.Client
	// cacheLists is shared by the remotes' ipcache lists read from the
	// cache (via): at most cacheListSlots run at once, in pages of
	// cacheListPage keys.
	cacheLists kvstore.ListGate
	// pinned are remotes' cluster IDs fixed by this agent's config
	// (PinClusterIDs), and the names by ID.
	pinned   map[string]uint32
	pinnedBy map[uint32]string

	mu      sync.Mutex
	remotes map[string]*cluster
}

// PinClusterIDs fixes remotes' cluster IDs (call before Run): a pinned
// remote must have its ID, and no other remote may have it. Unpinned, a
// remote picks its own ID, the first to claim one holding it: one could
// take a legitimate remote's ID while that remote was lost or before it
// synced after a restart, and the legitimate one was refused.
func (m *Manager) PinClusterIDs(pins map[string]uint32) {
	m.pinned, m.pinnedBy = maps.Clone(pins), map[uint32]string{}
	for name, id := range pins {
		m.pinnedBy[id] = name
	}
}

// NewManager follows the remote configs in dir; ttl > 0 withdraws a lost
// cluster's entries once it has been lost, its heartbeat stale, for that
// long (0 keeps them).
func NewManager(dir, localName string, localID uint32, ttl time.Duration, cb Callbacks) *Manager {
	return &Manager{dir: dir, localName: localName, localID: localID, ttl: ttl, cb: cb, remotes: map[string]*cluster{}}
}

// ViaCache reads every remote from the cache of the local cluster's
// apiserver through kv (the agent's kvstore) instead of connecting to it;
// call before Run.
func (m *Manager) ViaCache(kv *kvstore.Client) {
	m.via, m.cacheLists = kv, kvstore.NewListGate(cacheListSlots)
}

// The remotes' ipcache lists read from the cache all come from one
// server over one connection, which their pages keep busy with a few
// lists at a time: so at most cacheListSlots of them run at once, each in
// pages of cacheListPage keys. etcd counts the rest of the range at every
// page; pages four times the default with the slots cut the cache's CPU for
// an initial sync by about 35% (docs/benchmarks.md, 2026-12-07), and the slots keep
// the pages in flight to a few, however many remotes there are (a page of
// 16,384 entries is about 4 MiB as read, and again as received; a
// list's last page stays alive until its events are taken, so about two
// pages a slot).
const (
	cacheListSlots       = 4
	cacheListPage  int64 = 16384
)

// Run watches the directory until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	for {
		m.scan(ctx)
		select {
		case <-ctx.Done():
			m.mu.Lock()
			cs := make([]*cluster, 0, len(m.remotes))
			for _, c := range m.remotes {
				cs = append(cs, c)
			}
			m.mu.Unlock()
			// Stopped without m.mu: a cluster's goroutine may be waiting
			// for it (claim, release).
			for _, c := range cs {
				c.stop()
			}
			return
		case <-time.After(time.Second):
		}
	}
}

// viaName is where remotes are read: "direct" or "cache".
func (m *Manager) viaName() string {
	if m.via != nil {
		return "cache"
	}
	return "direct"
}

func (m *Manager) scan(ctx context.Context) {
	seen := map[string]bool{}
	for _, file := range clustermesh.ScanRemotes(m.dir) {
		name, f, sum := file.Name, file.Path, file.Sum
		seen[name] = true
		m.mu.Lock()
		c, ok := m.remotes[name]
		m.mu.Unlock()
		if ok && c.sum == sum {
			continue
		}
		if ok {
			// Stopped without m.mu: its goroutine may be waiting for it.
			c.stop()
			c.withdraw()
			m.mu.Lock()
			c.claimed = 0
			m.mu.Unlock()
		}
		cfg, err := clustermesh.LoadRemote(f)
		c = &cluster{m: m, name: name, sum: sum, cfg: cfg, status: Status{Name: name, Configured: true, TTL: m.ttl.String(), Via: m.viaName()},
			live: liveness{ttl: m.ttl, staleAfter: clustermesh.HeartbeatStale}, warn: clustermesh.NewRefusalWarnings()}
		m.mu.Lock()
		m.remotes[name] = c
		m.mu.Unlock()
		if err != nil {
			c.fail(err)
			continue
		}
		c.start(ctx)
	}
	m.mu.Lock()
	var gone []*cluster
	for name, c := range m.remotes {
		if !seen[name] {
			gone = append(gone, c)
			delete(m.remotes, name)
		}
	}
	m.mu.Unlock()
	for _, c := range gone {
		c.stop()
		c.withdraw()
		m.mu.Lock()
		c.claimed = 0
		m.mu.Unlock()
		slog.Info("remote cluster disconnected (config removed)", "cluster", c.name)
	}
}

// Status lists every remote cluster by name, as the directory holds them
// now: a config written (or changed, or removed) since the last scan shows
// as Pending and not Ready until the next scan has read it, so a status
// asked right after `clustermesh connect` does not answer for the configs
// read before.
func (m *Manager) Status() []Status {
	files := clustermesh.ScanRemotes(m.dir)
	sums := make(map[string][32]byte, len(files))
	for _, f := range files {
		sums[f.Name] = f.Sum
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.remotes))
	for name, c := range m.remotes {
		st := c.snapshot()
		switch sum, ok := sums[name]; {
		case !ok:
			st.Configured, st.Pending, st.Ready = false, true, false
		case sum != c.sum:
			st.Pending, st.Ready = true, false
		}
		out = append(out, st)
	}
	for _, f := range files {
		if _, ok := m.remotes[f.Name]; !ok {
			out = append(out, Status{Name: f.Name, Configured: true, Pending: true, Via: m.viaName(), TTL: m.ttl.String()})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ErrNotHeld: Lookup found no accepted entry of that address that the
// remote still holds as it was accepted.
var ErrNotHeld = errors.New("no such remote ipcache entry held")

// Lookup reads the remote ipcache entry of ip in cluster again, names
// included (the mirror keeps none), from where the cluster is read now
// (its apiserver, or the cache). It returns the entry only when it is the
// one accepted and passed on (the same hash): never a value the mirror
// has not vetted, nor one it has not applied yet.
func (m *Manager) Lookup(ctx context.Context, cluster string, ip netip.Addr) (ipcache.Entry, error) {
	m.mu.Lock()
	c := m.remotes[cluster]
	m.mu.Unlock()
	if c == nil || !ip.Is4() {
		return ipcache.Entry{}, fmt.Errorf("%w: %s in %q", ErrNotHeld, ip, cluster)
	}
	c.mu.Lock()
	src, held := c.src, c.ips != nil && c.ips.has(ip)
	c.mu.Unlock()
	if src == nil || !held {
		return ipcache.Entry{}, fmt.Errorf("%w: %s in %s", ErrNotHeld, ip, cluster)
	}
	kv, err := src.Get(ctx, ipcache.Prefix+cluster+"/"+ip.String())
	if err != nil {
		return ipcache.Entry{}, err
	}
	if len(kv.Value) > ipcache.MaxValueLen {
		return ipcache.Entry{}, fmt.Errorf("%w: %s in %s: unreadable", ErrNotHeld, ip, cluster)
	}
	e, err := ipcache.DecodeEntry(kv.Value)
	if err != nil || e.Check(ip) != nil {
		return ipcache.Entry{}, fmt.Errorf("%w: %s in %s: unreadable", ErrNotHeld, ip, cluster)
	}
	e.Node = cluster + "/" + e.Node
	c.mu.Lock()
	same := c.ips.accepted(e)
	c.mu.Unlock()
	if !same {
		return ipcache.Entry{}, fmt.Errorf("%w: %s in %s: changed since it was applied", ErrNotHeld, ip, cluster)
	}
	return e, nil
}

// claim reserves id for remote self, or says why it cannot have it: the
// local cluster's name or ID, or an ID another remote holds.
func (m *Manager) claim(self *cluster, name string, id uint32) string {
	if name == m.localName {
		return fmt.Sprintf("cluster name %q is the local cluster's", name)
	}
	if id == m.localID {
		return fmt.Sprintf("cluster ID %d of %s is the local cluster's (%s)", id, name, m.localName)
	}
	if want, ok := m.pinned[name]; ok && want != id {
		return fmt.Sprintf("cluster ID %d of %s is not its pinned ID %d (--clustermesh-cluster-ids)", id, name, want)
	}
	if owner, ok := m.pinnedBy[id]; ok && owner != name {
		return fmt.Sprintf("cluster ID %d of %s is pinned to remote cluster %s (--clustermesh-cluster-ids)", id, name, owner)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.remotes {
		if c != self && c.claimed == id {
			return fmt.Sprintf("cluster ID %d of %s is already used by remote cluster %s", id, name, c.name)
		}
	}
	self.claimed = id
	return ""
}

// release gives up self's claim.
func (m *Manager) release(self *cluster) {
	m.mu.Lock()
	self.claimed = 0
	m.mu.Unlock()
}

// cluster is one remote cluster.
type cluster struct {
	m    *Manager
	name string
	sum  [32]byte
	cfg  clustermesh.RemoteConfig

	cancel  context.CancelFunc
	done    chan struct{}
	claimed uint32 // cluster ID this remote holds (guarded by Manager.mu)

	mu     sync.Mutex
	status Status
	live   liveness
	id     uint32
	nodes  map[string]node.Node
	// rawNodes: the node records as read, by key, for vetting again
	// (a revocation list changed); nodeMu keeps that and the node
	// events in order.
	rawNodes map[string][]byte
	nodeMu   sync.Mutex
	ids      map[identity.NumericIdentity]identity.Identity
	ips      *ipMirror
	svcs     map[string]remoteService
	// nodeNames are the names nodeName made, by the node's own name.
	nodeNames map[string]string
	// held is the size of each node record's, identity's and service's
	// value taken this session, by key, and heldSum their sum, within
	// maxRemoteBytes (admit).
	held    map[string]int
	heldSum int
	src     source // where the current session reads (nil between sessions)
	// warn logs the refusals (reject) up to a rate: the remote decides
	// how many there are.
	warn *clustermesh.Warnings
}

// remoteService is a remote cluster's service and the hash of the value it
// was read from (a listing that repeats it changes nothing).
type remoteService struct {
	s   *service.Service
	sum [32]byte
}

func (c *cluster) snapshot() Status {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.status
	st.Nodes, st.Endpoints, st.Identities, st.Services = len(c.nodes), c.ips.len(), len(c.ids), len(c.svcs)
	st.LostSince = c.live.lostAt
	if !c.live.beatAt.IsZero() {
		st.HeartbeatAge = now.Sub(c.live.beatAt).Round(100 * time.Millisecond).String()
	}
	st.CanaryStale = c.live.stale(now)
	if at, ok := c.live.withdrawAt(); ok {
		st.TTLLeft = max(at.Sub(now), 0).Round(100 * time.Millisecond).String()
	}
	return st
}

// passedOn counts n changes handed to the agent.
func (c *cluster) passedOn(n int, deleted bool) {
	c.mu.Lock()
	if deleted {
		c.status.Deletes += n
	} else {
		c.status.Upserts += n
	}
	c.mu.Unlock()
}

func (c *cluster) fail(err error) {
	c.mu.Lock()
	c.status.LastFailure, c.status.FailureTime = err.Error(), time.Now()
	c.mu.Unlock()
	slog.Warn("remote cluster", "cluster", c.name, "err", err)
}

func (c *cluster) start(ctx context.Context) {
	cctx, cancel := context.WithCancel(ctx)
	c.cancel, c.done = cancel, make(chan struct{})
	go func() {
		defer close(c.done)
		c.run(cctx)
	}()
}

func (c *cluster) stop() {
	if c.cancel != nil {
		c.cancel()
		<-c.done
	}
}

// errWithdrawn ends a session whose cluster is due for withdrawal.
var errWithdrawn = errors.New("lost for longer than its TTL")

// ttlTick is how often the TTL is checked.
const ttlTick = 500 * time.Millisecond

// run connects with backoff and follows the cluster until ctx ends. Only
// this goroutine withdraws the cluster's entries for its TTL, and only
// between sessions, when no watch of the cluster is passing changes on.
func (c *cluster) run(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		connected, err := c.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil && !errors.Is(err, errWithdrawn) {
			c.fail(err)
		}
		c.mu.Lock()
		c.status.Connected, c.status.Ready = false, false
		c.live.down(time.Now())
		c.mu.Unlock()
		if connected {
			backoff = time.Second
		}
		if !c.pause(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// pause waits d, withdrawing the entries meanwhile if their TTL runs out;
// false if ctx ended.
func (c *cluster) pause(ctx context.Context, d time.Duration) bool {
	c.checkTTL()
	wait := time.NewTimer(d)
	defer wait.Stop()
	tick := time.NewTicker(ttlTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-wait.C:
			return true
		case <-tick.C:
			c.checkTTL()
		}
	}
}

// due reports whether the TTL has run out.
func (c *cluster) due() bool {
	c.mu.Lock()
	due := c.live.due(time.Now())
	c.mu.Unlock()
	return due && c.cacheConfirmsLoss()
}

// cacheConfirmsLoss: in cache mode both signals come through this
// cluster's own kvstore, so an outage of that kvstore looks like the loss
// of every remote. The TTL then counts only when the kvstore answers that
// the cache lost the remote (its cached cluster-config is absent); while
// it does not answer, nothing is known of the remote and nothing is
// withdrawn. Direct mode: always true.
func (c *cluster) cacheConfirmsLoss() bool {
	if c.m.via == nil {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := prefixed{c.m.via, clustermesh.CachePrefix + c.name + "/"}.Get(ctx, clustermesh.ClusterConfigPrefix+c.name)
	return errors.Is(err, kvstore.ErrNotFound)
}

// checkTTL withdraws the entries if the TTL has run out (no session may be
// running).
func (c *cluster) checkTTL() {
	if !c.due() {
		return
	}
	c.mu.Lock()
	due := c.live.due(time.Now())
	if due {
		c.live.withdrew()
	}
	c.mu.Unlock()
	if due {
		slog.Warn("remote cluster lost, its heartbeat stale, for longer than its TTL: withdrawing its entries", "cluster", c.name, "ttl", c.m.ttl)
		c.withdraw()
		// The status says withdrawn once the entries are gone (a reader
		// of it saw the flag before their deletions were passed on).
		c.mu.Lock()
		c.status.Withdrawn = true
		c.mu.Unlock()
		c.m.release(c)
	}
}

// session is one connection: check, wait for canaries, follow until ctx
// ends or the TTL runs out (errWithdrawn); connected says whether it got
// as far as following. It returns once every goroutine it started has
// ended.
func (c *cluster) session(ctx context.Context) (connected bool, err error) {
	var kv source
	if c.m.via != nil {
		kv = prefixed{c.m.via, clustermesh.CachePrefix + c.name + "/"}
	} else {
		client, err := kvstore.Connect(ctx, c.cfg.KVStore())
		if err != nil {
			return false, err
		}
		defer client.Close()
		kv = client
	}
	conf, err := c.check(ctx, kv)
	if err != nil {
		return false, err
	}
	c.mu.Lock()
	c.src = kv
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.src = nil
		c.mu.Unlock()
	}()
	c.mu.Lock()
	if c.status.Withdrawn || c.nodes == nil {
		c.nodes, c.ids, c.ips = map[string]node.Node{}, map[identity.NumericIdentity]identity.Identity{}, newIPMirror()
		c.svcs, c.rawNodes = map[string]remoteService{}, map[string][]byte{}
		c.held, c.heldSum = map[string]int{}, 0
	}
	c.ips.startListing()
	c.id = conf.ID
	c.status.ClusterID, c.status.Connected, c.status.Withdrawn, c.status.Since = conf.ID, true, false, time.Now()
	c.live.up()
	c.mu.Unlock()
	slog.Info("remote cluster connected", "cluster", c.name, "id", conf.ID)

	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	spawn := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
	}
	synced := make(chan string, 8)
	// The services wait for the routes: nodes, identities and ipcache
	// entries are followed first, the services once those have their
	// first list applied. A remote backend in the load balancer before
	// the route to it takes new connections whose packets go nowhere
	// (each client then waits for a SYN retransmit, a second).
	if c.m.cb.Revocations != nil {
		// The list first: a node it revokes is not taken meanwhile.
		gctx, gcancel := context.WithTimeout(wctx, 10*time.Second)
		if got, err := kv.Get(gctx, node.CRLPrefix+c.name); err == nil {
			c.crlEvent(got.Value)
		}
		gcancel()
		spawn(func() { c.followCRL(wctx, kv) })
	}
	routes := map[string]func(kvstore.Event, bool){
		node.NodesPrefix + c.name + "/": c.nodeEvent,
		identity.IDPrefix:               c.identityEvent,
		ipcache.Prefix + c.name + "/":   c.ipEvent,
	}
	for prefix, apply := range routes {
		spawn(func() { c.follow(wctx, kv, prefix, apply, synced) })
	}
	spawn(func() { c.followHeartbeat(wctx, kv) })
	probes := make(chan error)
	spawn(func() { c.probe(wctx, kv, probes) })
	ready := 0
	tick := time.NewTicker(ttlTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case <-synced:
			ready++
			switch ready {
			case len(routes):
				spawn(func() { c.follow(wctx, kv, service.Prefix+c.name+"/", c.serviceEvent, synced) })
			case len(routes) + 1:
				c.mu.Lock()
				c.status.Ready = true
				c.mu.Unlock()
			}
		case err := <-probes:
			c.mu.Lock()
			c.status.Connected = err == nil
			lost := err != nil && c.live.lostAt.IsZero()
			if err == nil {
				c.live.up()
			} else {
				c.live.down(time.Now())
			}
			c.mu.Unlock()
			if lost {
				c.fail(fmt.Errorf("lost the connection to %s: %w", c.name, err))
			}
		case <-tick.C:
			if c.due() {
				return true, errWithdrawn
			}
		}
	}
}

// check reads the cluster-config, claims the cluster's ID and waits for its
// canaries, each read bounded in time.
func (c *cluster) check(ctx context.Context, kv source) (clustermesh.ClusterConfig, error) {
	var conf clustermesh.ClusterConfig
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cc, err := kv.Get(rctx, clustermesh.ClusterConfigPrefix+c.name)
	if c.m.via != nil {
		c.readCacheStatus(rctx)
		if errors.Is(err, kvstore.ErrNotFound) {
			return conf, fmt.Errorf("the cluster mesh cache does not follow %s (yet)", c.name)
		}
	}
	if err != nil {
		return conf, fmt.Errorf("reading the cluster-config of %s: %w", c.name, err)
	}
	if err := json.Unmarshal(cc.Value, &conf); err != nil || conf.Name != c.name {
		return conf, fmt.Errorf("cluster-config of %s is not valid: %.200q", c.name, cc.Value)
	}
	// An ID out of range (0 stood for no claim: taken whenever every
	// other remote held one, until 2026-12-07) is refused.
	if err := identity.ValidateClusterID(conf.ID); err != nil {
		return conf, fmt.Errorf("cluster-config of %s: %w", c.name, err)
	}
	if why := c.m.claim(c, conf.Name, conf.ID); why != "" {
		return conf, fmt.Errorf("refused: %s", why)
	}
	for _, canary := range clustermesh.Canaries {
		if _, err := kv.Get(rctx, clustermesh.SyncedPrefix+c.name+"/"+canary); err != nil {
			return conf, fmt.Errorf("%s has not finished its initial sync of %s: %w", c.name, canary, err)
		}
	}
	return conf, nil
}

// probe checks the connection every 2 s (a read of the cluster-config,
// 3 s at most) and sends each result until ctx ends.
// Through the cache, the cached cluster-config is there only while the
// cache follows the remote; the cache's status is read too.
func (c *cluster) probe(ctx context.Context, kv source, results chan<- error) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := kv.Get(hctx, clustermesh.ClusterConfigPrefix+c.name)
		if c.m.via != nil {
			c.readCacheStatus(hctx)
		}
		cancel()
		select {
		case results <- err:
		case <-ctx.Done():
			return
		}
	}
}

// followHeartbeat follows the remote's heartbeat key (untracked: the
// watch is of the keys the name begins, which the remote may write
// without end).
func (c *cluster) followHeartbeat(ctx context.Context, kv source) {
	key := clustermesh.HeartbeatKey(c.name)
	for ev := range kv.Watch(ctx, key, kvstore.WatchOptions{Untracked: true}) {
		if ev.Type == kvstore.EventUpsert && ev.Key == key {
			c.heartbeatEvent(ev.Value, time.Now())
		}
	}
}

// heartbeatEvent takes a heartbeat value received at now: a new valid one
// renews the canary; an invalid one is rejected (counted) and renews
// nothing.
func (c *cluster) heartbeatEvent(value []byte, now time.Time) {
	seq, err := clustermesh.ParseHeartbeat(value)
	if err != nil {
		c.reject(err.Error())
		return
	}
	c.mu.Lock()
	c.live.heartbeat(now, seq)
	c.mu.Unlock()
}

// follow lists and watches prefix, applying each change; each list's
// EventSynced removes entries the list no longer holds (after a
// withdrawal there are none), and the first signals synced.
//
// Every prefix is watched untracked: the watch keeps no set of the keys it
// reported, which would hold every key the remote writes, refused ones
// too, with no bound on their number (until 2026-12-07,
// TestRemoteRefusedKeysNotRemembered). Each list (an EventResync, the
// keys, an EventSynced) is compared with what was taken instead: the
// compact mirror marks the ipcache entries each list holds, and a set of
// the keys taken (bounded by the remote's limits) serves the others.
func (c *cluster) follow(ctx context.Context, kv source, prefix string, apply func(kvstore.Event, bool), synced chan<- string) {
	mirrored := prefix == ipcache.Prefix+c.name+"/"
	var seen map[string]bool // the keys taken in a list (nil: not listing)
	first := true
	o := kvstore.WatchOptions{Untracked: true}
	if mirrored && c.m.via != nil {
		o.Page, o.Lists = cacheListPage, c.m.cacheLists
	}
	for ev := range kv.Watch(ctx, prefix, o) {
		switch ev.Type {
		case kvstore.EventResync: // a list (again, if one broke off)
			if mirrored {
				c.mu.Lock()
				c.ips.startListing()
				c.mu.Unlock()
			} else {
				seen = map[string]bool{}
			}
		case kvstore.EventSynced:
			if mirrored || seen != nil {
				c.dropUnseen(prefix, seen)
				c.releaseUnseen(prefix, seen)
				seen = nil
			}
			if first {
				first = false
				synced <- prefix
			}
		default:
			deleted := ev.Type == kvstore.EventDelete
			if deleted {
				c.release(ev.Key)
			} else if !mirrored {
				// (ipEvent bounds the entries' values itself, and parses
				// no address from a long key.)
				if why := c.admit(prefix, ev.Key, ev.Value); why != "" {
					c.reject(why)
					c.release(ev.Key)
					apply(ev, true) // what the key held goes
					break
				}
			}
			if seen != nil && !deleted {
				seen[ev.Key] = true
			}
			apply(ev, deleted)
		}
	}
}

// maxRemoteBytes is clustermesh.MaxRemoteBytes (a variable for tests).
var maxRemoteBytes = clustermesh.MaxRemoteBytes

// admit tells why a node record, identity or service at key under
// prefix is refused ("" when it is taken: its key's and value's bytes
// then count toward the remote's maxRemoteBytes, whether or not the
// record itself is valid).
func (c *cluster) admit(prefix, key string, value []byte) string {
	if len(key) > clustermesh.MaxRemoteKey {
		return fmt.Sprintf("key %.64q…: %d bytes, at most %d", key, len(key), clustermesh.MaxRemoteKey)
	}
	if max := cache.ValueBound(c.name, prefix); len(value) > max {
		return fmt.Sprintf("%s: a value of %d bytes, at most %d", key, len(value), max)
	}
	n := len(key) + len(value)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == nil {
		c.held = map[string]int{}
	}
	if c.heldSum-c.held[key]+n > maxRemoteBytes {
		return fmt.Sprintf("%s: the remote holds %d bytes of node records, identities and services, at most %d", key, c.heldSum, maxRemoteBytes)
	}
	c.heldSum += n - c.held[key]
	c.held[key] = n
	return ""
}

// release gives back what key held of the remote's bytes.
func (c *cluster) release(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.heldSum -= c.held[key]
	delete(c.held, key)
}

// releaseUnseen gives back the bytes of the keys under prefix the first
// list did not hold (seen nil: none are counted, the ipcache entries).
func (c *cluster) releaseUnseen(prefix string, seen map[string]bool) {
	if seen == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	maps.DeleteFunc(c.held, func(k string, n int) bool {
		if strings.HasPrefix(k, prefix) && !seen[k] {
			c.heldSum -= n
			return true
		}
		return false
	})
}

// dropUnseen deletes state of prefix whose keys were not in a list (they
// vanished while the cluster was out of reach, or while a compacted
// watch listed again).
func (c *cluster) dropUnseen(prefix string, seen map[string]bool) {
	if strings.HasPrefix(prefix, node.NodesPrefix) {
		// In order with a revocation list's second look at the records
		// (crlEvent), which would take a dropped one back.
		c.nodeMu.Lock()
		defer c.nodeMu.Unlock()
	}
	c.mu.Lock()
	var nodes []node.Node
	var ids []identity.Identity
	var ips []ipcache.Entry
	var svcs []remoteService
	switch {
	case strings.HasPrefix(prefix, service.Prefix):
		for key, x := range c.svcs {
			if !seen[prefix+key] {
				svcs = append(svcs, x)
				delete(c.svcs, key)
			}
		}
	case strings.HasPrefix(prefix, node.NodesPrefix):
		for name, n := range c.nodes {
			if !seen[prefix+strings.TrimPrefix(name, c.name+"/")] {
				nodes = append(nodes, n)
				delete(c.nodes, name)
			}
		}
		maps.DeleteFunc(c.rawNodes, func(k string, _ []byte) bool { return !seen[k] })
	case prefix == identity.IDPrefix:
		for id, x := range c.ids {
			if !seen[prefix+strconv.FormatUint(uint64(id), 10)] {
				ids = append(ids, x)
				delete(c.ids, id)
			}
		}
	default:
		ips = c.ips.endListing()
	}
	c.mu.Unlock()
	for _, n := range nodes {
		c.m.cb.Node(n, true)
	}
	for _, x := range ids {
		c.m.cb.Identity(x, true)
	}
	for _, e := range ips {
		c.m.cb.Entry(e, true)
	}
	for _, x := range svcs {
		c.service(x.s, true)
	}
	c.passedOn(len(nodes)+len(ids)+len(ips)+len(svcs), true)
}

func (c *cluster) service(s *service.Service, deleted bool) {
	if c.m.cb.Service != nil {
		c.m.cb.Service(c.name, s, deleted)
	}
}

// serviceEvent takes a service of the remote cluster; an invalid one is
// rejected (counted) rather than half applied.
func (c *cluster) serviceEvent(ev kvstore.Event, deleted bool) {
	key := strings.TrimPrefix(ev.Key, service.Prefix+c.name+"/")
	mirror(c, func() map[string]remoteService { return c.svcs }, limits.services, key, deleted, func() (remoteService, error) {
		s, err := service.Parse(ev.Value)
		if err != nil || s.Key() != key {
			return remoteService{}, fmt.Errorf("service %s: %v", key, err)
		}
		return remoteService{s: s, sum: sha256.Sum256(ev.Value)}, nil
	}, func(a, b remoteService) bool { return a.sum == b.sum }, func(x remoteService, deleted bool) { c.service(x.s, deleted) }, nil)
}

// followCRL follows the cluster's revocation list (a deleted one, or
// one not later than the last taken, changes nothing: Revocations;
// untracked, as the heartbeat).
func (c *cluster) followCRL(ctx context.Context, kv source) {
	key := node.CRLPrefix + c.name
	for ev := range kv.Watch(ctx, key, kvstore.WatchOptions{Untracked: true}) {
		if ev.Key == key && ev.Type == kvstore.EventUpsert {
			c.crlEvent(ev.Value)
		}
	}
}

// crlEvent takes the cluster's revocation list and, when the revoked set
// changed, vets its node records again.
func (c *cluster) crlEvent(v []byte) {
	if len(v) > clustermesh.MaxRemoteValue {
		c.reject(fmt.Sprintf("the revocation list of %s: %d bytes, at most %d", c.name, len(v), clustermesh.MaxRemoteValue))
		return
	}
	changed, err := c.m.cb.Revocations(c.name, []byte(c.cfg.CA), v)
	if err != nil {
		c.reject(err.Error())
		return
	}
	if !changed {
		return
	}
	c.nodeMu.Lock()
	defer c.nodeMu.Unlock()
	c.mu.Lock()
	raw := maps.Clone(c.rawNodes)
	c.mu.Unlock()
	for k, v := range raw {
		c.nodeEventLocked(kvstore.Event{Type: kvstore.EventUpsert, Key: k, Value: v}, false)
	}
}

func (c *cluster) nodeEvent(ev kvstore.Event, deleted bool) {
	c.nodeMu.Lock()
	defer c.nodeMu.Unlock()
	c.mu.Lock()
	if c.rawNodes == nil {
		c.rawNodes = map[string][]byte{}
	}
	// Only a record under a node's name is kept to be vetted again (a
	// remote's records under other keys were all kept until 2026-12-07).
	if deleted || !node.ValidName(strings.TrimPrefix(ev.Key, node.NodesPrefix+c.name+"/")) {
		delete(c.rawNodes, ev.Key)
	} else {
		// A copy: a listed value is a part of its whole page's buffer.
		c.rawNodes[ev.Key] = bytes.Clone(ev.Value)
	}
	c.mu.Unlock()
	c.nodeEventLocked(ev, deleted)
}

// nodeEventLocked applies a node record's change; c.nodeMu is held.
func (c *cluster) nodeEventLocked(ev kvstore.Event, deleted bool) {
	key := strings.TrimPrefix(ev.Key, node.NodesPrefix+c.name+"/")
	name := c.name + "/" + key
	// A refused node was never passed on; its refusal goes with its record.
	forget := func() {
		if c.m.cb.Forget != nil {
			c.m.cb.Forget(name)
		}
	}
	mirror(c, func() map[string]node.Node { return c.nodes }, limits.nodes, name, deleted, func() (node.Node, error) {
		var n node.Node
		if !node.ValidName(key) {
			return n, fmt.Errorf("node %q of %s: not a node name (a DNS label)", key, c.name)
		}
		if err := json.Unmarshal(ev.Value, &n); err != nil {
			return n, errIgnored
		}
		if n.Name != key {
			return n, fmt.Errorf("node %s: a record of %q under its key", name, n.Name)
		}
		// Its cluster is the remote's (node authentication reads the
		// certificate's name from it: until 2026-12-05 a record naming
		// another cluster was taken, TestRemoteNodeNamesChecked).
		if n.Cluster != c.name {
			return n, fmt.Errorf("node %s: a record of cluster %q", name, n.Cluster)
		}
		if err := n.Check(); err != nil {
			return n, fmt.Errorf("node %s: %v", name, err)
		}
		if auth := c.m.cb.Authenticate; auth != nil {
			if err := auth(c.name, []byte(c.cfg.CA), n); err != nil {
				// One refused after it was accepted is withdrawn.
				return n, fmt.Errorf("%w: node %s: %v", errWithdraw, name, err)
			}
		}
		// Its cluster ID is the one its remote claimed, whatever the
		// record says: the datapath takes from the node only that
		// cluster's identities as a VNI (bpf remote_vni_ok).
		c.mu.Lock()
		n.ClusterID = c.id
		c.mu.Unlock()
		n.Name, n.Reachable = name, true
		return n, nil
	}, equalNodes, c.m.cb.Node, forget)
}

func equalNodes(a, b node.Node) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

func (c *cluster) reject(what string) {
	c.mu.Lock()
	c.status.Rejected++
	c.mu.Unlock()
	c.warn.Warn("rejected an entry of a remote cluster", "cluster", c.name, "entry", what)
}

func (c *cluster) identityEvent(ev kvstore.Event, deleted bool) {
	n, err := strconv.ParseUint(strings.TrimPrefix(ev.Key, identity.IDPrefix), 10, 32)
	if err != nil {
		return
	}
	id := identity.NumericIdentity(n)
	mirror(c, func() map[identity.NumericIdentity]identity.Identity { return c.ids }, 0, id, deleted, func() (identity.Identity, error) {
		if !id.InClusterRange(c.id) {
			return identity.Identity{}, fmt.Errorf("identity %d outside cluster %d's range", n, c.id)
		}
		ls, err := labels.ParseCanonical(string(ev.Value))
		if err != nil {
			return identity.Identity{}, fmt.Errorf("identity %d with invalid labels", n)
		}
		if err := c.ownLabels(ls); err != nil {
			return identity.Identity{}, fmt.Errorf("identity %d: %w", n, err)
		}
		return identity.Identity{ID: id, Labels: ls}, nil
	}, func(a, b identity.Identity) bool { return a.Labels.Equal(b.Labels) }, c.m.cb.Identity, nil)
}

// ownLabels checks that a remote identity's labels are its cluster's
// endpoint labels: they carry the cluster's name (filament.io/cluster, and
// the Cilium alias if at all) and no other, and no reserved or CIDR
// label. Policies that name no cluster select the local cluster's
// identities by that label, so an identity of this remote posing as the
// local cluster's (or a third's, or as the host) would pass them.
func (c *cluster) ownLabels(ls labels.Labels) error {
	named := false
	for _, l := range ls {
		switch {
		case l.Source == labels.SourceReserved || l.Source == labels.SourceCIDR:
			return fmt.Errorf("label %s: a remote endpoint's identity has none of this source", l)
		case l.Key == labels.KeyCluster || l.Key == labels.KeyCiliumCluster:
			if l.Value != c.name {
				return fmt.Errorf("label %s: not this remote's cluster, %s", l, c.name)
			}
			named = named || l.Key == labels.KeyCluster
		}
	}
	if !named {
		return fmt.Errorf("no label %s=%s", labels.KeyCluster, c.name)
	}
	return nil
}

func (c *cluster) ipEvent(ev kvstore.Event, deleted bool) {
	// The key is ipcache.Prefix + c.name + "/" + the address (cut, not
	// built: this runs for every entry).
	rest, ok := strings.CutPrefix(ev.Key, ipcache.Prefix)
	if ok {
		rest, ok = strings.CutPrefix(rest, c.name)
	}
	if ok {
		rest, ok = strings.CutPrefix(rest, "/")
	}
	ip, err := netip.ParseAddr(rest)
	if !ok || err != nil {
		return
	}
	if deleted {
		c.mu.Lock()
		old, had := c.ips.remove(ip)
		c.mu.Unlock()
		if had {
			c.m.cb.Entry(old, true)
			c.passedOn(1, true)
		}
		return
	}
	if len(ev.Value) > ipcache.MaxValueLen {
		c.refuseListed(ip, fmt.Sprintf("ipcache entry %s: value of %d bytes (at most %d)", ip, len(ev.Value), ipcache.MaxValueLen))
		return
	}
	e, err := ipcache.DecodeEntryAt(ev.Value, rest, ip)
	if err != nil {
		c.refuseListed(ip, "")
		return
	}
	if err := e.Check(ip); err != nil {
		c.refuseListed(ip, err.Error())
		return
	}
	if !e.Identity.InClusterRange(c.id) {
		c.refuseListed(ip, fmt.Sprintf("ipcache entry %s with identity %d outside cluster %d's range", ip, e.Identity, c.id))
		return
	}
	c.mu.Lock()
	if n := c.ips.len(); n >= limits.endpoints && !c.ips.has(ip) {
		c.mu.Unlock()
		c.refuseListed(ip, fmt.Sprintf("ipcache entry %s: the cluster holds %d entries, at most %d", ip, n, limits.endpoints))
		return
	}
	c.ips.expect(ev.Listed)
	e.Node = c.nodeName(e.Node)
	changed := c.ips.put(e)
	c.mu.Unlock()
	if changed {
		c.m.cb.Entry(e, false)
		c.passedOn(1, false)
	}
}

// limits bound what one remote cluster holds in an agent
// (clustermesh.MaxRemote*): past a bound, a new key is rejected (counted
// in status; taken if it comes again once there is room), while a held
// key's changes and deletes are taken. Identities need none here (a
// remote's lie in its cluster's range).
var limits = struct{ nodes, endpoints, services int }{clustermesh.MaxRemoteNodes, clustermesh.MaxRemoteEndpoints, clustermesh.MaxRemoteServices}

// maxNodeNames bounds the names nodeName keeps.
const maxNodeNames = 4096

// nodeName is a node of this cluster by its name in the mesh ("cluster/
// node"), one string per node for its many entries; c.mu is held.
func (c *cluster) nodeName(n string) string {
	if full, ok := c.nodeNames[n]; ok {
		return full
	}
	full := c.name + "/" + n
	if c.nodeNames == nil || len(c.nodeNames) >= maxNodeNames {
		c.nodeNames = map[string]string{} // a cluster renaming its nodes without end starts over
	}
	c.nodeNames[n] = full
	return full
}

// refuseListed refuses a value of ip's key (counted, unless why is empty:
// unreadable) and changes nothing: what the key held before stays, in a
// list as in the watch (a list marks it held).
func (c *cluster) refuseListed(ip netip.Addr, why string) {
	if why != "" {
		c.reject(why)
	}
	c.mu.Lock()
	c.ips.keepListed(ip)
	c.mu.Unlock()
}

// errIgnored: a value that is not of its kind at all (unreadable), dropped
// without counting; errWithdraw: a refusal that also withdraws what the key
// held before.
var (
	errIgnored  = errors.New("unreadable")
	errWithdraw = errors.New("refused")
)

// mirror applies one watch event of one kind to the cluster's copy (items,
// read under c.mu) and passes the change on with emit. A delete drops what
// the key held (then onDelete, if set). A value decode accepts replaces it
// unless equal says it is unchanged; one it refuses is
// counted as rejected and changes nothing, unless the refusal wraps
// errWithdraw, which also withdraws what the key held.
func mirror[K comparable, V any](c *cluster, items func() map[K]V, limit int, k K, deleted bool, decode func() (V, error),
	equal func(a, b V) bool, emit func(v V, deleted bool), onDelete func()) {
	if deleted {
		c.mu.Lock()
		old, had := items()[k]
		delete(items(), k)
		c.mu.Unlock()
		if had {
			emit(old, true)
			c.passedOn(1, true)
		}
		if onDelete != nil {
			onDelete()
		}
		return
	}
	v, err := decode()
	if err != nil {
		if errors.Is(err, errIgnored) {
			return
		}
		var old V
		had := false
		if errors.Is(err, errWithdraw) {
			c.mu.Lock()
			old, had = items()[k]
			delete(items(), k)
			c.mu.Unlock()
		}
		c.reject(err.Error())
		if had {
			emit(old, true)
			c.passedOn(1, true)
		}
		return
	}
	c.mu.Lock()
	old, ok := items()[k]
	if ok && equal != nil && equal(old, v) {
		c.mu.Unlock()
		return
	}
	if n := len(items()); !ok && limit > 0 && n >= limit {
		c.mu.Unlock()
		c.reject(fmt.Sprintf("%v: the cluster holds %d of its kind, at most %d", k, n, limit))
		return
	}
	items()[k] = v
	c.mu.Unlock()
	emit(v, false)
	c.passedOn(1, false)
}

// withdraw removes every entry of the cluster from the agent; its claim
// on its cluster ID is released by the caller.
func (c *cluster) withdraw() {
	c.mu.Lock()
	nodes, ids, ips, svcs := c.nodes, c.ids, c.ips, c.svcs
	c.nodes, c.ids, c.ips = map[string]node.Node{}, map[identity.NumericIdentity]identity.Identity{}, newIPMirror()
	c.svcs, c.rawNodes = map[string]remoteService{}, map[string][]byte{}
	c.mu.Unlock()
	for _, s := range svcs {
		c.service(s.s, true)
	}
	ips.each(func(e ipcache.Entry) { c.m.cb.Entry(e, true) })
	for _, n := range nodes {
		c.m.cb.Node(n, true)
	}
	for _, x := range ids {
		c.m.cb.Identity(x, true)
	}
	c.passedOn(len(svcs)+ips.len()+len(nodes)+len(ids), true)
}

// readCacheStatus takes the cache's view of the remote (bounded, hostile
// only as far as the local apiserver is).
func (c *cluster) readCacheStatus(ctx context.Context) {
	var cs cache.Status
	if kv, err := c.m.via.Get(ctx, clustermesh.CacheStatusKey(c.name)); err != nil || len(kv.Value) > 64<<10 || json.Unmarshal(kv.Value, &cs) != nil {
		cs = cache.Status{LastFailure: "no status from the cache"}
	}
	c.mu.Lock()
	c.status.CacheConnected, c.status.CacheRejected, c.status.CacheLastFailure = cs.Connected, cs.Rejected, cs.LastFailure
	c.mu.Unlock()
}

// source is where a remote is read: its apiserver, or the cache's copy.
type source interface {
	Get(ctx context.Context, key string) (kvstore.KeyValue, error)
	Watch(ctx context.Context, prefix string, o kvstore.WatchOptions) <-chan kvstore.Event
}

// prefixed reads a remote's keys under prefix p of the local kvstore (the
// cache), as if from the remote.
type prefixed struct {
	kv *kvstore.Client
	p  string
}

func (v prefixed) Get(ctx context.Context, key string) (kvstore.KeyValue, error) {
	kv, err := v.kv.Get(ctx, v.p+key)
	kv.Key = strings.TrimPrefix(kv.Key, v.p)
	return kv, err
}

func (v prefixed) Watch(ctx context.Context, prefix string, o kvstore.WatchOptions) <-chan kvstore.Event {
	o.TrimPrefix = v.p
	return v.kv.Watch(ctx, v.p+prefix, o)
}
