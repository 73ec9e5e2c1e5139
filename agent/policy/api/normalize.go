package api

import "slices"

// normalize brings p into the internal form described in the package
// comment. It is idempotent and modifies p's maps and slices in place.
func (p *Policy) normalize() {
	if p.Kind != KindCiliumClusterwideNetworkPolicy && p.Namespace == "" {
		p.Namespace = DefaultNamespace
	}
	ns := p.Namespace
	if p.Clusterwide() {
		ns = ""
	}
	for i := range p.Rules {
		p.Rules[i].normalize(ns)
		if p.Kind == KindNetworkPolicy {
			p.Rules[i].keepPodSelectorsIn(ns)
		}
	}
}

// keepPodSelectorsIn keeps a NetworkPolicy's podSelector peers (a
// selector without namespaceSelector: no `namespace Exists` requirement)
// in namespace ns, as k8sPeers makes them. A policy stored before
// 2026-12-05, whose podSelector named the namespace key, went on
// selecting other namespaces' pods after the upgrade (found by a review,
// TestStoredNetworkPolicyPeersKeptInTheirNamespace).
func (r *Rule) keepPodSelectorsIn(ns string) {
	keep := func(sels []EndpointSelector) {
		for i := range sels {
			if !slices.ContainsFunc(sels[i].MatchExpressions, func(e SelectorRequirement) bool {
				return e.Key == podNamespaceKey && e.Operator == OpExists
			}) {
				sels[i].restrictTo(ns)
			}
		}
	}
	for _, in := range r.Ingress {
		keep(in.FromEndpoints)
	}
	for _, out := range r.Egress {
		keep(out.ToEndpoints)
	}
}

// normalize restricts the rule to namespace ns (none when empty) and fills
// in defaults.
func (r *Rule) normalize(ns string) {
	if ns != "" && r.EndpointSelector != nil {
		r.EndpointSelector.restrictTo(ns)
	}
	for _, rs := range [][]IngressRule{r.Ingress, r.IngressDeny} {
		for i := range rs {
			restrictPeers(rs[i].FromEndpoints, ns)
			restrictPeers(rs[i].FromRequires, ns)
			normalizePorts(rs[i].ToPorts, rs[i].ICMPs)
		}
	}
	for _, rs := range [][]EgressRule{r.Egress, r.EgressDeny} {
		for i := range rs {
			restrictPeers(rs[i].ToEndpoints, ns)
			restrictPeers(rs[i].ToRequires, ns)
			normalizePorts(rs[i].ToPorts, rs[i].ICMPs)
			for _, s := range rs[i].ToServices {
				if s.K8sService != nil && s.K8sService.Namespace == "" {
					s.K8sService.Namespace = ns
				}
				if s.K8sServiceSelector != nil && s.K8sServiceSelector.Namespace == "" {
					s.K8sServiceSelector.Namespace = ns
				}
			}
		}
	}
}

// restrictPeers restricts peer selectors that do not scope themselves to
// namespace ns (none when empty).
func restrictPeers(sels []EndpointSelector, ns string) {
	if ns == "" {
		return
	}
	for i := range sels {
		if !sels[i].scopesItself() {
			sels[i].restrictTo(ns)
		}
	}
}

func normalizePorts(prs []PortRule, icmps []ICMPRule) {
	for _, pr := range prs {
		for i := range pr.Ports {
			pp := &pr.Ports[i]
			if pp.Protocol == "" {
				pp.Protocol = ProtoAny
			}
			if pp.Port == "" {
				pp.Port = "0"
			}
		}
	}
	for _, r := range icmps {
		for i := range r.Fields {
			if r.Fields[i].Family == "" {
				r.Fields[i].Family = ICMPFamilyIPv4
			}
		}
	}
}
