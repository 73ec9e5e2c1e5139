package api

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/filament-net/filament/agent/labels"
)

// ErrInvalidPolicy is wrapped by every error about a policy document.
var ErrInvalidPolicy = errors.New("invalid policy")

// ValidationError is one problem of one document, at one field.
type ValidationError struct {
	// Document names the document: `policy "default/web"`, or
	// `document at line 12` while its name is unknown.
	Document string
	// Field is the path of the field, like `spec.ingress[0].toPorts`;
	// empty for a problem of the document as a whole.
	Field string
	// Reason says what is wrong, quoting the bad value.
	Reason string
	// Err is the underlying error, if any.
	Err error
}

func (e *ValidationError) Error() string {
	if e.Field == "" {
		return e.Document + ": " + e.Reason
	}
	return e.Document + ": " + e.Field + ": " + e.Reason
}

// Unwrap returns ErrInvalidPolicy and the underlying error.
func (e *ValidationError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrInvalidPolicy}
	}
	return []error{ErrInvalidPolicy, e.Err}
}

// fieldPath is a dotted path into a document, like `spec.ingress[0]`.
type fieldPath string

func (p fieldPath) child(name string) fieldPath {
	if p == "" {
		return fieldPath(name)
	}
	return p + "." + fieldPath(name)
}

func (p fieldPath) index(i int) fieldPath { return fieldPath(fmt.Sprintf("%s[%d]", p, i)) }

func (p fieldPath) key(k string) fieldPath { return fieldPath(fmt.Sprintf("%s[%q]", p, k)) }

// validator collects the problems of one document.
type validator struct {
	doc  string
	errs []error
	// strict: a document being imported, not a policy already stored. A
	// deny rule naming what selects nothing yet is refused only then: one
	// stored before 2026-12-05 (accepted with a warning) still loads, or
	// the agent holding it would not start.
	strict bool
}

func (v *validator) addf(p fieldPath, format string, args ...any) {
	v.errs = append(v.errs, &ValidationError{Document: v.doc, Field: string(p), Reason: fmt.Sprintf(format, args...)})
}

func (v *validator) wrap(p fieldPath, err error) {
	v.errs = append(v.errs, &ValidationError{Document: v.doc, Field: string(p), Reason: err.Error(), Err: err})
}

func (v *validator) ok() bool { return len(v.errs) == 0 }

func (v *validator) err() error {
	if len(v.errs) == 1 {
		return v.errs[0]
	}
	return errors.Join(v.errs...)
}

// scope is what rule validation needs to know of the policy around it.
type scope struct {
	kind      string
	namespace string // "" when clusterwide
}

// Validate checks p in its internal form; field paths name the fields of
// Policy (`rules[0].ingress[0]`). Repository.Import validates every policy.
func (p Policy) Validate() error {
	v := &validator{doc: fmt.Sprintf("policy %q", p.Key())}
	switch p.Kind {
	case KindCiliumNetworkPolicy, KindCiliumClusterwideNetworkPolicy, KindNetworkPolicy:
	default:
		v.addf("kind", "%q is not one of %s, %s, %s", p.Kind,
			KindCiliumNetworkPolicy, KindCiliumClusterwideNetworkPolicy, KindNetworkPolicy)
	}
	v.meta("", p.Kind, objectMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, Annotations: p.Annotations})
	if len(p.Rules) == 0 {
		v.addf("rules", "at least one rule is required")
	}
	sc := scope{kind: p.Kind, namespace: p.Namespace}
	for i := range p.Rules {
		v.rule(fieldPath("rules").index(i), &p.Rules[i], sc)
	}
	return v.err()
}

var (
	dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	dns1123Label     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dns1035Label     = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
)

func isDNSSubdomain(s string) bool { return len(s) <= 253 && dns1123Subdomain.MatchString(s) }
func isDNSLabel(s string) bool     { return len(s) <= 63 && dns1123Label.MatchString(s) }

// meta checks name, namespace, labels and annotations under p.
func (v *validator) meta(p fieldPath, kind string, m objectMeta) {
	switch {
	case m.Name == "":
		v.addf(p.child("name"), "required")
	case !isDNSSubdomain(m.Name):
		v.addf(p.child("name"), "%q is not a DNS-1123 name (lowercase alphanumerics, '-' and '.', at most 253 characters)", m.Name)
	}
	switch {
	case kind == KindCiliumClusterwideNetworkPolicy:
		if m.Namespace != "" {
			v.addf(p.child("namespace"), "%q: a %s has no namespace", m.Namespace, kind)
		}
	case m.Namespace == "":
		v.addf(p.child("namespace"), "required")
	case !isDNSLabel(m.Namespace):
		v.addf(p.child("namespace"), "%q is not a DNS-1123 label (lowercase alphanumerics and '-', at most 63 characters)", m.Namespace)
	}
	for _, k := range sortedKeys(m.Labels) {
		if err := labels.ValidateKey(k); err != nil {
			v.wrap(p.child("labels"), err)
		} else if err := labels.ValidateValue(m.Labels[k]); err != nil {
			v.wrap(p.child("labels").key(k), err)
		}
	}
	for _, k := range sortedKeys(m.Annotations) {
		if err := labels.ValidateKey(k); err != nil {
			v.wrap(p.child("annotations"), err)
		}
	}
}

func (v *validator) rule(p fieldPath, r *Rule, sc scope) {
	switch {
	case r.EndpointSelector == nil && r.NodeSelector == nil:
		v.addf(p.child("endpointSelector"), "required: a rule must select endpoints (endpointSelector) or nodes (nodeSelector)")
	case r.EndpointSelector != nil && r.NodeSelector != nil:
		v.addf(p.child("nodeSelector"), "cannot be combined with endpointSelector")
	}
	if r.EndpointSelector != nil {
		sp := p.child("endpointSelector")
		v.selector(sp, r.EndpointSelector, true)
		if sc.namespace != "" {
			for _, k := range sortedKeys(r.EndpointSelector.MatchLabels) {
				val := r.EndpointSelector.MatchLabels[k]
				if _, key := SplitKey(k); key == labels.KeyNamespace && val != sc.namespace {
					v.addf(sp.child("matchLabels").key(k), "%q: a %s only selects endpoints of its own namespace %q", val, sc.kind, sc.namespace)
				}
			}
		}
	}
	if r.NodeSelector != nil {
		if sc.kind != KindCiliumClusterwideNetworkPolicy {
			v.addf(p.child("nodeSelector"), "only allowed in a %s", KindCiliumClusterwideNetworkPolicy)
		}
		v.selector(p.child("nodeSelector"), r.NodeSelector, true)
	}
	for i := range r.Ingress {
		v.ingress(p.child("ingress").index(i), &r.Ingress[i], false)
	}
	for i := range r.IngressDeny {
		v.ingress(p.child("ingressDeny").index(i), &r.IngressDeny[i], true)
	}
	for i := range r.Egress {
		v.egress(p.child("egress").index(i), &r.Egress[i], false)
	}
	for i := range r.EgressDeny {
		v.egress(p.child("egressDeny").index(i), &r.EgressDeny[i], true)
	}
	for i, l := range r.Labels {
		if _, err := labels.Parse(l); err != nil {
			v.wrap(p.child("labels").index(i), err)
		}
	}
}

func (v *validator) ingress(p fieldPath, r *IngressRule, deny bool) {
	v.selectors(p.child("fromEndpoints"), r.FromEndpoints)
	v.selectors(p.child("fromRequires"), r.FromRequires)
	v.cidrs(p.child("fromCIDR"), r.FromCIDR)
	v.cidrSets(p.child("fromCIDRSet"), r.FromCIDRSet)
	v.entities(p.child("fromEntities"), r.FromEntities)
	if deny && v.strict {
		v.denyEntities(p.child("fromEntities"), r.FromEntities)
	}
	v.groups(p.child("fromGroups"), r.FromGroups)
	v.selectors(p.child("fromNodes"), r.FromNodes)
	v.ports(p, r.ToPorts, r.ICMPs, deny)
}

// denyEntities refuses in a deny rule the entities that select nothing
// yet: such a rule would deny nothing (fail open; until 2026-12-05 it was
// imported with a warning). Named ports and toServices likewise.
func (v *validator) denyEntities(p fieldPath, es []Entity) {
	for i, e := range es {
		if e == EntityKubeAPIServer {
			v.addf(p.index(i), "%s in a deny rule: the entity selects nothing yet, so it would deny nothing", e)
		}
	}
}

func (v *validator) egress(p fieldPath, r *EgressRule, deny bool) {
	v.selectors(p.child("toEndpoints"), r.ToEndpoints)
	v.selectors(p.child("toRequires"), r.ToRequires)
	v.cidrs(p.child("toCIDR"), r.ToCIDR)
	v.cidrSets(p.child("toCIDRSet"), r.ToCIDRSet)
	v.entities(p.child("toEntities"), r.ToEntities)
	if deny && v.strict {
		v.denyEntities(p.child("toEntities"), r.ToEntities)
		if len(r.ToServices) > 0 {
			v.addf(p.child("toServices"), "not allowed in a deny rule (services are not resolved yet, so it would deny nothing)")
		}
	}
	v.groups(p.child("toGroups"), r.ToGroups)
	v.selectors(p.child("toNodes"), r.ToNodes)
	for i, s := range r.ToServices {
		v.service(p.child("toServices").index(i), s)
	}
	if deny && len(r.ToFQDNs) > 0 {
		v.addf(p.child("toFQDNs"), "not allowed in a deny rule")
	}
	for i, f := range r.ToFQDNs {
		v.fqdn(p.child("toFQDNs").index(i), f)
	}
	v.ports(p, r.ToPorts, r.ICMPs, deny)
}

// selector checks keys, values and requirements. withSource allows Cilium's
// `source:key` keys; Kubernetes selectors have plain keys.
func (v *validator) selector(p fieldPath, s *EndpointSelector, withSource bool) {
	for _, k := range sortedKeys(s.MatchLabels) {
		if v.selectorKey(p.child("matchLabels"), k, withSource) {
			if err := labels.ValidateValue(s.MatchLabels[k]); err != nil {
				v.wrap(p.child("matchLabels").key(k), err)
			}
		}
	}
	for i, r := range s.MatchExpressions {
		ep := p.child("matchExpressions").index(i)
		if r.Key == "" {
			v.addf(ep.child("key"), "required")
		} else {
			v.selectorKey(ep.child("key"), r.Key, withSource)
		}
		switch r.Operator {
		case OpIn, OpNotIn:
			if len(r.Values) == 0 {
				v.addf(ep.child("values"), "operator %s needs at least one value", r.Operator)
			}
		case OpExists, OpDoesNotExist:
			if len(r.Values) > 0 {
				v.addf(ep.child("values"), "%q: operator %s takes no values", r.Values, r.Operator)
			}
		default:
			v.addf(ep.child("operator"), "%q is not one of In, NotIn, Exists, DoesNotExist", r.Operator)
		}
		for j, val := range r.Values {
			if err := labels.ValidateValue(val); err != nil {
				v.wrap(ep.child("values").index(j), err)
			}
		}
	}
}

func (v *validator) selectorKey(p fieldPath, k string, withSource bool) bool {
	source, key := labels.SourceK8s, k
	if withSource {
		source, key = SplitKey(k)
	}
	if source == labels.SourceCIDR {
		if _, err := netip.ParsePrefix(key); err != nil {
			v.addf(p, "key %q: %q is not a CIDR", k, key)
			return false
		}
		return true
	}
	if err := labels.ValidateKey(key); err != nil {
		v.wrap(p, err)
		return false
	}
	return true
}

func (v *validator) selectors(p fieldPath, ss []EndpointSelector) {
	for i := range ss {
		v.selector(p.index(i), &ss[i], true)
	}
}

// ParseCIDR reads a prefix, or a bare address as a full-length prefix.
func ParseCIDR(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("zone %q not allowed", a.Zone())
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (v *validator) cidr(p fieldPath, s string) (netip.Prefix, bool) {
	if s == "" {
		v.addf(p, "required")
		return netip.Prefix{}, false
	}
	pfx, err := ParseCIDR(s)
	if err != nil {
		v.addf(p, "%q is not a CIDR or IP address", s)
		return netip.Prefix{}, false
	}
	return pfx, true
}

func (v *validator) cidrs(p fieldPath, ss []string) {
	for i, s := range ss {
		v.cidr(p.index(i), s)
	}
}

func (v *validator) cidrSet(p fieldPath, r CIDRRule) {
	outer, ok := v.cidr(p.child("cidr"), r.CIDR)
	for i, e := range r.Except {
		inner, iok := v.cidr(p.child("except").index(i), e)
		if ok && iok && !ContainsPrefix(outer, inner) {
			v.addf(p.child("except").index(i), "%q is not inside cidr %q", e, r.CIDR)
		}
	}
}

func (v *validator) cidrSets(p fieldPath, rs []CIDRRule) {
	for i, r := range rs {
		v.cidrSet(p.index(i), r)
	}
}

// ContainsPrefix reports whether inner lies within outer (same family).
func ContainsPrefix(outer, inner netip.Prefix) bool {
	return outer.Addr().Is4() == inner.Addr().Is4() &&
		inner.Bits() >= outer.Bits() && outer.Masked().Contains(inner.Addr())
}

var entities = []Entity{EntityWorld, EntityCluster, EntityHost, EntityRemoteNode,
	EntityKubeAPIServer, EntityHealth, EntityInit, EntityUnmanaged, EntityAll}

func (v *validator) entities(p fieldPath, es []Entity) {
	for i, e := range es {
		if !slices.Contains(entities, e) {
			v.addf(p.index(i), "%q is not one of %s", e, join(entities))
		}
	}
}

func (v *validator) groups(p fieldPath, gs []Groups) {
	for i, g := range gs {
		gp := p.index(i)
		switch {
		case g.AWS == nil:
			v.addf(gp.child("aws"), "required")
		case len(g.AWS.SecurityGroupsIDs) == 0 && len(g.AWS.SecurityGroupsNames) == 0 && len(g.AWS.Labels) == 0:
			v.addf(gp.child("aws"), "needs securityGroupsIds, securityGroupsNames or labels")
		}
	}
}

func (v *validator) service(p fieldPath, s Service) {
	switch {
	case s.K8sService == nil && s.K8sServiceSelector == nil:
		v.addf(p, "needs k8sService or k8sServiceSelector")
	case s.K8sService != nil && s.K8sServiceSelector != nil:
		v.addf(p.child("k8sServiceSelector"), "cannot be combined with k8sService")
	}
	if svc := s.K8sService; svc != nil {
		sp := p.child("k8sService")
		if len(svc.ServiceName) > 63 || !dns1035Label.MatchString(svc.ServiceName) {
			v.addf(sp.child("serviceName"), "%q is not a service name (DNS-1035 label)", svc.ServiceName)
		}
		v.optionalNamespace(sp.child("namespace"), svc.Namespace)
	}
	if sel := s.K8sServiceSelector; sel != nil {
		sp := p.child("k8sServiceSelector")
		v.selector(sp.child("selector"), &sel.Selector, true)
		v.optionalNamespace(sp.child("namespace"), sel.Namespace)
	}
}

func (v *validator) optionalNamespace(p fieldPath, ns string) {
	if ns != "" && !isDNSLabel(ns) {
		v.addf(p, "%q is not a namespace name (DNS-1123 label)", ns)
	}
}

var (
	fqdnName    = regexp.MustCompile(`^[-a-zA-Z0-9_]+(\.[-a-zA-Z0-9_]+)*\.?$`)
	fqdnPattern = regexp.MustCompile(`^[-a-zA-Z0-9_*]+(\.[-a-zA-Z0-9_*]+)*\.?$`)
)

func (v *validator) fqdn(p fieldPath, f FQDNSelector) {
	switch {
	case f.MatchName == "" && f.MatchPattern == "":
		v.addf(p, "needs matchName or matchPattern")
	case f.MatchName != "" && f.MatchPattern != "":
		v.addf(p.child("matchPattern"), "cannot be combined with matchName")
	case f.MatchName != "" && (len(strings.TrimSuffix(f.MatchName, ".")) > 253 || !fqdnName.MatchString(f.MatchName)):
		v.addf(p.child("matchName"), "%q is not a DNS name (at most 253 characters)", f.MatchName)
	case f.MatchPattern != "" && (len(strings.TrimSuffix(f.MatchPattern, ".")) > 253 || !fqdnPattern.MatchString(f.MatchPattern)):
		v.addf(p.child("matchPattern"), "%q is not a DNS name pattern (DNS characters and '*')", f.MatchPattern)
	}
}

func join[T ~string](xs []T) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = string(x)
	}
	return strings.Join(out, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
