package policy

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy/api"
)

func httpPorts(port string, rules ...api.PortRuleHTTP) []api.PortRule {
	return []api.PortRule{{Ports: []api.PortProtocol{{Port: port, Protocol: api.ProtoTCP}}, Rules: &api.L7Rules{HTTP: rules}}}
}

// HTTP rules mark their entries L7; rules for one peer and port are OR'd,
// and an allow of the same port without HTTP rules lets every request
// through (no proxy for that peer).
func TestResolveL7(t *testing.T) {
	web, admin := cid(1), cid(2)
	w := rsWorld{
		identities: []identity.Identity{{ID: web, Labels: rsLabels(t, "app=web")}, {ID: admin, Labels: rsLabels(t, "app=admin")}},
		endpoints:  []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=db")}},
	}
	public := api.PortRuleHTTP{Method: "GET", Path: "/public/.*"}
	health := api.PortRuleHTTP{Path: "/healthz"}
	pols := []api.Policy{rsPol("l7", api.Rule{EndpointSelector: rsSel("app=db"), Ingress: []api.IngressRule{
		{FromEndpoints: rsSels("app=web"), ToPorts: httpPorts("80", public)},
		{ToPorts: httpPorts("80", health)},
		{FromEndpoints: rsSels("app=admin"), ToPorts: httpPorts("80", health)},
		{FromEndpoints: rsSels("app=admin"), ToPorts: rsPorts(api.ProtoTCP, "80")},
	}})}
	r := w.build(ModeDefault, pols)
	got := r.L7Policies()
	want := []L7Policy{
		{Endpoint: 1, Dir: Ingress, Proto: 6, Port: 80, Identity: 0, Refs: []string{"default/l7/rules[0].ingress[1].toPorts[0]"}, HTTP: []api.PortRuleHTTP{health}},
		{Endpoint: 1, Dir: Ingress, Proto: 6, Port: 80, Identity: web, Refs: []string{"default/l7/rules[0].ingress[0].toPorts[0]"}, HTTP: []api.PortRuleHTTP{public}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("L7Policies:\n got %+v\nwant %+v", got, want)
	}
	ep := mustEP(t, r, 1)
	for k, v := range ep.Entries {
		if k.Identity == admin && v.L7 != "" {
			t.Errorf("admin's entry %v is L7 (%q) though an allow without HTTP rules names its port", k, v.L7)
		}
	}

	// A second HTTP rule for web on the same port: OR'd with the first.
	pols[0].Rules[0].Ingress = append(pols[0].Rules[0].Ingress, api.IngressRule{FromEndpoints: rsSels("app=web"), ToPorts: httpPorts("80", health)})
	r = w.build(ModeDefault, pols)
	for _, p := range r.L7Policies() {
		if p.Identity != web {
			continue
		}
		if want := []api.PortRuleHTTP{public, health}; !reflect.DeepEqual(p.HTTP, want) {
			t.Errorf("web's rules %+v, want %+v", p.HTTP, want)
		}
		if len(p.Refs) != 2 {
			t.Errorf("web's refs %q, want two", p.Refs)
		}
	}
}

// Trace of a flow whose deciding allow is L7 says it goes through the
// proxy and lists the rules the proxy applies, in the proxy's order (any
// peer's first); an allow without HTTP rules, a flow of another port and a
// denied flow have none.
func TestTraceL7(t *testing.T) {
	web, admin := cid(1), cid(2)
	w := rsWorld{
		identities: []identity.Identity{{ID: web, Labels: rsLabels(t, "app=web")}, {ID: admin, Labels: rsLabels(t, "app=admin")}},
		endpoints:  []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=db")}},
	}
	public := api.PortRuleHTTP{Method: "GET", Path: "/public/.*"}
	health := api.PortRuleHTTP{Path: "/healthz", Headers: []string{"X-Probe"},
		HeaderMatches: []api.HeaderMatch{{Name: "X-Team", Value: "ops", Mismatch: "LOG"}}}
	pols := []api.Policy{rsPol("l7", api.Rule{EndpointSelector: rsSel("app=db"), Ingress: []api.IngressRule{
		{FromEndpoints: rsSels("app=web"), ToPorts: httpPorts("80", public)},
		{ToPorts: httpPorts("80", health)},
		{FromEndpoints: rsSels("app=admin"), ToPorts: rsPorts(api.ProtoTCP, "80")},
		{FromEndpoints: rsSels("app=web"), ToPorts: rsPorts(api.ProtoTCP, "5432")},
	}})}
	r := w.build(ModeDefault, pols)

	got := r.Trace(rsLabels(t, "app=web"), rsLabels(t, "app=db"), 6, 80)
	want := []TraceL7{{Side: "ingress of dst", Rules: []TraceHTTPRule{
		{Ref: "default/l7/rules[0].ingress[1].toPorts[0]", PortRuleHTTP: health},
		{Ref: "default/l7/rules[0].ingress[0].toPorts[0]", PortRuleHTTP: public},
	}}}
	if got.Verdict != VerdictAllowed || !got.Proxy || !reflect.DeepEqual(got.L7, want) {
		t.Fatalf("web → db:80: %+v\nwant L7 %+v", got, want)
	}
	// The peers L7Policies hands the proxy for this port: the same rules.
	var fromPolicies []api.PortRuleHTTP
	for _, p := range r.L7Policies() {
		if p.Identity == 0 || p.Identity == web {
			fromPolicies = append(fromPolicies, p.HTTP...)
		}
	}
	if !reflect.DeepEqual(fromPolicies, []api.PortRuleHTTP{health, public}) {
		t.Fatalf("L7Policies hands the proxy %+v", fromPolicies)
	}

	// Another peer allowed by the any-peer L7 rule only.
	got = r.Trace(rsLabels(t, "app=other"), rsLabels(t, "app=db"), 6, 80)
	if !got.Proxy || len(got.L7) != 1 || len(got.L7[0].Rules) != 1 || got.L7[0].Rules[0].PortRuleHTTP.Path != "/healthz" {
		t.Fatalf("other → db:80: %+v", got)
	}

	for _, tc := range []struct {
		name, src string
		port      uint16
		verdict   string
	}{
		{"an allow without HTTP rules: no proxy", "app=admin", 80, VerdictAllowed},
		{"an L4 allow of another port", "app=web", 5432, VerdictAllowed},
		{"default deny", "app=other", 5432, VerdictDenied},
	} {
		got := r.Trace(rsLabels(t, tc.src), rsLabels(t, "app=db"), 6, tc.port)
		if got.Verdict != tc.verdict || got.Proxy || got.L7 != nil {
			t.Errorf("%s: %+v", tc.name, got)
		}
	}
}

// An allow of the port for any peer without HTTP rules lets every request
// through, also for a peer that has HTTP rules of its own on the port.
func TestResolveL7PlainAnyPeerWins(t *testing.T) {
	web := cid(1)
	w := rsWorld{
		identities: []identity.Identity{{ID: web, Labels: rsLabels(t, "app=web")}},
		endpoints:  []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=db")}},
	}
	r := w.build(ModeDefault, []api.Policy{rsPol("l7", api.Rule{EndpointSelector: rsSel("app=db"), Ingress: []api.IngressRule{
		{FromEndpoints: rsSels("app=web"), ToPorts: httpPorts("80", api.PortRuleHTTP{Path: "/a"})},
		{ToPorts: rsPorts(api.ProtoTCP, "80")},
	}})})
	if got := r.L7Policies(); len(got) != 0 {
		t.Fatalf("L7Policies %+v, want none: every peer may send anything to port 80", got)
	}
	for k, v := range mustEP(t, r, 1).Entries {
		if v.L7 != "" {
			t.Errorf("entry %v still L7: %q", k, v.L7)
		}
	}
}

// DNS rules mark port 53 L7 on UDP and TCP (the port's protocol says
// which); toFQDNs select nothing until the agent sets the addresses learned
// for the selector, then those as CIDR peers, and nothing again when they
// expire.
func TestResolveDNSAndToFQDNs(t *testing.T) {
	dnsSrv := cid(1)
	w := rsWorld{
		identities: []identity.Identity{{ID: dnsSrv, Labels: rsLabels(t, "app=dns")}},
		endpoints:  []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=client")}},
	}
	lookups := []api.PortRuleDNS{{MatchPattern: "*.example.com"}}
	sel := api.FQDNSelector{MatchName: "A.example.com."}
	pols := []api.Policy{rsPol("dns", api.Rule{EndpointSelector: rsSel("app=client"), Egress: []api.EgressRule{
		{ToEndpoints: rsSels("app=dns"), ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "53", Protocol: api.ProtoAny}}, Rules: &api.L7Rules{DNS: lookups}}}},
		{ToFQDNs: []api.FQDNSelector{sel}, ToPorts: rsPorts(api.ProtoTCP, "80")},
	}})}
	r := w.build(ModeDefault, pols)
	if w := r.Warnings(); len(w) > 0 {
		t.Errorf("warnings %q", w)
	}
	ref := "default/dns/rules[0].egress[0].toPorts[0]"
	want := []L7Policy{
		{Endpoint: 1, Dir: Egress, Proto: 6, Port: 53, Identity: dnsSrv, Refs: []string{ref}, DNS: lookups},
		{Endpoint: 1, Dir: Egress, Proto: 17, Port: 53, Identity: dnsSrv, Refs: []string{ref}, DNS: lookups},
	}
	if got := r.L7Policies(); !reflect.DeepEqual(got, want) {
		t.Fatalf("L7Policies:\n got %+v\nwant %+v", got, want)
	}
	key := api.FQDNKey(sel)
	if key != "fqdn:name:a.example.com." {
		t.Errorf("FQDNKey = %q", key)
	}
	if _, ok := r.FQDNSelectorsInUse()[key]; !ok {
		t.Fatalf("FQDNSelectorsInUse = %v, want %s", r.FQDNSelectorsInUse(), key)
	}
	web := func() []L4 {
		var out []L4
		for k := range mustEP(t, r, 1).Entries {
			if k.Dir == Egress && k.L4.Port == 80 {
				out = append(out, k.L4)
			}
		}
		return out
	}
	if got := web(); len(got) != 0 {
		t.Fatalf("entries for port 80 before any name was learned: %v", got)
	}
	ch := r.SetFQDN(key, map[netip.Addr][]uint16{netip.MustParseAddr("192.0.2.7"): {1}}, 0)
	id, ok := ch.CIDRUpserts[netip.MustParsePrefix("192.0.2.7/32")]
	if !ok {
		t.Fatalf("no CIDR identity for the learned address: %v", ch)
	}
	found := false
	for k, v := range mustEP(t, r, 1).Entries {
		if k.Identity == id && k.Dir == Egress && k.L4 == (L4{Proto: 6, Port: 80, PrefixLen: 24}) && !v.Deny {
			found = true
		}
	}
	if !found {
		t.Fatalf("no egress allow to the learned address on TCP 80: %v", mustEP(t, r, 1).Entries)
	}
	r.SetFQDN(key, nil, 0)
	if got := web(); len(got) != 0 {
		t.Fatalf("entries for port 80 after the name expired: %v", got)
	}
}

// Kafka rules make their TCP port L7 and reach the proxy with the port.
func TestResolveKafka(t *testing.T) {
	client := cid(1)
	w := rsWorld{
		identities: []identity.Identity{{ID: client, Labels: rsLabels(t, "app=producer")}},
		endpoints:  []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=kafka")}},
	}
	rules := []api.PortRuleKafka{{Role: "produce", Topic: "topic1"}}
	pols := []api.Policy{rsPol("kafka", api.Rule{EndpointSelector: rsSel("app=kafka"), Ingress: []api.IngressRule{
		{FromEndpoints: rsSels("app=producer"), ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "9092", Protocol: api.ProtoTCP}}, Rules: &api.L7Rules{Kafka: rules}}}},
	}})}
	r := w.build(ModeDefault, pols)
	want := []L7Policy{{Endpoint: 1, Dir: Ingress, Proto: 6, Port: 9092, Identity: client,
		Refs: []string{"default/kafka/rules[0].ingress[0].toPorts[0]"}, Kafka: rules}}
	if got := r.L7Policies(); !reflect.DeepEqual(got, want) {
		t.Fatalf("L7Policies:\n got %+v\nwant %+v", got, want)
	}
}

// L7Policies walks the groups again only after a change: the L7
// supervisor asks every second, and with toFQDNs every learned address is
// a group, so an idle agent walked tens of thousands of groups a second.
// Each kind of change is seen on the next ask.
func TestL7PoliciesWalkedOnlyAfterAChange(t *testing.T) {
	web := cid(1)
	w := rsWorld{
		identities: []identity.Identity{{ID: web, Labels: rsLabels(t, "app=web")}},
		endpoints:  []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=db")}},
	}
	public := api.PortRuleHTTP{Method: "GET", Path: "/public/.*"}
	pols := []api.Policy{rsPol("l7", api.Rule{EndpointSelector: rsSel("app=db"), Ingress: []api.IngressRule{
		{FromEndpoints: rsSels("app=web"), ToPorts: httpPorts("80", public)},
	}})}
	r := w.build(ModeDefault, pols)
	ask := func(what string, walks int, endpoints ...uint16) {
		t.Helper()
		before := r.l7Walks
		got := r.L7Policies()
		var eps []uint16
		for _, p := range got {
			eps = append(eps, p.Endpoint)
		}
		if r.l7Walks-before != walks || !reflect.DeepEqual(eps, endpoints) {
			t.Fatalf("%s: %d walks, L7 policies of endpoints %v; want %d walks and %v", what, r.l7Walks-before, eps, walks, endpoints)
		}
	}
	ask("first ask", 1, 1)
	ask("asked again, nothing changed", 0, 1)
	got := r.L7Policies()
	got[0].Endpoint = 99 // a caller's change to its copy is not the resolver's
	ask("after a caller changed its copy", 0, 1)

	r.UpsertEndpoint(EndpointInfo{ID: 2, Labels: rsLabels(t, "app=db")})
	ask("an endpoint added", 1, 1, 2)
	r.UpsertEndpoint(EndpointInfo{ID: 2, Labels: rsLabels(t, "app=db")})
	ask("the same endpoint again", 0, 1, 2)
	r.DeleteEndpoint(1)
	ask("an endpoint deleted", 1, 2)
	r.UpsertIdentity(identity.Identity{ID: cid(3), Labels: rsLabels(t, "app=web")})
	ask("a second web identity", 1, 2, 2)
	r.DeleteIdentity(cid(3))
	ask("that identity deleted", 1, 2)
	pols[0].Rules[0].Ingress[0].ToPorts = rsPorts(api.ProtoTCP, "80")
	r.SetPolicies(pols)
	ask("the HTTP rules removed", 1)
	ask("asked again", 0)
}
