package policy

// The resolver turns policy into the desired contents of the datapath's
// policy map.
//
// Its inputs are the current policies (SetPolicies, the repository's whole
// set), the identities the node knows (the reserved ones, cluster identities
// given with UpsertIdentity, and node-local CIDR identities it allocates
// itself for every prefix the rules name) and the local endpoints with their
// labels. Its output, per local endpoint, is whether ingress and egress are
// enforced and a set of entries
//
//	(endpoint, direction, peer identity or 0 for any, L4 prefix) -> allow or deny, rule
//
// that the datapath stores in an LPM trie. The datapath looks a new
// connection up twice, with the peer's identity and with identity 0, each
// time taking the longest L4 match; a deny from either lookup wins, then an
// allow from either, then the default (drop when the direction is
// enforced). Because a longest-prefix lookup cannot see a deny behind a
// longer allow, the resolver turns every allow that lies inside a deny of
// the same endpoint, direction and identity into a deny.
//
// Every change is incremental and returns the map writes it causes (Change):
// a new identity is evaluated against the rules only by itself, a new
// endpoint recomputes only that endpoint, a new policy set only the
// endpoints selected by a policy that changed (and the entries of CIDR
// identities that appeared or went away). Per endpoint the resolver keeps
// the desired entries grouped by (direction, identity) and diffs what it
// recomputes against them; per rule section it caches the set of selected
// peer identities.
//
// An allow whose port carries HTTP rules (toPorts[].rules.http) becomes an
// entry marked L7: the datapath sends its flows through the node's proxy,
// which applies the rules (L7Policies lists them). For one endpoint,
// direction, peer and port, an allow without L7 rules lets every request
// through (no proxy); allows that all carry L7 rules are OR'd. DNS rules
// (toPorts[].rules.dns) do the same on UDP and TCP: the proxy answers the
// queries they do not allow. Kafka rules (toPorts[].rules.kafka) make
// their TCP port L7 like HTTP rules. toFQDNs select the addresses the
// agent learned from allowed DNS answers (set with SetGroup, by FQDNKey).
// serverNames are not enforced yet: their ports are allowed at L4. Named ports, services and the kube-apiserver entity select nothing
// yet; each use is reported by Warnings.

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/filament-net/filament/agent/policy/api"

	"github.com/filament-net/filament/agent/fqdn"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/labels"
)

// Direction is the direction of traffic relative to a local endpoint.
type Direction uint8

// Directions, as the datapath encodes them.
const (
	Egress  Direction = 0 // traffic leaving the endpoint
	Ingress Direction = 1 // traffic entering the endpoint
)

func (d Direction) String() string {
	switch d {
	case Egress:
		return "egress"
	case Ingress:
		return "ingress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// IP protocol numbers.
const (
	protoICMP uint8 = 1
	protoTCP  uint8 = 6
	protoUDP  uint8 = 17
	protoSCTP uint8 = 132
)

// L4 is a protocol and a destination port prefix. PrefixLen counts bits over
// the 24-bit string proto(8 bits) then port(16 bits, most significant first):
// 0 = any protocol and port; 8 = this protocol, any port; 24 = exact port;
// 9..23 = a block of ports (port ranges are split into such aligned blocks).
// For ICMP the port is the ICMP type. The resolver only emits L4s whose bits
// beyond PrefixLen are zero.
type L4 struct {
	Proto     uint8
	Port      uint16
	PrefixLen uint8
}

// bits is the 24-bit string proto|port.
func (l L4) bits() uint32 { return uint32(l.Proto)<<16 | uint32(l.Port) }

// l4Prefix returns the L4 of the first plen bits of the 24-bit string b.
func l4Prefix(b uint32, plen uint8) L4 {
	if plen == 0 {
		return L4{}
	}
	b &= (0xffffff << (24 - uint32(plen))) & 0xffffff
	return L4{Proto: uint8(b >> 16), Port: uint16(b), PrefixLen: plen}
}

// Contains reports whether every protocol and port of o is one of l.
func (l L4) Contains(o L4) bool {
	return l.PrefixLen <= o.PrefixLen && l4Prefix(o.bits(), l.PrefixLen) == l4Prefix(l.bits(), l.PrefixLen)
}

// Matches reports whether l covers protocol proto and port (ICMP type) port.
func (l L4) Matches(proto uint8, port uint16) bool {
	return l.Contains(L4{Proto: proto, Port: port, PrefixLen: 24})
}

func (l L4) String() string {
	switch {
	case l.PrefixLen == 0:
		return "any"
	case l.PrefixLen <= 8:
		return fmt.Sprintf("%d/any", l.Proto)
	case l.PrefixLen == 24:
		return fmt.Sprintf("%d/%d", l.Proto, l.Port)
	}
	last := uint32(l.Port) | (1<<(24-uint32(l.PrefixLen)) - 1)
	return fmt.Sprintf("%d/%d-%d", l.Proto, l.Port, last)
}

// MapKey is the key of one policy map entry.
type MapKey struct {
	Endpoint uint16
	Dir      Direction
	Identity identity.NumericIdentity // 0 = any identity
	L4       L4
}

func (k MapKey) String() string {
	return fmt.Sprintf("ep %d %s id %d %s", k.Endpoint, k.Dir, uint32(k.Identity), k.L4)
}

// MapValue is the verdict of one policy map entry and the rule it comes
// from.
type MapValue struct {
	Deny bool
	Rule RuleRef
	// L7 names the HTTP rule lists that apply (L7Ref keys, sorted, joined
	// by "\n"); empty when the allow needs no proxy.
	L7 string
	// Wide marks an allow of a peer that no rule names: an any-peer allow
	// (ports without peers, or the entity all) written per identity
	// because requirements narrow it; or of a port no rule names exactly
	// (a range's edge port alone in its block: 9962 of 8000-9962). It
	// does not open the nodes' control ports to the peer, as the any
	// entry it stands for never did, nor a range ever did (until
	// 2026-12-07 a range ending on a control port opened it,
	// TestRangeDoesNotNameControlPort).
	Wide bool
}

// RuleRef names one section of one rule of a policy.
type RuleRef struct {
	Policy  string `json:"policy"`  // Policy.Key()
	Rule    int    `json:"rule"`    // index in Policy.Rules
	Section string `json:"section"` // e.g. "ingress[0]" or "egressDeny[1]"
}

// String is `policy section` for the first rule of a policy and
// `policy rules[i].section` for the others.
func (r RuleRef) String() string {
	if r.Rule == 0 {
		return r.Policy + " " + r.Section
	}
	return fmt.Sprintf("%s rules[%d].%s", r.Policy, r.Rule, r.Section)
}

// EndpointPolicy is the desired policy of one endpoint.
type EndpointPolicy struct {
	IngressEnforced, EgressEnforced bool
	Entries                         map[MapKey]MapValue
}

// Change is what one resolver call changed: policy map entries to write and
// to delete, endpoints whose enforcement changed (an unknown endpoint counts
// as enforcing nothing; Entries is nil), and CIDR identities allocated and
// released. Deletes and CIDRDeletes are sorted; empty parts may be nil.
type Change struct {
	Upserts     map[MapKey]MapValue
	Deletes     []MapKey
	Enforcement map[uint16]EndpointPolicy
	CIDRUpserts map[netip.Prefix]identity.NumericIdentity
	CIDRDeletes []netip.Prefix
}

// Empty reports whether the change changes nothing.
func (c Change) Empty() bool {
	return len(c.Upserts) == 0 && len(c.Deletes) == 0 && len(c.Enforcement) == 0 &&
		len(c.CIDRUpserts) == 0 && len(c.CIDRDeletes) == 0
}

func (c *Change) upsert(k MapKey, v MapValue) {
	if c.Upserts == nil {
		c.Upserts = map[MapKey]MapValue{}
	}
	c.Upserts[k] = v
}

func (c *Change) enforcement(id uint16, in, eg bool) {
	if c.Enforcement == nil {
		c.Enforcement = map[uint16]EndpointPolicy{}
	}
	c.Enforcement[id] = EndpointPolicy{IngressEnforced: in, EgressEnforced: eg}
}

func (c *Change) finish() {
	slices.SortFunc(c.Deletes, compareKeys)
	slices.SortFunc(c.CIDRDeletes, comparePrefixes)
}

func compareKeys(a, b MapKey) int {
	return cmp.Or(cmp.Compare(a.Endpoint, b.Endpoint), cmp.Compare(a.Dir, b.Dir),
		cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.L4.Proto, b.L4.Proto),
		cmp.Compare(a.L4.Port, b.L4.Port), cmp.Compare(a.L4.PrefixLen, b.L4.PrefixLen))
}

func comparePrefixes(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// Mode is the policy enforcement mode of the node.
type Mode string

// Enforcement modes.
const (
	// ModeDefault enforces a direction of an endpoint when a rule selecting
	// the endpoint puts it into default deny for that direction.
	ModeDefault Mode = "default"
	// ModeAlways enforces both directions of every endpoint.
	ModeAlways Mode = "always"
	// ModeNever enforces nothing and produces no entries.
	ModeNever Mode = "never"
)

// EndpointInfo is a local endpoint as the resolver needs it.
type EndpointInfo struct {
	ID       uint16
	Identity identity.NumericIdentity
	Labels   labels.Labels // the identity's labels
}

// Resolver computes the desired policy map contents from policies,
// identities and local endpoints, and the changes to them. It is safe for
// concurrent use.
type Resolver struct {
	mu          sync.Mutex
	mode        Mode
	modeWarning string

	localCluster string // peer selectors without a cluster select this one
	allClusters  bool   // ... unless this is set

	policies map[string]api.Policy // by key, copies of the current policies
	compiled map[string]*compiledPolicy
	rules    []*compiledRule // every rule, by policy key then index
	warnings []string

	identities map[identity.NumericIdentity]*knownIdentity
	byLabel    map[string]map[identity.NumericIdentity]struct{} // "key\x00value" -> identities

	cidrs    map[netip.Prefix]identity.NumericIdentity
	cidrFree []uint32 // released CIDR identity numbers, ascending
	cidrNext uint32   // the lowest number never allocated
	// nodeIDs are the CIDR identities of node selectors' addresses
	// (knownIdentity.node).
	nodeIDs map[identity.NumericIdentity]struct{}

	endpoints map[uint16]*endpointState

	// awsGroups are the resolved addresses of toGroups/fromGroups
	// selectors, by GroupKey; a selector without an entry (never resolved)
	// selects nothing.
	awsGroups map[string][]netip.Prefix
	// groupsLoaded: the groups layer loaded the stored results
	// (SetGroupsLoaded); until then a deny naming a group not resolved
	// yet denies nothing rather than world, as an agent's restart would
	// otherwise deny world until its groups' stored sets come.
	groupsLoaded bool
	// groupRefused: the cloud groups the groups layer refused with no
	// good set (past groups.MaxGroupAddrs), and why: admission refuses
	// them in every namespace naming them (SetGroupRefused).
	groupRefused map[string]string
	// uses are what each policy (by key) names that admission counts,
	// and adm what it refused (admission.go).
	uses map[string]*policyUse
	adm  admission
	// fqdnHeld: the CIDR identities of toFQDNs' learned addresses no
	// admitted unit names (MaxFQDNCIDRs at most); fqdnFull: one left
	// out was logged.
	fqdnHeld int
	fqdnFull bool
	// fqdnLearned are the learned addresses of the toFQDNs selectors (by
	// FQDNKey; awsGroups has their union), each with the endpoints whose
	// lookups gave it (sorted): a section's toFQDNs allow an address only
	// to those endpoints, so one pod's DNS answers (from a server it
	// chose) never widen another pod's egress.
	fqdnLearned map[string]map[netip.Prefix][]uint16
	fqdnSource  FQDNSource // toFQDNs addresses for selectors first named
	// fqdnForgotten has, per endpoint ID whose lookups the name cache
	// forgot (a deleted endpoint), the cache's generation then: addresses
	// read from the cache before it are not given to that ID (a new
	// endpoint may have it now).
	fqdnForgotten map[uint16]uint64
	// fqdnGone counts, per selector, the learned addresses gone since its
	// policies were last compiled (UpdateFQDN).
	fqdnGone map[string]int

	// gen counts the changes to the endpoints' entries and the compiled
	// policies (finish); l7 is L7Policies' answer at generation l7Gen, so
	// the L7 supervisor's once-a-second ask walks every group (one per
	// learned toFQDNs address) only after a change.
	gen, l7Gen uint64
	l7         []L7Policy

	// Work counters, for tests: endpoints recomputed in full, (endpoint,
	// direction, identity) groups recomputed, and L7Policies' walks.
	endpointRecomputes, groupRecomputes, l7Walks int
}

// finish completes ch and counts the change: every mutation that can
// touch an endpoint's entries or the compiled policies ends here.
func (r *Resolver) finish(ch *Change) {
	ch.finish()
	r.gen++
}

// knownIdentity is an identity the resolver can select as a peer.
type knownIdentity struct {
	id     identity.NumericIdentity
	labels labels.Labels
	prefix netip.Prefix // of a CIDR identity
	// node: a CIDR identity a node selector in use gives a node's address
	// (nodeSelectedLocked): for every other rule it is the remote node it
	// was (peerSpec.matches).
	node bool
}

// groupKey groups an endpoint's entries: the deny precedence of the
// datapath is resolved within one group.
type groupKey struct {
	dir Direction
	id  identity.NumericIdentity
}

type endpointState struct {
	info                            EndpointInfo
	rules                           []*compiledRule            // selecting rules, in order
	requires                        [2][]*api.EndpointSelector // requiresOf(rules): what every allowed peer must match, by direction
	ingressEnforced, egressEnforced bool
	groups                          map[groupKey]map[L4]MapValue
	// entries is about the entries of groups (exact after a full
	// recompute, followed through identity changes); over: the build
	// stopped past MaxEndpointEntries (groups is partial, the engine
	// denies the endpoint everything), and identities added since are
	// not followed until a full recompute.
	entries int
	over    bool
}

// MaxEndpointEntries bounds the policy map entries of one endpoint: the
// engine denies an endpoint past it everything (enforcement.capShare),
// and the resolver stops building its entries there, so what a policy
// makes (selectors and entities times ports, beyond the namespace
// budgets) is never held whole. Until 2026-12-07 it was built whole
// first: a tenant's policy within every budget made millions of entries
// an endpoint, and the agent ran out of memory at every start
// (TestEndpointBuildBounded).
const MaxEndpointEntries = 65536

// NewResolver returns a resolver knowing only the reserved identities. An
// empty mode is ModeDefault; an unknown one is ModeDefault with a warning.
func NewResolver(mode Mode) *Resolver {
	r := &Resolver{
		mode:       mode,
		policies:   map[string]api.Policy{},
		compiled:   map[string]*compiledPolicy{},
		identities: map[identity.NumericIdentity]*knownIdentity{},
		byLabel:    map[string]map[identity.NumericIdentity]struct{}{},
		cidrs:      map[netip.Prefix]identity.NumericIdentity{},
		nodeIDs:    map[identity.NumericIdentity]struct{}{},
		cidrNext:   1,
		endpoints:  map[uint16]*endpointState{},
		awsGroups:  map[string][]netip.Prefix{},
		uses:       map[string]*policyUse{},

		groupRefused: map[string]string{},

		fqdnLearned:   map[string]map[netip.Prefix][]uint16{},
		fqdnForgotten: map[uint16]uint64{},
		fqdnGone:      map[string]int{},
	}
	switch mode {
	case ModeDefault, ModeAlways, ModeNever:
	case "":
		r.mode = ModeDefault
	default:
		r.mode = ModeDefault
		r.modeWarning = fmt.Sprintf("unknown enforcement mode %q: using %q", mode, ModeDefault)
	}
	for _, id := range identity.Reserved() {
		r.addIdentity(&knownIdentity{id: id.ID, labels: id.Labels})
	}
	return r
}

// SetPolicies replaces the policy set with ps (the repository's policies;
// of two with the same key the last counts). Only endpoints selected by a
// policy that was added, removed or whose rules changed are recomputed;
// CIDR identities are allocated for prefixes that newly appear in rules and
// released for those that no longer do.
func (r *Resolver) SetPolicies(ps []api.Policy) Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change

	next := make(map[string]api.Policy, len(ps))
	for _, p := range ps {
		local := r.localCluster
		if r.allClusters {
			local = ""
		}
		p = api.ScopeToCluster(p, local)
		next[p.Key()] = p
	}
	changed := map[string]bool{}
	for k, p := range next {
		if old, ok := r.policies[k]; !ok || !reflect.DeepEqual(old.Rules, p.Rules) {
			changed[k] = true
		}
	}
	for k := range r.policies {
		if _, ok := next[k]; !ok {
			changed[k] = true
		}
	}
	if len(changed) == 0 {
		return ch
	}

	for k := range changed {
		if p, ok := next[k]; ok {
			r.policies[k] = p.DeepCopy()
		} else {
			delete(r.policies, k)
		}
	}
	r.applyChanged(&ch, changed)
	r.finish(&ch)
	return ch
}

// applyChanged recompiles the policies in changed (from r.policies; a key
// no longer there is dropped) and recomputes only the endpoints the old or
// new versions select, plus the groups of CIDR identities that came or went.
func (r *Resolver) applyChanged(ch *Change, changed map[string]bool) {
	// The policies whose groups or toCIDR prefixes are admitted, or
	// refused, now compile again too.
	r.readmit(changed)
	// Endpoints selected by the old versions of changed policies.
	affected := map[uint16]bool{}
	for id, ep := range r.endpoints {
		if slices.ContainsFunc(ep.rules, func(cr *compiledRule) bool { return changed[cr.policy] }) {
			affected[id] = true
		}
	}
	for k := range changed {
		p, ok := r.policies[k]
		if !ok {
			delete(r.compiled, k)
			continue
		}
		r.compiled[k] = compilePolicy(&p, r.awsGroups, r.adm.refused[p.Namespace], r.fqdnLearned, r.fqdnSource, r.fqdnStale, r.groupsLoaded)
	}
	r.rules = r.rules[:0]
	r.warnings = r.warnings[:0]
	for _, k := range slices.Sorted(maps.Keys(r.compiled)) {
		r.rules = append(r.rules, r.compiled[k].rules...)
		r.warnings = append(r.warnings, r.compiled[k].warnings...)
	}
	// ... and by the new versions.
	for id, ep := range r.endpoints {
		if affected[id] {
			continue
		}
		for k := range changed {
			if cp := r.compiled[k]; cp != nil && slices.ContainsFunc(cp.rules, func(cr *compiledRule) bool {
				return cr.selects(ep.info.Labels)
			}) {
				affected[id] = true
				break
			}
		}
	}

	added, removed := r.syncCIDRs(ch)
	for _, id := range slices.Sorted(maps.Keys(r.endpoints)) {
		ep := r.endpoints[id]
		if affected[id] {
			r.recomputeEndpoint(ch, ep)
			continue
		}
		for _, cid := range removed {
			r.dropIdentityGroups(ch, ep, cid)
		}
		for _, cid := range added {
			r.recomputeIdentityGroups(ch, ep, cid)
		}
	}
}

// SetGroupRefused records that the groups layer refused the cloud group
// of key (api.GroupKey) with no good set to keep (past
// groups.MaxGroupAddrs at its first resolution), and why; why "" ends
// it. A refused group is a refused unit of admission in every namespace
// naming it: an allow selects nothing of it, a deny denies world on its
// ports (fail closed), as for a group not resolved yet. SetGroup ends it
// too.
func (r *Resolver) SetGroupRefused(key, why string) Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change
	if old, ok := r.groupRefused[key]; ok == (why != "") && old == why {
		return ch
	}
	if why == "" {
		delete(r.groupRefused, key)
	} else {
		r.groupRefused[key] = why
	}
	r.recompileNaming(&ch, key)
	r.finish(&ch)
	return ch
}

// SetGroupsLoaded records that the groups layer loaded the stored
// results (every group resolved before has its set by now): from then on
// a deny naming a group not resolved yet denies world on its ports.
func (r *Resolver) SetGroupsLoaded() Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change
	if r.groupsLoaded {
		return ch
	}
	r.groupsLoaded = true
	r.recompileWhere(&ch, func(cp *compiledPolicy) bool { return len(cp.groupSels) > 0 })
	r.finish(&ch)
	return ch
}

// GroupsLoaded tells whether SetGroupsLoaded was called: until then a
// deny naming a group not resolved yet denies nothing.
func (r *Resolver) GroupsLoaded() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.groupsLoaded
}

// DropGroup forgets the addresses of a cloud group the groups layer
// dropped (its result deleted and none come since): it is not resolved
// any more, so a deny naming it denies world on its ports, where an empty
// set would have it deny nothing (until 2026-12-07,
// TestDroppedGroupDenyFailsClosed).
func (r *Resolver) DropGroup(key string) Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change
	if _, ok := r.awsGroups[key]; !ok {
		return ch
	}
	delete(r.awsGroups, key)
	r.recompileNaming(&ch, key)
	r.finish(&ch)
	return ch
}

// SetGroup sets the resolved addresses of a toGroups/fromGroups selector
// (by GroupKey) and recomputes only what the policies naming it select.
func (r *Resolver) SetGroup(key string, addrs []netip.Addr) Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change
	if !api.IsNodeSelectorKey(key) {
		// A cloud group's special-purpose addresses (those toFQDNs
		// refuses from DNS answers) are never peers: until 2026-12-07
		// an EC2 answer holding 169.254.169.254 let a toGroups rule
		// allow the metadata service (TestGroupSpecialAddressesDropped;
		// cloud/aws and agent/groups drop them too, and log them).
		addrs = slices.DeleteFunc(slices.Clone(addrs), func(a netip.Addr) bool { return !fqdn.Learnable(a) })
	}
	prefixes := hostPrefixes(addrs)
	old, ok := r.awsGroups[key]
	if ok && slices.Equal(old, prefixes) {
		return ch
	}
	if len(prefixes) > 0 {
		// Applied: a set supersedes a refusal. Not an empty one: a groups
		// layer without Config.Drop drops a group it forgets with one,
		// which may come after its refusal, and it ends a refusal itself
		// (SetGroupRefused with no reason) once a set is applied
		// (TestDroppedGroupRefusedLaterStillDenies).
		delete(r.groupRefused, key)
	}
	if api.IsNodeSelectorKey(key) {
		// Every policy is recompiled only when which addresses are
		// nodes' changes (renode); otherwise those naming the key are
		// (until 2026-12-07 every one was, for any selector's change,
		// TestNodeSelectorRecompilesOnlyItsPolicies).
		diff := symmetricDiffFunc(old, prefixes, comparePrefixes)
		was := make([]bool, len(diff))
		for i, p := range diff {
			was[i] = r.nodeSelectedLocked(p)
		}
		r.awsGroups[key] = prefixes
		renode := false
		for i, p := range diff {
			renode = renode || r.nodeSelectedLocked(p) != was[i]
		}
		if renode {
			r.renode(&ch)
		} else {
			r.recompileNaming(&ch, key)
		}
	} else {
		r.awsGroups[key] = prefixes
		r.recompileNaming(&ch, key)
	}
	r.finish(&ch)
	return ch
}

// renode follows a node selector's new addresses: the CIDR identities
// they are (and were) change how every policy selects them
// (matchesNode), so every policy is recompiled (a new address's identity
// is allocated with its flag, allocCIDR).
func (r *Resolver) renode(ch *Change) {
	clear(r.nodeIDs)
	for p, id := range r.cidrs {
		if k := r.identities[id]; k != nil {
			if k.node = r.nodeSelectedLocked(p); k.node {
				r.nodeIDs[id] = struct{}{}
			}
		}
	}
	changed := map[string]bool{}
	for k := range r.compiled {
		changed[k] = true
	}
	if len(changed) > 0 {
		r.applyChanged(ch, changed)
	}
}

// recompileNaming recompiles the policies naming the selector key.
func (r *Resolver) recompileNaming(ch *Change, key string) {
	delete(r.fqdnGone, key)
	r.recompileWhere(ch, func(cp *compiledPolicy) bool { return cp.groups[key] })
}

// recompileWhere recompiles the policies for which match holds.
func (r *Resolver) recompileWhere(ch *Change, match func(*compiledPolicy) bool) {
	changed := map[string]bool{}
	for k, cp := range r.compiled {
		if match(cp) {
			changed[k] = true
		}
	}
	if len(changed) > 0 {
		r.applyChanged(ch, changed)
	}
}

// SetFQDN sets the learned addresses of a toFQDNs selector (by FQDNKey),
// each with the endpoints whose lookups gave it, and recomputes only what
// changed: when the addresses only grew (or only their endpoints
// changed), the entries of the endpoints that gained or lost an address;
// otherwise the policies naming the selector are recompiled.
//
// gen is the name cache's generation the addresses were read at: an
// endpoint forgotten since (ForgetFQDNEndpoint) gets none of them.
func (r *Resolver) SetFQDN(key string, learned map[netip.Addr][]uint16, gen uint64) Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change
	next, union := fqdnPrefixes(learned, r.fqdnStale(gen))
	old, had := r.fqdnLearned[key]
	if had && maps.EqualFunc(old, next, slices.Equal) {
		return ch
	}
	oldUnion := slices.SortedFunc(maps.Keys(old), comparePrefixes)
	r.fqdnLearned[key] = next
	added, only := additions(oldUnion, union)
	if !had || !only {
		r.recompileNaming(&ch, key)
		r.finish(&ch)
		return ch
	}
	// The endpoints whose allowed addresses changed, and which.
	touched := map[uint16][]netip.Prefix{}
	for p, eps := range next {
		for _, ep := range symmetricDiff(old[p], eps) {
			touched[ep] = append(touched[ep], p)
		}
	}
	r.growFQDN(&ch, key, added, touched)
	r.finish(&ch)
	return ch
}

// UpdateFQDN updates the learned addresses of a toFQDNs selector (by
// FQDNKey) a policy names: only those given, each with its endpoints now
// (none: gone), read at the name cache's generation gen (the cache's
// TakeDirty). The work is that of the change, not of the selector's whole
// set: new addresses and endpoints recompute only the endpoints that
// gained them (every endpoint for a new CIDR identity); an address gone
// recompiles the policies naming the selector. A selector no policy
// names is ignored (a policy that names it reads the whole set).
func (r *Resolver) UpdateFQDN(key string, addrs map[netip.Addr][]uint16, gen uint64) Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change
	cur, had := r.fqdnLearned[key]
	if !had {
		return ch
	}
	stale := r.fqdnStale(gen)
	var added []netip.Prefix
	touched := map[uint16][]netip.Prefix{}
	for a, eps := range addrs {
		if !a.Is4() {
			continue
		}
		p := netip.PrefixFrom(a, 32)
		var next []uint16
		for _, ep := range eps {
			if !stale(ep) {
				next = append(next, ep)
			}
		}
		slices.Sort(next)
		next = slices.Compact(next)
		old, present := cur[p]
		if present == (len(next) > 0) && slices.Equal(old, next) {
			continue
		}
		for _, ep := range symmetricDiff(old, next) {
			touched[ep] = append(touched[ep], p)
		}
		switch {
		case len(next) == 0:
			if present {
				delete(cur, p)
				r.fqdnGone[key]++
			}
		case !present:
			cur[p] = next
			added = append(added, p)
		default:
			cur[p] = next
		}
	}
	if len(touched) == 0 && len(added) == 0 {
		return ch
	}
	if r.fqdnGone[key] > maxFQDNGone && r.fqdnGone[key] > len(cur)/4 {
		// Enough addresses gone whose CIDR identities only a recompile
		// releases: recompile the policies naming the selector (a cost
		// paid once per that many removals).
		r.fqdnGone[key] = 0
		r.recompileNaming(&ch, key)
		r.finish(&ch)
		return ch
	}
	slices.SortFunc(added, comparePrefixes)
	r.growFQDN(&ch, key, added, touched)
	r.finish(&ch)
	return ch
}

// maxFQDNGone is how many learned addresses of a selector may be gone
// (their endpoints' entries removed, their CIDR identities kept, allowed
// to nobody by toFQDNs) before the policies naming it are recompiled to
// release them (and a quarter of the selector's addresses at least).
const maxFQDNGone = 1024

// growFQDN applies, without recompiling, the prefixes newly learned for
// the toFQDNs selector key (added, sorted) and the endpoints whose allowed
// prefixes changed, gained or lost (touched): CIDR identities for the new
// prefixes, the new identities' entries for every endpoint (a toCIDR
// around one may select it) and the touched endpoints' entries of their
// changed prefixes.
func (r *Resolver) growFQDN(ch *Change, key string, added []netip.Prefix, touched map[uint16][]netip.Prefix) {
	for _, cp := range r.compiled {
		if _, ok := cp.fqdnSels[key]; ok {
			cp.prefixes = append(cp.prefixes, added...) // syncCIDRs wants every prefix a policy names
		}
	}
	var newIDs []identity.NumericIdentity
	for _, p := range added {
		if _, ok := r.cidrs[p]; !ok && r.fqdnRoom(p) {
			newIDs = append(newIDs, r.allocCIDR(ch, p))
		}
	}
	eps := slices.Sorted(maps.Keys(touched))
	if len(newIDs) > 0 {
		eps = slices.Sorted(maps.Keys(r.endpoints))
	}
	for _, epID := range eps {
		ep, ok := r.endpoints[epID]
		if !ok {
			continue
		}
		ids := slices.Clone(newIDs)
		for _, p := range touched[epID] {
			if id, ok := r.cidrs[p]; ok && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		for _, id := range ids {
			r.recomputeIdentityGroups(ch, ep, id)
		}
	}
}

// fqdnPrefixes turns learned addresses into /32 prefixes with their
// endpoints (sorted, deduplicated, without those stale says; IPv4 only),
// and their union (sorted).
func fqdnPrefixes(learned map[netip.Addr][]uint16, stale func(uint16) bool) (map[netip.Prefix][]uint16, []netip.Prefix) {
	out := make(map[netip.Prefix][]uint16, len(learned))
	for a, eps := range learned {
		if !a.Is4() {
			continue
		}
		p := netip.PrefixFrom(a, 32)
		e := slices.Clone(out[p])
		for _, ep := range eps {
			if !stale(ep) {
				e = append(e, ep)
			}
		}
		if len(e) == 0 {
			continue
		}
		slices.Sort(e)
		out[p] = slices.Compact(e)
	}
	return out, slices.SortedFunc(maps.Keys(out), comparePrefixes)
}

// fqdnStale tells which endpoint IDs the name cache forgot after
// generation gen.
func (r *Resolver) fqdnStale(gen uint64) func(uint16) bool {
	return func(ep uint16) bool { return r.fqdnForgotten[ep] > gen }
}

// ForgetFQDNEndpoint records that the name cache forgot endpoint id's
// lookups at generation gen (the endpoint was deleted) and drops the ID
// from every toFQDNs selector's addresses now, so that a new endpoint
// given the ID inherits none, even from addresses read before (SetFQDN).
func (r *Resolver) ForgetFQDNEndpoint(id uint16, gen uint64) Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change
	if gen > r.fqdnForgotten[id] {
		r.fqdnForgotten[id] = gen
	}
	for key, learned := range r.fqdnLearned {
		for p, eps := range learned {
			if i, ok := slices.BinarySearch(eps, id); ok {
				if len(eps) == 1 {
					delete(learned, p) // its CIDR identity goes at a recompile (UpdateFQDN)
					r.fqdnGone[key]++
				} else {
					learned[p] = slices.Delete(slices.Clone(eps), i, i+1)
				}
			}
		}
	}
	if ep, ok := r.endpoints[id]; ok {
		r.recomputeEndpoint(&ch, ep)
	}
	r.finish(&ch)
	return ch
}

// symmetricDiff returns the values in exactly one of two sorted slices.
func symmetricDiff(a, b []uint16) []uint16 { return symmetricDiffFunc(a, b, cmp.Compare[uint16]) }

// symmetricDiffFunc returns the values in exactly one of two slices
// sorted by compare.
func symmetricDiffFunc[E any](a, b []E, compare func(E, E) int) []E {
	var out []E
	for _, x := range a {
		if _, ok := slices.BinarySearchFunc(b, x, compare); !ok {
			out = append(out, x)
		}
	}
	for _, x := range b {
		if _, ok := slices.BinarySearchFunc(a, x, compare); !ok {
			out = append(out, x)
		}
	}
	return out
}

// fqdnAllows reports whether section s's toFQDNs select identity id for
// endpoint ep: a CIDR identity of an address that ep's own lookups gave
// for a name one of them matches.
func (r *Resolver) fqdnAllows(s *section, ep uint16, id identity.NumericIdentity) bool {
	if len(s.fqdnKeys) == 0 || s.peers.any || s.peers.every || !id.IsLocal() {
		return false
	}
	k := r.identities[id]
	// Never a node's address, though a node selector gave it a CIDR
	// identity (TestFQDNNeverAllowsANode).
	if k == nil || k.node || !s.peers.satisfiesRequires(k) {
		return false
	}
	for _, key := range s.fqdnKeys {
		if _, ok := slices.BinarySearch(r.fqdnLearned[key][k.prefix], ep); ok {
			return true
		}
	}
	return false
}

// addFQDNSection adds section s to the groups of the CIDR identities its
// toFQDNs select for endpoint ep (fqdnAllows).
func (r *Resolver) addFQDNSection(add func(groupKey, *section, bool) bool, s *section, ep *endpointState) bool {
	if s.peers.any || s.peers.every {
		return true
	}
	for _, key := range s.fqdnKeys {
		for p, eps := range r.fqdnLearned[key] {
			if _, ok := slices.BinarySearch(eps, ep.info.ID); !ok {
				continue
			}
			if id, ok := r.cidrs[p]; ok && s.peers.satisfiesRequires(r.identities[id]) && !r.identities[id].node {
				if !add(groupKey{s.dir, id}, s, false) {
					return false
				}
			}
		}
	}
	return true
}

// additions returns the prefixes of new that old lacks, and whether new
// has every prefix of old (both sorted).
func additions(old, new []netip.Prefix) (added []netip.Prefix, only bool) {
	i := 0
	for _, p := range new {
		for i < len(old) && comparePrefixes(old[i], p) < 0 {
			return nil, false // old[i] is gone
		}
		if i < len(old) && old[i] == p {
			i++
			continue
		}
		added = append(added, p)
	}
	return added, i == len(old)
}

// hostPrefixes are the /32s of the IPv4 addresses, sorted, without
// duplicates.
func hostPrefixes(addrs []netip.Addr) []netip.Prefix {
	prefixes := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		if a.Is4() {
			prefixes = append(prefixes, netip.PrefixFrom(a, 32))
		}
	}
	slices.SortFunc(prefixes, comparePrefixes)
	return slices.Compact(prefixes)
}

// SetFQDNSource sets where toFQDNs selectors' addresses come from when a
// policy first names them (afterwards SetGroup updates them).
func (r *Resolver) SetFQDNSource(f FQDNSource) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fqdnSource = f
}

// ForgetGroup drops the addresses of a selector no policy names any more
// (a policy that names it again takes them from the FQDN source).
func (r *Resolver) ForgetGroup(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, cp := range r.compiled {
		if cp.groups[key] {
			return
		}
	}
	delete(r.awsGroups, key)
	delete(r.fqdnLearned, key)
}

// GroupsInUse lists the toGroups/fromGroups selectors of the current
// policies, by GroupKey.
func (r *Resolver) GroupsInUse() map[string]api.AWSGroup {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]api.AWSGroup{}
	for _, cp := range r.compiled {
		for k, g := range cp.groupSels {
			out[k] = g
		}
	}
	return out
}

// FQDNSelectorsInUse lists the toFQDNs selectors of the current policies,
// by FQDNKey; the agent sets each one's learned addresses with SetGroup.
func (r *Resolver) FQDNSelectorsInUse() map[string]api.FQDNSelector {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]api.FQDNSelector{}
	for _, cp := range r.compiled {
		maps.Copy(out, cp.fqdnSels)
	}
	return out
}

// NodeSelectorsInUse lists the toNodes/fromNodes selectors of the current
// policies, by NodeSelectorKey; the agent sets each one's node addresses
// with SetGroup.
func (r *Resolver) NodeSelectorsInUse() map[string]api.EndpointSelector {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]api.EndpointSelector{}
	for _, cp := range r.compiled {
		for k, s := range cp.nodeSels {
			out[k] = s
		}
	}
	return out
}

// NodeSelected says whether p is one of the addresses a toNodes/fromNodes
// selector in use resolved to: a node's address that such a selector
// gives a CIDR identity in the ipcache, as it must to select it.
func (r *Resolver) NodeSelected(p netip.Prefix) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nodeSelectedLocked(p)
}

// nodeSelectedLocked is NodeSelected with r.mu held.
func (r *Resolver) nodeSelectedLocked(p netip.Prefix) bool {
	for key, addrs := range r.awsGroups {
		if api.IsNodeSelectorKey(key) && slices.Contains(addrs, p) {
			return true
		}
	}
	return false
}

// GroupAddrs returns the resolved addresses of a selector (nil, false:
// never resolved); a toFQDNs selector's are its learned addresses.
func (r *Resolver) GroupAddrs(key string) ([]netip.Prefix, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if learned, ok := r.fqdnLearned[key]; ok {
		return slices.SortedFunc(maps.Keys(learned), comparePrefixes), true
	}
	p, ok := r.awsGroups[key]
	return p, ok
}

// syncCIDRs allocates an identity for every prefix the rules name that has
// none and releases those of prefixes no rule names any more. Numbers are
// released after allocating, so that no number changes its prefix within
// one Change.
func (r *Resolver) syncCIDRs(ch *Change) (added, removed []identity.NumericIdentity) {
	want := map[netip.Prefix]bool{}
	for _, cp := range r.compiled {
		for _, p := range cp.prefixes {
			want[p] = true
		}
	}
	var newPrefixes, gone []netip.Prefix
	for p := range want {
		if _, ok := r.cidrs[p]; !ok {
			newPrefixes = append(newPrefixes, p)
		}
	}
	for p := range r.cidrs {
		if !want[p] {
			gone = append(gone, p)
		}
	}
	slices.SortFunc(newPrefixes, comparePrefixes)
	slices.SortFunc(gone, comparePrefixes)
	// toFQDNs' learned addresses get what is left of their share.
	r.fqdnHeld = 0
	for p := range r.cidrs {
		if !r.adm.admitted.has(p) && want[p] {
			r.fqdnHeld++
		}
	}
	left := 0
	for _, p := range newPrefixes {
		if r.fqdnRoom(p) {
			added = append(added, r.allocCIDR(ch, p))
		} else {
			left++
		}
	}
	if left == 0 && r.fqdnFull {
		r.fqdnFull = false
		slog.Info("policy: toFQDNs' learned addresses fit their share of the ipcache again")
	}
	for _, p := range gone {
		id := r.cidrs[p]
		delete(r.cidrs, p)
		r.removeIdentity(r.identities[id])
		removed = append(removed, id)
		ch.CIDRDeletes = append(ch.CIDRDeletes, p)
		n := uint32(id &^ identity.LocalScopeFlag)
		i, _ := slices.BinarySearch(r.cidrFree, n)
		r.cidrFree = slices.Insert(r.cidrFree, i, n)
	}
	return added, removed
}

// allocCIDR allocates the CIDR identity of prefix p (the lowest number
// released, else a new one) and records it in ch.
func (r *Resolver) allocCIDR(ch *Change, p netip.Prefix) identity.NumericIdentity {
	var n uint32
	if len(r.cidrFree) > 0 {
		n, r.cidrFree = r.cidrFree[0], r.cidrFree[1:]
	} else {
		n = r.cidrNext
		r.cidrNext++
	}
	id := identity.LocalScopeFlag | identity.NumericIdentity(n)
	r.cidrs[p] = id
	r.addIdentity(&knownIdentity{id: id, labels: cidrLabels(p), prefix: p, node: r.nodeSelectedLocked(p)})
	if ch.CIDRUpserts == nil {
		ch.CIDRUpserts = map[netip.Prefix]identity.NumericIdentity{}
	}
	ch.CIDRUpserts[p] = id
	return id
}

// cidrLabels labels the CIDR identity of p.
func cidrLabels(p netip.Prefix) labels.Labels {
	return labels.Labels{
		{Source: labels.SourceCIDR, Key: p.String()},
		{Source: labels.SourceReserved, Key: string(api.EntityWorld)},
	}
}

// UpsertIdentity adds or relabels a cluster identity and updates only the
// entries of that identity. Reserved and node-local identities are the
// resolver's own: upserting one (or 0) changes nothing.
func (r *Resolver) UpsertIdentity(id identity.Identity) Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change
	if id.ID == identity.Unknown || id.ID.IsReserved() || id.ID.IsLocal() {
		return ch
	}
	old := r.identities[id.ID]
	if old != nil {
		if old.labels.Equal(id.Labels) {
			return ch
		}
		r.removeIdentity(old)
	}
	r.addIdentity(&knownIdentity{id: id.ID, labels: slices.Clone(id.Labels)})
	for _, epID := range slices.Sorted(maps.Keys(r.endpoints)) {
		r.recomputeIdentityGroups(&ch, r.endpoints[epID], id.ID)
	}
	r.finish(&ch)
	return ch
}

// DeleteIdentity removes a cluster identity and deletes its entries.
func (r *Resolver) DeleteIdentity(id identity.NumericIdentity) Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change
	k := r.identities[id]
	if k == nil || id.IsReserved() || id.IsLocal() {
		return ch
	}
	r.removeIdentity(k)
	for _, ep := range r.endpoints {
		r.dropIdentityGroups(&ch, ep, id)
	}
	r.finish(&ch)
	return ch
}

// UpsertEndpoint adds a local endpoint, or updates one, and computes only
// its entries. An update that keeps the labels changes nothing.
func (r *Resolver) UpsertEndpoint(info EndpointInfo) Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change
	info.Labels = slices.Clone(info.Labels)
	ep := r.endpoints[info.ID]
	if ep != nil && ep.info.Labels.Equal(info.Labels) {
		ep.info = info
		return ch
	}
	if ep == nil {
		ep = &endpointState{groups: map[groupKey]map[L4]MapValue{}}
		r.endpoints[info.ID] = ep
	}
	ep.info = info
	r.recomputeEndpoint(&ch, ep)
	r.finish(&ch)
	return ch
}

// DeleteEndpoint forgets a local endpoint and deletes its entries.
func (r *Resolver) DeleteEndpoint(id uint16) Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ch Change
	ep := r.endpoints[id]
	if ep == nil {
		return ch
	}
	delete(r.endpoints, id)
	for gk, g := range ep.groups {
		for l4 := range g {
			ch.Deletes = append(ch.Deletes, MapKey{id, gk.dir, gk.id, l4})
		}
	}
	if ep.ingressEnforced || ep.egressEnforced {
		ch.enforcement(id, false, false)
	}
	r.finish(&ch)
	return ch
}

// EndpointIDs lists the endpoints the resolver has, in no order.
func (r *Resolver) EndpointIDs() []uint16 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Collect(maps.Keys(r.endpoints))
}

// EntryCount is how many policy map entries endpoint id's policy has
// (0: unknown endpoint), without copying them.
func (r *Resolver) EntryCount(id uint16) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	if ep := r.endpoints[id]; ep != nil {
		for _, g := range ep.groups {
			n += len(g)
		}
	}
	return n
}

// Endpoint returns a copy of the desired policy of a local endpoint.
func (r *Resolver) Endpoint(id uint16) (EndpointPolicy, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ep := r.endpoints[id]
	if ep == nil {
		return EndpointPolicy{}, false
	}
	out := EndpointPolicy{
		IngressEnforced: ep.ingressEnforced,
		EgressEnforced:  ep.egressEnforced,
		Entries:         map[MapKey]MapValue{},
	}
	for gk, g := range ep.groups {
		for l4, v := range g {
			out.Entries[MapKey{id, gk.dir, gk.id, l4}] = v
		}
	}
	return out, true
}

// CIDRIdentities returns the node-local identity of every prefix the rules
// name.
func (r *Resolver) CIDRIdentities() map[netip.Prefix]identity.NumericIdentity {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.cidrs)
}

// Identities lists every identity the resolver knows, by number: the
// reserved ones, the cluster identities and the CIDR identities (labelled
// `cidr:<prefix>` and `reserved:world`).
func (r *Resolver) Identities() []identity.Identity {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]identity.Identity, 0, len(r.identities))
	for _, k := range r.identities {
		out = append(out, identity.Identity{ID: k.id, Labels: slices.Clone(k.labels)})
	}
	slices.SortFunc(out, func(a, b identity.Identity) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Identity returns the labels of an identity the resolver knows (cluster,
// reserved and its own CIDR identities).
func (r *Resolver) Identity(id identity.NumericIdentity) (identity.Identity, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, ok := r.identities[id]
	if !ok {
		return identity.Identity{}, false
	}
	return identity.Identity{ID: k.id, Labels: slices.Clone(k.labels)}, true
}

// Warnings lists what the current policies use that the resolver does not
// enforce (named ports, IPv6 prefixes, groups, services, DNS names,
// kube-apiserver), sorted.
func (r *Resolver) Warnings() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.warnings)
	if r.modeWarning != "" {
		out = append(out, r.modeWarning)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// addIdentity makes k known and adds it to the computed peer sets that
// select it.
func (r *Resolver) addIdentity(k *knownIdentity) {
	r.identities[k.id] = k
	if k.node {
		r.nodeIDs[k.id] = struct{}{}
	}
	for _, l := range k.labels {
		lk := l.Key + "\x00" + l.Value
		if r.byLabel[lk] == nil {
			r.byLabel[lk] = map[identity.NumericIdentity]struct{}{}
		}
		r.byLabel[lk][k.id] = struct{}{}
	}
	for _, cr := range r.rules {
		for _, s := range cr.sections {
			if s.computed && s.peers.matches(k) {
				s.cache[k.id] = struct{}{}
			}
		}
	}
}

// removeIdentity forgets k and removes it from every computed peer set.
func (r *Resolver) removeIdentity(k *knownIdentity) {
	delete(r.identities, k.id)
	delete(r.nodeIDs, k.id)
	for _, l := range k.labels {
		lk := l.Key + "\x00" + l.Value
		delete(r.byLabel[lk], k.id)
		if len(r.byLabel[lk]) == 0 {
			delete(r.byLabel, lk)
		}
	}
	for _, cr := range r.rules {
		for _, s := range cr.sections {
			if s.computed {
				delete(s.cache, k.id)
			}
		}
	}
}

// peersOf returns the concrete peer identities a section selects, computing
// them on first use.
func (r *Resolver) peersOf(s *section) map[identity.NumericIdentity]struct{} {
	if !s.computed {
		s.cache = r.computePeers(&s.peers)
		s.computed = true
	}
	return s.cache
}

// computePeers evaluates a peer specification against the known
// identities, looking only at candidates that can match.
func (r *Resolver) computePeers(ps *peerSpec) map[identity.NumericIdentity]struct{} {
	out := map[identity.NumericIdentity]struct{}{}
	try := func(k *knownIdentity) {
		if k != nil && ps.matches(k) {
			out[k.id] = struct{}{}
		}
	}
	if ps.scan {
		for _, k := range r.identities {
			try(k)
		}
		return out
	}
	for _, sel := range ps.selectors {
		for id := range r.candidates(sel.sel) {
			try(r.identities[id])
		}
	}
	for _, id := range ps.reserved {
		try(r.identities[id])
	}
	if ps.world || len(ps.cidrs) > 0 {
		try(r.identities[identity.World])
		for _, id := range r.cidrs {
			try(r.identities[id])
		}
	} else if len(ps.selectors) > 0 || slices.Contains(ps.reserved, identity.RemoteNode) {
		// The node selectors' CIDR identities, which they select as the
		// remote node (matchesNode).
		for id := range r.nodeIDs {
			try(r.identities[id])
		}
	}
	return out
}

// candidates returns a superset of the identities sel matches: those with
// the label of its rarest matchLabels entry. sel has matchLabels.
func (r *Resolver) candidates(sel *api.EndpointSelector) map[identity.NumericIdentity]struct{} {
	var best map[identity.NumericIdentity]struct{}
	first := true
	for k, v := range sel.MatchLabels {
		_, key := api.SplitKey(k)
		ids := r.byLabel[key+"\x00"+v]
		if first || len(ids) < len(best) {
			best, first = ids, false
		}
	}
	return best
}

// selectingRules returns the rules that select an endpoint with labels ls.
func (r *Resolver) selectingRules(ls labels.Labels) []*compiledRule {
	var out []*compiledRule
	for _, cr := range r.rules {
		if cr.selects(ls) {
			out = append(out, cr)
		}
	}
	return out
}

// enforcement returns whether ingress and egress are enforced for an
// endpoint selected by rules.
func (r *Resolver) enforcement(rules []*compiledRule) (in, eg bool) {
	switch r.mode {
	case ModeAlways:
		return true, true
	case ModeNever:
		return false, false
	}
	for _, cr := range rules {
		in = in || cr.ingressDefaultDeny
		eg = eg || cr.egressDefaultDeny
	}
	return in, eg
}

// allowRequires are the requirements every peer of section s must match
// for ep: its direction's, for an allow; none for a deny (a requirement
// narrows what is allowed, never what is denied).
func (ep *endpointState) allowRequires(s *section) []*api.EndpointSelector {
	if s.deny {
		return nil
	}
	return ep.requires[s.dir]
}

// recomputeEndpoint recomputes everything of ep and records the difference.
func (r *Resolver) recomputeEndpoint(ch *Change, ep *endpointState) {
	r.endpointRecomputes++
	ep.rules = r.selectingRules(ep.info.Labels)
	ep.requires = requiresOf(ep.rules)
	in, eg := r.enforcement(ep.rules)
	if in != ep.ingressEnforced || eg != ep.egressEnforced {
		ch.enforcement(ep.info.ID, in, eg)
	}
	ep.ingressEnforced, ep.egressEnforced = in, eg

	groups := map[groupKey]map[L4]MapValue{}
	n := 0 // entries in groups
	// add adds a section to a group and says whether the build goes on:
	// it stops just past MaxEndpointEntries.
	add := func(gk groupKey, s *section, wide bool) bool {
		before := len(groups[gk])
		addSection(groups, gk, s, wide)
		n += len(groups[gk]) - before
		return n <= MaxEndpointEntries
	}
	if r.mode != ModeNever {
	build:
		for _, cr := range ep.rules {
			for _, s := range cr.sections {
				reqs := ep.allowRequires(s)
				if s.peers.any && len(reqs) == 0 {
					if !add(groupKey{s.dir, 0}, s, false) {
						break build
					}
				} else if s.peers.any {
					// Every peer the requirements let through, one by one.
					for id, k := range r.identities {
						if satisfies(reqs, k) && !add(groupKey{s.dir, id}, s, true) {
							break build
						}
					}
				}
				for id := range r.peersOf(s) {
					if k := r.identities[id]; (satisfies(reqs, k) || s.unconstrained(k)) && !add(groupKey{s.dir, id}, s, s.peers.every) {
						break build
					}
				}
				if !r.addFQDNSection(add, s, ep) {
					break build
				}
			}
		}
		for _, g := range groups {
			applyDenyPrecedence(g)
		}
		for gk, g := range groups {
			if gk.id != 0 {
				plainAnyWins(g, groups[groupKey{gk.dir, 0}])
			}
		}
	}
	for gk, g := range groups {
		diffGroup(ch, ep.info.ID, gk, ep.groups[gk], g)
	}
	for gk, g := range ep.groups {
		if _, ok := groups[gk]; !ok {
			diffGroup(ch, ep.info.ID, gk, g, nil)
		}
	}
	ep.groups = groups
	ep.entries, ep.over = 0, n > MaxEndpointEntries
	for _, g := range groups {
		ep.entries += len(g)
	}
}

// recomputeIdentityGroups recomputes the entries of identity id for ep, in
// both directions, and records the difference.
func (r *Resolver) recomputeIdentityGroups(ch *Change, ep *endpointState, id identity.NumericIdentity) {
	if ep.over {
		return // partial, denied everything: rebuilt whole once it fits (dropIdentityGroups) or by a full recompute
	}
	for _, dir := range []Direction{Egress, Ingress} {
		gk := groupKey{dir, id}
		var g map[L4]MapValue
		if r.mode != ModeNever {
			for _, cr := range ep.rules {
				for _, s := range cr.sections {
					if s.dir != dir {
						continue
					}
					reqs := ep.allowRequires(s)
					_, ok := r.peersOf(s)[id]
					if k := r.identities[id]; ok && !satisfies(reqs, k) && !s.unconstrained(k) {
						ok = false
					}
					wide := ok && s.peers.every
					if !ok && s.peers.any && len(reqs) > 0 {
						ok = satisfies(reqs, r.identities[id])
						wide = true
					}
					if ok || r.fqdnAllows(s, ep.info.ID, id) {
						if g == nil {
							g = map[L4]MapValue{}
						}
						addSection1(g, s, wide)
					}
				}
			}
		}
		old := ep.groups[gk]
		if g == nil && old == nil {
			continue
		}
		r.groupRecomputes++
		applyDenyPrecedence(g)
		plainAnyWins(g, ep.groups[groupKey{dir, 0}])
		diffGroup(ch, ep.info.ID, gk, old, g)
		ep.entries += len(g) - len(old)
		if len(g) == 0 {
			delete(ep.groups, gk)
		} else {
			ep.groups[gk] = g
		}
	}
	// Past the bound, it stops following identities (over) until a full
	// recompute finds it fits.
	ep.over = ep.entries > MaxEndpointEntries
}

// dropIdentityGroups deletes the entries of identity id for ep.
func (r *Resolver) dropIdentityGroups(ch *Change, ep *endpointState, id identity.NumericIdentity) {
	for _, dir := range []Direction{Egress, Ingress} {
		gk := groupKey{dir, id}
		if g, ok := ep.groups[gk]; ok {
			diffGroup(ch, ep.info.ID, gk, g, nil)
			delete(ep.groups, gk)
			ep.entries -= len(g)
		}
	}
	// An endpoint that was over and may fit again is built whole (what
	// it skipped while over included).
	if ep.over && ep.entries <= MaxEndpointEntries {
		r.recomputeEndpoint(ch, ep)
	}
}

// diffGroup records the writes that turn group old into group new.
func diffGroup(ch *Change, ep uint16, gk groupKey, old, new map[L4]MapValue) {
	for l4, v := range new {
		if ov, ok := old[l4]; !ok || ov != v {
			ch.upsert(MapKey{ep, gk.dir, gk.id, l4}, v)
		}
	}
	for l4 := range old {
		if _, ok := new[l4]; !ok {
			ch.Deletes = append(ch.Deletes, MapKey{ep, gk.dir, gk.id, l4})
		}
	}
}

func addSection(groups map[groupKey]map[L4]MapValue, gk groupKey, s *section, wide bool) {
	g := groups[gk]
	if g == nil {
		g = make(map[L4]MapValue, len(s.l4s))
		groups[gk] = g
	}
	addSection1(g, s, wide)
}

// addSection1 merges the entries of section s into a group; wide says the
// section is an any-peer allow written for this peer (MapValue.Wide).
// Sections are added in rule order; a deny replaces an allow, otherwise
// the first entry stays, with the L7 rules of both allows OR'd (an allow
// without L7 rules lets every request through), wide only if both are.
func addSection1(g map[L4]MapValue, s *section, wide bool) {
	for _, l4 := range s.l4s {
		v := MapValue{Deny: s.deny, Rule: s.ref, L7: s.l7[l4], Wide: (wide || s.ranged[l4]) && !s.deny}
		old, ok := g[l4]
		switch {
		case !ok || (v.Deny && !old.Deny):
			g[l4] = v
		case !v.Deny && !old.Deny:
			if old.L7 != v.L7 {
				old.L7 = mergeL7(old.L7, v.L7)
			}
			old.Wide = old.Wide && v.Wide
			g[l4] = old
		}
	}
}

// mergeL7 ORs two L7 values: none if either is none, else the union.
func mergeL7(a, b string) string {
	if a == "" || b == "" {
		return ""
	}
	refs := append(strings.Split(a, "\n"), strings.Split(b, "\n")...)
	slices.Sort(refs)
	return strings.Join(slices.Compact(refs), "\n")
}

// plainAnyWins clears the L7 mark of a peer's entries whose port an allow
// for any peer without HTTP rules covers: that allow already lets every
// request of the peer through, though the datapath finds the peer's own
// entry first.
func plainAnyWins(g, any map[L4]MapValue) {
	if len(any) == 0 {
		return
	}
	for l4, v := range g {
		if v.L7 == "" || v.Deny {
			continue
		}
		if a, ok := lookupL4(any, l4.Proto, l4.Port); ok && !a.Deny && a.L7 == "" {
			v.L7 = ""
			g[l4] = v
		}
	}
}

// applyDenyPrecedence turns every allow of a group that lies inside a deny
// of the group into a deny with the rule of the longest such deny, so that
// the datapath's longest-prefix lookup cannot find the allow instead.
func applyDenyPrecedence(g map[L4]MapValue) {
	var denies map[L4]MapValue
	for l4, v := range g {
		if v.Deny {
			if denies == nil {
				denies = map[L4]MapValue{}
			}
			denies[l4] = v
		}
	}
	if denies == nil {
		return
	}
	for l4, v := range g {
		if v.Deny {
			continue
		}
		for plen := int(l4.PrefixLen) - 1; plen >= 0; plen-- {
			if d, ok := denies[l4Prefix(l4.bits(), uint8(plen))]; ok {
				g[l4] = d
				break
			}
		}
	}
}

// lookupL4 is the datapath's longest-prefix lookup in one group.
func lookupL4(g map[L4]MapValue, proto uint8, port uint16) (MapValue, bool) {
	b := L4{Proto: proto, Port: port}.bits()
	for plen := 24; plen >= 0; plen-- {
		if v, ok := g[l4Prefix(b, uint8(plen))]; ok {
			return v, true
		}
	}
	return MapValue{}, false
}

// compiledPolicy is a policy prepared for resolution.
type compiledPolicy struct {
	rules     []*compiledRule
	prefixes  []netip.Prefix // every IPv4 prefix its rules name
	warnings  []string
	groups    map[string]bool                 // GroupKeys and NodeSelectorKeys of the selectors it names
	groupSels map[string]api.AWSGroup         // ... the AWS group selectors
	nodeSels  map[string]api.EndpointSelector // ... the node selectors
	fqdnSels  map[string]api.FQDNSelector     // ... and the toFQDNs selectors (FQDNKeys)
	l7        map[string]*api.L7Rules         // HTTP or DNS rules by L7Ref key
}

// compiledRule is one rule: the endpoints it selects, its default deny and
// its sections in the order ingress, ingressDeny, egress, egressDeny.
type compiledRule struct {
	policy                                string
	index                                 int
	selector                              *api.EndpointSelector // nil: selects no endpoint
	ingressDefaultDeny, egressDefaultDeny bool
	sections                              []*section
	// requires are the rule's fromRequires (Ingress) and toRequires
	// (Egress), of its allow and deny sections: they constrain every
	// allow by endpoint selector or wildcard of the endpoints the rule
	// selects, in that direction, whatever rule the allow is in
	// (requiresOf; not entities, CIDRs or toFQDNs: section.unconstrained).
	requires [2][]*api.EndpointSelector
}

// requiresOf gathers the requirements of rules (an endpoint's selecting
// rules), by direction. Until 2026-12-05 a requirement constrained only
// the peers of its own section, so a policy requiring env=prod of every
// peer did not narrow another policy's allow (TestRequiresApplyAcrossRules).
func requiresOf(rules []*compiledRule) (out [2][]*api.EndpointSelector) {
	for _, cr := range rules {
		for d := range out {
			out[d] = append(out[d], cr.requires[d]...)
		}
	}
	return out
}

// satisfies reports whether identity k (nil: none) matches every
// requirement of reqs (none: any k).
func satisfies(reqs []*api.EndpointSelector, k *knownIdentity) bool {
	if len(reqs) == 0 {
		return true
	}
	if k == nil {
		return false
	}
	for _, req := range reqs {
		if !req.Matches(k.labels) {
			return false
		}
	}
	return true
}

func (cr *compiledRule) selects(ls labels.Labels) bool {
	return cr.selector != nil && cr.selector.Matches(ls)
}

// section is one ingress, ingressDeny, egress or egressDeny entry of a rule.
type section struct {
	dir  Direction
	deny bool
	ref  RuleRef
	l4s  []L4
	l7   map[L4]string // L7Ref key of the HTTP rules on an exact TCP port
	// ranged are its single-port entries that only a port range gives
	// (its edge ports): they name no port exactly, so they do not open
	// the nodes' control ports (MapValue.Wide).
	ranged map[L4]bool
	peers  peerSpec
	// plain are its peers named by entity, CIDR or node selector (nil:
	// none): the other rules' requirements do not narrow those, as in
	// Cilium, where requirements join the endpoint selectors and the
	// wildcard only (unconstrained).
	plain *peerSpec
	// fqdnKeys are the toFQDNs selectors (FQDNKeys) among its peers.
	fqdnKeys []string

	computed bool
	cache    map[identity.NumericIdentity]struct{} // the concrete peers, once computed
}

// peerSpec is the set of peers of a section.
type peerSpec struct {
	// any selects identity 0: every peer, through one wildcard entry.
	any bool
	// every selects every known identity that satisfies requires (every
	// peer, constrained by fromRequires/toRequires).
	every     bool
	selectors []peerSelector
	reserved  []identity.NumericIdentity // entities host, remote-node, ...
	world     bool                       // identity world and every CIDR identity
	cluster   bool                       // every identity but world and the CIDR ones
	cidrs     []cidrPeer
	requires  []*api.EndpointSelector
	// scan is set when candidates cannot be found through the label index.
	scan bool
}

type peerSelector struct {
	sel *api.EndpointSelector
	// reserved is set when the selector names a reserved label, and so may
	// match reserved identities.
	reserved bool
}

// cidrPeer selects the CIDR identities inside prefix and outside except.
type cidrPeer struct {
	prefix netip.Prefix
	except []netip.Prefix
	node   bool // a node selector's address (toNodes/fromNodes)
}

func (c cidrPeer) selects(p netip.Prefix) bool {
	if !api.ContainsPrefix(c.prefix, p) {
		return false
	}
	for _, e := range c.except {
		if api.ContainsPrefix(e, p) {
			return false
		}
	}
	return true
}

// satisfiesRequires reports whether identity k (nil: none) has what
// toRequires/fromRequires ask of every peer of the section, its toFQDNs
// addresses included.
func (ps *peerSpec) satisfiesRequires(k *knownIdentity) bool {
	if k == nil {
		return false
	}
	for _, req := range ps.requires {
		if !req.Matches(k.labels) {
			return false
		}
	}
	return true
}

// matches reports whether the spec selects identity k as a concrete peer
// (identity 0 is the any flag's business).
func (ps *peerSpec) matches(k *knownIdentity) bool {
	if !ps.satisfiesRequires(k) {
		return false
	}
	if ps.every {
		return true
	}
	switch {
	case k.id.IsLocal() && k.node:
		return ps.matchesNode(k)
	case k.id.IsLocal():
		if ps.world {
			return true
		}
		for _, c := range ps.cidrs {
			if c.selects(k.prefix) {
				return true
			}
		}
		// A CIDR identity carries reserved:world: a selector naming it
		// selects the prefix as world (until 2026-12-07 one namespace's
		// toCIDR took its prefix out of another's reserved:world
		// selectors, TestWorldSelectorSelectsCIDRIdentities).
		for _, s := range ps.selectors {
			if s.reserved && s.sel.Matches(k.labels) {
				return true
			}
		}
		return false
	case k.id == identity.World:
		if ps.world {
			return true
		}
		for _, c := range ps.cidrs {
			if c.prefix.Bits() == 0 {
				return true
			}
		}
	case k.id.IsReserved():
		if ps.cluster || slices.Contains(ps.reserved, k.id) {
			return true
		}
	default:
		if ps.cluster {
			return true
		}
	}
	for _, s := range ps.selectors {
		if (s.reserved || !k.id.IsReserved()) && s.sel.Matches(k.labels) {
			return true
		}
	}
	return false
}

// remoteNodeLabels are the labels of the remote-node identity.
var remoteNodeLabels = labels.Labels{{Source: labels.SourceReserved, Key: string(api.EntityRemoteNode)}}

// matchesNode reports whether the spec selects k, the CIDR identity a
// node selector gives a node's address: node selectors select it by its
// prefix, every other rule as the remote node it would be without them
// (remote-node, cluster, a selector of its reserved label; not world nor
// a CIDR), so that one namespace's node selector changes no other
// policy's verdicts.
func (ps *peerSpec) matchesNode(k *knownIdentity) bool {
	if ps.cluster || slices.Contains(ps.reserved, identity.RemoteNode) {
		return true
	}
	for _, c := range ps.cidrs {
		if c.node && c.selects(k.prefix) {
			return true
		}
	}
	for _, s := range ps.selectors {
		if s.reserved && s.sel.Matches(remoteNodeLabels) {
			return true
		}
	}
	return false
}

// compiler compiles one policy.
type compiler struct {
	cp           *compiledPolicy
	key          string
	rule         int
	prefixes     map[netip.Prefix]bool
	awsGroups    map[string][]netip.Prefix
	groupsLoaded bool              // Resolver.groupsLoaded
	refused      map[string]string // the policy's namespace's units admission refused, and why
	fqdnLearned  map[string]map[netip.Prefix][]uint16
	fqdnStale    func(gen uint64) func(uint16) bool
	fqdnRef      RuleRef // the first section with toFQDNs
	// fqdnSource gives a toFQDNs selector's addresses the first time a
	// policy names it (they go into fqdnLearned, their union into
	// awsGroups).
	fqdnSource FQDNSource
}

// FQDNSource returns the addresses learned for a toFQDNs selector (by
// FQDNKey), each with the endpoints whose lookups gave it, and the name
// cache's generation they were read at (SetFQDN). The resolver calls it
// under its lock, when a policy names a selector it has no addresses for
// yet.
type FQDNSource func(key string, sel api.FQDNSelector) (map[netip.Addr][]uint16, uint64)

// compilePolicy compiles p; toGroups/fromGroups become the resolved
// addresses in awsGroups (by GroupKey), but those of the units admission
// refused in p's namespace (refused: unit → why).
func compilePolicy(p *api.Policy, awsGroups map[string][]netip.Prefix, refused map[string]string, fqdnLearned map[string]map[netip.Prefix][]uint16,
	fqdnSource FQDNSource, fqdnStale func(uint64) func(uint16) bool, groupsLoaded bool) *compiledPolicy {
	c := &compiler{cp: &compiledPolicy{groups: map[string]bool{}, groupSels: map[string]api.AWSGroup{}, nodeSels: map[string]api.EndpointSelector{},
		fqdnSels: map[string]api.FQDNSelector{}, l7: map[string]*api.L7Rules{}}, key: p.Key(),
		prefixes: map[netip.Prefix]bool{}, awsGroups: awsGroups, refused: refused, fqdnLearned: fqdnLearned, fqdnSource: fqdnSource,
		fqdnStale: fqdnStale, groupsLoaded: groupsLoaded}
	for i := range p.Rules {
		rule := &p.Rules[i]
		c.rule = i
		cr := &compiledRule{
			policy:             c.key,
			index:              i,
			ingressDefaultDeny: rule.IngressDefaultDeny(),
			egressDefaultDeny:  rule.EgressDefaultDeny(),
		}
		if rule.NodeSelector == nil {
			cr.selector = rule.EndpointSelector
		}
		for _, sec := range []struct {
			name string
			deny bool
			rs   []api.IngressRule
		}{{"ingress", false, rule.Ingress}, {"ingressDeny", true, rule.IngressDeny}} {
			for j := range sec.rs {
				in := &sec.rs[j]
				for k := range in.FromRequires {
					cr.requires[Ingress] = append(cr.requires[Ingress], &in.FromRequires[k])
				}
				s := c.section(Ingress, sec.name, j, sec.deny, peerFields{
					endpoints: in.FromEndpoints, requires: in.FromRequires, cidr: in.FromCIDR,
					cidrSet: in.FromCIDRSet, entities: in.FromEntities, groups: in.FromGroups, nodes: in.FromNodes,
				}, in.ToPorts, in.ICMPs)
				if s != nil {
					cr.sections = append(cr.sections, s)
				}
			}
		}
		for _, sec := range []struct {
			name string
			deny bool
			rs   []api.EgressRule
		}{{"egress", false, rule.Egress}, {"egressDeny", true, rule.EgressDeny}} {
			for j := range sec.rs {
				out := &sec.rs[j]
				for k := range out.ToRequires {
					cr.requires[Egress] = append(cr.requires[Egress], &out.ToRequires[k])
				}
				s := c.section(Egress, sec.name, j, sec.deny, peerFields{
					endpoints: out.ToEndpoints, requires: out.ToRequires, cidr: out.ToCIDR,
					cidrSet: out.ToCIDRSet, entities: out.ToEntities, groups: out.ToGroups, nodes: out.ToNodes,
					services: len(out.ToServices), servicesSet: out.ToServices != nil, fqdns: out.ToFQDNs,
				}, out.ToPorts, out.ICMPs)
				if s != nil {
					cr.sections = append(cr.sections, s)
				}
			}
		}
		c.cp.rules = append(c.cp.rules, cr)
	}
	if len(c.cp.fqdnSels) > 0 && !slices.ContainsFunc(slices.Collect(maps.Values(c.cp.l7)), func(r *api.L7Rules) bool { return len(r.DNS) > 0 }) {
		c.warnf(c.fqdnRef, "toFQDNs learn addresses only from DNS answers the proxy allowed, "+
			"and this policy has no rules.dns (unless another policy's cover the endpoints' lookups, its toFQDNs select nothing)")
	}
	c.cp.prefixes = slices.SortedFunc(maps.Keys(c.prefixes), comparePrefixes)
	slices.Sort(c.cp.warnings)
	return c.cp
}

// peerFields are the peer fields of an ingress or egress rule.
type peerFields struct {
	endpoints, requires []api.EndpointSelector
	cidr                []string
	cidrSet             []api.CIDRRule
	entities            []api.Entity
	groups              []api.Groups
	nodes               []api.EndpointSelector
	services            int
	servicesSet         bool // toServices present, empty or not
	fqdns               []api.FQDNSelector
}

func (c *compiler) warnf(ref RuleRef, format string, args ...any) {
	c.cp.warnings = append(c.cp.warnings,
		fmt.Sprintf("%s: rules[%d].%s: ", c.key, ref.Rule, ref.Section)+fmt.Sprintf(format, args...))
}

// section compiles one ingress or egress rule; nil when it can match
// nothing.
func (c *compiler) section(dir Direction, name string, j int, deny bool, pf peerFields, prs []api.PortRule, icmps []api.ICMPRule) *section {
	s := &section{dir: dir, deny: deny, ref: RuleRef{Policy: c.key, Rule: c.rule, Section: fmt.Sprintf("%s[%d]", name, j)}}
	ps := &s.peers
	// A peer field present but empty (non-nil) selects nothing and keeps
	// the section from meaning "every peer", as in Cilium: toGroups,
	// toServices and toFQDNs too (until 2026-12-07 an empty one, a
	// template's list that rendered empty, left a ports-only section that
	// allowed every peer on them, TestEmptyPeerFieldsSelectNothing).
	hasPeers := pf.endpoints != nil || pf.cidr != nil || pf.cidrSet != nil || pf.entities != nil || pf.nodes != nil ||
		pf.groups != nil || pf.servicesSet || pf.fqdns != nil
	hasPorts := len(prs)+len(icmps) > 0

	for i := range pf.endpoints {
		sel := &pf.endpoints[i]
		ps.selectors = append(ps.selectors, peerSelector{sel: sel, reserved: sel.NamesReserved()})
		if len(sel.MatchLabels) == 0 {
			ps.scan = true
		}
	}
	for i := range pf.requires {
		ps.requires = append(ps.requires, &pf.requires[i])
	}
	all := false
	for _, e := range pf.entities {
		switch e {
		case api.EntityWorld:
			ps.world = true
		case api.EntityCluster:
			ps.cluster = true
		case api.EntityHost:
			ps.reserved = append(ps.reserved, identity.Host)
		case api.EntityRemoteNode:
			ps.reserved = append(ps.reserved, identity.RemoteNode)
		case api.EntityHealth:
			ps.reserved = append(ps.reserved, identity.Health)
		case api.EntityInit:
			ps.reserved = append(ps.reserved, identity.Init)
		case api.EntityUnmanaged:
			ps.reserved = append(ps.reserved, identity.Unmanaged)
		case api.EntityAll:
			all = true
		case api.EntityKubeAPIServer:
			c.warnf(s.ref, "entity kube-apiserver selects nothing yet")
		default:
			c.warnf(s.ref, "unknown entity %q selects nothing", e)
		}
	}
	// widen: a deny naming a refused unit denies world on its ports
	// instead, identity world and every CIDR identity, as toEntities
	// world: all the unit's prefixes could have selected, and no cluster
	// peer (fail closed: a deny is never trimmed). Until 2026-12-07 it
	// denied every peer, identity 0: host, health, remote nodes and pods
	// too (TestNamespaceBudgetNeverTrimsADeny).
	widen := false
	refuse := func(what, why string) {
		if deny {
			widen = true
			c.warnf(s.ref, "%s refused: %s; this deny denies world (every address outside the cluster) on its ports until it fits", what, why)
		} else {
			c.warnf(s.ref, "%s refused: %s; selects nothing of it until it fits", what, why)
		}
	}
	if why, ok := c.refused[staticUnit]; ok && namesStatic(pf.cidr, pf.cidrSet) {
		refuse("the namespace's toCIDR prefixes", why)
		pf.cidr, pf.cidrSet = nil, nil
	}
	for _, cidr := range pf.cidr {
		if p, ok := c.prefix(s.ref, cidr); ok {
			ps.cidrs = append(ps.cidrs, cidrPeer{prefix: p})
		}
	}
	for _, cr := range pf.cidrSet {
		p, ok := c.prefix(s.ref, cr.CIDR)
		var except []netip.Prefix
		for _, e := range cr.Except {
			if ep, eok := c.prefix(s.ref, e); eok {
				except = append(except, ep)
			}
		}
		if ok {
			ps.cidrs = append(ps.cidrs, cidrPeer{prefix: p, except: except})
		}
	}
	for _, g := range pf.groups {
		if g.AWS == nil {
			c.warnf(s.ref, "a group without aws selects nothing")
			continue
		}
		key := api.GroupKey(*g.AWS)
		c.cp.groups[key] = true
		c.cp.groupSels[key] = *g.AWS
		if why, ok := c.refused[key]; ok {
			refuse("aws group "+key, why)
			continue
		}
		addrs, ok := c.awsGroups[key]
		if !ok {
			// Fail closed: a group never resolved allows nothing, and a
			// deny naming it denies world on its ports until it resolves
			// (until 2026-12-07 it denied nothing meanwhile, for as long
			// as the cloud API failed: TestDenyGroupNotResolvedYetDeniesWorld).
			if deny && c.groupsLoaded {
				widen = true
				c.warnf(s.ref, "aws group %s not resolved yet: this deny denies world (every address outside the cluster) on its ports until it resolves", key)
			} else if deny {
				c.warnf(s.ref, "aws group %s not loaded yet: this deny denies nothing until the stored groups are loaded", key)
			} else {
				c.warnf(s.ref, "aws group %s not resolved yet: selects nothing", key)
			}
			continue
		}
		for _, p := range addrs {
			c.prefixes[p] = true
			ps.cidrs = append(ps.cidrs, cidrPeer{prefix: p})
		}
	}
	for _, sel := range pf.nodes {
		key := api.NodeSelectorKey(sel)
		c.cp.groups[key] = true
		c.cp.nodeSels[key] = sel
		for _, p := range c.awsGroups[key] { // none until the agent has matched nodes
			c.prefixes[p] = true
			ps.cidrs = append(ps.cidrs, cidrPeer{prefix: p, node: true})
		}
	}
	if pf.services > 0 {
		c.warnf(s.ref, "toServices select nothing yet")
	}
	if len(pf.fqdns) > 0 && len(c.cp.fqdnSels) == 0 {
		c.fqdnRef = s.ref
	}
	for _, sel := range pf.fqdns {
		// The addresses of the names learned from DNS answers the proxy
		// allowed (none yet: selects nothing until then), each for the
		// endpoints that asked (fqdnAllows, not the section's peers).
		key := api.FQDNKey(sel)
		c.cp.groups[key] = true
		c.cp.fqdnSels[key] = sel
		s.fqdnKeys = append(s.fqdnKeys, key)
		if _, ok := c.fqdnLearned[key]; !ok {
			var learned map[netip.Addr][]uint16
			var gen uint64
			if c.fqdnSource != nil {
				learned, gen = c.fqdnSource(key, sel)
			}
			c.fqdnLearned[key], _ = fqdnPrefixes(learned, c.fqdnStale(gen))
		}
		for p := range c.fqdnLearned[key] {
			c.prefixes[p] = true // a CIDR identity for each
		}
	}
	// Ports are compiled after the peers, so that warnings come in field
	// order within a section.
	s.l4s, s.l7, s.ranged = c.ports(s.ref, prs, icmps)

	if all || (!hasPeers && hasPorts) {
		// Every peer: one wildcard entry, unless requires constrain it.
		*ps = peerSpec{requires: ps.requires}
		if len(ps.requires) > 0 {
			ps.every, ps.scan = true, true
		} else {
			ps.any = true
		}
	}
	if widen && !ps.any && !ps.every {
		ps.world = true
	}
	if ps.cluster {
		ps.scan = true
	}
	if !hasPeers && !hasPorts || len(s.l4s) == 0 || ps.empty() && len(s.fqdnKeys) == 0 {
		return nil
	}
	if !ps.any && !ps.every && (len(ps.reserved) > 0 || ps.world || ps.cluster || len(ps.cidrs) > 0) {
		s.plain = &peerSpec{reserved: ps.reserved, world: ps.world, cluster: ps.cluster, cidrs: ps.cidrs, requires: ps.requires, scan: true}
	}
	return s
}

// unconstrained reports whether s's entity, CIDR or node-selector peers
// (not its endpoint selectors) select identity k, which the other rules'
// requirements then leave alone.
func (s *section) unconstrained(k *knownIdentity) bool {
	return s.plain != nil && k != nil && s.plain.matches(k)
}

// empty reports whether the spec can select no peer at all.
func (ps *peerSpec) empty() bool {
	return !ps.any && !ps.every && !ps.world && !ps.cluster &&
		len(ps.selectors)+len(ps.reserved)+len(ps.cidrs) == 0
}

// prefix parses a CIDR of a rule and records it; IPv6 is not supported.
func (c *compiler) prefix(ref RuleRef, s string) (netip.Prefix, bool) {
	p, err := api.ParseCIDR(s)
	if err != nil {
		c.warnf(ref, "%q is not a CIDR: ignored", s)
		return netip.Prefix{}, false
	}
	if !p.Addr().Is4() {
		c.warnf(ref, "IPv6 prefix %q ignored (IPv4 only)", s)
		return netip.Prefix{}, false
	}
	p = p.Masked()
	c.prefixes[p] = true
	return p, true
}

// ports compiles toPorts and icmps into L4 prefixes: a rule with neither
// allows any L4; one whose ports were all skipped allows none. A port rule
// with HTTP rules gives exact TCP ports only, each marked with the L7Ref
// key of its rules (unless another port rule of the section allows the
// same port without L7 rules).
func (c *compiler) ports(ref RuleRef, prs []api.PortRule, icmps []api.ICMPRule) ([]L4, map[L4]string, map[L4]bool) {
	if len(prs) == 0 && len(icmps) == 0 {
		return []L4{{}}, nil, nil
	}
	var out []L4
	var l7 map[L4]string
	seen, plain := map[L4]bool{}, map[L4]bool{}
	// exact: single ports named as such; fromRange: single-port blocks of
	// a range (an edge of 8000-9962 is 9962 alone).
	exact, fromRange := map[L4]bool{}, map[L4]bool{}
	key := ""
	add := func(l4 L4) {
		if !seen[l4] {
			seen[l4] = true
			out = append(out, l4)
		}
		if key == "" {
			plain[l4] = true
			return
		}
		if l7 == nil {
			l7 = map[L4]string{}
		}
		l7[l4] = mergeL7(cmp.Or(l7[l4], key), key)
	}
	for pi, pr := range prs {
		// serverNames are not enforced yet: the ports are allowed at L4.
		key = ""
		dns := false
		if pr.Rules != nil && (len(pr.Rules.HTTP) > 0 || len(pr.Rules.DNS) > 0 || len(pr.Rules.Kafka) > 0) && !ref.deny() {
			key = L7Ref{Policy: ref.Policy, Rule: ref.Rule, Section: ref.Section, PortRule: pi}.String()
			c.cp.l7[key] = &api.L7Rules{HTTP: pr.Rules.HTTP, DNS: pr.Rules.DNS, Kafka: pr.Rules.Kafka}
			dns = len(pr.Rules.DNS) > 0
		}
		for _, pp := range pr.Ports {
			var protos []uint8
			switch pp.Protocol {
			case api.ProtoTCP:
				protos = []uint8{protoTCP}
			case api.ProtoUDP:
				protos = []uint8{protoUDP}
			case api.ProtoSCTP:
				protos = []uint8{protoSCTP}
			case api.ProtoAny, "":
				protos = []uint8{protoTCP, protoUDP, protoSCTP}
			case api.ProtoICMP:
				protos = []uint8{protoICMP}
			case api.ProtoICMPv6:
				continue // IPv4 only
			default:
				c.warnf(ref, "protocol %q ignored", pp.Protocol)
				continue
			}
			p := pp.Port
			if p == "" {
				p = "0"
			}
			n, numeric := api.PortNumber(p)
			if key != "" {
				if !numeric || n <= 0 || (pp.EndPort != 0 && int(pp.EndPort) != n) {
					c.warnf(ref, "port %q with L7 rules ignored (L7 rules need one numeric port)", p)
					continue
				}
				if !dns {
					l4 := L4{Proto: protoTCP, Port: uint16(n), PrefixLen: 24}
					add(l4)
					exact[l4] = true
					continue
				}
				// DNS: over UDP and TCP, as the port's protocol says.
				for _, proto := range protos {
					if proto == protoTCP || proto == protoUDP {
						l4 := L4{Proto: proto, Port: uint16(n), PrefixLen: 24}
						add(l4)
						exact[l4] = true
					}
				}
				continue
			}
			switch {
			case !numeric:
				c.warnf(ref, "named port %q skipped (named ports are not resolved yet)", p)
				continue
			case n < 0:
				c.warnf(ref, "port %q ignored", p)
				continue
			case n != 0 && protos[0] == protoICMP:
				c.warnf(ref, "port %q of ICMP ignored (ICMP has no ports; use icmps)", p)
				continue
			}
			for _, proto := range protos {
				if n == 0 {
					add(L4{Proto: proto, PrefixLen: 8})
					continue
				}
				end := n
				if int(pp.EndPort) > n && pp.EndPort <= 65535 {
					end = int(pp.EndPort)
				}
				for _, b := range portBlocks(proto, n, end) {
					add(b)
					if end > n {
						fromRange[b] = true
					} else {
						exact[b] = true
					}
				}
			}
		}
	}
	for _, r := range icmps {
		for _, f := range r.Fields {
			if f.Family == api.ICMPFamilyIPv6 {
				continue // IPv4 only
			}
			t, err := f.TypeNumber()
			if err != nil {
				c.warnf(ref, "ICMP type ignored: %v", err)
				continue
			}
			add(L4{Proto: protoICMP, Port: uint16(t), PrefixLen: 24})
		}
	}
	for l4 := range plain {
		delete(l7, l4)
	}
	var ranged map[L4]bool
	for l4 := range fromRange {
		if l4.PrefixLen == 24 && !exact[l4] {
			if ranged == nil {
				ranged = map[L4]bool{}
			}
			ranged[l4] = true
		}
	}
	return out, l7, ranged
}

// portBlocks splits ports lo..hi of proto into the fewest aligned
// power-of-two blocks.
func portBlocks(proto uint8, lo, hi int) []L4 {
	var out []L4
	for lo <= hi {
		bits := 0
		for bits < 16 {
			next := 1 << (bits + 1)
			if lo%next != 0 || lo+next-1 > hi {
				break
			}
			bits++
		}
		out = append(out, L4{Proto: proto, Port: uint16(lo), PrefixLen: uint8(24 - bits)})
		lo += 1 << bits
	}
	return out
}

// String lists the change one write per line, for debugging and test
// failures.
func (c Change) String() string {
	var b strings.Builder
	ups := slices.SortedFunc(maps.Keys(c.Upserts), compareKeys)
	for _, k := range ups {
		v := c.Upserts[k]
		verdict := "allow"
		if v.Deny {
			verdict = "deny"
		}
		fmt.Fprintf(&b, "+%s %s (%s)\n", k, verdict, v.Rule)
	}
	for _, k := range c.Deletes {
		fmt.Fprintf(&b, "-%s\n", k)
	}
	for _, id := range slices.Sorted(maps.Keys(c.Enforcement)) {
		e := c.Enforcement[id]
		fmt.Fprintf(&b, "ep %d enforce ingress=%t egress=%t\n", id, e.IngressEnforced, e.EgressEnforced)
	}
	for _, p := range slices.SortedFunc(maps.Keys(c.CIDRUpserts), comparePrefixes) {
		fmt.Fprintf(&b, "+cidr %s = %d\n", p, uint32(c.CIDRUpserts[p]))
	}
	for _, p := range c.CIDRDeletes {
		fmt.Fprintf(&b, "-cidr %s\n", p)
	}
	return b.String()
}
