package policy

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"

	"github.com/filament-net/filament/agent/policy/api"
)

// Admission of the policies' CIDR prefixes (each a CIDR identity, an
// ipcache key on every node): a namespace's toCIDR prefixes and the
// addresses of the cloud groups its policies name count against its
// prefix budget (MaxNamespacePrefixes) together. The import bounds the
// toCIDR prefixes (checkBudgets); the groups' addresses come later, and
// the groups that do not fit are refused whole, in a stable order (deny
// groups before allow groups, each by api.GroupKey), so that the same
// policies and addresses give the same verdicts on every node whatever
// order the groups resolved in, and no address value decides which
// group goes. A refused group of an allow rule selects nothing (fail
// closed, as an unresolved one); one of a deny rule makes that rule deny
// world on its ports, identity world and every CIDR identity, all its
// prefixes could select and no cluster peer (fail closed for what it
// could deny).
//
// All namespaces' and the clusterwide policies' prefixes together are
// bounded too (MaxPolicyCIDRs): the node selectors' addresses first (the
// cluster's nodes), then the clusterwide policies' (the operator's)
// toCIDR prefixes, deny groups and allow groups, then every namespace's
// toCIDR prefixes, then their deny groups and then their allow groups,
// each pass by namespace name; a unit past the share is refused the same
// way. toFQDNs' learned addresses get identities in what is left of the
// share, up to MaxFQDNCIDRs of it (syncCIDRs, growFQDN).

// staticUnit names a namespace's toCIDR prefixes as one unit of
// admission (a group's unit is its api.GroupKey).
const staticUnit = ""

// policyUse is what one policy names that takes ipcache keys, as
// admission counts it.
type policyUse struct {
	ns          string
	static      []netip.Prefix // toCIDR, fromCIDR and CIDRSets with their excepts (IPv4, masked)
	deny, allow []string       // group keys of its deny and allow rules
	nodes       []string       // node selector keys
}

// useOf is what p names that admission counts.
func useOf(p *api.Policy) *policyUse {
	u := &policyUse{ns: p.Namespace}
	static := map[netip.Prefix]bool{}
	add := func(s string) {
		if pr, ok := staticPrefix(s); ok {
			static[pr] = true
		}
	}
	allow, deny, nodes := map[string]bool{}, map[string]bool{}, map[string]bool{}
	section := func(cs []string, sets []api.CIDRRule, gs []api.Groups, ns []api.EndpointSelector, into map[string]bool) {
		eachCIDR(cs, sets, add)
		for _, g := range gs {
			if g.AWS != nil {
				into[api.GroupKey(*g.AWS)] = true
			}
		}
		for _, sel := range ns {
			nodes[api.NodeSelectorKey(sel)] = true
		}
	}
	into := [2]map[string]bool{allow, deny}
	for _, rule := range p.Rules {
		for i, rs := range [][]api.IngressRule{rule.Ingress, rule.IngressDeny} {
			for _, in := range rs {
				section(in.FromCIDR, in.FromCIDRSet, in.FromGroups, in.FromNodes, into[i])
			}
		}
		for i, rs := range [][]api.EgressRule{rule.Egress, rule.EgressDeny} {
			for _, out := range rs {
				section(out.ToCIDR, out.ToCIDRSet, out.ToGroups, out.ToNodes, into[i])
			}
		}
	}
	u.nodes = slices.Sorted(maps.Keys(nodes))
	u.static = slices.SortedFunc(maps.Keys(static), comparePrefixes)
	u.deny = slices.Sorted(maps.Keys(deny))
	u.allow = slices.Sorted(maps.Keys(allow))
	return u
}

// staticPrefix is the prefix of a toCIDR, fromCIDR or CIDRSet string as
// admission counts it (IPv4, masked; false: not counted).
func staticPrefix(s string) (netip.Prefix, bool) {
	pr, err := api.ParseCIDR(s)
	if err != nil || !pr.Addr().Is4() {
		return netip.Prefix{}, false
	}
	return pr.Masked(), true
}

// namesStatic says whether a section's CIDR fields name a prefix of its
// namespace's toCIDR unit, as useOf counts them: compile widens a deny
// for the refused unit exactly then, so that readmit recompiles every
// policy whose compilation the unit's admission changes (until
// 2026-12-07 an IPv6-only section widened and was never recompiled when
// the unit fit again, TestStaticUnitWidensWhatAdmissionCounts).
func namesStatic(cidrs []string, sets []api.CIDRRule) bool {
	names := false
	eachCIDR(cidrs, sets, func(s string) {
		_, ok := staticPrefix(s)
		names = names || ok
	})
	return names
}

// names says whether the policy names unit.
func (u *policyUse) names(unit string) bool {
	if unit == staticUnit {
		return len(u.static) > 0
	}
	_, d := slices.BinarySearch(u.deny, unit)
	_, a := slices.BinarySearch(u.allow, unit)
	return d || a
}

// admission is the outcome of admit.
type admission struct {
	// refused: by namespace, the units refused and why.
	refused map[string]map[string]string
	// admitted: the node selectors' addresses and the admitted units'
	// prefixes (the rest of what the policies name is toFQDNs'); left:
	// the refused units' prefixes (some an admitted unit may name).
	admitted prefixSet
	left     [][]netip.Prefix
}

// prefixSet is a set of IPv4 prefixes keyed in 8 bytes (admission walks
// every prefix the policies name at each change).
type prefixSet map[uint64]struct{}

func prefixKey(p netip.Prefix) uint64 {
	a := p.Addr().As4()
	return uint64(a[0])<<32 | uint64(a[1])<<24 | uint64(a[2])<<16 | uint64(a[3])<<8 | uint64(p.Bits())
}

func (s prefixSet) has(p netip.Prefix) bool {
	_, ok := s[prefixKey(p)]
	return ok
}

func (s prefixSet) add(p netip.Prefix) { s[prefixKey(p)] = struct{}{} }

// admit decides which units of the current policies are admitted. r.mu
// is held.
func (r *Resolver) admit() admission {
	adm := admission{refused: map[string]map[string]string{}, admitted: make(prefixSet, len(r.adm.admitted))}
	byNS := map[string][]*policyUse{}
	for _, k := range slices.Sorted(maps.Keys(r.uses)) {
		u := r.uses[k]
		byNS[u.ns] = append(byNS[u.ns], u)
		for _, key := range u.nodes {
			for _, p := range r.awsGroups[key] {
				adm.admitted.add(p)
			}
		}
	}
	room := MaxPolicyCIDRs - MaxFQDNCIDRs
	namespaces := slices.Sorted(maps.Keys(byNS))
	held := map[string]prefixSet{}
	for _, ns := range namespaces {
		held[ns] = prefixSet{}
	}
	refuse := func(ns, unit, why string) {
		if adm.refused[ns] == nil {
			adm.refused[ns] = map[string]string{}
		}
		adm.refused[ns][unit] = why
	}
	// try admits a unit's prefixes (sorted, distinct) when they fit the
	// share and, but for the toCIDR prefixes (bounded by the import),
	// their namespace's budget.
	try := func(ns, unit string, ps []netip.Prefix) {
		set := held[ns]
		n := 0
		for _, p := range ps {
			if !adm.admitted.has(p) {
				n++
			}
		}
		if len(adm.admitted)+n > room {
			refuse(ns, unit, fmt.Sprintf("its %d prefixes do not fit the policies' share of the ipcache (%d keys for toCIDR prefixes and groups of all namespaces, "+
				"policy.MaxPolicyCIDRs less MaxFQDNCIDRs; clusterwide policies first, then namespaces' "+
				"toCIDR prefixes, then deny groups, then allow groups, each by namespace name)", len(ps), room))
			adm.left = append(adm.left, ps)
			return
		}
		if unit != staticUnit && ns != "" {
			n := 0
			for _, p := range ps {
				if !set.has(p) {
					n++
				}
			}
			if len(set)+n > MaxNamespacePrefixes {
				refuse(ns, unit, fmt.Sprintf("its %d addresses do not fit namespace %q's prefix budget (%d prefixes, MaxNamespacePrefixes, "+
					"with its toCIDR prefixes and the groups before it: deny groups first, then by key)",
					len(ps), ns, MaxNamespacePrefixes))
				adm.left = append(adm.left, ps)
				return
			}
		}
		for _, p := range ps {
			set.add(p)
			adm.admitted.add(p)
		}
	}
	static := func(ns string) {
		var ps []netip.Prefix
		for _, u := range byNS[ns] {
			ps = append(ps, u.static...)
		}
		slices.SortFunc(ps, comparePrefixes)
		try(ns, staticUnit, slices.Compact(ps))
	}
	denied := map[string]map[string]bool{}
	deny := func(ns string) {
		denied[ns] = map[string]bool{}
		for _, u := range byNS[ns] {
			for _, k := range u.deny {
				denied[ns][k] = true
			}
		}
		for _, k := range slices.Sorted(maps.Keys(denied[ns])) {
			// The groups layer's refusal first: it refuses only a group
			// it has no set of, and an empty set a drop left must not
			// stand for it (a deny denied nothing).
			if why, ok := r.groupRefused[k]; ok {
				refuse(ns, k, "refused by the groups layer: "+why)
			} else if addrs, ok := r.awsGroups[k]; ok {
				try(ns, k, addrs)
			}
		}
	}
	allow := func(ns string) {
		allowed := map[string]bool{}
		for _, u := range byNS[ns] {
			for _, k := range u.allow {
				if !denied[ns][k] {
					allowed[k] = true
				}
			}
		}
		for _, k := range slices.Sorted(maps.Keys(allowed)) {
			// The groups layer's refusal first: it refuses only a group
			// it has no set of, and an empty set a drop left must not
			// stand for it (a deny denied nothing).
			if why, ok := r.groupRefused[k]; ok {
				refuse(ns, k, "refused by the groups layer: "+why)
			} else if addrs, ok := r.awsGroups[k]; ok {
				try(ns, k, addrs)
			}
		}
	}
	// The clusterwide policies (the operator's) whole first, then every
	// namespace's toCIDR prefixes, deny groups and allow groups, each
	// pass by name.
	if _, ok := byNS[""]; ok {
		static("")
		deny("")
		allow("")
	}
	for _, pass := range []func(string){static, deny, allow} {
		for _, ns := range namespaces {
			if ns != "" {
				pass(ns)
			}
		}
	}
	return adm
}

// readmit updates the uses of the changed policies, decides admission
// again and adds to changed the policies whose units' admission changed
// (they compile differently; a reason names only what changes with the
// unit, so that others' changes do not recompile it). r.mu is held.
func (r *Resolver) readmit(changed map[string]bool) {
	for k := range changed {
		if p, ok := r.policies[k]; ok {
			r.uses[k] = useOf(&p)
		} else {
			delete(r.uses, k)
		}
	}
	adm := r.admit()
	old := r.adm
	r.adm = adm
	type unitOf struct{ ns, unit string }
	var moved []unitOf
	for ns, units := range adm.refused {
		for unit, why := range units {
			if old.refused[ns][unit] != why {
				moved = append(moved, unitOf{ns, unit})
				if _, was := old.refused[ns][unit]; !was {
					slog.Warn("policy: a namespace's cloud group or toCIDR prefixes are refused: an allow selects nothing of them, a deny denies world on its ports, until they fit",
						"namespace", ns, "unit", unitName(unit), "reason", why)
				}
			}
		}
	}
	for ns, units := range old.refused {
		for unit := range units {
			if _, still := adm.refused[ns][unit]; !still {
				moved = append(moved, unitOf{ns, unit})
				slog.Info("policy: a namespace's refused cloud group or toCIDR prefixes fit again", "namespace", ns, "unit", unitName(unit))
			}
		}
	}
	if len(moved) == 0 {
		return
	}
	for k, u := range r.uses {
		for _, m := range moved {
			if u.ns == m.ns && u.names(m.unit) {
				changed[k] = true
				break
			}
		}
	}
}

func unitName(unit string) string {
	if unit == staticUnit {
		return "toCIDR prefixes"
	}
	return unit
}

// GroupRefused says why the cloud group of key (api.GroupKey) is refused
// in namespace ns ("" and false: it is not).
func (r *Resolver) GroupRefused(ns, key string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	why, ok := r.adm.refused[ns][key]
	return why, ok
}

// RefusedUnit is a namespace's cloud group (Unit, its api.GroupKey), or
// its toCIDR prefixes (Unit ""), refused for a bound, and why.
type RefusedUnit struct {
	Namespace, Unit, Reason string
}

// Refused lists the refused units, by namespace then unit.
func (r *Resolver) Refused() []RefusedUnit {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []RefusedUnit
	for ns, units := range r.adm.refused {
		for unit, why := range units {
			out = append(out, RefusedUnit{ns, unit, why})
		}
	}
	slices.SortFunc(out, func(a, b RefusedUnit) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Unit, b.Unit))
	})
	return out
}

// fqdnRoom says whether toFQDNs' learned address p, which no admitted
// unit names, may have a CIDR identity now (MaxFQDNCIDRs of the share),
// and counts it; one that may not is logged once until there is room
// again. r.mu is held.
func (r *Resolver) fqdnRoom(p netip.Prefix) bool {
	if r.adm.admitted.has(p) {
		return true
	}
	if r.fqdnHeld >= MaxFQDNCIDRs {
		if !r.fqdnFull {
			r.fqdnFull = true
			slog.Warn("policy: toFQDNs' learned addresses hold their share of the ipcache: an address learned now is not allowed by toFQDNs until others go, logged once",
				"max", MaxFQDNCIDRs, "prefix", p)
		}
		return false
	}
	r.fqdnHeld++
	return true
}

// CIDRsLeftOut is how many prefixes the policies name have no CIDR
// identity now for a bound: those of the refused groups and toCIDR
// prefixes that nothing admitted names, and toFQDNs' learned addresses
// past their share. It is counted at each call, each prefix once (until
// 2026-12-07 toFQDNs' were counted at each refusal, and the count grew
// with every answer repeating an address left out,
// TestFQDNLeftOutCountedOnce).
func (r *Resolver) CIDRsLeftOut() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	left := prefixSet{}
	for _, ps := range r.adm.left {
		for _, p := range ps {
			if !r.adm.admitted.has(p) {
				left.add(p)
			}
		}
	}
	for _, learned := range r.fqdnLearned {
		for p := range learned {
			if _, ok := r.cidrs[p]; !ok {
				left.add(p)
			}
		}
	}
	return len(left)
}
