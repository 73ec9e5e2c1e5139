package policy

import (
	"slices"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy/api"
)

// fromRequires and toRequires of any rule selecting an endpoint constrain
// every allow of that endpoint in that direction by endpoint selector or
// wildcard, whatever rule the allow is in (Cilium: requirements "stay in
// effect no matter what would otherwise be allowed by the other rules";
// it adds them to endpoint selectors, not to entities or CIDRs); deny
// rules are not narrowed.
// Found 2026-12-05 by reading the resolver: a requirement applied only
// to its own section, so Cilium's documented pair (one policy requiring
// env=prod, another allowing role=frontend) let env=dev frontends in.
// The datapath's entries (dpVerdict), the incremental path (an identity
// learned after the policies) and policy trace agree.
func TestRequiresApplyAcrossRules(t *testing.T) {
	var (
		feProd = cid(1) // role=frontend env=prod
		feDev  = cid(2) // role=frontend env=dev
		beProd = cid(3) // role=backend env=prod
		late   = cid(4) // role=frontend env=dev, learned last
	)
	w := rsWorld{
		identities: []identity.Identity{
			{ID: feProd, Labels: rsLabels(t, "k8s:role=frontend,k8s:env=prod")},
			{ID: feDev, Labels: rsLabels(t, "k8s:role=frontend,k8s:env=dev")},
			{ID: beProd, Labels: rsLabels(t, "k8s:role=backend,k8s:env=prod")},
		},
		endpoints: []EndpointInfo{{ID: 7, Identity: beProd, Labels: rsLabels(t, "k8s:role=backend,k8s:env=prod")}},
	}
	ps := []api.Policy{
		rsPol("require-prod", api.Rule{EndpointSelector: rsSel("role=backend"),
			Ingress: []api.IngressRule{{FromRequires: rsSels("env=prod")}},
			Egress:  []api.EgressRule{{ToRequires: rsSels("env=prod")}}}),
		rsPol("allow-frontend", api.Rule{EndpointSelector: rsSel("role=backend"),
			Ingress: []api.IngressRule{{FromEndpoints: rsSels("role=frontend"), ToPorts: rsPorts(api.ProtoTCP, "80")}},
			Egress:  []api.EgressRule{{ToEndpoints: rsSels("role=frontend"), ToPorts: rsPorts(api.ProtoTCP, "80")}}}),
		rsPol("any-on-81", api.Rule{EndpointSelector: rsSel("role=backend"),
			Ingress: []api.IngressRule{{ToPorts: rsPorts(api.ProtoTCP, "81")}}}),
		rsPol("entities", api.Rule{EndpointSelector: rsSel("role=backend"),
			Egress:  []api.EgressRule{{ToEntities: []api.Entity{api.EntityWorld}, ToPorts: rsPorts(api.ProtoTCP, "443")}},
			Ingress: []api.IngressRule{{FromEntities: []api.Entity{api.EntityHost}, ToPorts: rsPorts(api.ProtoTCP, "22")}}}),
		rsPol("deny-dev-82", api.Rule{EndpointSelector: rsSel("role=backend"),
			Ingress:     []api.IngressRule{{FromEntities: []api.Entity{api.EntityAll}, ToPorts: rsPorts(api.ProtoTCP, "82")}},
			IngressDeny: []api.IngressRule{{FromEndpoints: rsSels("env=dev"), ToPorts: rsPorts(api.ProtoTCP, "82")}}}),
	}
	r := w.build(ModeDefault, ps)
	r.UpsertIdentity(identity.Identity{ID: late, Labels: rsLabels(t, "k8s:role=frontend,k8s:env=dev")})
	p := mustEP(t, r, 7)
	for _, c := range []struct {
		name string
		dir  Direction
		peer identity.NumericIdentity
		port uint16
		want bool
	}{
		{"ingress from a prod frontend", Ingress, feProd, 80, true},
		{"ingress from a dev frontend", Ingress, feDev, 80, false},
		{"ingress from a dev frontend learned later", Ingress, late, 80, false},
		{"egress to a prod frontend", Egress, feProd, 80, true},
		{"egress to a dev frontend", Egress, feDev, 80, false},
		{"any peer on 81: prod", Ingress, beProd, 81, true},
		{"any peer on 81: dev", Ingress, feDev, 81, false},
		{"any peer on 81: dev, learned later", Ingress, late, 81, false},
		{"any peer on 81: the world", Ingress, identity.World, 81, false},
		{"deny of dev on 82 stands", Ingress, feDev, 82, false},
		{"all on 82: prod", Ingress, feProd, 82, true},
		// As in Cilium, requirements narrow endpoint selectors and the
		// wildcard, not entities, CIDRs or toFQDNs.
		{"egress to the world by entity", Egress, identity.World, 443, true},
		{"ingress from the host by entity", Ingress, identity.Host, 22, true},
	} {
		if got, _ := dpVerdict(p, c.dir, c.peer, 6, c.port); got != c.want {
			t.Errorf("%s: allowed %v, want %v", c.name, got, c.want)
		}
	}
	// A fresh resolver built with the late identity from the start has
	// the same entries.
	w.identities = append(w.identities, identity.Identity{ID: late, Labels: rsLabels(t, "k8s:role=frontend,k8s:env=dev")})
	if diff := sameState(w.build(ModeDefault, ps), r); diff != "" {
		t.Errorf("incremental and fresh differ: %s", diff)
	}
	// Policy trace says the same.
	for _, c := range []struct {
		src  string
		port uint16
		want string
	}{
		{"role=frontend,env=prod", 80, VerdictAllowed},
		{"role=frontend,env=dev", 80, VerdictDenied},
		{"role=frontend,env=dev", 81, VerdictDenied},
		{"role=db,env=prod", 81, VerdictAllowed},
	} {
		if got := r.Trace(rsLabels(t, c.src), rsLabels(t, "role=backend,env=prod"), 6, c.port); got.Verdict != c.want {
			t.Errorf("trace %s -> backend:%d = %v (%s), want %v", c.src, c.port, got.Verdict, got.Reason, c.want)
		}
	}
}

// An any-peer allow expanded under requirements gives each identity that
// meets them an entry of its own; those entries are Wide, so they do not
// open the nodes' control ports (only an allow naming the peer and the
// exact port does, MapValue.Wide and the datapath's POLICY_F_PORT). Found
// 2026-12-05: a requirement the host meets (NotIn, DoesNotExist) made a
// ports-only allow on 7946 open the host's memberlist port to the pod.
func TestExpandedAnyPeerDoesNotNameControlPorts(t *testing.T) {
	be := cid(3)
	w := rsWorld{
		identities: []identity.Identity{{ID: be, Labels: rsLabels(t, "k8s:role=backend,k8s:env=prod")}},
		endpoints:  []EndpointInfo{{ID: 7, Identity: be, Labels: rsLabels(t, "k8s:role=backend,k8s:env=prod")}},
	}
	notQuarantined := []api.EndpointSelector{{MatchExpressions: []api.SelectorRequirement{{Key: "env", Operator: api.OpNotIn, Values: []string{"quarantine"}}}}}
	tcp := func(port uint16) L4 { return L4{PrefixLen: 24, Proto: 6, Port: port} }
	for _, c := range []struct {
		name     string
		ps       []api.Policy
		port     uint16
		wantWide bool
	}{
		{"ports only, another rule's requirement", []api.Policy{
			rsPol("not-quarantined", api.Rule{EndpointSelector: rsSel("role=backend"), Egress: []api.EgressRule{{ToRequires: notQuarantined}}}),
			rsPol("any-on-7946", api.Rule{EndpointSelector: rsSel("role=backend"), Egress: []api.EgressRule{{ToPorts: rsPorts(api.ProtoTCP, "7946")}}}),
		}, 7946, true},
		{"ports only, the section's own requirement", []api.Policy{
			rsPol("own", api.Rule{EndpointSelector: rsSel("role=backend"), Egress: []api.EgressRule{{ToRequires: notQuarantined, ToPorts: rsPorts(api.ProtoTCP, "7946")}}}),
		}, 7946, true},
		{"entity all", []api.Policy{
			rsPol("not-quarantined", api.Rule{EndpointSelector: rsSel("role=backend"), Egress: []api.EgressRule{{ToRequires: notQuarantined}}}),
			rsPol("all-on-7946", api.Rule{EndpointSelector: rsSel("role=backend"), Egress: []api.EgressRule{{ToEntities: []api.Entity{api.EntityAll}, ToPorts: rsPorts(api.ProtoTCP, "7946")}}}),
		}, 7946, true},
		{"the host named too", []api.Policy{
			rsPol("not-quarantined", api.Rule{EndpointSelector: rsSel("role=backend"), Egress: []api.EgressRule{{ToRequires: notQuarantined}}}),
			rsPol("any-on-7946", api.Rule{EndpointSelector: rsSel("role=backend"), Egress: []api.EgressRule{{ToPorts: rsPorts(api.ProtoTCP, "7946")}}}),
			rsPol("host-on-7946", api.Rule{EndpointSelector: rsSel("role=backend"), Egress: []api.EgressRule{{ToEntities: []api.Entity{api.EntityHost}, ToPorts: rsPorts(api.ProtoTCP, "7946")}}}),
		}, 7946, false},
	} {
		r := w.build(ModeDefault, c.ps)
		check := func(how string, r *Resolver) {
			t.Helper()
			v, ok := mustEP(t, r, 7).Entries[MapKey{Endpoint: 7, Dir: Egress, Identity: identity.Host, L4: tcp(c.port)}]
			if !ok || v.Deny || v.Wide != c.wantWide {
				t.Errorf("%s (%s): the host's entry on %d: %+v (present %v), want an allow, wide %v", c.name, how, c.port, v, ok, c.wantWide)
			}
		}
		check("fresh", r)
		// An identity learned later (recomputeIdentityGroups) gets what a
		// fresh resolver gives it.
		late := identity.Identity{ID: cid(4), Labels: rsLabels(t, "k8s:role=frontend,k8s:env=prod")}
		r.UpsertIdentity(late)
		if v := mustEP(t, r, 7).Entries[MapKey{Endpoint: 7, Dir: Egress, Identity: late.ID, L4: tcp(c.port)}]; !v.Wide {
			t.Errorf("%s: the later identity's entry %+v, want wide", c.name, v)
		}
		w2 := w
		w2.identities = append(slices.Clone(w.identities), late)
		check("fresh, with the later identity", w2.build(ModeDefault, c.ps))
		if diff := sameState(w2.build(ModeDefault, c.ps), r); diff != "" {
			t.Errorf("%s: incremental and fresh differ: %s", c.name, diff)
		}
	}
}

// A port range names none of its ports exactly: its edge port alone in
// its block (9962 of 8000-9962) is Wide, so it does not open a node's
// control port there; the port named alone does. Until 2026-12-07 a
// range ending (or starting) on a control port opened it, and one a port
// further did not (found by a review).
func TestRangeDoesNotNameControlPort(t *testing.T) {
	be := cid(3)
	w := rsWorld{
		identities: []identity.Identity{{ID: be, Labels: rsLabels(t, "k8s:role=backend")}},
		endpoints:  []EndpointInfo{{ID: 7, Identity: be, Labels: rsLabels(t, "k8s:role=backend")}},
	}
	tcp := func(port uint16) L4 { return L4{PrefixLen: 24, Proto: 6, Port: port} }
	hostOn := func(name string, ports ...api.PortProtocol) api.Policy {
		return rsPol(name, api.Rule{EndpointSelector: rsSel("role=backend"), Egress: []api.EgressRule{{ToEntities: []api.Entity{api.EntityHost},
			ToPorts: []api.PortRule{{Ports: ports}}}}})
	}
	for _, c := range []struct {
		name     string
		p        api.Policy
		port     uint16
		wantWide bool
	}{
		{"range ending on it", hostOn("r1", api.PortProtocol{Port: "8000", EndPort: 9962, Protocol: api.ProtoTCP}), 9962, true},
		{"range starting on it", hostOn("r2", api.PortProtocol{Port: "7945", EndPort: 8000, Protocol: api.ProtoTCP}), 7945, true},
		{"the port alone", hostOn("one", api.PortProtocol{Port: "9962", Protocol: api.ProtoTCP}), 9962, false},
		{"the port alone and in a range", hostOn("both", api.PortProtocol{Port: "8000", EndPort: 9962, Protocol: api.ProtoTCP},
			api.PortProtocol{Port: "9962", Protocol: api.ProtoTCP}), 9962, false},
		// Named with L7 rules in one port rule, in a range in another (the
		// review of the first fix found it Wide).
		{"the port alone with L7 rules and in a range", rsPol("l7", api.Rule{EndpointSelector: rsSel("role=backend"), Egress: []api.EgressRule{{ToEntities: []api.Entity{api.EntityHost},
			ToPorts: []api.PortRule{
				{Ports: []api.PortProtocol{{Port: "9962", Protocol: api.ProtoTCP}}, Rules: &api.L7Rules{HTTP: []api.PortRuleHTTP{{Method: "GET"}}}},
				{Ports: []api.PortProtocol{{Port: "8000", EndPort: 9962, Protocol: api.ProtoTCP}}},
			}}}}), 9962, false},
	} {
		r := w.build(ModeDefault, []api.Policy{c.p})
		v, ok := mustEP(t, r, 7).Entries[MapKey{Endpoint: 7, Dir: Egress, Identity: identity.Host, L4: tcp(c.port)}]
		if !ok || v.Deny || v.Wide != c.wantWide {
			t.Errorf("%s: the host's entry on %d: %+v (present %v), want an allow, wide %v", c.name, c.port, v, ok, c.wantWide)
		}
	}
}
