package policy

// Trace answers "would this connection be allowed, and why" for label sets,
// with the same deny/allow/default logic as the datapath.

import (
	"strings"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/policy/api"
)

// Trace verdicts.
const (
	VerdictAllowed = "allowed"
	VerdictDenied  = "denied"
)

// TraceResult is the verdict of a traced connection.
type TraceResult struct {
	Verdict string `json:"verdict"` // VerdictAllowed or VerdictDenied
	// Reason says which side decided and how, like `ingress of dst: denied
	// by default/deny-db ingressDeny[0]`, `ingress of dst: default deny (no
	// rule allows)` or `not enforced`.
	Reason string `json:"reason"`
	// Rule is the rule that decided: the deny, or for an allowed
	// connection the allow of the ingress side, else of the egress side;
	// nil for a default verdict.
	Rule *RuleRef `json:"rule,omitempty"`
	// Enforced is whether either side enforces policy in its direction.
	Enforced bool `json:"enforced"`
	// Proxy is whether an allowed flow goes through the node's L7 proxy:
	// a side's deciding allow carries HTTP rules.
	Proxy bool `json:"proxy,omitempty"`
	// L7 lists, per side whose deciding allow is L7, the HTTP rules the
	// proxy applies to the flow's requests.
	L7 []TraceL7 `json:"l7,omitempty"`
}

// TraceL7 is the HTTP policy one side applies to a traced flow: a request
// goes through when one of Rules matches it.
type TraceL7 struct {
	Side string `json:"side"` // "egress of src" or "ingress of dst"
	// Rules are in the order the proxy tries them (any peer's first).
	Rules []TraceHTTPRule `json:"rules"`
}

// TraceHTTPRule is one HTTP rule and where it comes from.
type TraceHTTPRule struct {
	// Ref is the L7Ref of its port rule: policy/rules[i].section.toPorts[j].
	Ref string `json:"ref"`
	api.PortRuleHTTP
}

// traceID stands for a traced peer that is not a reserved identity: a
// cluster identity that no stored identity can be confused with, since
// peers are matched by their labels only.
const traceID identity.NumericIdentity = 0xffffff

// Trace evaluates a connection from an endpoint with labels src to an
// endpoint with labels dst on protocol proto and port (ICMP type) port: it
// is allowed only if the egress policy of src allows it towards dst and the
// ingress policy of dst allows it from src. Neither needs to be a known
// endpoint; each is treated as a cluster identity with its labels, or as
// the reserved identity whose labels it has.
func (r *Resolver) Trace(src, dst labels.Labels, proto uint8, port uint16) TraceResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	eg := r.traceSide(src, Egress, traceIdentity(dst), proto, port)
	in := r.traceSide(dst, Ingress, traceIdentity(src), proto, port)
	res := TraceResult{Verdict: VerdictAllowed, Enforced: eg.enforced || in.enforced}
	if !eg.denied && !in.denied {
		for _, sd := range []struct {
			name string
			v    sideVerdict
		}{{"egress of src", eg}, {"ingress of dst", in}} {
			if sd.v.l7 != nil {
				res.Proxy = true
				res.L7 = append(res.L7, TraceL7{Side: sd.name, Rules: sd.v.l7})
			}
		}
	}
	switch {
	case eg.denied:
		res.Verdict, res.Reason, res.Rule = VerdictDenied, "egress of src: "+eg.how, eg.rule
	case in.denied:
		res.Verdict, res.Reason, res.Rule = VerdictDenied, "ingress of dst: "+in.how, in.rule
	case eg.rule == nil && in.rule == nil && !res.Enforced:
		res.Reason = "not enforced"
	default:
		res.Reason = "egress of src: " + eg.how + "; ingress of dst: " + in.how
		res.Rule = in.rule
		if res.Rule == nil {
			res.Rule = eg.rule
		}
	}
	return res
}

// sideVerdict is the verdict of one direction of one endpoint.
type sideVerdict struct {
	denied, enforced bool
	how              string
	rule             *RuleRef
	// l7 are the HTTP rules the proxy applies when the deciding allow is
	// L7.
	l7 []TraceHTTPRule
}

func traceIdentity(ls labels.Labels) *knownIdentity {
	if id, ok := identity.LookupReserved(ls); ok {
		return &knownIdentity{id: id, labels: ls}
	}
	return &knownIdentity{id: traceID, labels: ls}
}

// traceSide evaluates direction dir of an endpoint with labels ep for
// traffic with peer: it builds the two groups the datapath would look up
// (the peer's identity and identity 0) from the rules selecting ep.
func (r *Resolver) traceSide(ep labels.Labels, dir Direction, peer *knownIdentity, proto uint8, port uint16) sideVerdict {
	if r.mode == ModeNever {
		return sideVerdict{how: "not enforced"}
	}
	rules := r.selectingRules(ep)
	in, eg := r.enforcement(rules)
	enforced := eg
	if dir == Ingress {
		enforced = in
	}
	peerGroup, anyGroup := map[L4]MapValue{}, map[L4]MapValue{}
	reqs := requiresOf(rules)[dir]
	for _, cr := range rules {
		for _, s := range cr.sections {
			if s.dir != dir {
				continue
			}
			// As the resolver: an allow's peers must meet every rule's
			// requirements; an any-peer allow under requirements is the
			// peer's own entry.
			ok := s.deny || satisfies(reqs, peer) || s.unconstrained(peer)
			switch {
			case s.peers.any && (s.deny || len(reqs) == 0):
				addSection1(anyGroup, s, false)
			case s.peers.any && ok:
				addSection1(peerGroup, s, true)
			}
			if ok && s.peers.matches(peer) {
				addSection1(peerGroup, s, s.peers.every)
			}
		}
	}
	applyDenyPrecedence(peerGroup)
	applyDenyPrecedence(anyGroup)
	vp, okp := lookupL4(peerGroup, proto, port)
	va, oka := lookupL4(anyGroup, proto, port)
	decide := func(v MapValue) sideVerdict {
		ref := v.Rule
		if v.Deny {
			return sideVerdict{denied: true, enforced: enforced, how: "denied by " + ref.String(), rule: &ref}
		}
		sv := sideVerdict{enforced: enforced, how: "allowed by " + ref.String(), rule: &ref}
		if v.L7 != "" {
			sv.l7 = r.traceL7(anyGroup, peerGroup, proto, port)
		}
		return sv
	}
	switch {
	case okp && vp.Deny:
		return decide(vp)
	case oka && va.Deny:
		return decide(va)
	case okp:
		return decide(vp)
	case oka:
		return decide(va)
	case enforced:
		return sideVerdict{denied: true, enforced: true, how: "default deny (no rule allows)"}
	}
	return sideVerdict{how: "not enforced"}
}

// traceL7 lists the HTTP rules the proxy applies to a flow on proto and
// port whose deciding allow is L7, as L7Policies hands them to it: those
// of the any-peer entry of the exact port, then the peer's, each only when
// that entry is an L7 allow.
func (r *Resolver) traceL7(anyGroup, peerGroup map[L4]MapValue, proto uint8, port uint16) []TraceHTTPRule {
	exact := l4Prefix(L4{Proto: proto, Port: port}.bits(), 24)
	byRef := r.l7Rules()
	out := []TraceHTTPRule{}
	for _, g := range []map[L4]MapValue{anyGroup, peerGroup} {
		v, ok := g[exact]
		if !ok || v.Deny || v.L7 == "" {
			continue
		}
		for _, ref := range strings.Split(v.L7, "\n") {
			if byRef[ref] == nil {
				continue
			}
			for _, h := range byRef[ref].HTTP {
				out = append(out, TraceHTTPRule{Ref: ref, PortRuleHTTP: h})
			}
		}
	}
	return out
}
