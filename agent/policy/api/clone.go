package api

import (
	"maps"
	"slices"
)

// DeepCopy returns a copy of p that shares no memory with it.
func (p Policy) DeepCopy() Policy {
	p.Labels = maps.Clone(p.Labels)
	p.Annotations = maps.Clone(p.Annotations)
	p.Rules = cloneEach(p.Rules, Rule.deepCopy)
	return p
}

func (r Rule) deepCopy() Rule {
	r.EndpointSelector = clonePtr(r.EndpointSelector, EndpointSelector.deepCopy)
	r.NodeSelector = clonePtr(r.NodeSelector, EndpointSelector.deepCopy)
	r.Ingress = cloneEach(r.Ingress, IngressRule.deepCopy)
	r.IngressDeny = cloneEach(r.IngressDeny, IngressRule.deepCopy)
	r.Egress = cloneEach(r.Egress, EgressRule.deepCopy)
	r.EgressDeny = cloneEach(r.EgressDeny, EgressRule.deepCopy)
	r.EnableDefaultDeny.Ingress = clonePtr(r.EnableDefaultDeny.Ingress, same)
	r.EnableDefaultDeny.Egress = clonePtr(r.EnableDefaultDeny.Egress, same)
	r.Labels = slices.Clone(r.Labels)
	return r
}

func (r IngressRule) deepCopy() IngressRule {
	r.FromEndpoints = cloneEach(r.FromEndpoints, EndpointSelector.deepCopy)
	r.FromRequires = cloneEach(r.FromRequires, EndpointSelector.deepCopy)
	r.FromCIDR = slices.Clone(r.FromCIDR)
	r.FromCIDRSet = cloneEach(r.FromCIDRSet, CIDRRule.deepCopy)
	r.FromEntities = slices.Clone(r.FromEntities)
	r.FromGroups = cloneEach(r.FromGroups, Groups.deepCopy)
	r.FromNodes = cloneEach(r.FromNodes, EndpointSelector.deepCopy)
	r.ToPorts = cloneEach(r.ToPorts, PortRule.deepCopy)
	r.ICMPs = cloneEach(r.ICMPs, ICMPRule.deepCopy)
	return r
}

func (r EgressRule) deepCopy() EgressRule {
	r.ToEndpoints = cloneEach(r.ToEndpoints, EndpointSelector.deepCopy)
	r.ToRequires = cloneEach(r.ToRequires, EndpointSelector.deepCopy)
	r.ToCIDR = slices.Clone(r.ToCIDR)
	r.ToCIDRSet = cloneEach(r.ToCIDRSet, CIDRRule.deepCopy)
	r.ToEntities = slices.Clone(r.ToEntities)
	r.ToGroups = cloneEach(r.ToGroups, Groups.deepCopy)
	r.ToNodes = cloneEach(r.ToNodes, EndpointSelector.deepCopy)
	r.ToServices = cloneEach(r.ToServices, Service.deepCopy)
	r.ToFQDNs = slices.Clone(r.ToFQDNs)
	r.ToPorts = cloneEach(r.ToPorts, PortRule.deepCopy)
	r.ICMPs = cloneEach(r.ICMPs, ICMPRule.deepCopy)
	return r
}

func (s EndpointSelector) deepCopy() EndpointSelector {
	s.MatchLabels = maps.Clone(s.MatchLabels)
	s.MatchExpressions = cloneEach(s.MatchExpressions, func(r SelectorRequirement) SelectorRequirement {
		r.Values = slices.Clone(r.Values)
		return r
	})
	return s
}

func (r CIDRRule) deepCopy() CIDRRule {
	r.Except = slices.Clone(r.Except)
	return r
}

func (g Groups) deepCopy() Groups {
	g.AWS = clonePtr(g.AWS, func(a AWSGroup) AWSGroup {
		a.Labels = maps.Clone(a.Labels)
		a.SecurityGroupsIDs = slices.Clone(a.SecurityGroupsIDs)
		a.SecurityGroupsNames = slices.Clone(a.SecurityGroupsNames)
		return a
	})
	return g
}

func (s Service) deepCopy() Service {
	s.K8sService = clonePtr(s.K8sService, same)
	s.K8sServiceSelector = clonePtr(s.K8sServiceSelector, func(k K8sServiceSelectorNamespace) K8sServiceSelectorNamespace {
		k.Selector = k.Selector.deepCopy()
		return k
	})
	return s
}

func (r PortRule) deepCopy() PortRule {
	r.Ports = slices.Clone(r.Ports)
	r.Rules = clonePtr(r.Rules, func(l L7Rules) L7Rules {
		l.HTTP = cloneEach(l.HTTP, func(h PortRuleHTTP) PortRuleHTTP {
			h.Headers = slices.Clone(h.Headers)
			h.HeaderMatches = slices.Clone(h.HeaderMatches)
			return h
		})
		l.Kafka = slices.Clone(l.Kafka)
		l.DNS = slices.Clone(l.DNS)
		return l
	})
	r.ServerNames = slices.Clone(r.ServerNames)
	return r
}

func (r ICMPRule) deepCopy() ICMPRule {
	r.Fields = cloneEach(r.Fields, func(f ICMPField) ICMPField {
		f.Type = clonePtr(f.Type, same)
		return f
	})
	return r
}

func same[T any](v T) T { return v }

// cloneEach copies s, copying each element with clone; nil stays nil.
func cloneEach[T any](s []T, clone func(T) T) []T {
	if s == nil {
		return nil
	}
	out := make([]T, len(s))
	for i, v := range s {
		out[i] = clone(v)
	}
	return out
}

// clonePtr copies *p into a new pointer with clone; nil stays nil.
func clonePtr[T any](p *T, clone func(T) T) *T {
	if p == nil {
		return nil
	}
	v := clone(*p)
	return &v
}
