// Package enforcement owns keeping the kernel's policy in step with the
// agent's state: it feeds rules, identities and endpoints to the policy
// resolver and writes only the changes the resolver reports into the
// datapath maps (policy, endpoints' enforcement flags, ipcache). At start it
// reconciles the pinned maps with the desired state and removes leftovers.
package enforcement

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/routing"
	"github.com/filament-net/filament/agent/sparse"
	"github.com/filament-net/filament/bpf"
)

// Repository is the stored policy set.
type Repository interface {
	ImportScoped(scope string, ps []api.Policy) (uint64, error)
	Delete(key string) (uint64, error)
	Get(key string) (api.Policy, error)
	List() []api.Policy
}

// Datapath is what the engine reads and writes: the kernel maps and
// attachments (agent/datapath), or a fake in tests.
type Datapath interface {
	ApplyPolicy(upserts map[policy.MapKey]policy.MapValue, deletes []policy.MapKey) (int, error)
	PolicyValues() (map[policy.MapKey]datapath.PolicyState, error)
	UpsertEndpoint(e datapath.EndpointEntry) error
	SetEnforcement(ip netip.Addr, ingress, egress bool) error
	Enforcement(ip netip.Addr) (ingress, egress bool, err error)
	DeleteEndpoint(ip netip.Addr) error
	Endpoints() (map[netip.Addr]bpf.DatapathEndpointInfo, error)
	UpsertIPCache(p netip.Prefix, id identity.NumericIdentity) error
	DeleteIPCache(p netip.Prefix) error
	IPCache() (map[netip.Prefix]identity.NumericIdentity, error)
	Attach(ifName string, ifIndex int) (datapath.Attachment, error)
	Detach(ifName string)
	PinnedLinks() []string
	HoldRevision() (release func() error)
}

// Router is what the engine asks of the router that follows the other
// nodes (agent/routing.Router; a fake in tests).
type Router interface {
	Mode() string
	// ClusterHolds says whether a prefix is the cluster's (a node's
	// address, inside a known pod CIDR).
	ClusterHolds(p netip.Prefix) bool
	// Wanted is every remote entry it writes; Rewrite writes p's again.
	Wanted() map[netip.Prefix]ipcache.Entry
	Rewrite(p netip.Prefix)
	// GiveBack writes the router's entry for p, or deletes p when it has
	// none.
	GiveBack(p netip.Prefix)
	Reneed(d sparse.Diff, install bool)
}

// Engine joins the resolver and the datapath.
type Engine struct {
	dp   Datapath
	res  *policy.Resolver
	repo Repository

	lookup func(identity.NumericIdentity) (identity.Identity, error)

	mu        sync.Mutex
	endpoints map[uint16]endpoint.Endpoint
	hostIPs   []netip.Addr

	// Cluster-wide state (nil on a node without it).
	ipsync *ipcache.Sync
	router Router
	nodeIP netip.Addr
	// cidrs: the policies' CIDR identities the engine wrote (the rest are
	// the cluster's, clusterHolds), as RecheckCIDRs keeps them.
	cidrs map[netip.Prefix]identity.NumericIdentity
	// reconciled: Reconcile ran. Before it the pinned maps are an
	// earlier agent's, keyed by its CIDR identity numbers, and enforced
	// whole: changes reach only the resolver, and Reconcile writes this
	// agent's policy over them whole (a new prefix written before would
	// take the earlier agent's entries of the number it gets).
	reconciled bool
	// policyStale: a policy map write failed part-way, so the map may
	// hold entries the resolver dropped (keyed by identity numbers it has
	// freed for the next new prefix) or old values; no CIDR entry is
	// written until syncPolicy has deleted and rewritten them.
	// The recheck writes a stale map again every time, and tries again
	// the entries a full map refused (policyMissing: nothing stale) from
	// retryAt on, backing off by retryWait.
	policyStale, policyMissing bool
	retryAt                    time.Time
	retryWait                  time.Duration
	// capped: the endpoints whose policy has more than maxEntries
	// entries, or would take their namespace's endpoints past
	// maxNamespace together: none of them is written and they deny
	// everything (capShare). nsOf: the endpoints' namespaces.
	// smallEntries, maxLarge: namespaced endpoints of more than
	// smallEntries entries ("large") hold at most maxLarge together.
	capped       map[uint16]bool
	maxEntries   int
	maxNamespace int
	smallEntries int
	maxLarge     int
	nsOf         map[uint16]string

	// Sparse remote ipcache (nil: full): the need follows every change
	// and the router writes the /32s it asks for.
	need   *sparse.Need
	covers sync.Map // remote cluster ID → name whose cover identity the resolver has
}

// SetSparse makes the engine feed every policy change to need and have
// the router write the remote /32s it makes needed before the change
// reaches the kernel (and remove those it makes unneeded after).
func (e *Engine) SetSparse(need *sparse.Need) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.need = need
}

// EnsureCover gives the resolver remote cluster's cover identity (its
// cluster label only), so that its policy entries are computed as every
// pod's of that cluster are; once per cluster and name.
func (e *Engine) EnsureCover(cluster uint32, name string) {
	if v, ok := e.covers.Load(cluster); ok && v.(string) == name {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.need == nil || cluster == 0 {
		return
	}
	e.covers.Store(cluster, name)
	if err := e.apply(e.res.UpsertIdentity(sparse.CoverIdentity(cluster, name))); err != nil {
		slog.Error("applying a cover identity to the datapath", "cluster", name, "err", err)
	}
}

// SetCluster makes the engine publish local endpoints in the cluster
// ipcache and keep the router's remote entries at reconcile.
func (e *Engine) SetCluster(s *ipcache.Sync, r Router, nodeIP netip.Addr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ipsync, e.router, e.nodeIP = s, r, nodeIP
}

// New returns an engine; hostIPs are this node's addresses (identity host)
// and lookup finds an identity's labels.
func New(dp Datapath, res *policy.Resolver, repo Repository, hostIPs []netip.Addr,
	lookup func(identity.NumericIdentity) (identity.Identity, error)) *Engine {
	return &Engine{dp: dp, res: res, repo: repo, lookup: lookup, endpoints: map[uint16]endpoint.Endpoint{}, hostIPs: hostIPs,
		cidrs: map[netip.Prefix]identity.NumericIdentity{}, capped: map[uint16]bool{}, maxEntries: MaxEndpointEntries,
		maxNamespace: MaxNamespaceEntries, smallEntries: SmallEndpointEntries, maxLarge: MaxLargeEntries, nsOf: map[uint16]string{}}
}

// MaxEndpointEntries bounds the policy map entries of one endpoint (the
// map, 1M entries, is shared by every endpoint of the node): what label
// selectors and entities times ports make, beyond the CIDR rules'
// namespace budgets (policy.MaxNamespace*). It is the name cache's
// bound (fqdn.DefaultMaxEntries), so that toFQDNs on one port never
// takes an endpoint over it; Cilium's per-endpoint maps hold 16,384.
// The resolver stops building an endpoint's entries just past it
// (policy.MaxEndpointEntries).
const MaxEndpointEntries = policy.MaxEndpointEntries

// MaxNamespaceEntries bounds the policy map entries of one namespace's
// endpoints on a node together (a quarter of the map): the endpoints
// there first keep theirs, one that would take the namespace past it is
// capped as one over its share is. Endpoints of no namespace (the
// operator's) are not counted.
const MaxNamespaceEntries = 262144

// SmallEndpointEntries and MaxLargeEntries keep a reserve of the policy
// map (1M entries) for endpoints of ordinary policies: namespaced
// endpoints of more than SmallEndpointEntries entries hold at most
// MaxLargeEntries together (seven eighths of the map), so the last
// eighth, 131,072 entries, is left to endpoints of at most 1,024 entries
// (128 of them at least), whatever large policies tenants of several
// namespaces write, each within its namespace's budget. One that would
// take the large ones past it is capped as one over its share.
const (
	SmallEndpointEntries = 1024
	MaxLargeEntries      = 1<<20 - 1<<17
)

// shares are the policy map's room as capShare and syncPolicy hand it
// out: the entries of each namespace's written endpoints, and of the
// large ones.
type shares struct {
	ns    map[string]int
	large int
}

// fit says whether an endpoint of namespace ns with n entries fits its
// share, its namespace's and the large endpoints' room, and takes the
// room when it does.
func (e *Engine) fit(sh *shares, ns string, n int) bool {
	if n > e.maxEntries {
		return false
	}
	if ns == "" {
		return true
	}
	large := n > e.smallEntries
	if sh.ns[ns]+n > e.maxNamespace || (large && sh.large+n > e.maxLarge) {
		return false
	}
	sh.ns[ns] += n
	if large {
		sh.large += n
	}
	return true
}

// capShare makes c keep the endpoints whose policy has more entries than
// their share (maxEntries) out of the map: an endpoint going over has
// every entry of its policy deleted and is enforced both ways (it denies
// everything: fail closed), one over gets none of c's upserts, and one
// coming back within its share gets its whole policy written with its
// flags. e.mu is held.
func (e *Engine) capShare(c *policy.Change) {
	touched := map[uint16]bool{}
	for k := range c.Upserts {
		touched[k.Endpoint] = true
	}
	for _, k := range c.Deletes {
		touched[k.Endpoint] = true
	}
	for id := range c.Enforcement {
		touched[id] = true
	}
	over := map[uint16]bool{}
	// Lowest ID first, each against its namespace's written endpoints
	// the change does not touch and those decided already.
	sh := e.usage(touched)
	for _, id := range slices.Sorted(maps.Keys(touched)) {
		n, ns := e.res.EntryCount(id), e.nsOf[id]
		fits := e.fit(&sh, ns, n)
		switch was := e.capped[id]; {
		case !fits:
			over[id] = true
			if !was {
				slog.Warn("an endpoint's policy is over its share of the policy map, or its namespace's: it denies everything until its policy fits",
					"endpoint", id, "entries", n, "max", e.maxEntries, "namespace", e.nsOf[id], "namespaceMax", e.maxNamespace)
				e.capped[id] = true
				pol, _ := e.res.Endpoint(id)
				for k := range pol.Entries {
					c.Deletes = append(c.Deletes, k)
				}
			}
			setEnforcement(c, id, policy.EndpointPolicy{IngressEnforced: true, EgressEnforced: true})
		case was:
			delete(e.capped, id)
			pol, ok := e.res.Endpoint(id)
			if !ok {
				continue // gone
			}
			slog.Info("an endpoint's policy fits its share of the policy map again", "endpoint", id, "entries", n)
			for k, v := range pol.Entries {
				if c.Upserts == nil {
					c.Upserts = map[policy.MapKey]policy.MapValue{}
				}
				c.Upserts[k] = v
			}
			setEnforcement(c, id, policy.EndpointPolicy{IngressEnforced: pol.IngressEnforced, EgressEnforced: pol.EgressEnforced})
		}
	}
	if len(over) > 0 {
		maps.DeleteFunc(c.Upserts, func(k policy.MapKey, _ policy.MapValue) bool { return over[k.Endpoint] })
	}
}

// recheckCapped gives the capped endpoints that fit now (another's
// policy shrank: a change touches only the endpoints it changes) their
// entries and flags, through capShare; nothing is written when none
// fits. e.mu is held.
func (e *Engine) recheckCapped() error {
	if len(e.capped) == 0 {
		return nil
	}
	sh := e.usage(e.capped)
	var c policy.Change
	for _, id := range slices.Sorted(maps.Keys(e.capped)) {
		if e.fit(&sh, e.nsOf[id], e.res.EntryCount(id)) {
			setEnforcement(&c, id, policy.EndpointPolicy{IngressEnforced: true, EgressEnforced: true})
		}
	}
	if len(c.Enforcement) == 0 {
		return nil
	}
	return e.apply(c)
}

// usage sums the entries of the written (not capped) namespaced
// endpoints that are not in skip: by namespace (only skip's endpoints'
// namespaces), and of the large ones. e.mu is held.
func (e *Engine) usage(skip map[uint16]bool) shares {
	sh := shares{ns: map[string]int{}}
	for id := range skip {
		if ns := e.nsOf[id]; ns != "" {
			sh.ns[ns] = 0
		}
	}
	if len(sh.ns) == 0 {
		return sh
	}
	for j, ns := range e.nsOf {
		if ns == "" || e.capped[j] || skip[j] {
			continue
		}
		n := e.res.EntryCount(j)
		if _, ok := sh.ns[ns]; ok {
			sh.ns[ns] += n
		}
		if n > e.smallEntries {
			sh.large += n
		}
	}
	return sh
}

func setEnforcement(c *policy.Change, id uint16, p policy.EndpointPolicy) {
	if c.Enforcement == nil {
		c.Enforcement = map[uint16]policy.EndpointPolicy{}
	}
	c.Enforcement[id] = p
}

// Resolver exposes the resolver (trace, status).
func (e *Engine) Resolver() *policy.Resolver { return e.res }

// apply writes a resolver change into the maps. Established flows have
// their policy checked again once, against the whole change (the datapath
// revision is held until it is written).
func (e *Engine) apply(c policy.Change) (err error) {
	release := e.dp.HoldRevision()
	defer func() {
		if rerr := release(); err == nil {
			err = rerr
		}
	}()
	// Remote /32s the change makes needed are written before it, those
	// it makes unneeded removed after it (under the same held revision):
	// no address resolves to a cover identity whose entries differ from
	// its own at any moment (docs/architecture.md, sparse remote ipcache).
	var need sparse.Diff
	if e.need != nil && e.router != nil {
		if need = e.need.Apply(c); !need.Empty() {
			e.router.Reneed(need, true)
		}
	}
	if !e.reconciled {
		// The earlier agent's maps stay whole until Reconcile writes
		// this agent's policy whole.
		if !need.Empty() {
			e.router.Reneed(need, false)
		}
		return nil
	}
	e.capShare(&c)
	var errs []error
	if e.policyStale {
		// The map is not what the resolver last had: the change's delta
		// is not enough, the whole policy is written (the change with it).
		_, err = e.syncPolicy()
	} else if _, err = e.dp.ApplyPolicy(c.Upserts, c.Deletes); err != nil {
		// Written in part: what is stale is deleted and rewritten now, so
		// that the change's CIDR entries can be written (a full map
		// leaves only entries missing, denies of capped endpoints).
		e.policyStale = true
		_, serr := e.syncPolicy()
		err = errors.Join(err, serr)
	}
	if err != nil {
		errs = append(errs, err)
	}
	if e.policyStale {
		// Fail closed: enforcement the change turns on is turned on (the
		// allows missing, its endpoints deny), none is turned off.
		for id, ep := range c.Enforcement {
			if local, ok := e.endpoints[id]; ok && (ep.IngressEnforced || ep.EgressEnforced) {
				in, out, _ := e.dp.Enforcement(local.IPv4)
				if serr := e.dp.SetEnforcement(local.IPv4, ep.IngressEnforced || in, ep.EgressEnforced || out); serr != nil {
					errs = append(errs, serr)
				}
			}
		}
		// Its CIDR deletes all the same: the resolver freed their identity
		// numbers, which the next new prefix takes (the recheck removes
		// what fails here); its new CIDR entries wait for the map.
		held := e.clusterHolds(len(c.CIDRDeletes))
		for _, p := range c.CIDRDeletes {
			if derr := e.dropCIDR(p, held(p)); derr != nil {
				errs = append(errs, derr)
			}
		}
		return errors.Join(errs...)
	}
	for id, ep := range c.Enforcement {
		if local, ok := e.endpoints[id]; ok {
			in, out := ep.IngressEnforced, ep.EgressEnforced
			if e.capped[id] {
				in, out = true, true
			}
			if serr := e.dp.SetEnforcement(local.IPv4, in, out); serr != nil {
				errs = append(errs, serr)
			}
		}
	}
	held := e.clusterHolds(len(c.CIDRUpserts) + len(c.CIDRDeletes))
	for p, id := range c.CIDRUpserts {
		if held(p) {
			slog.Debug("a policy's CIDR names the cluster's addresses: their own identities stay", "cidr", p)
			e.giveBack(p)
			continue
		}
		if uerr := e.dp.UpsertIPCache(p, id); uerr != nil {
			errs = append(errs, uerr) // the recheck writes it
			continue
		}
		e.cidrs[p] = id
	}
	for _, p := range c.CIDRDeletes {
		if derr := e.dropCIDR(p, held(p)); derr != nil {
			errs = append(errs, derr)
		}
	}
	if !need.Empty() {
		e.router.Reneed(need, false)
	}
	return errors.Join(errs...)
}

// giveBack hands CIDR prefix p, if the engine wrote it, back to the
// cluster: a local endpoint's or this node's entry, or the router's, or
// none. e.mu is held.
func (e *Engine) giveBack(p netip.Prefix) {
	if _, wrote := e.cidrs[p]; !wrote {
		return
	}
	if err := e.giveBackWritten(p); err != nil {
		slog.Warn("a policy's CIDR entry not given back to the cluster; trying again", "cidr", p, "err", err)
		return // still the engine's: the next recheck tries again
	}
	delete(e.cidrs, p)
}

func (e *Engine) giveBackWritten(p netip.Prefix) error {
	if p.Bits() == 32 {
		for _, ep := range e.endpoints {
			if ep.IPv4 == p.Addr() {
				return e.dp.UpsertIPCache(p, ep.Identity)
			}
		}
		for _, a := range e.hostIPs {
			if a == p.Addr() {
				return e.dp.UpsertIPCache(p, identity.Host)
			}
		}
	}
	if e.router != nil {
		e.router.GiveBack(p)
		return nil
	}
	return e.dp.DeleteIPCache(p)
}

// dropCIDR removes CIDR prefix p the policies no longer name, if the
// engine wrote it (held: the cluster holds it now, and gets it back).
// e.mu is held.
func (e *Engine) dropCIDR(p netip.Prefix, held bool) error {
	if _, wrote := e.cidrs[p]; !wrote {
		return nil // never written, or a pod's or node's entry since
	}
	if held {
		e.giveBack(p)
		return nil
	}
	if err := e.dp.DeleteIPCache(p); err != nil {
		return err
	}
	delete(e.cidrs, p)
	return nil
}

// RecheckCIDRs keeps the policies' CIDR identities off the cluster's
// addresses as the cluster changes (the agent runs it every few
// seconds): a prefix the cluster holds now is given back (a node came,
// with the pod CIDR it lies in: at the agent's start the mesh's nodes
// come after the policies), one it no longer holds is written (its node
// went), and one the policies no longer name is removed (a change that
// failed part-way left it). A policy map a write failed on is written
// again first (entries a full map refused: backing off). It returns how many prefixes it changed.
func (e *Engine) RecheckCIDRs() (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.reconciled {
		return 0, nil
	}
	var errs []error
	if e.policyStale || (e.policyMissing && !time.Now().Before(e.retryAt)) {
		release := e.dp.HoldRevision()
		_, err := e.syncPolicy()
		if rerr := release(); err == nil {
			err = rerr
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("writing the policy after a failed write: %w", err))
		}
	}
	if err := e.recheckCapped(); err != nil {
		errs = append(errs, fmt.Errorf("writing capped endpoints that fit now: %w", err))
	}
	cidrs := e.res.CIDRIdentities()
	held := e.clusterHolds(len(cidrs) + len(e.cidrs))
	changed := 0
	for p := range e.cidrs {
		if _, named := cidrs[p]; !named {
			if err := e.dropCIDR(p, held(p)); err != nil {
				errs = append(errs, err)
				continue
			}
			changed++
		}
	}
	for p, id := range cidrs {
		w, wrote := e.cidrs[p]
		switch h := held(p); {
		case h && wrote:
			e.giveBack(p)
			changed++
		case !h && wrote && w != id && e.policyStale:
			// Its number was freed (the map may hold its stale entries,
			// or another prefix's): world until the map is written.
			if err := e.dropCIDR(p, false); err != nil {
				errs = append(errs, err)
				continue
			}
			changed++
		case !h && (!wrote || w != id) && !e.policyStale:
			// (Stale: the map may hold a freed number's allows, which
			// the prefix would get.)
			if err := e.dp.UpsertIPCache(p, id); err != nil {
				errs = append(errs, err)
				continue
			}
			e.cidrs[p] = id
			changed++
		}
	}
	return changed, errors.Join(errs...)
}

// clusterHolds returns whether a policy's CIDR prefix is the cluster's
// (a local endpoint's or this node's address, or what the router says
// is: a pod CIDR of a known node, a node's address, but the other
// nodes' addresses toNodes selectors name), so that its CIDR
// identity is not written over the pods' and nodes' entries nor deletes
// them: a tenant's namespaced policy may name any address. n: how many
// prefixes will be asked about (the endpoints' addresses are indexed
// only for some). e.mu is held.
func (e *Engine) clusterHolds(n int) func(netip.Prefix) bool {
	if n == 0 {
		return nil
	}
	own := map[netip.Addr]bool{}
	for _, a := range e.hostIPs {
		own[a] = true
	}
	for _, ep := range e.endpoints {
		own[ep.IPv4] = true
	}
	return func(p netip.Prefix) bool {
		if p.Bits() == 32 && own[p.Addr()] {
			// This node's addresses are host (toNodes does not select
			// them: toEntities host does), its endpoints' their own.
			return true
		}
		// A toNodes selector selects other nodes by the CIDR identities of
		// their addresses (the operator's node selection, not a pod's
		// address).
		return e.router != nil && e.router.ClusterHolds(p) && !e.res.NodeSelected(p)
	}
}

// GroupChanged applies the resolved addresses of a toGroups/fromGroups
// selector (by api.GroupKey).
func (e *Engine) GroupChanged(key string, addrs []netip.Addr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.apply(e.res.SetGroup(key, addrs)); err != nil {
		slog.Error("applying a group change to the datapath", "group", key, "err", err)
	}
}

// GroupsLoaded applies the groups layer's loading of the stored results
// (policy.SetGroupsLoaded).
func (e *Engine) GroupsLoaded() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.apply(e.res.SetGroupsLoaded()); err != nil {
		slog.Error("applying the loaded groups to the datapath", "err", err)
	}
}

// GroupDropped applies the groups layer's drop of a group
// (policy.DropGroup).
func (e *Engine) GroupDropped(key string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.apply(e.res.DropGroup(key)); err != nil {
		slog.Error("applying a group's drop to the datapath", "group", key, "err", err)
	}
}

// GroupRefused applies the groups layer's refusal of a toGroups/fromGroups
// selector with no good set (why "": it ended; policy.SetGroupRefused).
func (e *Engine) GroupRefused(key, why string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.apply(e.res.SetGroupRefused(key, why)); err != nil {
		slog.Error("applying a group's refusal to the datapath", "group", key, "err", err)
	}
}

// FQDNUpdated applies the changed learned addresses of a toFQDNs
// selector (the name cache's TakeDirty, read at generation gen).
func (e *Engine) FQDNUpdated(key string, changed map[netip.Addr][]uint16, gen uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.apply(e.res.UpdateFQDN(key, changed, gen)); err != nil {
		slog.Error("applying learned DNS addresses to the datapath", "selector", key, "err", err)
	}
}

// FQDNReplaced replaces the learned addresses of a toFQDNs selector with
// its whole set (the name cache's TakeDirty after the selector was
// registered, read at generation gen).
func (e *Engine) FQDNReplaced(key string, learned map[netip.Addr][]uint16, gen uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.apply(e.res.SetFQDN(key, learned, gen)); err != nil {
		slog.Error("applying learned DNS addresses to the datapath", "selector", key, "err", err)
	}
}

// FQDNEndpointForgotten drops a deleted endpoint's ID from the learned
// addresses at once (the name cache forgot it at generation gen).
func (e *Engine) FQDNEndpointForgotten(id uint16, gen uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.apply(e.res.ForgetFQDNEndpoint(id, gen)); err != nil {
		slog.Error("applying a forgotten endpoint's DNS names to the datapath", "endpoint", id, "err", err)
	}
}

// Import stores policies and enforces them (api.Policies).
func (e *Engine) Import(ps []api.Policy) (uint64, error) {
	return e.ImportScoped(policy.ScopeAgent, ps)
}

// ImportScoped is Import with the scope the policies get (policy.Scope*).
func (e *Engine) ImportScoped(scope string, ps []api.Policy) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	rev, err := e.repo.ImportScoped(scope, ps)
	if err != nil {
		return 0, err
	}
	return rev, e.apply(e.res.SetPolicies(e.repo.List()))
}

// Delete removes a policy and its enforcement (api.Policies).
func (e *Engine) Delete(key string) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	rev, err := e.repo.Delete(key)
	if err != nil {
		return 0, err
	}
	return rev, e.apply(e.res.SetPolicies(e.repo.List()))
}

// Get returns a stored policy (api.Policies).
func (e *Engine) Get(key string) (api.Policy, error) { return e.repo.Get(key) }

// List returns the stored policies (api.Policies).
func (e *Engine) List() []api.Policy { return e.repo.List() }

// LoadPolicies hands the stored policies to the resolver at start.
func (e *Engine) LoadPolicies() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.apply(e.res.SetPolicies(e.repo.List()))
}

// IdentityChanged follows the cluster's identities.
func (e *Engine) IdentityChanged(id identity.Identity, deleted bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var c policy.Change
	if deleted {
		c = e.res.DeleteIdentity(id.ID)
	} else {
		c = e.res.UpsertIdentity(id)
	}
	if err := e.apply(c); err != nil {
		slog.Error("applying identity change to the datapath", "identity", uint32(id.ID), "err", err)
	}
}

func entryOf(ep endpoint.Endpoint, pol policy.EndpointPolicy) (datapath.EndpointEntry, error) {
	mac, err := parseMAC(ep.MAC)
	if err != nil {
		return datapath.EndpointEntry{}, fmt.Errorf("endpoint %d MAC: %w", ep.ID, err)
	}
	hmac, err := parseMAC(ep.HostMAC)
	if err != nil {
		return datapath.EndpointEntry{}, fmt.Errorf("endpoint %d host MAC: %w", ep.ID, err)
	}
	return datapath.EndpointEntry{
		ID: ep.ID, IP: ep.IPv4, Identity: ep.Identity, HostIfIndex: ep.HostIfIndex, MAC: mac, HostMAC: hmac,
		IngressEnforced: pol.IngressEnforced, EgressEnforced: pol.EgressEnforced,
	}, nil
}

// EndpointUp implements endpoint.Hooks: policy entries first, then the
// endpoint and its ipcache entry, then the programs on its veth.
func (e *Engine) EndpointUp(_ context.Context, ep endpoint.Endpoint) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	// The endpoint joins e.endpoints after the policy change: apply sets
	// the enforcement flags of endpoints the map holds already (a
	// relabelled one), and a new one's entry is written with them below.
	// Before 2026-12-04 a new endpoint that a policy enforced failed here
	// (its flags set on a map entry not written yet); the CNI's next try
	// passed only because the failed one had left it in the resolver.
	e.nsOf[ep.ID] = ep.Namespace
	err := e.apply(e.res.UpsertEndpoint(policy.EndpointInfo{ID: ep.ID, Identity: ep.Identity, Labels: e.identityLabels(ep)}))
	e.endpoints[ep.ID] = ep
	if err != nil {
		return err
	}
	pol, _ := e.res.Endpoint(ep.ID)
	if e.capped[ep.ID] {
		pol.IngressEnforced, pol.EgressEnforced = true, true
	}
	entry, err := entryOf(ep, pol)
	if err != nil {
		return err
	}
	if err := e.dp.UpsertEndpoint(entry); err != nil {
		return err
	}
	if err := e.dp.UpsertIPCache(netip.PrefixFrom(ep.IPv4, 32), ep.Identity); err != nil {
		return err
	}
	if _, err := e.dp.Attach(ep.HostIfName, ep.HostIfIndex); err != nil {
		return err
	}
	if e.ipsync != nil {
		// Written to the kvstore by the ipcache's writer: a kvstore
		// outage does not hold this lock.
		e.ipsync.Publish(ipcache.Entry{IP: ep.IPv4, Identity: ep.Identity, HostIP: e.nodeIP, Namespace: ep.Namespace, Pod: ep.PodName})
	}
	return nil
}

// identityLabels are the labels the endpoint's identity carries (with the
// cluster label the allocator adds).
func (e *Engine) identityLabels(ep endpoint.Endpoint) labels.Labels {
	if e.lookup != nil {
		if id, err := e.lookup(ep.Identity); err == nil {
			return id.Labels
		}
	}
	return ep.Labels
}

func parseMAC(s string) (net.HardwareAddr, error) { return net.ParseMAC(s) }

// EndpointDown implements endpoint.Hooks.
func (e *Engine) EndpointDown(ep endpoint.Endpoint) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.endpoints, ep.ID)
	ns := e.nsOf[ep.ID]
	large := ns != "" && !e.capped[ep.ID] && e.res.EntryCount(ep.ID) > e.smallEntries
	delete(e.nsOf, ep.ID)
	c := e.res.DeleteEndpoint(ep.ID)
	// Its namespace's capped endpoints are looked at again, every capped
	// one when it was a written large one: the room it leaves may be
	// theirs (capShare).
	for id, o := range e.nsOf {
		if ns != "" && e.capped[id] && (o == ns || large) {
			setEnforcement(&c, id, policy.EndpointPolicy{IngressEnforced: true, EgressEnforced: true})
		}
	}
	delete(e.capped, ep.ID)
	if err := e.apply(c); err != nil {
		slog.Error("removing endpoint policy", "endpoint", ep.ID, "err", err)
	}
	e.dp.DeleteEndpoint(ep.IPv4)
	e.dp.DeleteIPCache(netip.PrefixFrom(ep.IPv4, 32))
	delete(e.cidrs, netip.PrefixFrom(ep.IPv4, 32)) // a policy's CIDR naming it: the next recheck writes it
	e.dp.Detach(ep.HostIfName)
	if e.ipsync != nil {
		e.ipsync.Withdraw(ep.IPv4)
	}
}

// Reconcile makes the pinned maps match the desired state after a restart:
// entries nobody wants any more are removed, missing ones written. Until
// it runs, changes reach only the resolver (reconciled). The ipcache
// entries that are not wanted or hold another identity go first, then
// the policy is written whole, then the ipcache's missing entries: a
// prefix resolves to the earlier agent's number only while its entries
// are the earlier agent's, and to this agent's once they are written.
func (e *Engine) Reconcile() (removed int, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	release := e.dp.HoldRevision()
	defer func() {
		if rerr := release(); err == nil {
			err = rerr
		}
	}()
	e.reconciled = true
	// Endpoints.
	want := map[netip.Addr]bool{}
	hostIfs := map[string]bool{}
	for _, ep := range e.endpoints {
		want[ep.IPv4] = true
		hostIfs[ep.HostIfName] = true
	}
	have, err := e.dp.Endpoints()
	if err != nil {
		return 0, err
	}
	for ip := range have {
		if !want[ip] {
			e.dp.DeleteEndpoint(ip)
			removed++
		}
	}
	hostIfs[routing.VXLANDevice] = e.router != nil && e.router.Mode() == routing.Tunnel
	for _, name := range e.dp.PinnedLinks() {
		if !hostIfs[name] {
			e.dp.Detach(name)
			removed++
		}
	}
	// ipcache: CIDR identities but the cluster's addresses, endpoints,
	// host addresses (and the router's, below).
	wantIP := map[netip.Prefix]identity.NumericIdentity{}
	cidrs := e.res.CIDRIdentities()
	held := e.clusterHolds(len(cidrs))
	clear(e.cidrs)
	for p, id := range cidrs {
		if !held(p) {
			wantIP[p] = id
			e.cidrs[p] = id
		}
	}
	for _, ep := range e.endpoints {
		wantIP[netip.PrefixFrom(ep.IPv4, 32)] = ep.Identity
		delete(e.cidrs, netip.PrefixFrom(ep.IPv4, 32))
	}
	for _, a := range e.hostIPs {
		wantIP[netip.PrefixFrom(a, 32)] = identity.Host
		delete(e.cidrs, netip.PrefixFrom(a, 32))
	}
	var remote map[netip.Prefix]ipcache.Entry
	if e.router != nil {
		remote = e.router.Wanted()
		for p, ent := range remote {
			wantIP[p] = ent.Identity
			delete(e.cidrs, p) // the router's entry, not the policy's
		}
	}
	haveIP, err := e.dp.IPCache()
	if err != nil {
		return removed, err
	}
	for p, id := range haveIP {
		if w, ok := wantIP[p]; !ok || w != id {
			if err := e.dp.DeleteIPCache(p); err != nil {
				return removed, err
			}
			delete(haveIP, p)
			if !ok {
				removed++
				if e.router != nil {
					// The router may have written p since Wanted (a
					// remote entry that came, or took a place freed):
					// it writes it again if it has it.
					e.router.Rewrite(p)
				}
			}
		}
	}
	// Policy.
	e.policyStale = true // the pinned map is an earlier agent's
	n, perr := e.syncPolicy()
	removed += n
	if perr != nil && !e.policyStale {
		// Entries a full map refused: their endpoints fail closed and
		// the recheck tries again; the agent runs.
		slog.Warn("policy entries not written at start; tried again", "err", perr)
		perr = nil
	}
	if e.policyStale {
		// The policy map may hold the earlier agent's entries: the
		// policies' prefixes stay world until the recheck writes it.
		for p := range e.cidrs {
			if _, ok := haveIP[p]; ok {
				e.dp.DeleteIPCache(p)
			}
			delete(wantIP, p)
		}
		clear(e.cidrs)
	}
	for p, id := range wantIP {
		if _, ok := haveIP[p]; ok {
			continue
		}
		if _, isRemote := remote[p]; isRemote {
			e.router.Rewrite(p)
		} else if err := e.dp.UpsertIPCache(p, id); err != nil {
			return removed, errors.Join(perr, err)
		}
	}
	return removed, perr
}

// syncPolicy makes the policy map hold the resolver's entries and sets
// every endpoint's enforcement flags from it: at start over an earlier
// agent's pinned map, and after a write that failed part-way. Entries
// nobody wants are deleted and those whose value differs rewritten
// first (neither needs room in the map): after that nothing in the map
// is stale (policyStale off) and CIDR entries may be written. Missing
// entries are added after, denies before allows; those a full map
// refuses are tried again later (policyMissing), and an endpoint missing
// a deny has its entries deleted and denies everything (capped: fail
// closed, as one over its share). It returns how many entries it
// deleted. e.mu is held.
func (e *Engine) syncPolicy() (removed int, err error) {
	// The resolver's endpoints, not only e.endpoints: one coming up joins
	// those after its policy change (EndpointUp).
	wantPol := map[policy.MapKey]policy.MapValue{}
	flags := map[uint16]policy.EndpointPolicy{}
	// Those written now first (they keep their room), by ID, as capShare
	// decides.
	ids := e.res.EndpointIDs()
	slices.SortFunc(ids, func(a, b uint16) int {
		if e.capped[a] != e.capped[b] {
			if e.capped[a] {
				return 1
			}
			return -1
		}
		return int(a) - int(b)
	})
	sh := shares{ns: map[string]int{}}
	for _, id := range ids {
		pol, ok := e.res.Endpoint(id)
		if !ok {
			continue
		}
		n, ns := len(pol.Entries), e.nsOf[id]
		if !e.fit(&sh, ns, n) {
			// Over its share or its namespace's (capShare): nothing of
			// it, enforced both ways.
			e.capped[id] = true
			flags[id] = policy.EndpointPolicy{IngressEnforced: true, EgressEnforced: true}
			continue
		}
		delete(e.capped, id)
		flags[id] = pol
		for k, v := range pol.Entries {
			wantPol[k] = v
		}
	}
	have, err := e.dp.PolicyValues()
	if err != nil {
		e.policyStale = true
		return 0, err
	}
	var del []policy.MapKey
	for k := range have {
		if _, ok := wantPol[k]; !ok {
			del = append(del, k)
		}
	}
	update := map[policy.MapKey]policy.MapValue{}
	add := [2]map[policy.MapKey]policy.MapValue{{}, {}} // denies, allows
	for k, v := range wantPol {
		switch h, ok := have[k]; {
		case ok && h == datapath.StateOf(k, v):
		case ok:
			update[k] = v
		case v.Deny:
			add[0][k] = v
		default:
			add[1][k] = v
		}
	}
	if _, err := e.dp.ApplyPolicy(update, del); err != nil {
		e.policyStale = true
		return 0, err
	}
	e.policyStale = false
	var addErr error
	for _, m := range add {
		if _, err := e.dp.ApplyPolicy(m, nil); err != nil {
			addErr = err
		}
	}
	e.policyMissing = addErr != nil
	if addErr != nil {
		e.backoff()
		if err := e.capMissingDenies(add[0], flags); err != nil {
			addErr = errors.Join(addErr, err)
		}
	} else {
		e.retryAt, e.retryWait = time.Time{}, 0
	}
	for id, pol := range flags {
		ep, ok := e.endpoints[id]
		if !ok {
			continue // its entry is written with its flags (EndpointUp)
		}
		ip := ep.IPv4
		if err := e.dp.SetEnforcement(ip, pol.IngressEnforced, pol.EgressEnforced); err != nil {
			slog.Warn("an endpoint's enforcement flags not set from the policy", "endpoint", id, "ip", ip, "err", err)
		}
	}
	return len(del), addErr
}

// capMissingDenies caps (capShare) the endpoints that a deny of denies
// could not be added for: without it their other entries (an allow of
// any peer) may allow what it denies. Their entries are deleted and
// flags (what syncPolicy sets) enforces them both ways. e.mu is held.
func (e *Engine) capMissingDenies(denies map[policy.MapKey]policy.MapValue, flags map[uint16]policy.EndpointPolicy) error {
	have, err := e.dp.PolicyValues()
	missing := map[uint16]bool{}
	for k := range denies {
		if _, ok := have[k]; !ok || err != nil {
			missing[k.Endpoint] = true
		}
	}
	if len(missing) == 0 {
		return nil
	}
	var del []policy.MapKey
	for id := range missing {
		slog.Warn("the policy map refused an endpoint's deny: it denies everything until it is written",
			"endpoint", id, "err", err)
		e.capped[id] = true
		flags[id] = policy.EndpointPolicy{IngressEnforced: true, EgressEnforced: true}
		pol, _ := e.res.Endpoint(id)
		for k := range pol.Entries {
			del = append(del, k)
		}
	}
	if _, err := e.dp.ApplyPolicy(nil, del); err != nil {
		e.policyStale = true // its allows may be in
		return err
	}
	return nil
}

// backoff sets when a failed policy write is tried again: 2 s, doubling
// to a minute. e.mu is held.
func (e *Engine) backoff() {
	e.retryWait = min(max(2*e.retryWait, 2*time.Second), time.Minute)
	e.retryAt = time.Now().Add(e.retryWait)
}

// PolicyEntries counts the desired policy entries (metrics).
func (e *Engine) PolicyEntries() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for id := range e.endpoints {
		if pol, ok := e.res.Endpoint(id); ok {
			n += len(pol.Entries)
		}
	}
	return n
}
