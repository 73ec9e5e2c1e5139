package policy

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/filament-net/filament/agent/policy/api"
)

// Namespace budgets: what one namespace's policies may make every node
// hold in the maps it shares with every other namespace (and, for the
// ipcache, with the mesh). Clusterwide policies are the operator's and
// are not bounded.
const (
	// MaxNamespacePrefixes bounds the distinct CIDR prefixes (toCIDR,
	// fromCIDR, toCIDRSet and fromCIDRSet with their excepts) a
	// namespace's policies name: each is an ipcache entry on every node.
	MaxNamespacePrefixes = 4096
	// MaxNamespaceCIDRPorts bounds, summed over a namespace's policy
	// sections, each section's CIDR prefixes times its ports: the policy
	// map entries each selected endpoint gets from them. A port range
	// counts as 32 (what it compiles to at most), a port of protocol ANY
	// as 3, a section without ports as 1.
	MaxNamespaceCIDRPorts = 65536
	// MaxNamespaceGroups bounds the distinct cloud group selectors
	// (toGroups, fromGroups; by api.GroupKey) a namespace's policies
	// name: each is a request every node publishes in the kvstore and a
	// query the elected resolver makes to the cloud's API on every
	// refresh, one after the other for every tenant.
	MaxNamespaceGroups = 64
	// MaxNamespaceNodeSelectors bounds the distinct node selectors
	// (toNodes, fromNodes; by api.NodeSelectorKey) a namespace's policies
	// name: each is a selector every node follows and matches its nodes
	// against, and each new one recompiles the node's policies (until
	// 2026-12-07 they were not counted, TestNamespaceNodeSelectorsBudget).
	MaxNamespaceNodeSelectors = 64

	// MaxPolicyCIDRs bounds the CIDR identities the policies make on a
	// node, every namespace's and the clusterwide policies' together:
	// each is a key of the BPF ipcache (routing.IPCacheMax, 524,288),
	// where remote clusters' entries hold at most three quarters
	// (routing.MaxRemoteIPCacheEntries), so an eighth, the other eighth
	// (65,536 keys) staying for this cluster's pods and this node's
	// addresses whatever the policies name. The node selectors'
	// addresses come first, then the toCIDR prefixes and the groups'
	// addresses (admission.go), and toFQDNs' learned addresses have at
	// most MaxFQDNCIDRs of it. Until 2026-12-07 nothing bounded them:
	// tenants' cloud groups filled the ipcache, and a new pod's own entry
	// failed (TestCloudGroupsLeaveTheIPCacheToPods).
	MaxPolicyCIDRs = 1 << 16
	// MaxFQDNCIDRs is what toFQDNs' learned addresses (those no toCIDR
	// or admitted group names) hold of MaxPolicyCIDRs at most; the rest
	// is the toCIDR prefixes' and the groups'.
	MaxFQDNCIDRs = 1 << 14
)

// ErrBudget: an import would take a namespace past a budget.
var ErrBudget = errors.New("namespace policy budget exceeded")

// checkBudgets checks the namespaces of staged against their budgets in
// next (the policy set after the import).
func checkBudgets(next map[string]api.Policy, staged []api.Policy) error {
	uses := map[string]*budgetUse{}
	for _, p := range staged {
		if p.Namespace != "" {
			uses[p.Namespace] = &budgetUse{prefixes: map[netip.Prefix]bool{}, groups: map[string]bool{}, nodes: map[string]bool{}}
		}
	}
	if len(uses) == 0 {
		return nil
	}
	for _, p := range next {
		u := uses[p.Namespace]
		if u == nil {
			continue
		}
		for _, rule := range p.Rules {
			for _, rs := range [][]api.IngressRule{rule.Ingress, rule.IngressDeny} {
				for _, in := range rs {
					u.section(in.FromCIDR, in.FromCIDRSet, in.ToPorts)
					u.cloudGroups(in.FromGroups)
					u.nodeSelectors(in.FromNodes)
				}
			}
			for _, rs := range [][]api.EgressRule{rule.Egress, rule.EgressDeny} {
				for _, out := range rs {
					u.section(out.ToCIDR, out.ToCIDRSet, out.ToPorts)
					u.cloudGroups(out.ToGroups)
					u.nodeSelectors(out.ToNodes)
				}
			}
		}
	}
	for ns, u := range uses {
		if len(u.prefixes) > MaxNamespacePrefixes {
			return fmt.Errorf("%w: namespace %q: its policies would name %d CIDR prefixes (at most %d per namespace)",
				ErrBudget, ns, len(u.prefixes), MaxNamespacePrefixes)
		}
		if len(u.groups) > MaxNamespaceGroups {
			return fmt.Errorf("%w: namespace %q: its policies would name %d cloud groups (at most %d per namespace)",
				ErrBudget, ns, len(u.groups), MaxNamespaceGroups)
		}
		if len(u.nodes) > MaxNamespaceNodeSelectors {
			return fmt.Errorf("%w: namespace %q: its policies would name %d node selectors (toNodes, fromNodes; at most %d per namespace)",
				ErrBudget, ns, len(u.nodes), MaxNamespaceNodeSelectors)
		}
		if u.cidrPorts > MaxNamespaceCIDRPorts {
			return fmt.Errorf("%w: namespace %q: its policies' CIDR prefixes times ports would be %d (at most %d per namespace)",
				ErrBudget, ns, u.cidrPorts, MaxNamespaceCIDRPorts)
		}
	}
	return nil
}

// budgetUse is what a namespace's policies use of its budgets.
type budgetUse struct {
	prefixes  map[netip.Prefix]bool
	cidrPorts int
	groups    map[string]bool // by api.GroupKey
	nodes     map[string]bool // by api.NodeSelectorKey
}

// nodeSelectors counts a section's node selectors.
func (u *budgetUse) nodeSelectors(ss []api.EndpointSelector) {
	for _, s := range ss {
		u.nodes[api.NodeSelectorKey(s)] = true
	}
}

// cloudGroups counts a section's cloud group selectors.
func (u *budgetUse) cloudGroups(gs []api.Groups) {
	for _, g := range gs {
		if g.AWS != nil {
			u.groups[api.GroupKey(*g.AWS)] = true
		}
	}
}

// section counts a policy section's CIDR prefixes (excepts included) and
// its prefixes times ports.
func (u *budgetUse) section(cidrs []string, sets []api.CIDRRule, ports []api.PortRule) {
	n := 0
	add := func(s string) {
		if pr, err := api.ParseCIDR(s); err == nil {
			u.prefixes[pr] = true
			n++
		}
	}
	eachCIDR(cidrs, sets, add)
	u.cidrPorts += n * portEntries(ports)
}

// eachCIDR calls f with each CIDR a section names: its CIDRs, its CIDR
// sets' and their excepts.
func eachCIDR(cidrs []string, sets []api.CIDRRule, f func(string)) {
	for _, c := range cidrs {
		f(c)
	}
	for _, c := range sets {
		f(c.CIDR)
		for _, e := range c.Except {
			f(e)
		}
	}
}

// portEntries is what a section's ports count for the budget.
func portEntries(prs []api.PortRule) int {
	n := 0
	for _, pr := range prs {
		for _, pp := range pr.Ports {
			k := 1
			if pp.EndPort != 0 {
				k = 32
			}
			if pp.Protocol == api.ProtoAny || pp.Protocol == "" {
				k *= 3
			}
			n += k
		}
	}
	return max(n, 1)
}
