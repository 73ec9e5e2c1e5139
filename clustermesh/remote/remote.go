// Package remote owns an agent's view of remote clusters: it watches a
// config directory (one file per remote cluster), connects to each remote
// cluster's apiserver with backoff, checks its cluster-config (no clash of
// name or ID with the local cluster or another remote), waits for its sync
// canaries, and then follows its nodes, identities and ipcache entries
// and, once those are listed (the routes to its pods are known), its
// services, handing every change to the agent. Reconnects resume the
// watches, so entries that did not change are never removed and re-added;
// a cluster lost for longer than the configured TTL has its entries
// withdrawn.
package remote

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
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
)

// Callbacks receive the remote clusters' state. Node names are qualified
// as <cluster>/<node>.
type Callbacks struct {
	Node     func(n node.Node, deleted bool)
	Identity func(id identity.Identity, deleted bool)
	Entry    func(e ipcache.Entry, deleted bool)
	// Service receives the remote cluster's services (nil: not followed).
	Service func(cluster string, s *service.Service, deleted bool)
	// Authenticate, when set, vets each node record (as published, name
	// unqualified) against the remote cluster's CA; a refused node is not
	// passed on, and one refused after it was accepted is withdrawn.
	Authenticate func(cluster string, caPEM []byte, n node.Node) error
	// Forget, when set, is told every node record deleted from a remote
	// cluster (name qualified), refused or not: its refusal goes too.
	Forget func(name string)
}

// Status of one remote cluster.
type Status struct {
	Name        string    `json:"name"`
	ClusterID   uint32    `json:"clusterID,omitempty"`
	Configured  bool      `json:"configured"`
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
}

// Manager follows every remote cluster configured in a directory.
type Manager struct {
	dir       string
	localName string
	localID   uint32
	ttl       time.Duration
	cb        Callbacks

	mu      sync.Mutex
	remotes map[string]*cluster
}

// NewManager follows the remote configs in dir; ttl > 0 withdraws a lost
// cluster's entries after that long (0 keeps them).
func NewManager(dir, localName string, localID uint32, ttl time.Duration, cb Callbacks) *Manager {
	return &Manager{dir: dir, localName: localName, localID: localID, ttl: ttl, cb: cb, remotes: map[string]*cluster{}}
}

// Run watches the directory until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	for {
		m.scan(ctx)
		select {
		case <-ctx.Done():
			m.mu.Lock()
			for _, c := range m.remotes {
				c.stop()
			}
			m.mu.Unlock()
			return
		case <-time.After(time.Second):
		}
	}
}

func (m *Manager) scan(ctx context.Context) {
	files, _ := filepath.Glob(filepath.Join(m.dir, "*.yaml"))
	seen := map[string]bool{}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		seen[name] = true
		sum := sha256.Sum256(data)
		m.mu.Lock()
		c, ok := m.remotes[name]
		if ok && c.sum == sum {
			m.mu.Unlock()
			continue
		}
		if ok {
			c.stop()
			c.withdraw()
			c.claimed = 0
		}
		cfg, err := clustermesh.LoadRemote(f)
		c = &cluster{m: m, name: name, sum: sum, cfg: cfg, status: Status{Name: name, Configured: true}}
		m.remotes[name] = c
		m.mu.Unlock()
		if err != nil {
			c.fail(err)
			continue
		}
		c.start(ctx)
	}
	m.mu.Lock()
	for name, c := range m.remotes {
		if !seen[name] {
			c.stop()
			c.withdraw()
			c.claimed = 0
			delete(m.remotes, name)
			slog.Info("remote cluster disconnected (config removed)", "cluster", name)
		}
	}
	m.mu.Unlock()
}

// Status lists every remote cluster by name.
func (m *Manager) Status() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.remotes))
	for _, c := range m.remotes {
		out = append(out, c.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
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
	id     uint32
	nodes  map[string]node.Node
	ids    map[identity.NumericIdentity]identity.Identity
	ips    map[netip.Addr]ipcache.Entry
	svcs   map[string]*service.Service
}

func (c *cluster) snapshot() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.status
	st.Nodes, st.Endpoints, st.Identities, st.Services = len(c.nodes), len(c.ips), len(c.ids), len(c.svcs)
	return st
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

// run connects with backoff and follows the cluster until ctx ends.
func (c *cluster) run(ctx context.Context) {
	backoff := time.Second
	var lostSince time.Time
	for ctx.Err() == nil {
		err := c.session(ctx, &lostSince)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.fail(err)
		}
		c.mu.Lock()
		c.status.Connected, c.status.Ready = false, false
		c.mu.Unlock()
		if lostSince.IsZero() {
			lostSince = time.Now()
		}
		c.checkTTL(lostSince)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 10*time.Second {
			backoff *= 2
		}
	}
}

func (c *cluster) checkTTL(lostSince time.Time) {
	if c.m.ttl > 0 && !lostSince.IsZero() && time.Since(lostSince) > c.m.ttl {
		c.mu.Lock()
		already := c.status.Withdrawn
		c.mu.Unlock()
		if !already {
			slog.Warn("remote cluster lost for longer than its TTL: withdrawing its entries", "cluster", c.name, "ttl", c.m.ttl)
			c.withdraw()
			c.m.release(c)
			c.mu.Lock()
			c.status.Withdrawn = true
			c.mu.Unlock()
		}
	}
}

// session is one connection: check, wait for canaries, follow until the
// connection is lost (health checks fail) or ctx ends.
func (c *cluster) session(ctx context.Context, lostSince *time.Time) error {
	kc := kvstore.Config{Endpoints: c.cfg.Endpoints, DialTimeout: 3 * time.Second, CAData: c.cfg.CA, CertData: c.cfg.Cert, KeyData: c.cfg.Key}
	kv, err := kvstore.Connect(ctx, kc)
	if err != nil {
		return err
	}
	defer kv.Close()
	cc, err := kv.Get(ctx, clustermesh.ClusterConfigPrefix+c.name)
	if err != nil {
		return fmt.Errorf("reading the cluster-config of %s: %w", c.name, err)
	}
	var conf clustermesh.ClusterConfig
	if err := json.Unmarshal(cc.Value, &conf); err != nil || conf.Name != c.name {
		return fmt.Errorf("cluster-config of %s is not valid: %q", c.name, cc.Value)
	}
	if why := c.m.claim(c, conf.Name, conf.ID); why != "" {
		return fmt.Errorf("refused: %s", why)
	}
	for _, canary := range clustermesh.Canaries {
		if _, err := kv.Get(ctx, clustermesh.SyncedPrefix+c.name+"/"+canary); err != nil {
			return fmt.Errorf("%s has not finished its initial sync of %s: %w", c.name, canary, err)
		}
	}
	c.mu.Lock()
	if c.status.Withdrawn || c.nodes == nil {
		c.nodes, c.ids, c.ips = map[string]node.Node{}, map[identity.NumericIdentity]identity.Identity{}, map[netip.Addr]ipcache.Entry{}
		c.svcs = map[string]*service.Service{}
	}
	c.id = conf.ID
	c.status.ClusterID, c.status.Connected, c.status.Withdrawn, c.status.Since = conf.ID, true, false, time.Now()
	c.mu.Unlock()
	*lostSince = time.Time{}
	slog.Info("remote cluster connected", "cluster", c.name, "id", conf.ID)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	synced := make(chan string, 4)
	// The services wait for the routes: nodes, identities and ipcache
	// entries are followed first, the services once those have their
	// first list applied. A remote backend in the load balancer before
	// the route to it takes new connections whose packets go nowhere
	// (each client then waits for a SYN retransmit, a second).
	routes := map[string]func(kvstore.Event, bool){
		node.NodesPrefix + c.name + "/": c.nodeEvent,
		identity.IDPrefix:               c.identityEvent,
		ipcache.Prefix + c.name + "/":   c.ipEvent,
	}
	for prefix, apply := range routes {
		go c.follow(wctx, kv, prefix, apply, synced)
	}
	ready := 0
	health := time.NewTicker(2 * time.Second)
	defer health.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-synced:
			ready++
			switch ready {
			case len(routes):
				go c.follow(wctx, kv, service.Prefix+c.name+"/", c.serviceEvent, synced)
			case len(routes) + 1:
				c.mu.Lock()
				c.status.Ready = true
				c.mu.Unlock()
			}
		case <-health.C:
			hctx, hcancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := kv.Get(hctx, clustermesh.ClusterConfigPrefix+c.name)
			hcancel()
			c.mu.Lock()
			c.status.Connected = err == nil
			c.mu.Unlock()
			if err != nil {
				if lostSince.IsZero() {
					*lostSince = time.Now()
					c.fail(fmt.Errorf("lost the connection to %s: %w", c.name, err))
				}
				c.checkTTL(*lostSince)
				if c.snapshot().Withdrawn {
					return fmt.Errorf("%s withdrawn after its TTL", c.name)
				}
			} else {
				*lostSince = time.Time{}
			}
		}
	}
}

// follow lists and watches prefix, applying each change; the first
// EventSynced removes entries the list no longer holds (after a withdrawal
// there are none).
func (c *cluster) follow(ctx context.Context, kv *kvstore.Client, prefix string, apply func(kvstore.Event, bool), synced chan<- string) {
	seen := map[string]bool{}
	first := true
	for ev := range kv.Watch(ctx, prefix, kvstore.WatchOptions{}) {
		switch ev.Type {
		case kvstore.EventSynced:
			if first {
				first = false
				c.dropUnseen(prefix, seen)
				synced <- prefix
			}
		default:
			if first {
				seen[ev.Key] = true
			}
			apply(ev, ev.Type == kvstore.EventDelete)
		}
	}
}

// dropUnseen deletes state of prefix whose keys were not in the first list
// of a session (they vanished while the cluster was out of reach).
func (c *cluster) dropUnseen(prefix string, seen map[string]bool) {
	c.mu.Lock()
	var nodes []node.Node
	var ids []identity.Identity
	var ips []ipcache.Entry
	var svcs []*service.Service
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
	case prefix == identity.IDPrefix:
		for id, x := range c.ids {
			if !seen[prefix+strconv.FormatUint(uint64(id), 10)] {
				ids = append(ids, x)
				delete(c.ids, id)
			}
		}
	default:
		for ip, e := range c.ips {
			if !seen[prefix+ip.String()] {
				ips = append(ips, e)
				delete(c.ips, ip)
			}
		}
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
		c.service(x, true)
	}
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
	mirror(c, func() map[string]*service.Service { return c.svcs }, key, deleted, func() (*service.Service, error) {
		s, err := service.Parse(ev.Value)
		if err != nil || s.Key() != key {
			return nil, fmt.Errorf("service %s: %v", key, err)
		}
		return s, nil
	}, nil, c.service, nil)
}

func (c *cluster) nodeEvent(ev kvstore.Event, deleted bool) {
	name := c.name + "/" + strings.TrimPrefix(ev.Key, node.NodesPrefix+c.name+"/")
	// A refused node was never passed on; its refusal goes with its record.
	forget := func() {
		if c.m.cb.Forget != nil {
			c.m.cb.Forget(name)
		}
	}
	mirror(c, func() map[string]node.Node { return c.nodes }, name, deleted, func() (node.Node, error) {
		var n node.Node
		if err := json.Unmarshal(ev.Value, &n); err != nil {
			return n, errIgnored
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
	slog.Warn("rejected an entry of a remote cluster", "cluster", c.name, "entry", what)
}

func (c *cluster) identityEvent(ev kvstore.Event, deleted bool) {
	n, err := strconv.ParseUint(strings.TrimPrefix(ev.Key, identity.IDPrefix), 10, 32)
	if err != nil {
		return
	}
	id := identity.NumericIdentity(n)
	mirror(c, func() map[identity.NumericIdentity]identity.Identity { return c.ids }, id, deleted, func() (identity.Identity, error) {
		if !id.InClusterRange(c.id) {
			return identity.Identity{}, fmt.Errorf("identity %d outside cluster %d's range", n, c.id)
		}
		ls, err := labels.ParseCanonical(string(ev.Value))
		if err != nil {
			return identity.Identity{}, fmt.Errorf("identity %d with invalid labels", n)
		}
		return identity.Identity{ID: id, Labels: ls}, nil
	}, func(a, b identity.Identity) bool { return a.Labels.Equal(b.Labels) }, c.m.cb.Identity, nil)
}

func (c *cluster) ipEvent(ev kvstore.Event, deleted bool) {
	ip, err := netip.ParseAddr(strings.TrimPrefix(ev.Key, ipcache.Prefix+c.name+"/"))
	if err != nil {
		return
	}
	mirror(c, func() map[netip.Addr]ipcache.Entry { return c.ips }, ip, deleted, func() (ipcache.Entry, error) {
		var e ipcache.Entry
		if err := json.Unmarshal(ev.Value, &e); err != nil {
			return e, errIgnored
		}
		if err := e.Check(ip); err != nil {
			return e, err
		}
		if !e.Identity.InClusterRange(c.id) {
			return e, fmt.Errorf("ipcache entry %s with identity %d outside cluster %d's range", ip, e.Identity, c.id)
		}
		e.Node = c.name + "/" + e.Node
		return e, nil
	}, func(a, b ipcache.Entry) bool { return a == b }, c.m.cb.Entry, nil)
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
// unless equal says it is unchanged (nil: never); one it refuses is
// counted as rejected and changes nothing, unless the refusal wraps
// errWithdraw, which also withdraws what the key held.
func mirror[K comparable, V any](c *cluster, items func() map[K]V, k K, deleted bool, decode func() (V, error),
	equal func(a, b V) bool, emit func(v V, deleted bool), onDelete func()) {
	if deleted {
		c.mu.Lock()
		old, had := items()[k]
		delete(items(), k)
		c.mu.Unlock()
		if had {
			emit(old, true)
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
		}
		return
	}
	c.mu.Lock()
	if old, ok := items()[k]; ok && equal != nil && equal(old, v) {
		c.mu.Unlock()
		return
	}
	items()[k] = v
	c.mu.Unlock()
	emit(v, false)
}

// withdraw removes every entry of the cluster from the agent; its claim
// on its cluster ID is released by the caller.
func (c *cluster) withdraw() {
	c.mu.Lock()
	nodes, ids, ips, svcs := c.nodes, c.ids, c.ips, c.svcs
	c.nodes, c.ids, c.ips = map[string]node.Node{}, map[identity.NumericIdentity]identity.Identity{}, map[netip.Addr]ipcache.Entry{}
	c.svcs = map[string]*service.Service{}
	c.mu.Unlock()
	for _, s := range svcs {
		c.service(s, true)
	}
	for _, e := range ips {
		c.m.cb.Entry(e, true)
	}
	for _, n := range nodes {
		c.m.cb.Node(n, true)
	}
	for _, x := range ids {
		c.m.cb.Identity(x, true)
	}
}
