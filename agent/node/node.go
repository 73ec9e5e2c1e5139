// Package node owns the cluster's node registry in the kvstore: each node's
// record (name, cluster, underlay addresses, pod CIDRs, routing mode, health)
// under the node's lease, the cluster-wide pod CIDR allocation from the
// cluster pool, and a watched view of every node.
package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/internal/replay"
)

// Key prefixes.
const (
	NodesPrefix    = kvstore.Prefix + "state/nodes/v1/"
	PodCIDRsPrefix = kvstore.Prefix + "state/podcidrs/v1/"
	// CRLPrefix + <cluster> is the cluster CA's revocation list of node
	// certificates (PEM), published by its agents for remote clusters.
	CRLPrefix = kvstore.Prefix + "state/node-crl/v1/"
)

var (
	// ErrPoolExhausted: no free pod CIDR is left in the cluster pool.
	ErrPoolExhausted = errors.New("cluster pod CIDR pool exhausted")
	// ErrInvalid: bad pool or size.
	ErrInvalid = errors.New("invalid pod CIDR pool")
)

// Node is one node's record.
type Node struct {
	Name      string   `json:"name"`
	Cluster   string   `json:"cluster"`
	ClusterID uint32   `json:"clusterID"`
	IPs       []string `json:"ips"`
	PodCIDRs  []string `json:"podCIDRs"`
	Routing   string   `json:"routing"`
	Health    string   `json:"health"`
	// Labels describe the node (on EC2: region, zone, instance type, VPC).
	Labels map[string]string `json:"labels,omitempty"`
	// WireGuardKey is the node's WireGuard public key (encryption on).
	WireGuardKey string `json:"wireguardPublicKey,omitempty"`
	// Certificate (PEM) issued by the cluster's CA, and Signature of the
	// record with its key (crypto/nodeauth), when nodes authenticate.
	Certificate string `json:"certificate,omitempty"`
	Signature   string `json:"signature,omitempty"`
	// LocalAddrs are the node's other addresses, those its kernel
	// delivers to itself besides IPs (a second interface's, a loopback
	// address, a bridge's): other nodes close the control ports there to
	// their pods too (agent/hostaddrs gathers them). Outside the record's
	// signature (crypto/nodeauth), so agents from before the field still
	// verify records that carry it.
	LocalAddrs []string `json:"localAddrs,omitempty"`
	// Gossip says the node runs failure detection (memberlist): a node
	// that says so and never answers is declared dead (agent/node
	// Detector.Join); one that does not (detection off, or an agent from
	// before the field) counts as alive until memberlist sees it. Outside
	// the record's signature, as LocalAddrs.
	Gossip bool `json:"gossip,omitempty"`
	// Reachable is this agent's view from failure detection: listed by
	// the API, never stored (see Record).
	Reachable bool `json:"reachable"`
}

// Record is the node's record as stored in the kvstore: every field but the
// local-only reachability.
func (n Node) Record() []byte {
	b, _ := json.Marshal(struct {
		Node
		// Shadows Node.Reachable (a shallower field wins) and is always
		// omitted.
		Reachable struct{} `json:"reachable,omitzero"`
	}{Node: n})
	return b
}

// IP is the node's first underlay address.
func (n Node) IP() netip.Addr {
	if len(n.IPs) == 0 {
		return netip.Addr{}
	}
	a, _ := netip.ParseAddr(n.IPs[0])
	return a
}

// ErrInvalidRecord is wrapped by every error about a node record read from
// the kvstore.
var ErrInvalidRecord = errors.New("invalid node record")

// MaxIPs and MaxPodCIDRs bound a node record's lists: every node that
// learns a record writes a route, a WireGuard allowed IP and IPsec
// policies for each pod CIDR at each change (Kubernetes gives a node at
// most two pod CIDRs). MaxLocalAddrs bounds its other addresses (each an
// entry of every node's node_local_addrs map).
const (
	MaxIPs        = 16
	MaxPodCIDRs   = 16
	MaxLocalAddrs = 16
)

// Check vets a node record read from a kvstore (anyone with write access
// wrote it): a name, at most MaxIPs IPv4 addresses and MaxPodCIDRs IPv4
// pod CIDRs only, at most MaxLocalAddrs other addresses, each an IPv4
// unicast address (not loopback's, link-local or unspecified).
func (n Node) Check() error {
	if n.Name == "" {
		return fmt.Errorf("%w: no name", ErrInvalidRecord)
	}
	if !ValidName(n.Name) {
		return fmt.Errorf("%w: name %q: want a DNS label", ErrInvalidRecord, n.Name)
	}
	if len(n.IPs) > MaxIPs {
		return fmt.Errorf("%w: %s: ips: %d, at most %d", ErrInvalidRecord, n.Name, len(n.IPs), MaxIPs)
	}
	if len(n.PodCIDRs) > MaxPodCIDRs {
		return fmt.Errorf("%w: %s: podCIDRs: %d, at most %d", ErrInvalidRecord, n.Name, len(n.PodCIDRs), MaxPodCIDRs)
	}
	for i, s := range n.IPs {
		if a, err := netip.ParseAddr(s); err != nil || !a.Is4() {
			return fmt.Errorf("%w: %s: ips[%d] %q: want an IPv4 address", ErrInvalidRecord, n.Name, i, s)
		}
	}
	for i, s := range n.PodCIDRs {
		if p, err := netip.ParsePrefix(s); err != nil || !p.Addr().Is4() {
			return fmt.Errorf("%w: %s: podCIDRs[%d] %q: want an IPv4 prefix", ErrInvalidRecord, n.Name, i, s)
		}
	}
	if len(n.LocalAddrs) > MaxLocalAddrs {
		return fmt.Errorf("%w: %s: localAddrs: %d, at most %d", ErrInvalidRecord, n.Name, len(n.LocalAddrs), MaxLocalAddrs)
	}
	for i, s := range n.LocalAddrs {
		if a, err := netip.ParseAddr(s); err != nil || !LocalAddrOK(a) {
			return fmt.Errorf("%w: %s: localAddrs[%d] %q: want an IPv4 unicast address", ErrInvalidRecord, n.Name, i, s)
		}
	}
	return nil
}

// LocalAddrOK says whether a may be among a node's other addresses: IPv4
// unicast, not loopback's (127/8, which every node has), link-local or
// unspecified (0/8).
func LocalAddrOK(a netip.Addr) bool {
	return a.Is4() && a.IsGlobalUnicast() && !a.IsLoopback() && a.As4()[0] != 0 && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// ParsedLocalAddrs are n's other addresses (LocalAddrs) that parse and
// pass LocalAddrOK.
func (n Node) ParsedLocalAddrs() []netip.Addr {
	var out []netip.Addr
	for _, s := range n.LocalAddrs {
		if a, err := netip.ParseAddr(s); err == nil && LocalAddrOK(a) {
			out = append(out, a)
		}
	}
	return out
}

// nameRE is a node's name: a DNS label, as the agent's --node-name.
var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ValidName reports whether s may name a node (a DNS label). A remote
// cluster's node names come from its etcd keys: one that is not a name
// (not UTF-8, control characters) reached Hubble's peer service, which
// could not encode it, until 2026-12-04.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// decodeRecord reads the record stored under name and checks it.
func decodeRecord(b []byte, name string, n *Node) error {
	if err := json.Unmarshal(b, n); err != nil {
		return err
	}
	if n.Name != name {
		return fmt.Errorf("%w: record of %q under the key of %q", ErrInvalidRecord, n.Name, name)
	}
	return n.Check()
}

func cidrKey(cluster string, p netip.Prefix) string {
	return PodCIDRsPrefix + cluster + "/" + strings.ReplaceAll(p.String(), "/", "_")
}

// podCIDRListed runs between AllocatePodCIDR's list and its claim (tests).
var podCIDRListed = func() {}

// AllocatePodCIDR gives node a /size block of pool, cluster-wide unique: the
// block it already holds if any (a restarted node gets its CIDR back, of
// the size it was claimed with), else the first one meeting no claim,
// claimed only if the claims are as listed (claimPodCIDR), so concurrent
// joins never share nor overlap a block. Claims outlive the node's lease.
// Until 2026-12-06 a claim counted as taken only by its exact string:
// after the block size changed, a node claimed a block over its
// neighbours' (TestPodCIDRsNeverOverlap).
func AllocatePodCIDR(ctx context.Context, kv *kvstore.Client, cluster, node string, pool netip.Prefix, size int) (netip.Prefix, error) {
	if !pool.Addr().Is4() || pool.Masked() != pool || size < pool.Bits() || size > 29 {
		return netip.Prefix{}, fmt.Errorf("%w: pool %s with blocks of /%d", ErrInvalid, pool, size)
	}
	for range maxPodCIDRTries {
		p, err := claimPodCIDR(ctx, kv, cluster, node, pool, size)
		if !errors.Is(err, errClaimsChanged) {
			return p, err
		}
	}
	return netip.Prefix{}, fmt.Errorf("pod CIDR of %s: the claims kept changing over %d tries", node, maxPodCIDRTries)
}

// maxPodCIDRTries bounds AllocatePodCIDR's tries while other nodes claim.
const maxPodCIDRTries = 64

// errClaimsChanged: another claim landed after the list (try again).
var errClaimsChanged = errors.New("pod CIDR claims changed")

// claimPodCIDR is one try of AllocatePodCIDR: the claims are listed, and
// the first free block claimed only if no claim was made or changed since
// the list (a transaction on the list's revision over the whole prefix),
// else errClaimsChanged. Until 2026-12-06 create-if-absent guarded the
// block's own key only, and two nodes asking for blocks of different sizes
// at the same moment could claim overlapping ones
// (TestConcurrentClaimsOfOtherSizesNeverOverlap).
func claimPodCIDR(ctx context.Context, kv *kvstore.Client, cluster, node string, pool netip.Prefix, size int) (netip.Prefix, error) {
	prefix := PodCIDRsPrefix + cluster + "/"
	kvs, rev, err := kv.List(ctx, prefix)
	if err != nil {
		return netip.Prefix{}, err
	}
	// The claims (any size), and those of smaller blocks than asked.
	taken, finer := map[netip.Prefix]bool{}, []netip.Prefix{}
	for _, e := range kvs {
		got, err := netip.ParsePrefix(strings.ReplaceAll(strings.TrimPrefix(e.Key, prefix), "_", "/"))
		if err != nil {
			continue
		}
		if string(e.Value) == node && pool.Contains(got.Addr()) && got.Bits() >= pool.Bits() {
			if got.Bits() != size {
				slog.Warn("this node keeps the pod CIDR it holds, of another size than podCIDRSize", "podCIDR", got, "podCIDRSize", size)
			}
			return got, nil
		}
		taken[got.Masked()] = true
		if got.Bits() > size {
			finer = append(finer, got)
		}
	}
	overlaps := func(p netip.Prefix) bool {
		for b := 0; b <= size; b++ { // a claim holding p (or p)
			if taken[netip.PrefixFrom(p.Addr(), b).Masked()] {
				return true
			}
		}
		return slices.ContainsFunc(finer, func(q netip.Prefix) bool { return p.Contains(q.Addr()) })
	}
	podCIDRListed()
	n := 1 << (size - pool.Bits())
	base := pool.Addr().As4()
	start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	step := uint32(1) << (32 - size)
	for i := 0; i < n; i++ {
		v := start + uint32(i)*step
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), size)
		if overlaps(p) {
			continue
		}
		key := cidrKey(cluster, p)
		ok, err := kv.Txn(ctx, []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(prefix), "<", rev+1).WithPrefix(),
			clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
		}, []clientv3.Op{clientv3.OpPut(key, node)})
		if err != nil {
			return netip.Prefix{}, err
		}
		if !ok {
			return netip.Prefix{}, errClaimsChanged
		}
		return p, nil
	}
	return netip.Prefix{}, fmt.Errorf("%w: all %d blocks of /%d in %s are taken", ErrPoolExhausted, n, size, pool)
}

// Registry publishes this node and watches the cluster's nodes.
type Registry struct {
	kv    *kvstore.Client
	lease *kvstore.Lease
	self  Node
	// pubMu orders publishes: the record written last is the newest.
	pubMu sync.Mutex

	mu          sync.Mutex
	nodes       map[string]Node
	unreachable map[string]bool
	subs        []*replay.Sub[Node]
	synced      chan struct{}
	sign        func(*Node) error
	// hold keeps the record of a node whose lease ended while failure
	// detection still reaches it; pending are those records.
	hold    *kvstore.Hold[string]
	pending map[string]bool
	// ctx is the registry's (it ends with the agent); retrying: a failed
	// publish of a change is being tried again; again: another failed
	// while it was, so the retrier goes on after its success.
	ctx             context.Context
	retrying, again bool
}

func (r *Registry) key(n Node) string { return NodesPrefix + n.Cluster + "/" + n.Name }

// NewRegistry writes self under the lease (again whenever the lease is
// renewed) and starts watching the cluster's nodes; it returns once the
// initial list is in.
// sign, when given, signs the record before every publication.
func NewRegistry(ctx context.Context, kv *kvstore.Client, lease *kvstore.Lease, self Node, sign ...func(*Node) error) (*Registry, error) {
	if self.Health == "" {
		self.Health = "ok"
	}
	r := &Registry{kv: kv, lease: lease, self: self, nodes: map[string]Node{}, unreachable: map[string]bool{}, synced: make(chan struct{}), pending: map[string]bool{}, ctx: ctx}
	if len(sign) > 0 {
		r.sign = sign[0]
	}
	if err := r.publish(ctx, lease.ID()); err != nil {
		return nil, err
	}
	lease.OnRenew(func(ctx context.Context, id int64) {
		if err := r.publish(ctx, id); err != nil {
			slog.Error("could not publish the node record again; trying again", "err", err)
			r.retryPublish()
		}
	})
	go r.watch(ctx)
	select {
	case <-r.synced:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return r, nil
}

func (r *Registry) publish(ctx context.Context, lease int64) error {
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	r.mu.Lock()
	if r.sign != nil {
		if err := r.sign(&r.self); err != nil {
			r.mu.Unlock()
			return fmt.Errorf("sign the node record: %w", err)
		}
	}
	b := r.self.Record()
	key := r.key(r.self)
	r.mu.Unlock()
	return r.kv.Put(ctx, key, b, lease)
}

// UpdateSelf changes this node's record and publishes it (e.g. a rotated
// WireGuard key). When the publish fails the change stays, and it is
// published again in the background (1 s doubling up to 30 s) until it
// is in; the error is returned all the same.
func (r *Registry) UpdateSelf(ctx context.Context, f func(*Node)) error {
	r.mu.Lock()
	f(&r.self)
	r.mu.Unlock()
	err := r.publish(ctx, r.lease.ID())
	if err != nil {
		r.retryPublish()
	}
	return err
}

// publishTimeout bounds each retry of a publish (it holds pubMu: the
// next change's publish waits for it).
const publishTimeout = 10 * time.Second

// retryPublish publishes the record again until it is in (one retrier at
// a time: each try publishes the newest record).
func (r *Registry) retryPublish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.retrying {
		r.again = true
		return
	}
	r.retrying = true
	go func() {
		wait := time.Second
		for {
			select {
			case <-r.ctx.Done():
				return
			case <-time.After(wait):
			}
			ctx, cancel := context.WithTimeout(r.ctx, publishTimeout)
			err := r.publish(ctx, r.lease.ID())
			cancel()
			if err == nil {
				r.mu.Lock()
				again := r.again
				r.retrying, r.again = again, false
				r.mu.Unlock()
				if again {
					continue // published, perhaps before the newest change
				}
				slog.Info("published this node's changed record after a failure")
				return
			}
			slog.Warn("could not publish this node's changed record; trying again", "in", wait, "err", err)
			wait = min(2*wait, 30*time.Second)
		}
	}()
}

// Subscribe calls f for every node known now, then for every node that
// appears, changes or goes (this node included), in that order: a change
// during the replay is handed over after it (until 2026-12-06 it could
// come first, and the replay's older record stay: a node deleted during a
// starting agent's replay was learned again; TestRegistrySubscribeReplayFirst).
func (r *Registry) Subscribe(f func(n Node, deleted bool)) {
	sb := replay.New(f)
	r.mu.Lock()
	r.subs = append(r.subs, sb)
	nodes := make([]Node, 0, len(r.nodes))
	for _, n := range r.nodes {
		nodes = append(nodes, n)
	}
	r.mu.Unlock()
	sb.Replay(nodes)
}

func (r *Registry) watch(ctx context.Context) {
	prefix := NodesPrefix + r.self.Cluster + "/"
	once := sync.Once{}
	for ev := range r.kv.Watch(ctx, prefix, kvstore.WatchOptions{}) {
		if ev.Type == kvstore.EventSynced {
			once.Do(func() { close(r.synced) })
			continue
		}
		name := strings.TrimPrefix(ev.Key, prefix)
		var n Node
		deleted := ev.Type == kvstore.EventDelete
		r.mu.Lock()
		if deleted && r.pending[name] {
			r.mu.Unlock()
			continue
		}
		if hold := r.hold; deleted && hold != nil && name != r.self.Name && r.nodes[name].Name != "" {
			// Pending before the hold starts, so its release finds it.
			r.pending[name] = true
			r.mu.Unlock()
			if r.kv.LeaseEnded(ctx, ev) && hold.Add(ctx, name, name) {
				slog.Info("holding the record of a node whose lease ended while it is reachable", "node", name)
				continue
			}
			r.mu.Lock()
			delete(r.pending, name)
		}
		wasPending := !deleted && r.pending[name]
		if wasPending {
			delete(r.pending, name)
			r.hold.Clear(name)
		}
		if deleted {
			n = r.nodes[name]
			delete(r.nodes, name)
		} else if err := decodeRecord(ev.Value, name, &n); err != nil {
			r.mu.Unlock()
			slog.Warn("ignoring an unreadable node record", "key", ev.Key, "err", err)
			continue
		} else {
			old := r.nodes[name]
			r.nodes[name] = n
			if wasPending && bytes.Equal(old.Record(), n.Record()) {
				// A held record written again as it was: nothing changed.
				r.mu.Unlock()
				continue
			}
		}
		subs := slices.Clone(r.subs)
		r.mu.Unlock()
		if n.Name == "" {
			continue
		}
		for _, sb := range subs {
			sb.Deliver(n, deleted)
		}
	}
}

// Reachable reports whether name is a known node that failure detection
// has not declared down.
func (r *Registry) Reachable(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, known := r.nodes[name]
	return known && !r.unreachable[name]
}

// HoldExpired keeps a node's record (its routes, tunnel endpoint and
// encryption peer) when it vanishes because the node's lease ended while
// failure detection still reaches the node: cut off from the kvstore longer
// than its TTL, it keeps working and writes its record again under a new
// lease once back. The record goes once the node is seen down, or after
// max. Use only with failure detection running (SetReachable).
func (r *Registry) HoldExpired(max time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hold = &kvstore.Hold[string]{Alive: r.Reachable, Max: max, Release: r.release}
}

// release applies the held deletion of a node's record, unless it was
// written again.
func (r *Registry) release(name string) {
	r.mu.Lock()
	n, ok := r.nodes[name]
	if !r.pending[name] || !ok {
		r.mu.Unlock()
		return
	}
	delete(r.pending, name)
	delete(r.nodes, name)
	subs := slices.Clone(r.subs)
	r.mu.Unlock()
	slog.Info("removing the held record of a node", "node", name)
	for _, sb := range subs {
		sb.Deliver(n, true)
	}
}

// SetReachable records failure detection's view of a node.
func (r *Registry) SetReachable(name string, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ok {
		delete(r.unreachable, name)
	} else {
		r.unreachable[name] = true
	}
}

// Self is this node's record.
func (r *Registry) Self() Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.self
}

// List returns every node of the cluster by name, with reachability.
func (r *Registry) List() []Node {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Node, 0, len(r.nodes))
	for _, n := range r.nodes {
		n.Reachable = n.Name == r.self.Name || !r.unreachable[n.Name]
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
