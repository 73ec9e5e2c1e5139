// Package cache owns the cluster mesh cache of
// filament-clustermesh-apiserver (--clustermesh-cache DIR): it follows
// every remote cluster configured in DIR and re-serves, from the local
// etcd, what agents read of it — its cluster-config, sync canaries and
// heartbeat, nodes, identities, ipcache entries and services — under
// filament/cache/<remote>/<original key>, which agents may only read. An
// agent run with --clustermesh-cache then watches its own cluster's
// apiserver only, however many clusters there are.
//
// The cached cluster-config is present only while the cache follows the
// remote (written once every prefix has its first list, deleted when a
// health check fails): agents take its absence as the loss of the remote.
// The remote's data is copied byte for byte (values over MaxValue are
// refused and counted); agents validate it as they would a remote's.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/clustermesh"
)

// maxAnyClusterID is the largest cluster ID of either identity layout
// (identity.SetMaxClusters: 255 or 511).
const maxAnyClusterID = identity.MaxAnyClusterID

// MaxValue bounds a value the cache copies (clustermesh.MaxRemoteValue;
// smaller for the kinds agents bound more tightly: ValueBound).
const MaxValue = clustermesh.MaxRemoteValue

// What one remote may put in this cluster's etcd (the cache's etcd is the
// cluster's own kvstore: past its quota etcd refuses every write of the
// cluster): at most maxRemoteBytes of values held, written at most at
// writeRate bytes a second after a burst of writeBurst (an initial sync of
// a remote of 100,000 endpoints is about 25 MiB). Until 2026-12-05 only
// the number of keys and 1 MiB a value were bounded
// (TestCacheHoldsBoundedBytes). Variables for tests.
var (
	maxRemoteBytes         = 512 << 20
	writeRate      float64 = 1 << 20
	writeBurst             = 256 << 20
)

// ValueBound is the largest value of remote name under prefix (one of
// Prefixes(name)) the cache copies and agents take (clustermesh/remote).
func ValueBound(name, prefix string) int {
	switch prefix {
	case ipcache.Prefix + name + "/":
		return ipcache.MaxValueLen
	case node.NodesPrefix + name + "/":
		return clustermesh.MaxRemoteNodeValue
	case identity.IDPrefix:
		return clustermesh.MaxRemoteIdentityValue
	}
	return MaxValue
}

// Status is the cache's view of one remote (written as JSON to
// clustermesh.CacheStatusKey; agents show it beside their own).
type Status struct {
	Connected   bool      `json:"connected"`
	Ready       bool      `json:"ready"`
	Rejected    int       `json:"rejected"`
	LastFailure string    `json:"lastFailure,omitempty"`
	FailureTime time.Time `json:"lastFailureTime,omitzero"`
	Since       time.Time `json:"connectedSince,omitzero"`
}

// Prefixes are the keys of remote cluster name that the cache copies.
func Prefixes(name string) []string {
	return []string{node.NodesPrefix + name + "/", identity.IDPrefix, ipcache.Prefix + name + "/", service.Prefix + name + "/",
		clustermesh.SyncedPrefix + name + "/", node.CRLPrefix + name}
}

// limit is how many keys of prefix (one of Prefixes(name)) the cache
// holds for one remote (clustermesh.MaxRemote*).
func limit(name, prefix string) int {
	if n, ok := limitOverride[prefix]; ok {
		return n
	}
	switch prefix {
	case node.NodesPrefix + name + "/":
		return clustermesh.MaxRemoteNodes
	case identity.IDPrefix:
		return clustermesh.MaxRemoteIdentities
	case ipcache.Prefix + name + "/":
		return clustermesh.MaxRemoteEndpoints
	case service.Prefix + name + "/":
		return clustermesh.MaxRemoteServices
	}
	return clustermesh.MaxRemoteSynced
}

// limitOverride: bounds set by tests, by prefix.
var limitOverride = map[string]int{}

// Run follows the remote configs in dir (re-read every second) and copies
// each remote into local until ctx ends. lease gives the apiserver's
// current lease: the cached cluster-configs are put under it, so they
// expire if the apiserver dies while its etcd (an external one) lives on,
// and agents then see the remotes lost (0: no lease).
func Run(ctx context.Context, dir string, local *kvstore.Client, lease func() int64) {
	type running struct {
		sum    [32]byte
		cancel context.CancelFunc
		done   chan struct{}
	}
	remotes := map[string]*running{}
	stop := func(name string, r *running) {
		r.cancel()
		<-r.done
		delete(remotes, name)
	}
	// sweep: remove the copies of clusters no longer configured that this
	// loop did not stop itself, i.e. removed while the apiserver was down
	// or whose removal failed; done at start and after a failure.
	sweep := true
	for {
		seen := map[string]bool{}
		for _, f := range clustermesh.ScanRemotes(dir) {
			name := f.Name
			seen[name] = true
			if r, ok := remotes[name]; ok {
				if r.sum == f.Sum {
					continue
				}
				stop(name, r)
			}
			cfg, err := clustermesh.LoadRemote(f.Path)
			if err != nil {
				slog.Warn("cluster mesh cache: remote config", "file", f.Path, "err", err)
				continue
			}
			rctx, cancel := context.WithCancel(ctx)
			r := &running{sum: f.Sum, cancel: cancel, done: make(chan struct{})}
			remotes[name] = r
			c := &remote{name: name, cfg: cfg, local: local, lease: lease, rate: rate.NewLimiter(rate.Limit(writeRate), writeBurst),
				warn: clustermesh.NewRefusalWarnings()}
			go func() {
				defer close(r.done)
				c.run(rctx)
			}()
		}
		for name, r := range remotes {
			if !seen[name] {
				stop(name, r)
				if removeCopy(ctx, local, name) {
					slog.Info("cluster mesh cache: remote removed", "cluster", name)
				} else {
					sweep = true
				}
			}
		}
		if sweep {
			names, err := CachedClusters(ctx, local)
			sweep = err != nil
			for _, name := range names {
				if !seen[name] {
					if removeCopy(ctx, local, name) {
						slog.Info("cluster mesh cache: removed the copy of a remote no longer configured", "cluster", name)
					} else {
						sweep = true
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			for name, r := range remotes {
				stop(name, r)
			}
			return
		case <-time.After(time.Second):
		}
	}
}

// removeCopy deletes everything cached of cluster name; false on failure
// (logged).
func removeCopy(ctx context.Context, local *kvstore.Client, name string) bool {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := local.DeletePrefix(dctx, clustermesh.CachePrefix+name+"/"); err != nil {
		slog.Warn("cluster mesh cache: removing a remote", "cluster", name, "err", err)
		return false
	}
	return true
}

// CachedClusters lists the clusters with anything under the cache prefix,
// one keys-only read of one key per cluster (it skips past each cluster's
// keys), however many keys each holds.
func CachedClusters(ctx context.Context, local *kvstore.Client) ([]string, error) {
	var names []string
	from, end := clustermesh.CachePrefix, clientv3.GetPrefixRangeEnd(clustermesh.CachePrefix)
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := local.Raw().Get(rctx, from, clientv3.WithRange(end), clientv3.WithLimit(1), clientv3.WithKeysOnly())
		cancel()
		if err != nil {
			return names, err
		}
		if len(r.Kvs) == 0 {
			return names, nil
		}
		name, _, ok := strings.Cut(strings.TrimPrefix(string(r.Kvs[0].Key), clustermesh.CachePrefix), "/")
		if !ok || name == "" {
			// A key directly under the prefix: not a cluster's; skip it.
			from = string(r.Kvs[0].Key) + "\x00"
			continue
		}
		names = append(names, name)
		from = clientv3.GetPrefixRangeEnd(clustermesh.CachePrefix + name + "/")
	}
}

// remote is one remote cluster the cache follows.
type remote struct {
	name  string
	cfg   clustermesh.RemoteConfig
	local *kvstore.Client
	lease func() int64

	mu     sync.Mutex
	status Status
	putIn  int64 // the lease the cached cluster-config was last put under
	// written: the hash of each value this process put in the cache, so a
	// relist after a loss writes only what changed (agents see no event
	// for the rest).
	written map[string][32]byte
	held    map[string]int // keys in written, by prefix
	sizes   map[string]int // the size of each value in written
	bytes   int            // their sum (maxRemoteBytes)
	// rate bounds how fast the remote's values are written (writeRate).
	rate *rate.Limiter
	// A refusal is counted in status, which is written for it at most
	// once a second (rejectedAt; pending: a count not written yet), and
	// logged through warn.
	rejectedAt time.Time
	pending    bool
	warn       *clustermesh.Warnings
}

// reject counts a refused key, logs why (msg and args, as slog.Warn) up
// to warn's rate, and writes the status unless it was written for a
// refusal less than a second ago: a remote's refusals are as many as the
// keys it writes, and until 2026-12-07 each one was a write to this
// cluster's etcd (TestCacheRefusedKeysNotRemembered).
func (r *remote) reject(ctx context.Context, msg string, args ...any) {
	r.warn.Warn(msg, append([]any{"cluster", r.name}, args...)...)
	r.mu.Lock()
	r.status.Rejected++
	write := time.Since(r.rejectedAt) >= time.Second
	if write {
		r.rejectedAt = time.Now()
	}
	r.pending = !write
	r.mu.Unlock()
	if write {
		r.update(ctx, func(*Status) {})
	}
}

// flushRejected writes the status if a refusal's count is not written yet.
func (r *remote) flushRejected(ctx context.Context) {
	r.mu.Lock()
	p := r.pending
	r.mu.Unlock()
	if p {
		r.update(ctx, func(*Status) {})
	}
}

// unchanged reports whether key already holds value in the cache.
func (r *remote) unchanged(key string, value []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	sum, ok := r.written[key]
	return ok && sum == sha256.Sum256(value)
}

// wrote records what key (under prefix) holds now (nil: deleted).
func (r *remote) wrote(prefix, key string, value []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.written == nil {
		r.written, r.held = map[string][32]byte{}, map[string]int{}
	}
	if r.sizes == nil {
		r.sizes = map[string]int{}
	}
	_, had := r.written[key]
	r.bytes -= r.sizes[key]
	delete(r.sizes, key)
	if value == nil {
		if had {
			delete(r.written, key)
			r.held[prefix]--
		}
	} else {
		if !had {
			r.held[prefix]++
		}
		r.written[key] = sha256.Sum256(value)
		r.sizes[key] = len(key) + len(value)
		r.bytes += len(key) + len(value)
	}
}

// overBudget says whether key holding n bytes instead of what it holds
// would take the remote past maxRemoteBytes (it returns the bytes held).
func (r *remote) overBudget(key string, n int) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bytes, r.bytes-r.sizes[key]+n > maxRemoteBytes
}

// unknown records that key (under prefix) may hold anything: counted, and
// never unchanged (no value hashes to zero).
func (r *remote) unknown(prefix, key string) {
	r.wrote(prefix, key, []byte{})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.written[key] = [32]byte{}
}

// full says whether key is new under prefix and the prefix holds its
// bound of keys already (it returns how many).
func (r *remote) full(prefix, key string) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, had := r.written[key]
	n := r.held[prefix]
	return n, !had && n >= limit(r.name, prefix)
}

func (r *remote) key(k string) string { return clustermesh.CachePrefix + r.name + "/" + k }

// update changes the status and writes it.
func (r *remote) update(ctx context.Context, f func(*Status)) {
	r.mu.Lock()
	f(&r.status)
	r.pending = false
	b, _ := json.Marshal(r.status)
	r.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.local.Put(wctx, clustermesh.CacheStatusKey(r.name), b, 0); err != nil && ctx.Err() == nil {
		slog.Warn("cluster mesh cache: writing status", "cluster", r.name, "err", err)
	}
}

func (r *remote) fail(ctx context.Context, err error) {
	slog.Warn("cluster mesh cache", "cluster", r.name, "err", err)
	r.update(ctx, func(s *Status) { s.LastFailure, s.FailureTime = err.Error(), time.Now() })
}

// setConnected publishes the cached cluster-config (nil: withdraws it, the
// remote is lost) and the status.
func (r *remote) setConnected(ctx context.Context, conf []byte) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	key := r.key(clustermesh.ClusterConfigPrefix + r.name)
	var err error
	var lease int64
	if conf == nil {
		err = r.local.Delete(wctx, key)
	} else {
		if r.lease != nil {
			lease = r.lease()
		}
		err = r.local.Put(wctx, key, conf, lease)
	}
	r.mu.Lock()
	r.putIn = lease
	r.mu.Unlock()
	if err != nil {
		slog.Warn("cluster mesh cache: cluster-config", "cluster", r.name, "err", err)
	}
	r.update(context.WithoutCancel(ctx), func(s *Status) {
		s.Connected, s.Ready = conf != nil, conf != nil
		if conf != nil {
			s.Since = time.Now()
		}
	})
}

func (r *remote) run(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		connected, err := r.session(ctx)
		r.setConnected(ctx, nil)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.fail(ctx, err)
		}
		if connected {
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// errLost ends a session whose health check failed.
var errLost = errors.New("lost the connection")

// session copies the remote until ctx ends or a health check fails.
func (r *remote) session(ctx context.Context) (bool, error) {
	kv, err := kvstore.Connect(ctx, r.cfg.KVStore())
	if err != nil {
		return false, err
	}
	defer kv.Close()
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	cc, err := kv.Get(rctx, clustermesh.ClusterConfigPrefix+r.name)
	rcancel()
	if err != nil {
		return false, fmt.Errorf("reading the cluster-config of %s: %w", r.name, err)
	}
	var conf clustermesh.ClusterConfig
	if len(cc.Value) > MaxValue || json.Unmarshal(cc.Value, &conf) != nil || conf.Name != r.name {
		return false, fmt.Errorf("cluster-config of %s is not valid: %.200q", r.name, cc.Value)
	}
	// Within the larger layout's range (its agents check their own: the
	// chart runs the apiserver with the default layout whatever the
	// mesh's).
	if conf.ID < 1 || conf.ID > maxAnyClusterID {
		return false, fmt.Errorf("cluster-config of %s: %w: cluster ID must be 1-%d, got %d", r.name, identity.ErrClusterID, maxAnyClusterID, conf.ID)
	}
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	prefixes := Prefixes(r.name)
	synced := make(chan struct{}, len(prefixes))
	for _, p := range prefixes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.copy(wctx, kv, p, synced)
		}()
	}
	for range prefixes {
		select {
		case <-ctx.Done():
			return false, nil
		case <-synced:
		}
	}
	// Every prefix listed: agents may start.
	r.setConnected(ctx, cc.Value)
	slog.Info("cluster mesh cache: remote synced", "cluster", r.name)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case <-tick.C:
		}
		r.flushRejected(ctx)
		hctx, hcancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := kv.Get(hctx, clustermesh.ClusterConfigPrefix+r.name)
		hcancel()
		if err != nil && ctx.Err() == nil {
			return true, fmt.Errorf("%w to %s: %v", errLost, r.name, err)
		}
		// The apiserver's lease was granted again: put it under the new one.
		r.mu.Lock()
		relet := r.lease != nil && r.lease() != r.putIn
		r.mu.Unlock()
		if relet {
			r.setConnected(ctx, cc.Value)
		}
	}
}

// copy lists and watches prefix of the remote into the cache; each list
// also removes cached keys the remote no longer has (the first signals
// synced).
//
// The watch is untracked: a tracked one keeps a set of every key the
// remote writes, refused ones too, with no bound on their number (until
// 2026-12-07, TestCacheRefusedKeysNotRemembered). Each list (an
// EventResync, the keys, an EventSynced) is compared with the cache
// instead, through a set of the keys it holds (bounded by limit).
func (r *remote) copy(ctx context.Context, kv *kvstore.Client, prefix string, synced chan<- struct{}) {
	var seen keySet // the keys held after a list's upserts (nil: not listing)
	first := true
	for ev := range kv.Watch(ctx, prefix, kvstore.WatchOptions{Untracked: true}) {
		if (ev.Type == kvstore.EventUpsert || ev.Type == kvstore.EventDelete) && !strings.HasPrefix(ev.Key, prefix) {
			continue // a server's event outside the prefix watched
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var err error
		switch ev.Type {
		case kvstore.EventUpsert:
			// A key longer than any a remote's agents write (until
			// 2026-12-07 keys were neither bounded nor counted: keys of
			// 60 MiB with empty values filled this cluster's etcd,
			// TestCacheCountsKeyBytes).
			if len(ev.Key) > clustermesh.MaxRemoteKey {
				r.reject(ctx, "cluster mesh cache: key too long", "key", ev.Key[:64], "bytes", len(ev.Key))
				break
			}
			if len(ev.Value) > ValueBound(r.name, prefix) {
				r.reject(ctx, "cluster mesh cache: value too large", "key", ev.Key, "bytes", len(ev.Value))
				err = r.local.Delete(wctx, r.key(ev.Key))
				r.wrote(prefix, ev.Key, nil)
				break
			}
			if r.unchanged(ev.Key, ev.Value) {
				seen.add(ev.Key)
				break
			}
			if n, full := r.full(prefix, ev.Key); full {
				r.reject(ctx, "cluster mesh cache: the remote holds as many keys of this kind as it may", "key", ev.Key, "held", n)
				// A value left from before (an earlier process's) is not
				// served stale.
				err = r.local.Delete(wctx, r.key(ev.Key))
				break
			}
			if n, over := r.overBudget(ev.Key, len(ev.Key)+len(ev.Value)); over {
				r.reject(ctx, "cluster mesh cache: the remote holds as many bytes as it may", "key", ev.Key, "held", n, "max", maxRemoteBytes)
				err = r.local.Delete(wctx, r.key(ev.Key))
				r.wrote(prefix, ev.Key, nil)
				break
			}
			if r.rate.WaitN(ctx, min(len(ev.Key)+len(ev.Value), r.rate.Burst())) != nil {
				break // ctx ended
			}
			if err = r.local.Put(wctx, r.key(ev.Key), ev.Value, 0); err == nil {
				// An empty value is held too (nil tells wrote a delete:
				// until 2026-12-07 empty values were counted neither in
				// keys nor in bytes).
				v := ev.Value
				if v == nil {
					v = []byte{}
				}
				r.wrote(prefix, ev.Key, v)
			} else {
				// It may be in the cache (written, or from before): still
				// counted, and written again when it next comes.
				r.unknown(prefix, ev.Key)
			}
			seen.add(ev.Key)
		case kvstore.EventDelete:
			err = r.local.Delete(wctx, r.key(ev.Key))
			r.wrote(prefix, ev.Key, nil)
		case kvstore.EventResync:
			seen = keySet{}
		case kvstore.EventSynced:
			if seen != nil {
				err = r.dropUnseen(wctx, prefix, seen)
				seen = nil
			}
			if first {
				first = false
				synced <- struct{}{}
			}
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			slog.Warn("cluster mesh cache: writing", "cluster", r.name, "key", ev.Key, "err", err)
		}
	}
}

// keySet is a set of keys; adding to the nil set does nothing.
type keySet map[string]bool

func (s keySet) add(k string) {
	if s != nil {
		s[k] = true
	}
}

// dropUnseen deletes the cached keys under prefix that a list did not have
// (gone while the cache did not follow, or while a compacted watch listed
// again), or had but refused.
func (r *remote) dropUnseen(ctx context.Context, prefix string, seen keySet) error {
	kvs, _, err := r.local.List(ctx, r.key(prefix))
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		orig := strings.TrimPrefix(kv.Key, r.key(""))
		if !seen[orig] {
			if err := r.local.Delete(ctx, kv.Key); err != nil {
				return err
			}
			r.wrote(prefix, orig, nil)
		}
	}
	return nil
}
