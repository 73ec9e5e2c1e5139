// Package remotenames names the pods of remote clusters that this node
// holds without names: with the sparse remote ipcache (agent/routing), a
// covered remote pod's entry keeps its identity and node only, and the
// cluster mesh's own mirror keeps no names either
// (clustermesh/remote/compact.go). When a flow needs the namespace and pod
// of such an address (Hubble, monitor), the entry is read again through
// the cluster mesh (remote.Manager.Lookup, which returns it only as it was
// accepted) and kept in a bounded cache whose entries expire, so a reused
// address is named afresh. Lookups are rate-limited: a pod that makes
// flows to many remote addresses cannot turn them into as many kvstore
// reads; past the limit an address goes unnamed (the flow still carries
// its identity and cluster).
package remotenames

import (
	"context"
	"net/netip"
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
}

type name struct{ namespace, pod string }

// Names is the cache.
type Names struct {
	lookup  Lookup
	cache   *expirable.LRU[netip.Addr, name]
	limit   *rate.Limiter
	timeout time.Duration
}

// New is a cache reading through lookup.
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
	return &Names{lookup: lookup, cache: expirable.NewLRU[netip.Addr, name](cfg.Size, nil, cfg.TTL),
		limit: rate.NewLimiter(cfg.Rate, cfg.Burst), timeout: cfg.Timeout}
}

// Of names ip, a pod of remote cluster cluster ("" when unknown or over
// the rate limit). A failed lookup is remembered like a name, so an
// unnamed address is not read again before the TTL.
func (n *Names) Of(cluster string, ip netip.Addr) (namespace, pod string) {
	if v, ok := n.cache.Get(ip); ok {
		return v.namespace, v.pod
	}
	if !n.limit.Allow() {
		return "", ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	var v name
	if e, err := n.lookup(ctx, cluster, ip); err == nil {
		v = name{e.Namespace, e.Pod}
	}
	n.cache.Add(ip, v)
	return v.namespace, v.pod
}

// Forget drops what is known of ip (its entry changed or went).
func (n *Names) Forget(ip netip.Addr) { n.cache.Remove(ip) }
