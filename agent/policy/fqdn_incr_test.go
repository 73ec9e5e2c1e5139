package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy/api"
)

// A toFQDNs selector's addresses change by DNS answers: the resolver adds
// new ones incrementally (SetGroup, only additions) and recompiles on
// removals. After every step, every endpoint's entries equal those of a
// resolver built from scratch with the same addresses, CIDR identities
// compared by their prefix (their numbers may differ).
func TestFQDNAdditionsMatchFullResolution(t *testing.T) {
	a := api.FQDNSelector{MatchPattern: "*.a.test"}
	b := api.FQDNSelector{MatchName: "b.test"}
	ka, kb := api.FQDNKey(a), api.FQDNKey(b)
	dns := &api.L7Rules{DNS: []api.PortRuleDNS{{MatchPattern: "*"}}}
	pols := []api.Policy{
		rsPol("one", api.Rule{EndpointSelector: rsSel("app=client"), Egress: []api.EgressRule{
			{ToEndpoints: rsSels("app=dns"), ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "53", Protocol: api.ProtoAny}}, Rules: dns}}},
			{ToFQDNs: []api.FQDNSelector{a, b}, ToPorts: rsPorts(api.ProtoTCP, "443")},
			{ToFQDNs: []api.FQDNSelector{a}, ToPorts: rsPorts(api.ProtoTCP, "80")},
			{ToCIDR: []string{"192.0.2.0/30", "192.0.2.9/32"}, ToPorts: rsPorts(api.ProtoTCP, "22")},
		}}),
		rsPol("two", api.Rule{EndpointSelector: rsSel("app=other"), Egress: []api.EgressRule{
			{ToFQDNs: []api.FQDNSelector{b}, ToPorts: rsPorts(api.ProtoUDP, "5000")},
			{ToEntities: []api.Entity{api.EntityWorld}, ToPorts: rsPorts(api.ProtoTCP, "8080")},
			{ToEntities: []api.Entity{api.EntityAll}, ToFQDNs: []api.FQDNSelector{a}, ToPorts: rsPorts(api.ProtoTCP, "9000")},
		}}),
	}
	world := rsWorld{
		identities: []identity.Identity{{ID: cid(1), Labels: rsLabels(t, "app=dns")}},
		endpoints:  []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=client")}, {ID: 2, Labels: rsLabels(t, "app=other")}, {ID: 3, Labels: rsLabels(t, "app=client")}},
	}
	r := world.build(ModeDefault, pols)
	sets := map[string][]netip.Addr{ka: nil, kb: nil}
	rnd := rand.New(rand.NewPCG(1, 2))
	for step := range 300 {
		key := ka
		if rnd.IntN(3) == 0 {
			key = kb
		}
		next := slices.Clone(sets[key])
		switch {
		case rnd.IntN(8) == 0 && len(next) > 0: // an expiry
			next = slices.Delete(next, 0, 1+rnd.IntN(len(next)))
		default: // an answer: one to three addresses, some already known elsewhere
			for range 1 + rnd.IntN(3) {
				next = append(next, netip.AddrFrom4([4]byte{192, 0, 2, byte(rnd.IntN(24))}))
			}
		}
		sets[key] = next
		r.SetGroup(key, next)

		fresh := NewResolver(ModeDefault)
		for _, id := range world.identities {
			fresh.UpsertIdentity(id)
		}
		for _, ep := range world.endpoints {
			fresh.UpsertEndpoint(ep)
		}
		fresh.SetGroup(ka, sets[ka])
		fresh.SetGroup(kb, sets[kb])
		fresh.SetPolicies(pols)
		for _, ep := range world.endpoints {
			got, want := byPrefix(t, r, ep.ID), byPrefix(t, fresh, ep.ID)
			if !slices.Equal(got, want) {
				t.Fatalf("step %d (%s <- %v): endpoint %d:\nincremental %v\nfrom scratch %v", step, key, next, ep.ID, got, want)
			}
		}
	}
}

// byPrefix lists an endpoint's entries with CIDR identities named by
// their prefix, sorted.
func byPrefix(t *testing.T, r *Resolver, id uint16) []string {
	t.Helper()
	ep := mustEP(t, r, id)
	prefixes := map[identity.NumericIdentity]netip.Prefix{}
	for p, cid := range r.CIDRIdentities() {
		prefixes[cid] = p
	}
	var out []string
	for k, v := range ep.Entries {
		peer := fmt.Sprint(k.Identity)
		if p, ok := prefixes[k.Identity]; ok {
			peer = p.String()
		} else if k.Identity.IsLocal() {
			t.Fatalf("endpoint %d: entry for local identity %d with no prefix", id, k.Identity)
		}
		out = append(out, fmt.Sprintf("%s %s %s deny=%v l7=%q", k.Dir, peer, k.L4, v.Deny, v.L7))
	}
	slices.Sort(out)
	return out
}
