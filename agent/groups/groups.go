// Package groups owns toGroups/fromGroups across a cluster: every agent
// publishes the group selectors its policies use (under its lease); one
// agent, elected through a kvstore lease, resolves them against the cloud
// periodically and on demand, backing off on errors and keeping the last
// good set; results are stored in the kvstore and every agent applies them
// to its policy resolver. A group never resolved allows nothing.
package groups

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/filament-net/filament/agent/fqdn"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/policy/api"
)

// Prefix of the groups state: <cluster>/leader, <cluster>/refresh,
// <cluster>/requests/<node>/<hash>, <cluster>/results/<hash>.
const Prefix = kvstore.Prefix + "state/groups/v1/"

// Source resolves a group to addresses (cloud/aws).
type Source interface {
	Resolve(ctx context.Context, g api.AWSGroup) ([]netip.Addr, error)
}

// Result is a group as last resolved by the cluster's leader.
type Result struct {
	Key      string       `json:"key"`
	Group    api.AWSGroup `json:"group"`
	Addrs    []netip.Addr `json:"addrs"`
	Resolved bool         `json:"resolved"` // resolved at least once
	// Refreshed is the time of the last successful resolution.
	Refreshed time.Time `json:"refreshed,omitzero"`
	// Error of the last attempt, when it failed (Addrs are the last good set).
	Error    string    `json:"error,omitempty"`
	Failures int       `json:"failures,omitempty"`
	Since    time.Time `json:"errorSince,omitzero"`
	// Refused: its last resolution was past MaxGroupAddrs, and no later
	// one succeeded (with no good set, the group is refused, not
	// unresolved: Config.Refuse).
	Refused bool `json:"refused,omitempty"`
}

// Config of a Manager.
type Config struct {
	KV      *kvstore.Client
	Lease   *kvstore.Lease
	Cluster string
	Node    string
	// Source is nil when the cloud is not configured: the agent takes no
	// part in resolving (it still applies results others publish).
	Source Source
	// Interval between refreshes (default 5 min).
	Interval time.Duration
	// ForgetAfter is how long the leader keeps the result of a group no
	// agent asks for any more before deleting it (default 1 min): a
	// request gone for a moment (an agent's lease lost and granted
	// again, a policy replaced) keeps it.
	ForgetAfter time.Duration
	// Apply receives each group's addresses whenever they change.
	Apply func(key string, addrs []netip.Addr)
	// Refuse receives why a group with no good set was refused past
	// MaxGroupAddrs, and "" when that ends (it is applied or forgotten):
	// the policies then fail closed for it, a deny rule naming it denies
	// world (as for a group not resolved yet, once the stored results
	// are loaded).
	Refuse func(key, why string)
	// Drop is called for a group dropped (its result deleted and none
	// come within orphanGrace, or no longer wanted) instead of Apply with
	// no addresses, when set: a dropped group is not resolved.
	Drop func(key string)
}

// Status of the groups as this agent sees them.
type Status struct {
	Enabled  bool     `json:"enabled"`
	Leader   string   `json:"leader,omitempty"`
	IsLeader bool     `json:"isLeader"`
	Interval string   `json:"interval"`
	Groups   []Result `json:"groups"`
	// Refused counts the stored results not applied: stored under
	// another key than their own, or naming a key that is not their
	// group's (followResults).
	Refused int `json:"refused,omitempty"`
}

// Manager follows and (when elected) resolves the cluster's groups.
type Manager struct {
	cfg Config

	// pub serialises publishing the requests (SetWanted, lease renewal).
	pub sync.Mutex
	// cbMu orders the callbacks (Apply, Refuse, Drop) with the state
	// changes they follow, taken before mu.
	cbMu    sync.Mutex
	mu      sync.Mutex
	wanted  map[string]api.AWSGroup
	results map[string]Result
	applied map[string][]netip.Addr
	// refusedGroups: the groups passed on to Config.Refuse, and why.
	refusedGroups map[string]string
	// orphaned: groups this agent wants whose result was deleted, kept
	// until a new one comes or orphanGrace passes.
	orphaned map[string]bool
	// refused: the paths (hashes) under results/ holding a result
	// that is not applied (followResults); the leader deletes them.
	refused map[string]struct{}
	// droppedLogged: the special addresses already logged (learnable).
	droppedLogged fqdn.FirstSeen
	ctx           context.Context
	leader        string
	isLeader      bool
	kick          chan struct{}
	synced        chan struct{} // closed once the stored results are loaded
}

func hash(key string) string {
	s := sha256.Sum256([]byte(key))
	return hex.EncodeToString(s[:12])
}

func (m *Manager) base() string { return Prefix + m.cfg.Cluster + "/" }

// New starts following results (and, with a Source, the leader election).
func New(ctx context.Context, cfg Config) *Manager {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Minute
	}
	if cfg.ForgetAfter <= 0 {
		cfg.ForgetAfter = time.Minute
	}
	m := &Manager{cfg: cfg, wanted: map[string]api.AWSGroup{}, results: map[string]Result{},
		applied: map[string][]netip.Addr{}, refusedGroups: map[string]string{}, kick: make(chan struct{}, 1), synced: make(chan struct{}),
		orphaned: map[string]bool{}, refused: map[string]struct{}{}, ctx: ctx}
	if cfg.Lease != nil {
		// Requests live under the lease: when etcd lost it and a new one
		// was granted, they are gone and must be written again.
		cfg.Lease.OnRenew(func(lctx context.Context, id int64) {
			if ctx.Err() == nil {
				m.republish(lctx, id)
			}
		})
	}
	go m.followResults(ctx)
	if cfg.Source != nil {
		go m.lead(ctx)
	}
	return m
}

// SetWanted publishes the selectors this agent's policies use.
func (m *Manager) SetWanted(ctx context.Context, groups map[string]api.AWSGroup) {
	m.pub.Lock()
	defer m.pub.Unlock()
	m.mu.Lock()
	if maps.EqualFunc(m.wanted, groups, func(a, b api.AWSGroup) bool { return api.GroupKey(a) == api.GroupKey(b) }) {
		m.mu.Unlock()
		return
	}
	old := m.wanted
	m.wanted = maps.Clone(groups)
	m.mu.Unlock()
	reqs := m.base() + "requests/" + m.cfg.Node + "/"
	for k := range old {
		if _, ok := groups[k]; !ok {
			m.cfg.KV.Delete(ctx, reqs+hash(k))
		}
	}
	for k, g := range groups {
		b, _ := json.Marshal(g)
		if err := m.cfg.KV.Put(ctx, reqs+hash(k), b, m.cfg.Lease.ID()); err != nil {
			slog.Warn("publishing a group request", "group", k, "err", err)
		}
	}
	m.Kick()
}

// republish writes every request again under the renewed lease id.
func (m *Manager) republish(ctx context.Context, id int64) {
	m.pub.Lock()
	defer m.pub.Unlock()
	m.mu.Lock()
	wanted := maps.Clone(m.wanted)
	m.mu.Unlock()
	reqs := m.base() + "requests/" + m.cfg.Node + "/"
	for k, g := range wanted {
		b, _ := json.Marshal(g)
		if err := m.cfg.KV.Put(ctx, reqs+hash(k), b, id); err != nil {
			slog.Warn("publishing a group request again", "group", k, "err", err)
		}
	}
	m.Kick()
}

// Kick makes the leader (when this agent is it) refresh now.
func (m *Manager) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Refresh asks the cluster's leader to resolve every group now.
func (m *Manager) Refresh(ctx context.Context) error {
	m.Kick()
	return m.cfg.KV.Put(ctx, m.base()+"refresh", []byte(time.Now().UTC().Format(time.RFC3339Nano)), 0)
}

// Status reports the groups and the election.
func (m *Manager) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{Enabled: m.cfg.Source != nil, Leader: m.leader, IsLeader: m.isLeader, Interval: m.cfg.Interval.String(), Groups: []Result{}}
	for _, r := range m.results {
		st.Groups = append(st.Groups, r)
	}
	st.Refused = len(m.refused)
	slices.SortFunc(st.Groups, func(a, b Result) int { return strings.Compare(a.Key, b.Key) })
	return st
}

// Wanted returns the keys of the groups this agent's policies name
// (SetWanted), sorted.
func (m *Manager) Wanted() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.wanted))
}

// Result returns one group's result.
func (m *Manager) Result(key string) (Result, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.results[key]
	return r, ok
}

// MaxGroupAddrs bounds the addresses of one group's result: each is an
// ipcache entry on every node (a namespace's policies may name 4,096 CIDR
// prefixes, policy.MaxNamespacePrefixes, and 64 groups). A group past it
// is refused as a whole, as any failure: its last good set stays (none:
// it allows nothing) and the result carries the error. Until 2026-12-07
// one answer of 70,000 addresses was written on every node, and from
// then until this change the lowest 4,096 were applied, so whoever could
// tag enough low-addressed interfaces pushed the members out and a deny
// rule naming the group stopped denying them (TestGroupAddrsBounded).
const MaxGroupAddrs = 4096

// trimmedByOlderLeader says whether r is what a leader of the versions
// from db7fc48 to 7701b05 stored for a group past MaxGroupAddrs: its
// lowest addresses, resolved, with the error saying so.
func trimmedByOlderLeader(r Result) bool {
	return r.Resolved && strings.Contains(r.Error, "are applied (each is an ipcache entry on every node)")
}

// tooManyAddrs is the error of a group past MaxGroupAddrs.
func tooManyAddrs(n int) string {
	return fmt.Sprintf("the group resolved to %d addresses, more than %d (each is an ipcache entry on every node): "+
		"refused as a whole, the last good set is kept", n, MaxGroupAddrs)
}

// followResults applies every result the leader publishes.
func (m *Manager) followResults(ctx context.Context) {
	prefix := m.base() + "results/"
	for ev := range m.cfg.KV.Watch(ctx, prefix, kvstore.WatchOptions{}) {
		if ev.Type == kvstore.EventSynced {
			select {
			case <-m.synced:
			default:
				close(m.synced)
			}
			continue
		}
		h := strings.TrimPrefix(ev.Key, prefix)
		if ev.Type == kvstore.EventDelete {
			m.mu.Lock()
			delete(m.refused, h)
			m.mu.Unlock()
			m.forgotten(h)
			continue
		}
		var r Result
		if err := json.Unmarshal(ev.Value, &r); err != nil {
			m.refuse(h, "", err.Error())
			continue
		}
		// Applied only under the key it is stored under, and only a
		// group's: until 2026-12-07 a value at results/<anything> was
		// applied under the key written inside it, a node selector's
		// ("nodes:...") or a toFQDNs one's included
		// (TestForgedResultRefused).
		if h != hash(r.Key) || api.GroupKey(r.Group) != r.Key {
			m.refuse(h, r.Key, "not stored under its own key, or its key is not its group's")
			continue
		}
		r.Addrs = m.learnable(r.Key, r.Addrs) // an older leader's result may hold them
		if trimmedByOlderLeader(r) {
			// A leader of an earlier version applied the lowest
			// MaxGroupAddrs of a larger group, which exactly fits the
			// bound: refused like a result past it (until 2026-12-07
			// followers applied it, and a new leader kept it as its
			// last good set; TestTrimmedResultOfOlderLeaderRefused).
			r.Addrs, r.Resolved, r.Refused = nil, false, true
			r.Error += "; a set trimmed by an older leader, refused"
		}
		if n := len(slices.Compact(slices.SortedFunc(slices.Values(r.Addrs), netip.Addr.Compare))); n > MaxGroupAddrs {
			// An older leader's (or a forged) result past the bound:
			// refused whole, the last good set kept (none: the group
			// allows nothing), never a part of it applied.
			m.mu.Lock()
			prev, had := m.results[r.Key]
			m.mu.Unlock()
			r.Addrs, r.Resolved = nil, false
			if had {
				r.Addrs, r.Resolved = prev.Addrs, prev.Resolved
			}
			r.Error = tooManyAddrs(n) + "; this result is refused"
			r.Refused = true
		}
		// A result's state change and its callbacks, as one against a
		// drop's (orphanExpired runs in a goroutine of its own): a drop
		// called after a newer set's Apply would leave the group not
		// resolved while this layer takes the set as applied (found by
		// a review).
		m.cbMu.Lock()
		m.mu.Lock()
		delete(m.refused, h)
		m.results[r.Key] = r
		delete(m.orphaned, r.Key)
		prev, had := m.applied[r.Key]
		apply := r.Resolved && (!had || !slices.Equal(prev, r.Addrs))
		if apply {
			m.applied[r.Key] = slices.Clone(r.Addrs)
		}
		// Refused with no good set: passed on as refused, not as not
		// resolved yet (a deny naming it would deny nothing).
		why := ""
		if _, has := m.applied[r.Key]; !has && r.Refused {
			why = r.Error
		}
		refuse := m.refusedGroups[r.Key] != why
		if why != "" {
			m.refusedGroups[r.Key] = why
		} else {
			delete(m.refusedGroups, r.Key)
		}
		m.mu.Unlock()
		if apply && m.cfg.Apply != nil {
			m.cfg.Apply(r.Key, r.Addrs)
		}
		if refuse && m.cfg.Refuse != nil {
			m.cfg.Refuse(r.Key, why)
		}
		m.cbMu.Unlock()
	}
}

// learnable is addrs without the special-purpose addresses no policy may
// name (those toFQDNs refuses from DNS answers, fqdn.Learnable: this
// network, loopback, link-local with the instance metadata service,
// multicast, broadcast), each logged once. Until 2026-12-07 a group
// answer holding 169.254.169.254 let a toGroups rule allow pods to reach
// the metadata service (TestSpecialAddressesNotApplied).
func (m *Manager) learnable(key string, addrs []netip.Addr) []netip.Addr {
	if !slices.ContainsFunc(addrs, func(a netip.Addr) bool { return !fqdn.Learnable(a) }) {
		return addrs
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if fqdn.Learnable(a) {
			out = append(out, a)
			continue
		}
		if m.droppedLogged.First(a) {
			slog.Warn("a cloud group's addresses hold a special-purpose address: dropped (no policy may allow it)", "group", key, "addr", a)
		}
	}
	return out
}

// refuse counts the stored result at results/<h> that is not applied,
// logging it the first time.
func (m *Manager) refuse(h, key, why string) {
	m.mu.Lock()
	_, seen := m.refused[h]
	m.refused[h] = struct{}{}
	m.mu.Unlock()
	if !seen {
		slog.Warn("refusing a stored cloud group result: not applied", "path", m.base()+"results/"+h, "key", key, "why", why)
	}
}

// forgotten follows the deletion of the result stored under h (a group
// no agent asks for any more): the group is dropped (Config.Drop). An
// agent that wants the group itself keeps what it has: its request met
// the leader's delete (listed before it), and the leader resolves the
// group again in its next round; applied as none meanwhile, a deny rule
// naming it would lapse for that second.
func (m *Manager) forgotten(h string) {
	m.cbMu.Lock()
	defer m.cbMu.Unlock()
	m.mu.Lock()
	var key string
	for k := range m.results {
		if hash(k) == h {
			key = k
			break
		}
	}
	if key == "" {
		m.mu.Unlock()
		return
	}
	if _, wanted := m.wanted[key]; wanted {
		// Kept while the leader resolves it again: this agent's
		// requests are written again (one may have failed), and with no
		// new result within orphanGrace the group goes as for any agent.
		m.orphaned[key] = true
		m.mu.Unlock()
		if m.cfg.Lease != nil && m.ctx.Err() == nil {
			go m.republish(m.ctx, m.cfg.Lease.ID())
		}
		time.AfterFunc(orphanGrace, func() { m.orphanExpired(key) })
		return
	}
	m.dropLocked(key)
}

// dropLocked forgets group key and drops it (Config.Drop, else applies
// it as no addresses); it lets m.mu go. m.cbMu is held.
func (m *Manager) dropLocked(key string) {
	delete(m.orphaned, key)
	delete(m.results, key)
	_, had := m.applied[key]
	delete(m.applied, key)
	_, refused := m.refusedGroups[key]
	delete(m.refusedGroups, key)
	m.mu.Unlock()
	switch {
	case had && m.cfg.Drop != nil:
		m.cfg.Drop(key)
	case had && m.cfg.Apply != nil:
		m.cfg.Apply(key, nil)
	}
	if refused && m.cfg.Refuse != nil {
		m.cfg.Refuse(key, "")
	}
}

// Synced is closed once the stored results are loaded (and applied).
func (m *Manager) Synced() <-chan struct{} { return m.synced }

// orphanGrace is how long an agent keeps a group it wants after its
// result was deleted, waiting for the leader to resolve it again.
var orphanGrace = 30 * time.Second

// orphanExpired forgets group key if no result came since its deletion.
func (m *Manager) orphanExpired(key string) {
	m.cbMu.Lock()
	defer m.cbMu.Unlock()
	m.mu.Lock()
	if !m.orphaned[key] {
		m.mu.Unlock()
		return
	}
	m.dropLocked(key)
}

// lead takes part in the election and, while leader, refreshes.
func (m *Manager) lead(ctx context.Context) {
	// Only with the stored results loaded: a new leader whose first
	// attempt fails must keep the last good set, not publish an empty one.
	select {
	case <-m.synced:
	case <-ctx.Done():
		return
	}
	leaderKey := m.base() + "leader"
	var lastRefreshMark string
	next := map[string]time.Time{}        // group -> when to resolve it next
	unrequested := map[string]time.Time{} // group with a result -> since when nobody asks for it
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-m.kick:
		}
		err := m.cfg.KV.CreateIfAbsent(ctx, leaderKey, []byte(m.cfg.Node), m.cfg.Lease.ID())
		if err != nil && !errors.Is(err, kvstore.ErrExists) {
			continue
		}
		kv, gerr := m.cfg.KV.Get(ctx, leaderKey)
		if gerr != nil {
			continue
		}
		leader := string(kv.Value)
		m.mu.Lock()
		was := m.isLeader
		m.leader, m.isLeader = leader, leader == m.cfg.Node
		is := m.isLeader
		m.mu.Unlock()
		if !is {
			continue
		}
		if !was {
			slog.Info("this agent now resolves the cluster's cloud groups", "node", m.cfg.Node)
			clear(next)
		}
		if mark, err := m.cfg.KV.Get(ctx, m.base()+"refresh"); err == nil && string(mark.Value) != lastRefreshMark {
			lastRefreshMark = string(mark.Value)
			clear(next) // on demand: everything now
		}
		m.resolveDue(ctx, next, unrequested)
	}
}

// requested is the union of every agent's requests.
func (m *Manager) requested(ctx context.Context) (map[string]api.AWSGroup, error) {
	kvs, _, err := m.cfg.KV.List(ctx, m.base()+"requests/")
	out := map[string]api.AWSGroup{}
	if err != nil {
		return nil, err
	}
	for _, kv := range kvs {
		var g api.AWSGroup
		if json.Unmarshal(kv.Value, &g) == nil {
			out[api.GroupKey(g)] = g
		}
	}
	return out, nil
}

// resolveDue resolves the groups whose time has come; failures keep the
// last good set and retry with exponential backoff (1 s doubling, up to
// the interval). A group nobody asks for is no longer due (asked for
// again, it is resolved at once: its result may be old), and its result
// is deleted once nobody asked for it for ForgetAfter. Until 2026-12-06
// results stayed for good and a group asked for again waited for its
// interval, its old addresses applied meanwhile
// (TestUnrequestedGroupsForgotten).
func (m *Manager) resolveDue(ctx context.Context, next, unrequested map[string]time.Time) {
	now := time.Now()
	wanted, err := m.requested(ctx)
	if err != nil {
		return // never taken for "nobody asks"
	}
	for key := range next {
		if _, ok := wanted[key]; !ok {
			delete(next, key)
		}
	}
	m.mu.Lock()
	stored := slices.Collect(maps.Keys(m.results))
	m.mu.Unlock()
	for _, key := range stored {
		if _, ok := wanted[key]; ok {
			delete(unrequested, key)
			continue
		}
		since, ok := unrequested[key]
		if !ok {
			unrequested[key] = now
			continue
		}
		if now.Sub(since) < m.cfg.ForgetAfter {
			continue
		}
		if err := m.cfg.KV.Delete(ctx, m.base()+"results/"+hash(key)); err != nil {
			slog.Warn("deleting the result of a group nobody asks for", "group", key, "err", err)
			continue
		}
		delete(unrequested, key)
		slog.Info("forgot a cloud group nobody asks for", "group", key, "unrequested", now.Sub(since).Round(time.Second))
	}
	for key := range unrequested {
		if !slices.Contains(stored, key) {
			delete(unrequested, key)
		}
	}
	m.dropRefused(ctx, wanted, next)
	for key, g := range wanted {
		if t, ok := next[key]; ok && now.Before(t) {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		addrs, err := m.cfg.Source.Resolve(rctx, g)
		cancel()
		if err == nil {
			addrs = slices.Compact(slices.SortedFunc(slices.Values(m.learnable(key, addrs)), netip.Addr.Compare))
			if len(addrs) > MaxGroupAddrs {
				err = errors.New(tooManyAddrs(len(addrs)))
			}
		}
		m.mu.Lock()
		r := m.results[key]
		m.mu.Unlock()
		r.Key, r.Group = key, g
		if len(addrs) > MaxGroupAddrs {
			r.Refused = true // until a resolution succeeds
		}
		if err != nil {
			r.Error = err.Error()
			r.Failures++
			if r.Since.IsZero() {
				r.Since = now
			}
			backoff := min(time.Second<<min(r.Failures-1, 20), m.cfg.Interval)
			next[key] = now.Add(backoff)
			slog.Warn("resolving a cloud group failed; keeping the last known set", "group", key, "failures", r.Failures, "retry", backoff, "err", err)
		} else {
			r.Addrs, r.Resolved, r.Refreshed = addrs, true, time.Now()
			r.Error, r.Failures, r.Since, r.Refused = "", 0, time.Time{}, false
			next[key] = now.Add(m.cfg.Interval)
		}
		b, _ := json.Marshal(r)
		if err := m.cfg.KV.Put(ctx, m.base()+"results/"+hash(key), b, 0); err != nil {
			slog.Warn("publishing a group result", "group", key, "err", err)
		}
	}
}

// dropRefused deletes the stored results nobody applies (refused by
// followResults). One stored under the path of a group an agent asks for
// is not deleted but written over: that group is resolved at once (its
// path may have been refused before this leader's own result came).
func (m *Manager) dropRefused(ctx context.Context, wanted map[string]api.AWSGroup, next map[string]time.Time) {
	m.mu.Lock()
	refused := slices.Collect(maps.Keys(m.refused))
	m.mu.Unlock()
	if len(refused) == 0 {
		return
	}
	byHash := make(map[string]string, len(wanted))
	for key := range wanted {
		byHash[hash(key)] = key
	}
	for _, h := range refused {
		if key, ok := byHash[h]; ok {
			delete(next, key)
			continue
		}
		if err := m.cfg.KV.Delete(ctx, m.base()+"results/"+h); err != nil {
			slog.Warn("deleting a refused cloud group result", "path", m.base()+"results/"+h, "err", err)
		}
	}
}
