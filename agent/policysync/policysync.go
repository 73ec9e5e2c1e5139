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
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
)

// Prefix of the policies in the kvstore: <Prefix><cluster>/<key>, where key
// is the policy's api.KeyOf (namespace/name, name alone for a
// cluster-wide policy), except that a NetworkPolicy is stored under
// namespace/name unless a CiliumNetworkPolicy of its name is (see entry).
const Prefix = kvstore.Prefix + "state/policies/v1/"

var (
	// ErrTooLarge: the import does not fit in one kvstore transaction.
	ErrTooLarge = errors.New("policy import too large for one kvstore transaction")
	// errNotSent: the request ended before its transaction was sent.
	errNotSent = errors.New("request ended before it was sent to the kvstore")
	// ErrUnreadable: a change would overwrite a kvstore entry this agent
	// cannot read (a newer agent's, or damaged).
	ErrUnreadable = errors.New("kvstore entry this agent cannot read")
	// ErrBusy: the policies a change depends on kept changing under it.
	ErrBusy = errors.New("policies busy")
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

	// movedBack: when tidy last moved a NetworkPolicy (by key) back to
	// namespace/name (used by the follow goroutine only).
	movedBack map[string]time.Time

	// beforeCommit, when set (tests), runs just before the transaction
	// with the import's context.
	beforeCommit func(ctx context.Context)

	// decoded are the policies read, by key, with the revision they were
	// read at: a resync decodes (and api.Reload parses the source of)
	// only what changed since, not every policy at every watch burst.
	decodedMu sync.Mutex
	decoded   map[string]decodedAt
	decodes   int // decode calls (tests)
}

type decodedAt struct {
	rev int64
	p   api.Policy
	err error
}

// Start adopts policies of an older per-node repository as node-local (if
// cfg.Migrate) and starts following the cluster's policies; it returns at
// once: until the kvstore answers, the repository's last known policies
// stay enforced.
func Start(ctx context.Context, cfg Config) (*Store, error) {
	s := &Store{cfg: cfg, prefix: Prefix + cfg.Cluster + "/", movedBack: map[string]time.Time{}}
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
	won := map[string]entry{} // policy key -> the entry enforced
	var lost []entry          // a NetworkPolicy's older entry under its other key
	s.forgetDecoded(kvs)
	for _, kv := range kvs {
		p, err := s.decodeCached(kv)
		if err != nil {
			slog.Warn("ignoring an invalid policy in the kvstore", "key", kv.Key, "err", err)
			continue
		}
		e := entry{kv, p}
		prev, dup := won[p.Key()]
		if !dup {
			won[p.Key()] = e
			continue
		}
		if e.kv.ModRevision > prev.kv.ModRevision {
			won[p.Key()], e, prev = e, prev, e
		}
		slog.Warn("a NetworkPolicy is stored under both of its keys (an older agent wrote one); the newer write is enforced and the older one removed",
			"policy", p.Key(), "enforced", prev.kv.Key, "removed", e.kv.Key)
		lost = append(lost, e)
	}
	ps := make([]api.Policy, 0, len(won))
	for _, e := range won {
		ps = append(ps, e.p)
	}
	if _, err := s.cfg.Repo.ReplaceScope(policy.ScopeCluster, ps); err != nil {
		return err
	}
	if err := s.cfg.Apply(); err != nil {
		return err
	}
	s.applied.Advance(rev)
	s.tidy(ctx, won, lost, kvs)
	return nil
}

// entry is one valid policy in the kvstore, stored where it belongs:
// under its key (api.KeyOf), except a NetworkPolicy. Agents from before
// 2026-12-04 read a NetworkPolicy only under namespace/name (its
// LegacyKey) and ignore it anywhere else, so a NetworkPolicy is stored
// there, where agents of every version enforce it (a rolling upgrade or a
// rollback does not drop it), unless a CiliumNetworkPolicy of the same
// namespace and name holds that key; then under its key,
// namespace/networkpolicy/name (older agents, which could never hold both,
// see only the CNP). A change that moves a CNP in or out of namespace/name
// moves the NetworkPolicy in the same transaction; tidy puts right what
// older agents change. The repository persists scopes by the same rule.
type entry struct {
	kv kvstore.KeyValue
	p  api.Policy
}

// npKey is where a NetworkPolicy namespace/name is stored beside a CNP of
// its name.
func (s *Store) npKey(namespace, name string) string {
	return s.prefix + api.KeyOf(api.KindNetworkPolicy, namespace, name)
}

// moveBackEvery bounds how often tidy moves one NetworkPolicy back.
const moveBackEvery = 10 * time.Minute

// tidy puts each NetworkPolicy where it belongs (see entry) after a
// resync: it removes the older of two entries of one NetworkPolicy and
// moves one stored under namespace/networkpolicy/name back to
// namespace/name when that key holds nothing, at most once per
// NetworkPolicy in moveBackEvery: an agent of 2026-12-04 (74a8631 to
// 766246c) moves every NetworkPolicy the other way, and the two would
// otherwise undo each other's move in an endless loop. Each step is one
// transaction that does nothing if a key it involves changed since kvs was
// read; a key holding something that is not a valid policy is never
// written. A failure is logged; the next resync tries again.
func (s *Store) tidy(ctx context.Context, won map[string]entry, lost []entry, kvs []kvstore.KeyValue) {
	current := map[string]int64{}
	for _, kv := range kvs {
		current[kv.Key] = kv.ModRevision
	}
	loser := map[string]entry{}
	for _, e := range lost {
		loser[e.p.Key()] = e
	}
	for _, k := range slices.Sorted(maps.Keys(won)) {
		w := won[k]
		if w.p.Kind != api.KindNetworkPolicy {
			continue
		}
		legacy, l := s.prefix+w.p.LegacyKey(), loser[k]
		var ops []clientv3.Op
		switch {
		case w.kv.Key == legacy && l.kv.Key != "":
			ops = []clientv3.Op{clientv3.OpDelete(l.kv.Key)}
		case w.kv.Key != legacy && (l.kv.Key == legacy || current[legacy] == 0):
			if at, ok := s.movedBack[k]; ok && time.Since(at) < moveBackEvery {
				continue
			}
			ops = []clientv3.Op{clientv3.OpPut(legacy, string(w.kv.Value)), clientv3.OpDelete(w.kv.Key)}
		default:
			continue // where it belongs, or beside a CNP (or an invalid entry) holding namespace/name
		}
		other := legacy
		if w.kv.Key == legacy {
			other = s.prefix + w.p.Key()
		}
		resp, err := s.cfg.KV.Raw().Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(w.kv.Key), "=", w.kv.ModRevision),
			clientv3.Compare(clientv3.ModRevision(other), "=", current[other]),
		).Then(ops...).Commit()
		switch {
		case err != nil:
			slog.Warn("storing a NetworkPolicy where agents of every version read it", "policy", k, "err", err)
		case resp.Succeeded:
			slog.Info("NetworkPolicy stored under namespace/name, where agents of every version read it", "policy", k, "from", w.kv.Key)
			if w.kv.Key != legacy {
				s.movedBack[k] = time.Now()
			}
		}
	}
}

// decodeCached is decode, once per key and revision.
func (s *Store) decodeCached(kv kvstore.KeyValue) (api.Policy, error) {
	s.decodedMu.Lock()
	d, ok := s.decoded[kv.Key]
	s.decodedMu.Unlock()
	if ok && kv.ModRevision != 0 && d.rev == kv.ModRevision {
		return d.p.DeepCopy(), d.err
	}
	p, err := s.decode(kv)
	s.decodedMu.Lock()
	s.decodes++
	if s.decoded == nil {
		s.decoded = map[string]decodedAt{}
	}
	s.decoded[kv.Key] = decodedAt{kv.ModRevision, p.DeepCopy(), err}
	s.decodedMu.Unlock()
	return p, err
}

// forgetDecoded keeps only the decoded policies of keys still stored.
func (s *Store) forgetDecoded(kvs []kvstore.KeyValue) {
	keep := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		keep[kv.Key] = true
	}
	s.decodedMu.Lock()
	defer s.decodedMu.Unlock()
	for k := range s.decoded {
		if !keep[k] {
			delete(s.decoded, k)
		}
	}
}

// decode reads one stored policy; it must be valid and stored under its
// own key or, for a NetworkPolicy, namespace/name.
func (s *Store) decode(kv kvstore.KeyValue) (p api.Policy, err error) {
	dec := json.NewDecoder(bytes.NewReader(kv.Value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return p, err
	}
	// Prepared again: the form a policy takes may have changed since it
	// was stored (api.Reload).
	if p, err = api.Reload(p); err != nil {
		return p, err
	}
	if kv.Key == s.prefix+p.Key() || p.Kind == api.KindNetworkPolicy && kv.Key == s.prefix+p.LegacyKey() {
		return p, nil
	}
	return p, fmt.Errorf("policy %q stored under %q", p.Key(), kv.Key)
}

// stored is one kvstore key as read: its ModRevision (0: absent), value
// and, if the value is a valid policy stored where it may be, the policy.
type stored struct {
	rev   int64
	value []byte
	p     *api.Policy
}

// readKeys reads keys (in transactions of at most 100 reads).
func (s *Store) readKeys(ctx context.Context, keys []string) (map[string]stored, error) {
	out := make(map[string]stored, len(keys))
	for chunk := range slices.Chunk(keys, 100) {
		ops := make([]clientv3.Op, len(chunk))
		for i, k := range chunk {
			ops[i] = clientv3.OpGet(k)
		}
		resp, err := s.cfg.KV.Raw().Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, err
		}
		for i, r := range resp.Responses {
			st := stored{}
			if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
				st.rev, st.value = kvs[0].ModRevision, kvs[0].Value
				if p, err := s.decodeCached(kvstore.KeyValue{Key: chunk[i], Value: st.value, ModRevision: st.rev}); err == nil {
					st.p = &p
				}
			}
			out[chunk[i]] = st
		}
	}
	return out, nil
}

// plan turns the current values of the keys a change reads into its
// operations and the keys among them whose values the operations depend
// on (no operations: nothing to do).
type plan func(st map[string]stored) (ops []clientv3.Op, deps []string, err error)

// guarded reads keys, plans on them and commits the plan's operations in
// one transaction that does nothing if any key the plan depends on changed
// since it was read; then it reads and plans again, five times at most,
// after a short random pause. Only the keys depended on are compared: etcd
// bounds a transaction's compares as it bounds its operations
// (--max-txn-ops).
func (s *Store) guarded(ctx context.Context, keys []string, p plan) (*clientv3.TxnResponse, error) {
	for attempt := 0; ; attempt++ {
		st, err := s.readKeys(ctx, keys)
		if err != nil {
			return nil, err
		}
		ops, deps, err := p(st)
		if err != nil || len(ops) == 0 {
			return nil, err
		}
		cmps := make([]clientv3.Cmp, 0, len(deps))
		for _, k := range deps {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", st[k].rev))
		}
		if s.beforeCommit != nil {
			s.beforeCommit(ctx)
		}
		// A request the client gave up on applies nothing.
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("%w: %w", errNotSent, err)
		}
		resp, err := s.cfg.KV.Raw().Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil || resp.Succeeded {
			return resp, err
		}
		if attempt == 4 {
			return nil, fmt.Errorf("%w: the policies changed under this request five times in a row; try again", ErrBusy)
		}
		if err := sleepCtx(ctx, time.Duration(10+rand.IntN(40*(attempt+1)))*time.Millisecond); err != nil {
			return nil, fmt.Errorf("%w: %w", errNotSent, err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
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
	resp, err := s.guarded(ctx, s.importKeys(staged), func(st map[string]stored) ([]clientv3.Op, []string, error) {
		return s.importOps(staged, st)
	})
	if errors.Is(err, ErrUnreadable) {
		return 0, err
	}
	if errors.Is(err, errNotSent) {
		return 0, fmt.Errorf("policy import not applied: %w", err)
	}
	if errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrRequestTooLarge) || isTooLarge(err) {
		return 0, fmt.Errorf("%w (%d policies, nothing stored): %v; import fewer at a time or raise the kvstore's --max-txn-ops/--max-request-bytes", ErrTooLarge, len(staged), err)
	}
	if err != nil {
		return 0, fmt.Errorf("policy import: kvstore: %w", err)
	}
	if resp == nil { // nothing to import
		return s.cfg.Repo.Revision(), nil
	}
	return s.waitApplied(ctx, resp.Header.Revision, "policy import stored")
}

// importKeys are the keys an import's placement depends on: for each
// namespaced policy, namespace/name and namespace/networkpolicy/name.
func (s *Store) importKeys(staged []api.Policy) []string {
	var keys []string
	for _, p := range staged {
		if p.Namespace != "" {
			keys = append(keys, s.prefix+p.LegacyKey(), s.npKey(p.Namespace, p.Name))
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// importOps stores staged where each belongs (see entry), given the
// current values st of importKeys: a NetworkPolicy under namespace/name
// unless a CNP holds it or comes with the import, or it holds a value this
// agent cannot read; a CNP over a NetworkPolicy stored under
// namespace/name moves that one to namespace/networkpolicy/name. A value
// this agent cannot read is never overwritten except under the imported
// policy's own key (ErrUnreadable).
func (s *Store) importOps(staged []api.Policy, st map[string]stored) ([]clientv3.Op, []string, error) {
	importing := map[string]bool{} // policy keys the import stores
	taken := map[string]bool{}     // namespace/name keys a NetworkPolicy must leave alone
	for _, p := range staged {
		importing[p.Key()] = true
		if p.Namespace != "" && p.Kind != api.KindNetworkPolicy {
			taken[s.prefix+p.Key()] = true
		}
	}
	for k, v := range st {
		if v.rev != 0 && (v.p == nil || v.p.Kind != api.KindNetworkPolicy) {
			taken[k] = true
		}
	}
	puts := map[string]string{}
	var deps []string
	for _, p := range staged {
		data, err := json.Marshal(p)
		if err != nil {
			return nil, nil, err
		}
		key := s.prefix + p.Key()
		if p.Namespace == "" {
			puts[key] = string(data)
			continue
		}
		legacy := s.prefix + p.LegacyKey()
		deps = append(deps, legacy)
		if p.Kind != api.KindNetworkPolicy {
			puts[key] = string(data)
			if l := st[key]; l.p != nil && l.p.Kind == api.KindNetworkPolicy && !importing[l.p.Key()] {
				n := s.prefix + l.p.Key()
				deps = append(deps, n)
				switch {
				case st[n].rev != 0 && st[n].p == nil:
					return nil, nil, fmt.Errorf("%w: importing %s would move the NetworkPolicy %s stored under %s to %s, which holds a value this agent cannot read (a newer agent's?); nothing stored: delete that NetworkPolicy first or import from a newer agent",
						ErrUnreadable, p.Key(), l.p.Key(), strings.TrimPrefix(key, s.prefix), strings.TrimPrefix(n, s.prefix))
				case st[n].rev < l.rev:
					puts[n] = string(l.value)
				}
			}
			continue
		}
		if !taken[legacy] {
			key = legacy // an older entry under its key goes in tidy
		}
		puts[key] = string(data)
	}
	ops := make([]clientv3.Op, 0, len(puts))
	for _, k := range slices.Sorted(maps.Keys(puts)) {
		ops = append(ops, clientv3.OpPut(k, puts[k]))
	}
	slices.Sort(deps)
	return ops, slices.Compact(deps), nil
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
	keys, plan := s.deletePlan(key)
	resp, err := s.guarded(ctx, keys, plan)
	if errors.Is(err, policy.ErrNotFound) {
		return 0, err
	}
	if err != nil {
		return 0, fmt.Errorf("policy delete: kvstore: %w", err)
	}
	if resp == nil {
		if herr == nil && have == policy.ScopeLocal {
			return 0, fmt.Errorf("%w: %q is not a cluster policy; it is node-local (delete it with --local)", policy.ErrNotFound, key)
		}
		return 0, fmt.Errorf("%w: %q", policy.ErrNotFound, key)
	}
	return s.waitApplied(ctx, resp.Header.Revision, "policy deleted")
}

// deletePlan is the keys a delete of the cluster policy with key reads
// and how it plans on them (no operations: not found):
//   - namespace/networkpolicy/name deletes that key and namespace/name if
//     it holds the NetworkPolicy;
//   - namespace/name deletes the CNP there and moves a NetworkPolicy of the
//     same name from namespace/networkpolicy/name to it (see entry); if it
//     holds a NetworkPolicy, the answer is not found, naming its key;
//   - any other key is deleted if stored.
func (s *Store) deletePlan(key string) ([]string, plan) {
	parts := strings.Split(key, "/")
	switch {
	case len(parts) == 3 && key == api.KeyOf(api.KindNetworkPolicy, parts[0], parts[2]):
		k, legacy := s.prefix+key, s.prefix+parts[0]+"/"+parts[2]
		return []string{legacy, k}, func(st map[string]stored) ([]clientv3.Op, []string, error) {
			var ops []clientv3.Op
			if st[k].rev != 0 {
				ops = append(ops, clientv3.OpDelete(k))
			}
			if l := st[legacy].p; l != nil && l.Key() == key {
				ops = append(ops, clientv3.OpDelete(legacy))
			}
			return ops, []string{legacy, k}, nil
		}
	case len(parts) == 2:
		k, n := s.prefix+key, s.npKey(parts[0], parts[1])
		return []string{k, n}, func(st map[string]stored) ([]clientv3.Op, []string, error) {
			switch l := st[k]; {
			case l.rev == 0:
				return nil, nil, nil
			case l.p != nil && l.p.Kind == api.KindNetworkPolicy:
				return nil, nil, fmt.Errorf("%w: %q (a NetworkPolicy of that name is %q)", policy.ErrNotFound, key, l.p.Key())
			}
			if np := st[n]; np.p != nil {
				return []clientv3.Op{clientv3.OpPut(k, string(np.value)), clientv3.OpDelete(n)}, []string{k, n}, nil
			}
			return []clientv3.Op{clientv3.OpDelete(k)}, []string{k, n}, nil
		}
	}
	k := s.prefix + key
	return []string{k}, func(st map[string]stored) ([]clientv3.Op, []string, error) {
		if st[k].rev == 0 {
			return nil, nil, nil
		}
		return []clientv3.Op{clientv3.OpDelete(k)}, []string{k}, nil
	}
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
