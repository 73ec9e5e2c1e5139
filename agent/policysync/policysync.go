// Package policysync owns the cluster's policies outside Kubernetes: an
// import is validated whole and stored in the kvstore in one transaction,
// one key per policy under
// filament/state/policies/v1/<cluster>/<key> (no lease; see Prefix), and
// every agent follows that prefix into its policy repository (its local
// cache, persisted in the state dir, so an agent restarting while the
// kvstore is down enforces the last policies it knew) and from there into
// enforcement. Node-local policies, imported with an explicit scope, stay
// in the repository of the node that imported them.
package policysync

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
)

// Prefix of the policies in the kvstore: <Prefix><cluster>/<key>, where key
// is the policy's api.KeyOf (namespace/name, namespace/networkpolicy/name
// for a NetworkPolicy, name alone for a cluster-wide policy). A
// NetworkPolicy stored by an agent from before 2026-12-04 under
// namespace/name is read there and moved to its key.
const Prefix = kvstore.Prefix + "state/policies/v1/"

var (
	// ErrTooLarge: the import does not fit in one kvstore transaction.
	ErrTooLarge = errors.New("policy import too large for one kvstore transaction")
	// ErrScope is wrapped by the error for an unknown scope or a policy
	// changed through the wrong one (an invalid request).
	ErrScope = fmt.Errorf("%w: scope", api.ErrInvalidPolicy)
)

// Config of a Store.
type Config struct {
	Cluster string
	KV      *kvstore.Client
	// Repo is the node's policy repository (the cache every change goes
	// through on its way to enforcement).
	Repo *policy.Repository
	// Apply hands the repository's policies to enforcement after a change.
	Apply func() error
	// Migrate gives the node-local scope to repository policies without a
	// scope (an agent from before policies were the cluster's). False in
	// Kubernetes mode, whose own policies have no scope.
	Migrate bool
}

// Store is the cluster's policies as one agent sees and changes them.
type Store struct {
	cfg    Config
	prefix string

	applied kvstore.Applied // the kvstore revision the repository reflects

	// beforeCommit, when set (tests), runs just before the transaction
	// with the import's context.
	beforeCommit func(ctx context.Context)
}

// Start adopts policies of an older per-node repository as node-local (if
// cfg.Migrate) and starts following the cluster's policies; it returns at
// once: until the kvstore answers, the repository's last known policies
// stay enforced.
func Start(ctx context.Context, cfg Config) (*Store, error) {
	s := &Store{cfg: cfg, prefix: Prefix + cfg.Cluster + "/"}
	if cfg.Migrate {
		keys, err := cfg.Repo.AdoptUnscoped(policy.ScopeLocal)
		if err != nil {
			return nil, err
		}
		if len(keys) > 0 {
			slog.Warn("policies imported on this node before policies were the cluster's are kept as node-local; "+
				"import them again without --local to make them the cluster's", "policies", keys)
		}
	}
	go s.follow(ctx)
	return s, nil
}

// follow re-reads the cluster's policies after every burst of changes.
// Reading the whole prefix at one revision (rather than applying events one
// by one) applies an import's transaction whole, never a part of it.
func (s *Store) follow(ctx context.Context) {
	ch := s.cfg.KV.Watch(ctx, s.prefix, kvstore.WatchOptions{})
	for range ch {
		for drained := false; !drained; {
			select {
			case _, ok := <-ch:
				if !ok {
					return
				}
			default:
				drained = true
			}
		}
		for {
			err := s.resync(ctx)
			if err == nil || ctx.Err() != nil {
				break
			}
			slog.Warn("following the cluster's policies", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// resync makes the repository's cluster policies those in the kvstore.
func (s *Store) resync(ctx context.Context) error {
	kvs, rev, err := s.cfg.KV.List(ctx, s.prefix)
	if err != nil {
		return err
	}
	ps := make([]api.Policy, 0, len(kvs))
	seen := map[string]bool{}
	var legacy []legacyEntry
	for _, kv := range kvs {
		p, old, err := s.decode(kv)
		if err != nil {
			slog.Warn("ignoring an invalid policy in the kvstore", "key", kv.Key, "err", err)
			continue
		}
		if old {
			legacy = append(legacy, legacyEntry{kv, p})
			continue
		}
		ps = append(ps, p)
		seen[p.Key()] = true
	}
	// A NetworkPolicy under its legacy key counts unless it is also
	// stored under its key (imported again since).
	for _, l := range legacy {
		if !seen[l.p.Key()] {
			ps = append(ps, l.p)
			seen[l.p.Key()] = true
		}
	}
	if _, err := s.cfg.Repo.ReplaceScope(policy.ScopeCluster, ps); err != nil {
		return err
	}
	if err := s.cfg.Apply(); err != nil {
		return err
	}
	s.applied.Advance(rev)
	s.moveLegacy(ctx, legacy, kvs)
	return nil
}

// legacyEntry is a NetworkPolicy stored under its legacy key
// (namespace/name) by an agent from before 2026-12-04.
type legacyEntry struct {
	kv kvstore.KeyValue
	p  api.Policy
}

// moveLegacy stores each NetworkPolicy found under its legacy key under
// its key and deletes the legacy one, each in one transaction that does
// nothing if either key changed since kvs was read (another agent moving
// it too, or a user's import or delete). Where the key already holds the
// policy, only the legacy entry goes. A failure is logged: the legacy
// entry is read as before, and the next resync tries again.
func (s *Store) moveLegacy(ctx context.Context, legacy []legacyEntry, kvs []kvstore.KeyValue) {
	current := map[string]int64{}
	for _, kv := range kvs {
		current[kv.Key] = kv.ModRevision
	}
	for _, l := range legacy {
		key := s.prefix + l.p.Key()
		cmp := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(l.kv.Key), "=", l.kv.ModRevision),
			clientv3.Compare(clientv3.ModRevision(key), "=", current[key])}
		ops := []clientv3.Op{clientv3.OpDelete(l.kv.Key)}
		if _, ok := current[key]; !ok {
			ops = append(ops, clientv3.OpPut(key, string(l.kv.Value)))
		}
		resp, err := s.cfg.KV.Raw().Txn(ctx).If(cmp...).Then(ops...).Commit()
		switch {
		case err != nil:
			slog.Warn("moving a NetworkPolicy to its own key", "from", l.kv.Key, "to", key, "err", err)
		case resp.Succeeded:
			slog.Info("NetworkPolicy moved to its own key (a NetworkPolicy and a CiliumNetworkPolicy of one name are two policies)",
				"from", l.kv.Key, "to", key)
		}
	}
}

// decode reads one stored policy; it must be valid and stored under its
// own key or, for a NetworkPolicy, its legacy key (legacy true).
func (s *Store) decode(kv kvstore.KeyValue) (p api.Policy, legacy bool, err error) {
	dec := json.NewDecoder(bytes.NewReader(kv.Value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return p, false, err
	}
	if _, err := api.Prepare([]api.Policy{p}); err != nil {
		return p, false, err
	}
	switch kv.Key {
	case s.prefix + p.Key():
		return p, false, nil
	case s.prefix + p.LegacyKey():
		return p, true, nil
	}
	return p, false, fmt.Errorf("policy %q stored under %q", p.Key(), kv.Key)
}

// waitApplied blocks until the repository reflects kvstore revision rev
// and returns the repository's revision.
func (s *Store) waitApplied(ctx context.Context, rev int64, what string) (uint64, error) {
	if err := s.applied.Wait(ctx, rev); err != nil {
		return 0, fmt.Errorf("%s in the cluster (kvstore revision %d) but not yet applied on this node: %w", what, rev, err)
	}
	return s.cfg.Repo.Revision(), nil
}

// scope checks a scope given by a caller: "" or cluster, or local.
func scope(sc string) (string, error) {
	switch sc {
	case "", policy.ScopeCluster:
		return policy.ScopeCluster, nil
	case policy.ScopeLocal:
		return policy.ScopeLocal, nil
	}
	return "", fmt.Errorf("%w: %q: want %s or %s", ErrScope, sc, policy.ScopeCluster, policy.ScopeLocal)
}

// ImportContext validates every policy and then stores all of them in one
// step: for the cluster, one kvstore transaction (every agent applies it),
// for scope local, this node's repository. Nothing is stored if any policy
// is invalid or ctx ends before the commit. It returns once this node
// enforces the import, with the repository's revision.
func (s *Store) ImportContext(ctx context.Context, ps []api.Policy, sc string) (uint64, error) {
	sc, err := scope(sc)
	if err != nil {
		return 0, err
	}
	staged, err := api.Prepare(ps)
	if err != nil {
		return 0, err
	}
	if sc == policy.ScopeLocal {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		rev, err := s.cfg.Repo.ImportScoped(policy.ScopeLocal, staged)
		if err != nil {
			return 0, err
		}
		return rev, s.cfg.Apply()
	}
	ops := make([]clientv3.Op, 0, len(staged))
	for _, p := range staged {
		data, err := json.Marshal(p)
		if err != nil {
			return 0, err
		}
		ops = append(ops, clientv3.OpPut(s.prefix+p.Key(), string(data)))
	}
	if s.beforeCommit != nil {
		s.beforeCommit(ctx)
	}
	// A request the client gave up on applies nothing.
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("policy import not applied: %w", err)
	}
	resp, err := s.cfg.KV.Raw().Txn(ctx).Then(ops...).Commit()
	if errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrRequestTooLarge) || isTooLarge(err) {
		return 0, fmt.Errorf("%w (%d policies, nothing stored): %v; import fewer at a time or raise the kvstore's --max-txn-ops/--max-request-bytes", ErrTooLarge, len(ops), err)
	}
	if err != nil {
		return 0, fmt.Errorf("policy import: kvstore: %w", err)
	}
	return s.waitApplied(ctx, resp.Header.Revision, "policy import stored")
}

// isTooLarge recognises the client's own refusal of a request over its
// send limit (a gRPC ResourceExhausted error without an etcd type).
func isTooLarge(err error) bool {
	return err != nil && strings.Contains(err.Error(), "larger than max")
}

// DeleteContext removes the policy with key from the cluster (every agent
// stops enforcing it) or, for scope local, from this node; an error wraps
// policy.ErrNotFound if the scope has no such policy.
func (s *Store) DeleteContext(ctx context.Context, key, sc string) (uint64, error) {
	sc, err := scope(sc)
	if err != nil {
		return 0, err
	}
	have, herr := s.cfg.Repo.Scope(key)
	if sc == policy.ScopeLocal {
		if herr != nil {
			return 0, herr
		}
		if have != policy.ScopeLocal {
			return 0, fmt.Errorf("%w: policy %q is not node-local (scope %q)", ErrScope, key, scopeName(have))
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		rev, err := s.cfg.Repo.Delete(key)
		if err != nil {
			return 0, err
		}
		return rev, s.cfg.Apply()
	}
	k := s.prefix + key
	resp, err := s.cfg.KV.Raw().Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), ">", 0)).Then(clientv3.OpDelete(k)).Commit()
	if err != nil {
		return 0, fmt.Errorf("policy delete: kvstore: %w", err)
	}
	if !resp.Succeeded {
		if herr == nil && have == policy.ScopeLocal {
			return 0, fmt.Errorf("%w: %q is not a cluster policy; it is node-local (delete it with --local)", policy.ErrNotFound, key)
		}
		if errors.Is(herr, policy.ErrNotFound) {
			return 0, herr // names a NetworkPolicy's key when asked for its old one
		}
		return 0, fmt.Errorf("%w: %q", policy.ErrNotFound, key)
	}
	return s.waitApplied(ctx, resp.Header.Revision, "policy deleted")
}

func scopeName(sc string) string {
	if sc == policy.ScopeAgent {
		return "kubernetes"
	}
	return sc
}

// Import stores policies for the cluster (api.Policies without a request).
func (s *Store) Import(ps []api.Policy) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.ImportContext(ctx, ps, policy.ScopeCluster)
}

// Delete removes a cluster policy (api.Policies without a request).
func (s *Store) Delete(key string) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.DeleteContext(ctx, key, policy.ScopeCluster)
}

// Get returns the policy with key as this node enforces it.
func (s *Store) Get(key string) (api.Policy, error) { return s.cfg.Repo.Get(key) }

// List returns the policies this node enforces: the cluster's, its
// node-local ones and, in Kubernetes mode, those from the API server.
func (s *Store) List() []api.Policy { return s.cfg.Repo.List() }

// Scope returns the scope of a policy: cluster, local, or kubernetes.
func (s *Store) Scope(key string) (string, error) {
	sc, err := s.cfg.Repo.Scope(key)
	return scopeName(sc), err
}
