package daemon

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/fqdn"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/proxy"
)

// dnsNames is the node's DNS name cache and what follows from it: the
// addresses of the toFQDNs selectors in the policy. The L7 proxy hands
// it each allowed answer (learn); the policy's selectors are kept
// registered with the cache; expired names leave the policy, except
// addresses a live connection still goes to.
type dnsNames struct {
	a     *Agent
	cache *fqdn.Cache
	path  string

	// applyMu serialises cache changes with their policy updates
	// (learn, expire, syncSelectors); it is taken before the enforcement
	// engine's and the resolver's locks.
	applyMu sync.Mutex
	// pins are expired addresses kept, each for one endpoint, for that
	// endpoint's flows to it that were open when it expired for the
	// endpoint (flows opened since do not keep it); under applyMu.
	pins map[pinKey]map[datapath.Flow]bool
	// selMu guards sels, the selectors registered with the cache. The
	// resolver takes it (addrsFor) under its own lock: nothing holding
	// selMu calls the engine or the resolver.
	selMu sync.Mutex
	sels  map[string]api.FQDNSelector
	// goneMu guards goneKeys, the selectors whose addresses changed when
	// the cache forgot deleted endpoints (forget runs under the endpoint
	// manager's lock: the policy follows later, under applyMu).
	goneMu   sync.Mutex
	goneKeys map[string]bool
	wake     chan struct{}
	// saveMu guards saved and savedWrites: the cache's Writes at its last
	// save (run's, or the stop's).
	saveMu      sync.Mutex
	saved       bool
	savedWrites uint64
}

// maxLearnedTTL bounds how long one answer keeps an address (a hostile
// server's TTL of 2^32-1 s would keep it for good).
const maxLearnedTTL = 24 * time.Hour

// startDNSNames restores the DNS name cache and has the resolver take
// the addresses of a toFQDNs selector from it when a policy first names
// the selector (so that restored names allow at once after a restart).
func (a *Agent) startDNSNames(ctx context.Context) error {
	d := &dnsNames{a: a, path: filepath.Join(a.cfg.StateDir, "fqdn-cache.json"), sels: map[string]api.FQDNSelector{},
		pins: map[pinKey]map[datapath.Flow]bool{}, wake: make(chan struct{}, 1),
		cache: fqdn.NewCache(fqdn.Config{MinTTL: time.Duration(a.cfg.ToFQDNsMinTTL), MaxAddrsPerName: a.cfg.ToFQDNsMaxIPsPerName,
			MaxEntries: a.cfg.ToFQDNsMaxEntries})}
	if err := d.cache.Load(d.path); err != nil {
		slog.Warn("DNS name cache not restored: starting empty", "path", d.path, "err", err)
	} else if n := d.cache.Len(); n > 0 {
		slog.Info("DNS name cache restored", "entries", n)
	}
	a.res.SetFQDNSource(d.addrsFor)
	a.names = d
	a.goroutine(func() { d.run(ctx) })
	a.onStop("DNS name cache", d.save)
	return nil
}

// addrsFor registers a selector a policy names and returns its addresses,
// each with the endpoints whose lookups gave it (none for a selector the
// cache cannot use). The resolver calls it under its own lock.
func (d *dnsNames) addrsFor(key string, sel api.FQDNSelector) (map[netip.Addr][]uint16, uint64) {
	d.selMu.Lock()
	defer d.selMu.Unlock()
	if _, ok := d.sels[key]; !ok {
		next := maps.Clone(d.sels)
		next[key] = sel
		if _, err := d.cache.SetSelectors(next); err != nil {
			slog.Warn("toFQDNs selector not usable: it selects nothing", "selector", key, "err", err)
			return nil, 0
		}
		d.sels = next
	}
	return d.cache.LearnedAsOf(key)
}

// learn records allowed DNS answers and returns when their addresses are
// in the datapath (the proxy holds the answers until then): the cache
// takes them all, then each selector whose addresses changed is updated
// once. Only names a toFQDNs selector matches are kept. Addresses the
// cluster knows (a pod's, a node's) are not learned: their identity is
// theirs, a CIDR identity must not take it over.
func (d *dnsNames) learn(batch []proxy.Learned) {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	changed := d.forgetGone()
	// An endpoint deleted after this (its ID maybe given to a new one
	// before the batch is recorded) gets nothing recorded (UpdateAsOf).
	gen := d.cache.Gen()
	for _, x := range batch {
		ep, ok := d.a.eps.ByIP(x.Endpoint)
		if !ok || !d.cache.Wanted(x.Name) {
			continue // not an endpoint of this node (any more), or a name no toFQDNs selects
		}
		addrs := make([]netip.Addr, 0, len(x.Addrs))
		for _, a := range x.Addrs {
			if _, local := d.a.eps.ByIP(a); local {
				continue
			}
			if id, ok := d.a.dp.LookupIPCache(a); ok && id != identity.World && id&identity.LocalScopeFlag == 0 {
				continue
			}
			addrs = append(addrs, a)
			delete(d.pins, pinKey{a, ep}) // answered again: not expired
		}
		if len(addrs) == 0 {
			continue
		}
		for _, k := range d.cache.UpdateAsOf(gen, ep, x.Name, addrs, min(time.Duration(x.TTL)*time.Second, maxLearnedTTL)) {
			changed[k] = true
		}
	}
	d.apply(slices.Sorted(maps.Keys(changed)))
}

// forget has the cache forget the names endpoint id asked for, once it is
// deleted: an address only it asked for leaves the toFQDNs selectors (not
// kept until its TTL), and a new endpoint given the same ID does not
// inherit its entries. It runs under the endpoint manager's lock, before
// the ID is free: the cache forgets and the policy drops the ID from
// every learned address here (neither takes that lock), and an answer or
// an address read before does not bring it back (the cache's
// generation); the other endpoints' changed selectors follow in run (or
// the next learn).
func (d *dnsNames) forget(id uint16) {
	changed, gen := d.cache.ForgetGen(id)
	d.a.engine.FQDNEndpointForgotten(id, gen)
	d.goneMu.Lock()
	if d.goneKeys == nil {
		d.goneKeys = map[string]bool{}
	}
	for _, k := range changed {
		d.goneKeys[k] = true
	}
	d.goneMu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// forgetOthers forgets, once the endpoints are restored at start, the
// names of endpoints not among them: deleted while the agent was down, or
// before the cache was last saved (every 10 s) when the agent crashed;
// and those of endpoints made after the save (fqdn.KeptAcrossRestart: an
// ID freed and given again since). A restored cache must not hand such
// names to a new endpoint given the same ID.
func (d *dnsNames) forgetOthers(live []endpoint.Endpoint) {
	saved := d.cache.SavedAt()
	keep := map[uint16]bool{}
	for _, ep := range live {
		keep[ep.ID] = fqdn.KeptAcrossRestart(saved, ep.Created)
	}
	var gone []uint16
	for _, id := range d.cache.Endpoints() {
		if !keep[id] {
			gone = append(gone, id)
		}
	}
	if len(gone) > 0 {
		slog.Info("DNS names of endpoints gone while the agent was down forgotten", "endpoints", len(gone))
		for _, id := range gone {
			d.forget(id)
		}
	}
}

// forgetGone returns the selectors whose addresses changed when the
// cache forgot deleted endpoints, for the caller (holding applyMu) to
// apply.
func (d *dnsNames) forgetGone() map[string]bool {
	d.goneMu.Lock()
	changed := d.goneKeys
	d.goneKeys = nil
	d.goneMu.Unlock()
	if changed == nil {
		changed = map[string]bool{}
	}
	return changed
}

// apply hands the changed selectors' addresses to the policy; the caller
// holds applyMu (not selMu).
func (d *dnsNames) apply(changed []string) {
	d.selMu.Lock()
	var keys []string
	for _, key := range changed {
		if _, ok := d.sels[key]; ok {
			keys = append(keys, key)
		}
	}
	d.selMu.Unlock()
	for _, key := range keys {
		switch changed, whole, gen := d.cache.TakeDirty(key); {
		case whole:
			d.a.engine.FQDNReplaced(key, changed, gen)
		case len(changed) > 0:
			d.a.engine.FQDNUpdated(key, changed, gen)
		}
	}
}

// run keeps the registered selectors those of the policy, expires names
// when they are due and saves the cache now and then, until ctx ends.
func (d *dnsNames) run(ctx context.Context) {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	lastSave := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
			d.applyMu.Lock()
			d.apply(slices.Sorted(maps.Keys(d.forgetGone())))
			d.applyMu.Unlock()
			continue
		case <-t.C:
		}
		d.syncSelectors()
		if next := d.cache.NextExpiry(); !next.IsZero() && !next.After(time.Now()) {
			d.expire()
		}
		if time.Since(lastSave) >= 10*time.Second {
			d.save()
			lastSave = time.Now()
		}
		t.Reset(time.Second)
	}
}

// syncSelectors registers exactly the toFQDNs selectors the policy uses
// (those the cache cannot use are left out, and select nothing).
func (d *dnsNames) syncSelectors() {
	inUse := d.a.res.FQDNSelectorsInUse()
	for key, sel := range inUse {
		if _, err := fqdn.Compile(sel); err != nil {
			delete(inUse, key)
		}
	}
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.selMu.Lock()
	if maps.Equal(inUse, d.sels) {
		d.selMu.Unlock()
		return
	}
	changed, err := d.cache.SetSelectors(inUse)
	if err != nil {
		d.selMu.Unlock()
		slog.Warn("toFQDNs selectors", "err", err)
		return
	}
	for key := range inUse {
		if _, ok := d.sels[key]; !ok {
			// Registered anew: the policy takes its whole set (it may
			// hold addresses the cache dropped meanwhile).
			changed = append(changed, key)
		}
	}
	var removed []string
	for key := range d.sels {
		if _, ok := inUse[key]; !ok {
			removed = append(removed, key)
		}
	}
	d.sels = inUse
	d.selMu.Unlock()
	for _, key := range removed {
		d.a.res.ForgetGroup(key)
	}
	d.apply(changed)
}

// expire drops the names whose TTL passed, except addresses that
// endpoints' flows opened before the expiry still go to: those stay until
// the last of those flows ends (no cut in mid-connection; a flow opened
// after the expiry keeps nothing).
func (d *dnsNames) expire() {
	live, err := d.a.dp.EgressFlows()
	if err != nil {
		slog.Warn("DNS names not expired: conntrack unreadable", "err", err)
		return
	}
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.apply(d.cache.Expire(func(a netip.Addr, ep uint16) bool { return d.keep(a, ep, live[a]) }))
	// A pin none of whose flows is open any more keeps nothing: the
	// address's next expiry pins the flows open then.
	for k, pin := range d.pins {
		if !slices.ContainsFunc(live[k.addr], func(f datapath.Flow) bool { return pin[f] }) {
			delete(d.pins, k)
		}
	}
}

// pinKey is an expired address kept for one endpoint.
type pinKey struct {
	addr netip.Addr
	ep   uint16
}

// keep tells whether the expired address a stays for endpoint ep: while
// one of ep's flows to it that were open when it first expired for ep is
// (pinned then; another endpoint's flows, or another name's expiry of the
// same address, pin nothing for ep). The caller holds applyMu.
func (d *dnsNames) keep(a netip.Addr, ep uint16, open []datapath.Flow) bool {
	k := pinKey{a, ep}
	pin, ok := d.pins[k]
	if !ok {
		for _, f := range open {
			if f.Endpoint == ep {
				if pin == nil {
					pin = map[datapath.Flow]bool{}
				}
				pin[f] = true
			}
		}
		if pin == nil {
			return false
		}
		d.pins[k] = pin
		return true
	}
	for _, f := range open {
		if f.Endpoint == ep && pin[f] {
			return true
		}
	}
	return false
}

func (d *dnsNames) save() {
	// Not again while unchanged: listing and writing a cache of tens of
	// thousands of names every 10 s was most of an idle agent's CPU.
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	w := d.cache.Writes() // before the listing: a write during it is saved next time
	if d.saved && w == d.savedWrites {
		return
	}
	if err := d.cache.Save(d.path); err != nil {
		slog.Warn("DNS name cache not saved", "path", d.path, "err", err)
	} else {
		d.saved, d.savedWrites = true, w
	}
	d.prunePins()
}

// prunePins forgets the pins of addresses the cache no longer has for
// their endpoint (evicted while pinned).
func (d *dnsNames) prunePins() {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	if len(d.pins) == 0 {
		return
	}
	in := map[pinKey]bool{}
	for _, e := range d.cache.List() {
		for _, ep := range e.Endpoints {
			in[pinKey{e.Addr, ep}] = true
		}
	}
	for k := range d.pins {
		if !in[k] {
			delete(d.pins, k)
		}
	}
}

// list is the cache for the API.
func (d *dnsNames) list() []types.FQDNEntry {
	now := time.Now()
	out := []types.FQDNEntry{}
	for _, e := range d.cache.List() {
		left := int(e.Expires.Sub(now).Round(time.Second) / time.Second)
		out = append(out, types.FQDNEntry{Name: e.Name, Addr: e.Addr, Expires: e.Expires, TTLLeft: left, Endpoints: e.Endpoints})
	}
	return out
}
