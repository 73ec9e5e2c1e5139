package api

import (
	"slices"

	"github.com/filament-net/filament/agent/labels"
)

// Kubernetes NetworkPolicy (networking.k8s.io/v1), as far as Parse reads it.
type (
	k8sDocument struct {
		APIVersion string     `json:"apiVersion"`
		Kind       string     `json:"kind"`
		Metadata   objectMeta `json:"metadata"`
		Spec       *k8sSpec   `json:"spec"`
	}
	k8sSpec struct {
		PodSelector EndpointSelector `json:"podSelector"`
		PolicyTypes []string         `json:"policyTypes,omitempty"`
		Ingress     []k8sIngressRule `json:"ingress,omitempty"`
		Egress      []k8sEgressRule  `json:"egress,omitempty"`
	}
	k8sIngressRule struct {
		From  []k8sPeer `json:"from,omitempty"`
		Ports []k8sPort `json:"ports,omitempty"`
	}
	k8sEgressRule struct {
		To    []k8sPeer `json:"to,omitempty"`
		Ports []k8sPort `json:"ports,omitempty"`
	}
	k8sPeer struct {
		PodSelector       *EndpointSelector `json:"podSelector,omitempty"`
		NamespaceSelector *EndpointSelector `json:"namespaceSelector,omitempty"`
		IPBlock           *k8sIPBlock       `json:"ipBlock,omitempty"`
	}
	k8sIPBlock struct {
		CIDR   string   `json:"cidr"`
		Except []string `json:"except,omitempty"`
	}
	k8sPort struct {
		Protocol string       `json:"protocol,omitempty"`
		Port     *IntOrString `json:"port,omitempty"`
		EndPort  *int32       `json:"endPort,omitempty"`
	}
)

// Kubernetes policy types.
const (
	policyTypeIngress = "Ingress"
	policyTypeEgress  = "Egress"
)

// parseNetworkPolicy validates a NetworkPolicy and converts it to one Rule:
// podSelector becomes the endpointSelector (k8s-source keys, restricted to
// the policy's namespace); a peer's podSelector a fromEndpoints/toEndpoints
// selector in the policy's namespace; a namespaceSelector a selector on the
// `io.cilium.k8s.namespace.labels.` labels of any namespace; an ipBlock a
// CIDRSet; a rule without peers fromEntities/toEntities all. Each listed
// policy type sets that direction's enableDefaultDeny, so a listed type
// without rules selects the pods with zero allowed peers.
func parseNetworkPolicy(label string, obj map[string]any, src []byte) ([]Policy, error) {
	v := &validator{doc: docLabel(label, KindNetworkPolicy, obj, namespaceOf(obj))}
	var doc k8sDocument
	if !v.decode(obj, src, &doc) {
		return nil, v.err()
	}
	m := doc.Metadata
	if m.Namespace == "" {
		m.Namespace = DefaultNamespace
	}
	v.meta("metadata", KindNetworkPolicy, m)
	if doc.Spec == nil {
		v.addf("spec", "required")
	} else {
		v.k8sSpec("spec", doc.Spec)
	}
	if !v.ok() {
		return nil, v.err()
	}
	return finish(Policy{Kind: KindNetworkPolicy, Namespace: m.Namespace, Name: m.Name, Labels: m.Labels,
		Annotations: m.Annotations, Rules: []Rule{doc.Spec.toRule(m.Namespace)}, Source: string(src)})
}

// directions returns the policy types, defaulted like Kubernetes does.
func (s *k8sSpec) directions() (ingress, egress bool) {
	if len(s.PolicyTypes) == 0 {
		return true, len(s.Egress) > 0
	}
	return slices.Contains(s.PolicyTypes, policyTypeIngress), slices.Contains(s.PolicyTypes, policyTypeEgress)
}

func (v *validator) k8sSpec(p fieldPath, s *k8sSpec) {
	v.selector(p.child("podSelector"), &s.PodSelector, false)
	for i, t := range s.PolicyTypes {
		switch {
		case t != policyTypeIngress && t != policyTypeEgress:
			v.addf(p.child("policyTypes").index(i), "%q is not one of Ingress, Egress", t)
		case slices.Index(s.PolicyTypes, t) < i:
			v.addf(p.child("policyTypes").index(i), "%q is listed twice", t)
		}
	}
	ingress, egress := s.directions()
	if len(s.Ingress) > 0 && !ingress {
		v.addf(p.child("ingress"), "rules given but policyTypes does not list Ingress")
	}
	if len(s.Egress) > 0 && !egress {
		v.addf(p.child("egress"), "rules given but policyTypes does not list Egress")
	}
	for i, r := range s.Ingress {
		v.k8sRule(p.child("ingress").index(i), "from", r.From, r.Ports)
	}
	for i, r := range s.Egress {
		v.k8sRule(p.child("egress").index(i), "to", r.To, r.Ports)
	}
}

func (v *validator) k8sRule(p fieldPath, peersField string, peers []k8sPeer, ports []k8sPort) {
	for i, peer := range peers {
		pp := p.child(peersField).index(i)
		if b := peer.IPBlock; b != nil {
			if peer.PodSelector != nil || peer.NamespaceSelector != nil {
				v.addf(pp.child("ipBlock"), "cannot be combined with podSelector or namespaceSelector")
			}
			v.cidrSet(pp.child("ipBlock"), CIDRRule{CIDR: b.CIDR, Except: b.Except})
			continue
		}
		if peer.PodSelector == nil && peer.NamespaceSelector == nil {
			v.addf(pp, "needs podSelector, namespaceSelector or ipBlock")
		}
		if peer.PodSelector != nil {
			v.selector(pp.child("podSelector"), peer.PodSelector, false)
		}
		if ns := peer.NamespaceSelector; ns != nil {
			np := pp.child("namespaceSelector")
			v.selector(np, ns, false)
			for _, k := range ns.keys() {
				if labels.ValidateKey(k) == nil && labels.ValidateKey(namespaceLabelPrefix+k) != nil {
					v.addf(np, "key %q is too long to be carried by endpoints as %q", k, namespaceLabelPrefix+k)
				}
			}
		}
	}
	for i, port := range ports {
		v.k8sPort(p.child("ports").index(i), port)
	}
}

func (v *validator) k8sPort(p fieldPath, port k8sPort) {
	switch Protocol(port.Protocol) {
	case "", ProtoTCP, ProtoUDP, ProtoSCTP:
	default:
		v.addf(p.child("protocol"), "%q is not one of TCP, UDP, SCTP", port.Protocol)
	}
	switch {
	case port.Port == nil:
		if port.EndPort != nil {
			v.addf(p.child("endPort"), "%d: needs a numeric port", *port.EndPort)
		}
		return
	case port.Port.IsString:
		if !isPortName(port.Port.Str) {
			v.addf(p.child("port"), "%q is not a port name (at most 15 lowercase alphanumerics and '-', with a letter)", port.Port.Str)
		}
		if port.EndPort != nil {
			v.addf(p.child("endPort"), "%d: only allowed with a numeric port", *port.EndPort)
		}
		return
	}
	n := port.Port.Int
	if n < 1 || n > 65535 {
		v.addf(p.child("port"), "%d is not a port number 1-65535", n)
		return
	}
	switch e := port.EndPort; {
	case e == nil:
	case *e < 1 || *e > 65535:
		v.addf(p.child("endPort"), "%d is not a port number 1-65535", *e)
	case *e < n:
		v.addf(p.child("endPort"), "%d is less than port %d", *e, n)
	}
}

// toRule converts a validated spec of a policy of namespace ns.
func (s *k8sSpec) toRule(ns string) Rule {
	ingress, egress := s.directions()
	sel := prefixed(&s.PodSelector, labels.SourceK8s+":")
	r := Rule{
		EndpointSelector:  &sel,
		EnableDefaultDeny: DefaultDenyConfig{Ingress: &ingress, Egress: &egress},
	}
	for _, k := range s.Ingress {
		in := IngressRule{ToPorts: k8sPorts(k.Ports)}
		in.FromEndpoints, in.FromCIDRSet = k8sPeers(k.From, ns)
		if len(k.From) == 0 {
			in.FromEntities = []Entity{EntityAll}
		}
		r.Ingress = append(r.Ingress, in)
	}
	for _, k := range s.Egress {
		out := EgressRule{ToPorts: k8sPorts(k.Ports)}
		out.ToEndpoints, out.ToCIDRSet = k8sPeers(k.To, ns)
		if len(k.To) == 0 {
			out.ToEntities = []Entity{EntityAll}
		}
		r.Egress = append(r.Egress, out)
	}
	return r
}

// k8sPeers converts the peers of a policy of namespace ns. A podSelector
// without a namespaceSelector selects pods of ns only, whatever keys it
// names (as Cilium sets the namespace): until 2026-12-05 one naming the
// namespace key counted as scoped by itself and could select other
// namespaces' pods (TestNetworkPolicyPodSelectorStaysInItsNamespace).
func k8sPeers(peers []k8sPeer, ns string) (sels []EndpointSelector, cidrs []CIDRRule) {
	for _, p := range peers {
		if p.IPBlock != nil {
			cidrs = append(cidrs, CIDRRule{CIDR: p.IPBlock.CIDR, Except: slices.Clone(p.IPBlock.Except)})
			continue
		}
		var sel EndpointSelector
		if p.PodSelector != nil {
			sel = prefixed(p.PodSelector, labels.SourceK8s+":")
			if p.NamespaceSelector == nil {
				sel.restrictTo(ns)
			}
		}
		if p.NamespaceSelector != nil {
			ns := prefixed(p.NamespaceSelector, labels.SourceK8s+":"+namespaceLabelPrefix)
			for k, val := range ns.MatchLabels {
				if sel.MatchLabels == nil {
					sel.MatchLabels = map[string]string{}
				}
				sel.MatchLabels[k] = val
			}
			// Any namespace the selector admits, not only the policy's.
			sel.MatchExpressions = append(sel.MatchExpressions, ns.MatchExpressions...)
			sel.MatchExpressions = append(sel.MatchExpressions, SelectorRequirement{Key: podNamespaceKey, Operator: OpExists})
		}
		sels = append(sels, sel)
	}
	return sels, cidrs
}

func k8sPorts(ports []k8sPort) []PortRule {
	if len(ports) == 0 {
		return nil
	}
	var pr PortRule
	for _, p := range ports {
		pp := PortProtocol{Port: "0", Protocol: Protocol(p.Protocol)}
		if pp.Protocol == "" {
			pp.Protocol = ProtoTCP
		}
		if p.Port != nil {
			pp.Port = p.Port.String()
		}
		if p.EndPort != nil {
			pp.EndPort = *p.EndPort
		}
		pr.Ports = append(pr.Ports, pp)
	}
	return []PortRule{pr}
}

// prefixed copies a Kubernetes selector with prefix put before every key.
func prefixed(s *EndpointSelector, prefix string) EndpointSelector {
	var out EndpointSelector
	if len(s.MatchLabels) > 0 {
		out.MatchLabels = make(map[string]string, len(s.MatchLabels))
		for k, v := range s.MatchLabels {
			out.MatchLabels[prefix+k] = v
		}
	}
	for _, r := range s.MatchExpressions {
		out.MatchExpressions = append(out.MatchExpressions,
			SelectorRequirement{Key: prefix + r.Key, Operator: r.Operator, Values: slices.Clone(r.Values)})
	}
	return out
}
