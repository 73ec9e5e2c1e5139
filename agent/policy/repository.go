package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/internal/atomicfile"
)

// ErrNotFound is wrapped by the error for a key the repository lacks.
var ErrNotFound = errors.New("policy not found")

// Scopes say where a stored policy comes from and who may change it.
const (
	// ScopeCluster: the cluster's kvstore, followed by every agent.
	ScopeCluster = "cluster"
	// ScopeLocal: imported on this node only (an explicit choice, or a
	// policy kept from before policies were the cluster's).
	ScopeLocal = "local"
	// ScopeAgent ("") : given by the agent itself (Kubernetes mode before
	// 2026-12-03, or imported before policies had scopes).
	ScopeAgent = ""
	// ScopeKubernetes: a Kubernetes object's (Kubernetes mode); the agent
	// removes it when the object goes, also while it was down.
	ScopeKubernetes = "kubernetes"
)

// Repository holds the imported policies by key, with a revision that
// increments on every change, and the scope of each. Changes are
// all-or-nothing and, when the repository has a path, persisted before
// they become visible. It is safe for concurrent use.
type Repository struct {
	path string

	mu       sync.RWMutex
	revision uint64
	policies map[string]api.Policy
	scopes   map[string]string // key -> scope; absent: ScopeAgent
}

// storeFile is the JSON form of a persisted repository.
type storeFile struct {
	Revision uint64       `json:"revision"`
	Policies []api.Policy `json:"policies"`
	// Scopes of the policies that have one (absent in files written
	// before policies were the cluster's).
	Scopes map[string]string `json:"scopes,omitempty"`
}

// NewRepository returns a repository persisted as JSON at path, loading
// the file if it exists; path "" keeps the repository in memory only.
func NewRepository(path string) (*Repository, error) {
	r := &Repository{path: path, policies: map[string]api.Policy{}, scopes: map[string]string{}}
	if path == "" {
		return r, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load policy repository: %w", err)
	}
	var f storeFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("load policy repository %s: %w", path, err)
	}
	for _, p := range f.Policies {
		// Prepared again: the form a policy takes may have changed since
		// it was stored (api.Reload).
		p, err = api.Reload(p)
		if err != nil {
			return nil, fmt.Errorf("load policy repository %s: %w", path, err)
		}
		if _, dup := r.policies[p.Key()]; dup {
			return nil, fmt.Errorf("load policy repository %s: policy %q stored twice", path, p.Key())
		}
		r.policies[p.Key()] = p
	}
	// A NetworkPolicy's scope is under namespace/name (its legacy key)
	// unless a policy of that key is stored too (fileScopes); a file
	// written on 2026-12-04 has it under the policy's key.
	legacy := map[string]string{}
	for k, p := range r.policies {
		if lk := p.LegacyKey(); lk != k {
			legacy[lk] = k
		}
	}
	for k, sc := range f.Scopes {
		if _, ok := r.policies[k]; !ok {
			nk, moved := legacy[k]
			if _, taken := f.Scopes[nk]; !moved || taken {
				return nil, fmt.Errorf("load policy repository %s: scope %q of policy %q that is not stored", path, sc, k)
			}
			k = nk
		}
		if sc != ScopeCluster && sc != ScopeLocal && sc != ScopeKubernetes {
			return nil, fmt.Errorf("load policy repository %s: policy %q: scope %q: want %s, %s or %s", path, k, sc, ScopeCluster, ScopeLocal, ScopeKubernetes)
		}
		r.scopes[k] = sc
	}
	r.revision = f.Revision
	return r, nil
}

// Import validates every policy and then, in one change, replaces the
// policies of the same keys and adds the others. If any policy is invalid
// (or two share a key) or persisting fails, nothing changes. It returns the
// new revision; importing nothing changes nothing and returns the current
// one.
func (r *Repository) Import(ps []api.Policy) (revision uint64, err error) {
	return r.ImportScoped(ScopeAgent, ps)
}

// ImportScoped is Import with the scope the imported policies get. An
// import that would take a namespace past its budgets (checkBudgets) is
// refused whole (ErrBudget).
func (r *Repository) ImportScoped(scope string, ps []api.Policy) (revision uint64, err error) {
	staged, err := api.Prepare(ps)
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(staged) == 0 {
		return r.revision, nil
	}
	// The policies as stored already, of that scope (a Kubernetes
	// informer's resync, an event that changed nothing the policy keeps):
	// nothing to write. Until 2026-12-07 each such import rewrote and
	// synced the whole file and bumped the revision, on every node, for
	// every event of any namespace's policy (TestSameImportWritesNothing).
	if !slices.ContainsFunc(staged, func(p api.Policy) bool {
		old, ok := r.policies[p.Key()]
		cur, scoped := r.scopes[p.Key()]
		if !scoped {
			cur = ScopeAgent
		}
		return !ok || cur != scope || !reflect.DeepEqual(old, p)
	}) {
		return r.revision, nil
	}
	next, scopes := maps.Clone(r.policies), maps.Clone(r.scopes)
	for _, p := range staged {
		next[p.Key()] = p
		setScope(scopes, p.Key(), scope)
	}
	if err := checkBudgets(next, staged); err != nil {
		return 0, err
	}
	return r.commit(next, scopes)
}

// ReplaceScope makes ps (validated as by Prepare) exactly the policies of
// scope, in one change: policies of scope not in ps go, those in ps are
// added or replace the stored ones of the same key (whatever their
// scope). It is how an agent follows the cluster's policies.
func (r *Repository) ReplaceScope(scope string, ps []api.Policy) (revision uint64, err error) {
	staged, err := api.Prepare(ps)
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	next, scopes := maps.Clone(r.policies), maps.Clone(r.scopes)
	for k, sc := range r.scopes {
		if sc == scope {
			delete(next, k)
			delete(scopes, k)
		}
	}
	for _, p := range staged {
		next[p.Key()] = p
		setScope(scopes, p.Key(), scope)
	}
	return r.commit(next, scopes)
}

// AdoptUnscoped gives scope to every policy that has none (ScopeAgent),
// in one change, and returns their keys (nil, and no change, if none).
func (r *Repository) AdoptUnscoped(scope string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var adopted []string
	scopes := maps.Clone(r.scopes)
	for _, k := range slices.Sorted(maps.Keys(r.policies)) {
		if _, ok := scopes[k]; !ok {
			setScope(scopes, k, scope)
			adopted = append(adopted, k)
		}
	}
	if len(adopted) == 0 {
		return nil, nil
	}
	if _, err := r.commit(r.policies, scopes); err != nil {
		return nil, err
	}
	return adopted, nil
}

// Scope returns the scope of the policy with key, or an error wrapping
// ErrNotFound.
func (r *Repository) Scope(key string) (string, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok := r.policies[key]; !ok {
		return "", r.notFound(key)
	}
	return r.scopes[key], nil
}

func setScope(scopes map[string]string, key, scope string) {
	if scope == ScopeAgent {
		delete(scopes, key)
	} else {
		scopes[key] = scope
	}
}

// Delete removes the policy with key, or returns an error wrapping
// ErrNotFound.
func (r *Repository) Delete(key string) (revision uint64, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.policies[key]; !ok {
		return 0, r.notFound(key)
	}
	next, scopes := maps.Clone(r.policies), maps.Clone(r.scopes)
	delete(next, key)
	delete(scopes, key)
	return r.commit(next, scopes)
}

// commit persists next (with its scopes) as the following revision and
// then makes it current. The caller holds r.mu.
func (r *Repository) commit(next map[string]api.Policy, scopes map[string]string) (uint64, error) {
	rev := r.revision + 1
	if err := r.persist(rev, next, scopes); err != nil {
		return 0, err
	}
	r.policies, r.scopes, r.revision = next, scopes, rev
	return rev, nil
}

// persist writes the policies to a temporary file beside r.path and renames
// it over r.path.
func (r *Repository) persist(rev uint64, policies map[string]api.Policy, scopes map[string]string) (err error) {
	if r.path == "" {
		return nil
	}
	data, err := json.MarshalIndent(storeFile{Revision: rev, Policies: sorted(policies), Scopes: fileScopes(policies, scopes)}, "", "  ")
	if err != nil {
		return fmt.Errorf("persist policy repository: %w", err)
	}
	dir := filepath.Dir(r.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("persist policy repository: %w", err)
	}
	if err := atomicfile.Write(r.path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("persist policy repository: %w", err)
	}
	return nil
}

// fileScopes is scopes as persisted: a NetworkPolicy's under
// namespace/name (its LegacyKey), where agents from before 2026-12-04
// look for it (they refuse to load a scope of a key they do not know, so
// a rollback would not start), unless a policy of that key is stored too;
// NewRepository maps it back.
func fileScopes(policies map[string]api.Policy, scopes map[string]string) map[string]string {
	out := make(map[string]string, len(scopes))
	for k, sc := range scopes {
		if p, ok := policies[k]; ok {
			if lk := p.LegacyKey(); lk != k {
				if _, taken := policies[lk]; !taken {
					k = lk
				}
			}
		}
		out[k] = sc
	}
	return out
}

// Get returns a copy of the policy with key, or an error wrapping
// ErrNotFound.
func (r *Repository) Get(key string) (api.Policy, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	p, ok := r.policies[key]
	if !ok {
		return api.Policy{}, r.notFound(key)
	}
	return p.DeepCopy(), nil
}

// notFound is the error for a key r lacks. A NetworkPolicy's key has its
// kind in it (api.KeyOf); asked for namespace/name, the error names the
// NetworkPolicy's key when one of that name is held, since namespace/name
// was its key before. The caller holds r.mu.
func (r *Repository) notFound(key string) error {
	if ns, name, ok := strings.Cut(key, "/"); ok && !strings.Contains(name, "/") {
		np := api.KeyOf(api.KindNetworkPolicy, ns, name)
		if _, held := r.policies[np]; held {
			return fmt.Errorf("%w: %q (a NetworkPolicy of that name is %q)", ErrNotFound, key, np)
		}
	}
	return fmt.Errorf("%w: %q", ErrNotFound, key)
}

// List returns copies of all policies, sorted by key.
func (r *Repository) List() []api.Policy {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ps := sorted(r.policies)
	for i := range ps {
		ps[i] = ps[i].DeepCopy()
	}
	return ps
}

// Revision returns the current revision: 0 for a new repository, one more
// after every change.
func (r *Repository) Revision() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.revision
}

func sorted(m map[string]api.Policy) []api.Policy {
	ps := make([]api.Policy, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		ps = append(ps, m[k])
	}
	return ps
}
