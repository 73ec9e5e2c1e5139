// Package remotenames names the pods of remote clusters that this node
// holds without names: with the sparse remote ipcache (agent/routing), a
// covered remote pod's entry keeps its identity and node only, and the
// cluster mesh's own mirror keeps no names either
// (clustermesh/remote/compact.go). When a flow needs the namespace and pod
// of such an address (Hubble, monitor), the entry is read again through
// the cluster mesh (remote.Manager.Lookup, which returns it only as it was
// accepted) by a worker of this package, never in the flow's path: a miss
// answers no name at once and queues the address, and the name is kept in
// a bounded cache whose entries expire, so a reused address is named
// afresh. The queue is bounded and lookups are rate-limited: a pod that
// makes flows to many remote addresses cannot turn them into as many
// kvstore reads, nor hold up the flows of others; past the limits an
// address goes unnamed (the flow still carries its identity and cluster).
package remotenames

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/time/rate"

	"github.com/filament-net/filament/agent/ipcache"
)

// Lookup reads the accepted entry of ip in a remote cluster.
type Lookup func(ctx context.Context, cluster string, ip netip.Addr) (ipcache.Entry, error)

// Config of the cache; zero values take the defaults.
type Config struct {
	Size    int           // addresses held (default 4,096)
	TTL     time.Duration // how long a name (or its absence) is kept (default 30 s)
	Rate    rate.Limit    // lookups per second (default 100)
	Burst   int           // (default 200)
	Timeout time.Duration // of one lookup (default 500 ms)
	Queue   int           // addresses waiting for a lookup (default 256)
}

type name struct{ cluster, namespace, pod string }

// Names is the cache and its worker.
type Names struct {
	lookup  Lookup
	cache   *expirable.LRU[netip.Addr, name]
	limit   *rate.Limiter
	timeout time.Duration

	mu    sync.Mutex
	queue []netip.Addr
	// pending: queued or being looked up, with its cluster and a
	// generation Forget bumps (the answer of a lookup begun before is not
	// cached); bounded by the queue.
	pending map[netip.Addr]*request
	maxQ    int
	wake    chan struct{}
}

type request struct {
	cluster string
	gen     uint64
}

// New is a cache reading through lookup; Run runs its worker.
func New(lookup Lookup, cfg Config) *Names {
	if cfg.Size <= 0 {
		cfg.Size = 4096
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 30 * time.Second
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 100
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 200
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 256
	}
	return &Names{lookup: lookup, cache: expirable.NewLRU[netip.Addr, name](cfg.Size, nil, cfg.TTL),
		limit: rate.NewLimiter(cfg.Rate, cfg.Burst), timeout: cfg.Timeout,
		pending: map[netip.Addr]*request{}, maxQ: cfg.Queue, wake: make(chan struct{}, 1)}
}

// Of names ip, a pod of remote cluster cluster, from the cache; on a miss
// it answers "" and queues the address for the worker (not when the queue
// is full). It never waits on the kvstore.
func (n *Names) Of(cluster string, ip netip.Addr) (namespace, pod string) {
	if v, ok := n.cache.Get(ip); ok && v.cluster == cluster {
		return v.namespace, v.pod
	}
	n.mu.Lock()
	if n.pending[ip] == nil && len(n.queue) < n.maxQ {
		n.pending[ip] = &request{cluster: cluster}
		n.queue = append(n.queue, ip)
		select {
		case n.wake <- struct{}{}:
		default:
		}
	}
	n.mu.Unlock()
	return "", ""
}

// Forget drops what is known of ip (its entry changed or went); a lookup
// of ip under way is not cached.
func (n *Names) Forget(ip netip.Addr) {
	n.mu.Lock()
	n.cache.Remove(ip)
	if r := n.pending[ip]; r != nil {
		r.gen++
	}
	n.mu.Unlock()
}

// Run looks up queued addresses, at the rate limit, until ctx ends.
func (n *Names) Run(ctx context.Context) {
	for {
		n.mu.Lock()
		var ip netip.Addr
		have := len(n.queue) > 0
		if have {
			ip, n.queue = n.queue[0], n.queue[1:]
		}
		n.mu.Unlock()
		if !have {
			select {
			case <-ctx.Done():
				return
			case <-n.wake:
				continue
			}
		}
		if err := n.limit.Wait(ctx); err != nil {
			return
		}
		n.resolve(ctx, ip)
	}
}

// resolve looks ip up and caches the answer (a failure as no name),
// unless Forget ran meanwhile.
func (n *Names) resolve(ctx context.Context, ip netip.Addr) {
	n.mu.Lock()
	r := n.pending[ip]
	cluster, gen := r.cluster, r.gen
	n.mu.Unlock()
	lctx, cancel := context.WithTimeout(ctx, n.timeout)
	v := name{cluster: cluster}
	if e, err := n.lookup(lctx, cluster, ip); err == nil {
		v.namespace, v.pod = e.Namespace, e.Pod
	}
	cancel()
	n.mu.Lock()
	defer n.mu.Unlock()
	if r.gen == gen {
		n.cache.Add(ip, v)
	}
	delete(n.pending, ip)
}
