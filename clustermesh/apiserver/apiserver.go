// Package apiserver owns filament-clustermesh-apiserver: a cluster's etcd
// (embedded, or an external etcd cluster) served over mutual TLS with etcd
// authentication — the cluster's agents read and write filament/ but for
// filament/cache/ (read only), remote clusters only read filament/state/,
// filament/cluster-config/ and filament/synced/ — plus the cluster-config
// key (under a lease), the sync canaries that remote clusters wait for,
// the heartbeat they time (clustermesh.HeartbeatKey, the canary that goes
// stale when this cluster is gone) and, with CacheRemotes, the cache of
// the remote clusters (clustermesh/cache).
package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/kvstore/embedded"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/cache"
)

// Config of the apiserver.
type Config struct {
	// Bundle is the cluster's clustermesh bundle (TLS material, name, ID);
	// empty serves plain HTTP without authentication (single cluster, labs).
	Bundle      string
	ClusterName string
	ClusterID   uint32
	// Embedded etcd.
	DataDir, ClientURL, PeerURL string
	UnsafeNoFsync               bool
	// EtcdQuotaBytes bounds the embedded etcd's database (0: etcd's 2 GiB;
	// embedded.ValidateQuota). A cache of a large mesh needs more: about
	// 250 bytes per remote endpoint (docs/benchmarks.md).
	EtcdQuotaBytes int64
	// EtcdEndpoints of an external etcd cluster to use instead (its own TLS
	// and users are its operator's; the root client certificate of the
	// bundle is used to talk to it).
	EtcdEndpoints []string
	// PeersFile lists the clusters connected to read this one, each with
	// an etcd user of its own (clustermesh.PeersFile; empty: the bundle's).
	PeersFile string
	// RetireSharedRemote deletes the one etcd user (clustermesh.UserRemote)
	// every cluster connected before 2026-12-06 reads this one with, and
	// ends its open watches (the embedded etcd's; an external etcd's go
	// on until they end): a cluster disconnected since keeps its
	// certificate, which only this ends. Connect those clusters again
	// first (each then has a user of its own). It must stay set: a start
	// without it makes the user again, and every such certificate reads
	// again.
	RetireSharedRemote bool
	// CacheRemotes, when set, is a directory of remote configs (the
	// bundle's remotes/): the apiserver follows those clusters and
	// re-serves them under filament/cache/ (clustermesh/cache).
	CacheRemotes string
}

// Run serves until ctx ends.
func Run(ctx context.Context, c Config) error {
	if c.Bundle != "" {
		cl, err := clustermesh.LoadCluster(c.Bundle)
		if err != nil {
			return err
		}
		c.ClusterName, c.ClusterID = cl.Name, cl.ID
	}
	if err := clustermesh.ValidateCluster(c.ClusterName, c.ClusterID); err != nil {
		return err
	}
	if err := embedded.ValidateQuota(c.EtcdQuotaBytes); err != nil {
		return err
	}
	if c.EtcdQuotaBytes != 0 && len(c.EtcdEndpoints) != 0 {
		return fmt.Errorf("%w: an etcd quota is for the embedded etcd; an external etcd's is set by its operator (--quota-backend-bytes)", embedded.ErrQuota)
	}
	endpoints := c.EtcdEndpoints
	st := newStreams()
	if len(endpoints) == 0 {
		ec := embedded.Config{Dir: c.DataDir, ClientURL: c.ClientURL, PeerURL: c.PeerURL, UnsafeNoFsync: c.UnsafeNoFsync, QuotaBytes: c.EtcdQuotaBytes,
			GRPCServerOptions: []grpc.ServerOption{grpc.ChainStreamInterceptor(st.intercept)}}
		if c.Bundle != "" {
			ec.CertFile = filepath.Join(c.Bundle, "server.pem")
			ec.KeyFile = filepath.Join(c.Bundle, "server-key.pem")
			ec.ClientCAFile = filepath.Join(c.Bundle, "ca.pem")
		}
		s, err := embedded.Start(ec)
		if err != nil {
			return err
		}
		defer s.Close()
		endpoints = s.Endpoints()
	}
	kc := kvstore.Config{Endpoints: endpoints}
	if c.Bundle != "" {
		kc.CAFile = filepath.Join(c.Bundle, "ca.pem")
		kc.CertFile = filepath.Join(c.Bundle, clustermesh.UserRoot+".pem")
		kc.KeyFile = filepath.Join(c.Bundle, clustermesh.UserRoot+"-key.pem")
	}
	kv, err := kvstore.Connect(ctx, kc)
	if err != nil {
		return err
	}
	defer kv.Close()
	if c.Bundle != "" {
		if err := setupAuth(ctx, kv.Raw(), !c.RetireSharedRemote); err != nil {
			return err
		}
		peers := c.PeersFile
		if peers == "" {
			peers = clustermesh.PeersFile(c.Bundle)
		}
		ps := peerSync{file: peers, shared: !c.RetireSharedRemote, streams: st}
		if err := ps.sync(ctx, kv.Raw()); err != nil {
			// Tried again every second (another replica may be making
			// the same users; the file may be mended).
			slog.Warn("following the connected clusters", "err", err)
		}
		// Joined before kv closes (deferred above, so run after this).
		done := make(chan struct{})
		go func() {
			defer close(done)
			ps.follow(ctx, kv.Raw())
		}()
		defer func() { <-done }()
	}
	lease, err := kv.GrantLease(ctx, 15*time.Second)
	if err != nil {
		return err
	}
	defer lease.Close(context.Background())
	// Canaries first: whoever sees the cluster-config can rely on them.
	now := []byte(time.Now().UTC().Format(time.RFC3339))
	for _, p := range clustermesh.Canaries {
		if err := kv.Put(ctx, clustermesh.SyncedPrefix+c.ClusterName+"/"+p, now, 0); err != nil {
			return err
		}
	}
	cfgKey := clustermesh.ClusterConfigPrefix + c.ClusterName
	b, _ := json.Marshal(clustermesh.ClusterConfig{Name: c.ClusterName, ID: c.ClusterID, Capabilities: []string{"tunnel", "native"}})
	publish := func(ctx context.Context, id int64) {
		if err := kv.Put(ctx, cfgKey, b, id); err != nil {
			slog.Error("writing cluster-config", "err", err)
		}
	}
	publish(ctx, lease.ID())
	lease.OnRenew(publish)
	// Joined before kv closes (deferred above, so run after this).
	beat := make(chan struct{})
	go func() {
		defer close(beat)
		heartbeat(ctx, kv, c.ClusterName, clustermesh.HeartbeatInterval)
	}()
	defer func() { <-beat }()
	if c.CacheRemotes != "" {
		done := make(chan struct{})
		go func() {
			defer close(done)
			cache.Run(ctx, c.CacheRemotes, kv, lease.ID)
		}()
		defer func() { <-done }()
	}
	slog.Info("clustermesh-apiserver serving", "cluster", c.ClusterName, "id", c.ClusterID, "endpoints", endpoints, "tls", c.Bundle != "")
	<-ctx.Done()
	return nil
}

func ignoreExists(err error) error {
	if err == nil || errors.Is(err, rpctypes.ErrUserAlreadyExist) || errors.Is(err, rpctypes.ErrRoleAlreadyExist) ||
		errors.Is(err, rpctypes.ErrGRPCUserAlreadyExist) || errors.Is(err, rpctypes.ErrGRPCRoleAlreadyExist) {
		return nil
	}
	return err
}

// setupAuth creates the users and roles and enables authentication;
// repeated on every start, it changes nothing the second time. Clients are
// authenticated by the common name of their certificate.
func setupAuth(ctx context.Context, c *clientv3.Client, sharedRemote bool) error {
	type grant struct {
		key, end string // the range [key, end)
		perm     clientv3.PermissionType
	}
	prefix := func(p string, perm clientv3.PermissionType) grant {
		return grant{p, clientv3.GetPrefixRangeEnd(p), perm}
	}
	rw, ro := clientv3.PermissionType(clientv3.PermReadWrite), clientv3.PermissionType(clientv3.PermRead)
	cacheEnd := clientv3.GetPrefixRangeEnd(clustermesh.CachePrefix)
	roles := map[string][]grant{
		// Agents: filament/ read-write but for the cache, read-only.
		clustermesh.UserAgent: {{kvstore.Prefix, clustermesh.CachePrefix, rw}, {cacheEnd, clientv3.GetPrefixRangeEnd(kvstore.Prefix), rw},
			prefix(clustermesh.CachePrefix, ro)},
		// Remotes: what they follow (nodes, identities, endpoints,
		// services, the node CRL), cluster-config and sync canaries; not
		// this cluster's policies, group results, pod CIDR leases or
		// identity references (until 2026-12-05 all of filament/state/).
		clustermesh.UserRemote: {prefix(node.NodesPrefix, ro), prefix(identity.IDPrefix, ro), prefix(ipcache.Prefix, ro),
			prefix(service.Prefix, ro), prefix(node.CRLPrefix, ro),
			prefix(clustermesh.ClusterConfigPrefix, ro), prefix(clustermesh.SyncedPrefix, ro)},
	}
	for role, grants := range roles {
		if _, err := c.RoleAdd(ctx, role); ignoreExists(err) != nil {
			return fmt.Errorf("etcd role %s: %w", role, err)
		}
		for _, g := range grants {
			if _, err := c.RoleGrantPermission(ctx, role, g.key, g.end, g.perm); err != nil {
				return fmt.Errorf("etcd role %s on %s: %w", role, g.key, err)
			}
		}
		// Then grants of earlier versions (the agents' whole filament/)
		// go: granted first, running agents never lose their writes.
		if r, err := c.RoleGet(ctx, role); err == nil {
			for _, p := range r.Perm {
				if !slices.ContainsFunc(grants, func(g grant) bool { return g.key == string(p.Key) && g.end == string(p.RangeEnd) }) {
					if _, err := c.RoleRevokePermission(ctx, role, string(p.Key), string(p.RangeEnd)); err != nil {
						return fmt.Errorf("etcd role %s: revoking %s: %w", role, p.Key, err)
					}
				}
			}
		}
	}
	users := []struct{ user, role string }{{clustermesh.UserRoot, "root"}, {clustermesh.UserAgent, clustermesh.UserAgent}}
	if sharedRemote {
		users = append(users, struct{ user, role string }{clustermesh.UserRemote, clustermesh.UserRemote})
	} else if _, err := c.UserDelete(ctx, clustermesh.UserRemote); err != nil && !errors.Is(err, rpctypes.ErrUserNotFound) &&
		!errors.Is(err, rpctypes.ErrGRPCUserNotFound) {
		// Retired: the role only (the peers' users have it); the user
		// goes here too, whatever the peers file says (peerSync, which
		// ends its watches, stops at a bad file).
		return fmt.Errorf("etcd user %s (retired): %w", clustermesh.UserRemote, err)
	}
	for _, u := range users {
		if _, err := c.UserAddWithOptions(ctx, u.user, "", &clientv3.UserAddOptions{NoPassword: true}); ignoreExists(err) != nil {
			return fmt.Errorf("etcd user %s: %w", u.user, err)
		}
		if _, err := c.UserGrantRole(ctx, u.user, u.role); err != nil {
			return fmt.Errorf("etcd user %s role %s: %w", u.user, u.role, err)
		}
	}
	if _, err := c.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enable etcd authentication: %w", err)
	}
	return nil
}

// heartbeat writes the cluster's heartbeat every interval until ctx ends:
// the next number of the sequence stored there (a restart goes on from it,
// so readers see a new value at once).
func heartbeat(ctx context.Context, kv *kvstore.Client, cluster string, interval time.Duration) {
	key := clustermesh.HeartbeatKey(cluster)
	var seq uint64
	if cur, err := kv.Get(ctx, key); err == nil {
		seq, _ = clustermesh.ParseHeartbeat(cur.Value)
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	failing := false
	for {
		seq++
		wctx, cancel := context.WithTimeout(ctx, interval)
		err := kv.Put(wctx, key, clustermesh.FormatHeartbeat(seq), 0)
		cancel()
		if err != nil && !failing && ctx.Err() == nil {
			slog.Warn("writing the heartbeat", "key", key, "err", err)
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
