package policy

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy/api"
)

// A toFQDNs selector's addresses change by DNS answers, each for the
// endpoints that asked: the resolver adds new ones incrementally (SetFQDN,
// only additions or endpoints' changes) and recompiles on removals. After every step, every endpoint's entries equal those of a
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
	sets := map[string]map[netip.Addr][]uint16{ka: nil, kb: nil}
	rnd := rand.New(rand.NewPCG(1, 2))
	for step := range 400 {
		key := ka
		if rnd.IntN(3) == 0 {
			key = kb
		}
		next := maps.Clone(sets[key])
		if next == nil {
			next = map[netip.Addr][]uint16{}
		}
		addrs := slices.SortedFunc(maps.Keys(next), netip.Addr.Compare)
		switch n := rnd.IntN(8); {
		case n == 0 && len(addrs) > 0: // an expiry
			for _, a := range addrs[:1+rnd.IntN(len(addrs))] {
				delete(next, a)
			}
		case n == 1 && len(addrs) > 0: // an endpoint deleted: what it asked is forgotten
			gone := uint16(1 + rnd.IntN(4))
			for a, eps := range next {
				if eps = slices.DeleteFunc(slices.Clone(eps), func(ep uint16) bool { return ep == gone }); len(eps) == 0 {
					delete(next, a)
				} else {
					next[a] = eps
				}
			}
		default: // an answer to one endpoint (4 is not one of this node's): one to three addresses, some known already
			ep := uint16(1 + rnd.IntN(4))
			for range 1 + rnd.IntN(3) {
				a := netip.AddrFrom4([4]byte{192, 0, 2, byte(rnd.IntN(24))})
				if !slices.Contains(next[a], ep) {
					next[a] = append(slices.Clone(next[a]), ep)
					slices.Sort(next[a])
				}
			}
		}
		prev := sets[key]
		sets[key] = next
		if rnd.IntN(2) == 0 {
			r.SetFQDN(key, next, 0)
		} else { // only what changed, as the name cache's TakeDirty gives it
			diff := map[netip.Addr][]uint16{}
			for a, eps := range next {
				if !slices.Equal(prev[a], eps) {
					diff[a] = eps
				}
			}
			for a := range prev {
				if _, ok := next[a]; !ok {
					diff[a] = nil
				}
			}
			r.UpdateFQDN(key, diff, 0)
		}

		fresh := NewResolver(ModeDefault)
		for _, id := range world.identities {
			fresh.UpsertIdentity(id)
		}
		for _, ep := range world.endpoints {
			fresh.UpsertEndpoint(ep)
		}
		fresh.SetFQDN(ka, sets[ka], 0)
		fresh.SetFQDN(kb, sets[kb], 0)
		fresh.SetPolicies(pols)
		for _, ep := range world.endpoints {
			got, want := verdicts(t, r, ep.ID), verdicts(t, fresh, ep.ID)
			if !slices.Equal(got, want) {
				t.Fatalf("step %d (%s <- %v): endpoint %d:\nincremental %v\nfrom scratch %v", step, key, next, ep.ID, got, want)
			}
		}
	}
}

// verdicts lists what the datapath decides for an endpoint's egress to
// every address of 192.0.2.0/27 on the test's ports: the address's
// identity is the CIDR identity of its longest prefix (the ipcache), else
// world. Entries may differ where decisions do not (a selector's address
// gone keeps its CIDR identity, allowed by nothing but what allows world,
// until a recompile).
func verdicts(t *testing.T, r *Resolver, id uint16) []string {
	t.Helper()
	ep := mustEP(t, r, id)
	cidrs := r.CIDRIdentities()
	var out []string
	for i := range 32 {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})
		peer, best := identity.World, -1
		for p, cid := range cidrs {
			if p.Contains(a) && p.Bits() > best {
				peer, best = cid, p.Bits()
			}
		}
		for _, l4 := range []struct {
			proto uint8
			port  uint16
		}{{6, 22}, {6, 80}, {6, 443}, {17, 5000}, {6, 8080}, {6, 9000}} {
			allowed, _ := dpVerdict(ep, Egress, peer, l4.proto, l4.port)
			out = append(out, fmt.Sprintf("%s %d/%d %v", a, l4.proto, l4.port, allowed))
		}
	}
	return out
}

// The attack: a pod whose policy lets it look up any name at any server
// (a server the attacker runs) asks for a name another pod's toFQDNs
// match and is answered with the attacker's address. That answer must not
// open the other pod's egress to the address: toFQDNs allow an address
// only to the endpoints whose own lookups gave it, on the incremental
// path (SetFQDN) and when a policy is compiled anew.
func TestFQDNAnswerAllowsOnlyTheAsker(t *testing.T) {
	trusted := api.FQDNSelector{MatchPattern: "*.corp.test"}
	anything := api.FQDNSelector{MatchPattern: "*"}
	kt, ka := api.FQDNKey(trusted), api.FQDNKey(anything)
	dns := &api.L7Rules{DNS: []api.PortRuleDNS{{MatchPattern: "*"}}}
	lookups := api.EgressRule{ToEntities: []api.Entity{api.EntityWorld},
		ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "53", Protocol: api.ProtoAny}}, Rules: dns}}}
	pols := []api.Policy{
		rsPol("victim", api.Rule{EndpointSelector: rsSel("app=client"), Egress: []api.EgressRule{
			lookups, {ToFQDNs: []api.FQDNSelector{trusted}, ToPorts: rsPorts(api.ProtoTCP, "443")}}}),
		rsPol("attacker", api.Rule{EndpointSelector: rsSel("app=scratch"), Egress: []api.EgressRule{
			lookups, {ToFQDNs: []api.FQDNSelector{anything}, ToPorts: rsPorts(api.ProtoTCP, "443")}}}),
	}
	const client, scratch, client2 = 1, 2, 3
	world := rsWorld{endpoints: []EndpointInfo{{ID: client, Labels: rsLabels(t, "app=client")},
		{ID: scratch, Labels: rsLabels(t, "app=scratch")}, {ID: client2, Labels: rsLabels(t, "app=client")}}}
	evil := netip.MustParseAddr("198.51.100.66")
	reaches := func(r *Resolver, ep uint16) bool {
		id, ok := r.CIDRIdentities()[netip.PrefixFrom(evil, 32)]
		if !ok {
			return false
		}
		allowed, _ := dpVerdict(mustEP(t, r, ep), Egress, id, 6, 443)
		return allowed
	}
	check := func(step string, r *Resolver, want map[uint16]bool) {
		t.Helper()
		for _, ep := range []uint16{client, scratch, client2} {
			if got := reaches(r, ep); got != want[ep] {
				t.Errorf("%s: endpoint %d reaches %s:443 = %v, want %v", step, ep, evil, got, want[ep])
			}
		}
	}
	r := world.build(ModeDefault, pols)
	// The attacker's lookup of evil.corp.test: both selectors match the
	// name; only the attacker asked.
	r.SetFQDN(ka, map[netip.Addr][]uint16{evil: {scratch}}, 0)
	r.SetFQDN(kt, map[netip.Addr][]uint16{evil: {scratch}}, 0)
	check("the attacker's answer", r, map[uint16]bool{scratch: true})
	fresh := world.build(ModeDefault, nil)
	fresh.SetFQDN(ka, map[netip.Addr][]uint16{evil: {scratch}}, 0)
	fresh.SetFQDN(kt, map[netip.Addr][]uint16{evil: {scratch}}, 0)
	fresh.SetPolicies(pols)
	check("compiled after the attacker's answer", fresh, map[uint16]bool{scratch: true})
	// The client asks the same name itself (from its own server): the
	// address is its own, not its twin's.
	r.SetFQDN(kt, map[netip.Addr][]uint16{evil: {client, scratch}}, 0)
	check("the client's own answer", r, map[uint16]bool{client: true, scratch: true})
	// The client is deleted (its lookups forgotten): the allow goes.
	r.SetFQDN(kt, map[netip.Addr][]uint16{evil: {scratch}}, 0)
	check("the client's lookups forgotten", r, map[uint16]bool{scratch: true})
}

// toRequires constrain every peer of a section, its toFQDNs addresses
// too: a learned address (a CIDR identity, without the required label)
// is no more allowed than a toCIDR one in the same section.
func TestFQDNRespectsToRequires(t *testing.T) {
	sel := api.FQDNSelector{MatchPattern: "*.corp.test"}
	key := api.FQDNKey(sel)
	pols := []api.Policy{rsPol("req", api.Rule{EndpointSelector: rsSel("app=client"), Egress: []api.EgressRule{{
		ToFQDNs: []api.FQDNSelector{sel}, ToCIDR: []string{"203.0.113.7/32"}, ToRequires: rsSels("env=prod"),
		ToPorts: rsPorts(api.ProtoTCP, "443")}}})}
	world := rsWorld{endpoints: []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=client")}}}
	learned := netip.MustParseAddr("198.51.100.9")
	for _, compiledAfter := range []bool{false, true} {
		var r *Resolver
		if compiledAfter {
			r = world.build(ModeDefault, nil)
			r.SetFQDN(key, map[netip.Addr][]uint16{learned: {1}}, 0)
			r.SetPolicies(pols)
		} else {
			r = world.build(ModeDefault, pols)
			r.SetFQDN(key, map[netip.Addr][]uint16{}, 0)
			r.SetFQDN(key, map[netip.Addr][]uint16{learned: {1}}, 0)
		}
		for _, a := range []string{"198.51.100.9", "203.0.113.7"} {
			id, ok := r.CIDRIdentities()[netip.PrefixFrom(netip.MustParseAddr(a), 32)]
			if !ok {
				t.Fatalf("no CIDR identity for %s", a)
			}
			if allowed, _ := dpVerdict(mustEP(t, r, 1), Egress, id, 6, 443); allowed {
				t.Errorf("compiled after the answer %v: %s allowed though it lacks env=prod", compiledAfter, a)
			}
		}
	}
}

// A deleted endpoint's ID given to a new endpoint inherits none of the
// addresses its lookups gave, not even from addresses the agent read from
// the name cache before the cache forgot the ID and applies after.
func TestFQDNReusedIDInheritsNothing(t *testing.T) {
	sel := api.FQDNSelector{MatchPattern: "*.corp.test"}
	key := api.FQDNKey(sel)
	pols := []api.Policy{rsPol("p", api.Rule{EndpointSelector: rsSel("app=client"), Egress: []api.EgressRule{{
		ToFQDNs: []api.FQDNSelector{sel}, ToPorts: rsPorts(api.ProtoTCP, "443")}}})}
	world := rsWorld{endpoints: []EndpointInfo{{ID: 5, Labels: rsLabels(t, "app=client")}}}
	r := world.build(ModeDefault, pols)
	addr := netip.MustParseAddr("198.51.100.5")
	old := map[netip.Addr][]uint16{addr: {5}}
	r.SetFQDN(key, old, 0)
	reaches := func() bool {
		id, ok := r.CIDRIdentities()[netip.PrefixFrom(addr, 32)]
		if !ok {
			return false
		}
		allowed, _ := dpVerdict(mustEP(t, r, 5), Egress, id, 6, 443)
		return allowed
	}
	if !reaches() {
		t.Fatal("the endpoint that asked cannot reach the address")
	}
	// Deleted: the cache forgets its lookups (generation 1), the ID goes
	// to a new endpoint.
	r.DeleteEndpoint(5)
	r.ForgetFQDNEndpoint(5, 1)
	r.UpsertEndpoint(EndpointInfo{ID: 5, Labels: rsLabels(t, "app=client")})
	if reaches() {
		t.Error("the new endpoint with the deleted one's ID reaches its address")
	}
	r.SetFQDN(key, old, 0) // read before the forget, applied after
	if reaches() {
		t.Error("addresses read before the forget gave the new endpoint the deleted one's address")
	}
	r.SetFQDN(key, old, 1) // the new endpoint's own lookup
	if !reaches() {
		t.Error("the new endpoint's own lookup does not allow the address")
	}
}

// BenchmarkFQDNAnswer is the policy's work for one answer that adds one
// address, with a toFQDNs selector already holding 20,000 addresses
// learned by 20 endpoints: the whole set handed over (SetFQDN, as the
// agent did until 2026-12-02) against only what changed (UpdateFQDN, the
// name cache's TakeDirty).
func BenchmarkFQDNAnswer(b *testing.B) {
	sel := api.FQDNSelector{MatchPattern: "*.bulk.test"}
	key := api.FQDNKey(sel)
	pols := []api.Policy{rsPol("bulk", api.Rule{EndpointSelector: rsSel("app=client"), Egress: []api.EgressRule{{
		ToFQDNs: []api.FQDNSelector{sel}, ToPorts: rsPorts(api.ProtoTCP, "443")}}})}
	var world rsWorld
	for i := range 20 {
		world.endpoints = append(world.endpoints, EndpointInfo{ID: uint16(i + 1), Labels: rsLabels(b, "app=client")})
	}
	const n = 20_000
	base := map[netip.Addr][]uint16{}
	for i := range n {
		base[netip.AddrFrom4([4]byte{10, 8, byte(i >> 8), byte(i)})] = []uint16{uint16(i%20 + 1)}
	}
	for _, mode := range []string{"whole set (SetFQDN)", "what changed (UpdateFQDN)", "one in, one out (UpdateFQDN)"} {
		b.Run(mode, func(b *testing.B) {
			r := world.build(ModeDefault, pols)
			r.SetFQDN(key, base, 0)
			learned := maps.Clone(base)
			i := 0
			for b.Loop() {
				a := netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)})
				i++
				learned[a] = []uint16{uint16(i%20 + 1)}
				switch mode {
				case "whole set (SetFQDN)":
					r.SetFQDN(key, learned, 0)
				case "what changed (UpdateFQDN)":
					r.UpdateFQDN(key, map[netip.Addr][]uint16{a: learned[a]}, 0)
				default: // the asking pod at its cap: each answer evicts one of its addresses
					out := netip.AddrFrom4([4]byte{10, 8, byte(i >> 8), byte(i)})
					delete(learned, out)
					r.UpdateFQDN(key, map[netip.Addr][]uint16{a: learned[a], out: nil}, 0)
				}
			}
		})
	}
}

// A deleted endpoint's address, forgotten by the resolver and then
// reported gone by the cache, leaves the selector: no address stays
// (with its CIDR identity) for good, and one learned again is not doubled.
func TestFQDNForgottenAddressLeaves(t *testing.T) {
	sel := api.FQDNSelector{MatchPattern: "*.corp.test"}
	key := api.FQDNKey(sel)
	pols := []api.Policy{rsPol("p", api.Rule{EndpointSelector: rsSel("app=client"), Egress: []api.EgressRule{{
		ToFQDNs: []api.FQDNSelector{sel}, ToPorts: rsPorts(api.ProtoTCP, "443")}}})}
	world := rsWorld{endpoints: []EndpointInfo{{ID: 5, Labels: rsLabels(t, "app=client")}, {ID: 6, Labels: rsLabels(t, "app=client")}}}
	r := world.build(ModeDefault, pols)
	a := netip.MustParseAddr("198.51.100.5")
	r.UpdateFQDN(key, map[netip.Addr][]uint16{a: {5}}, 0)
	r.DeleteEndpoint(5)
	r.ForgetFQDNEndpoint(5, 1)
	r.UpdateFQDN(key, map[netip.Addr][]uint16{a: nil}, 1) // the cache: gone
	if got, _ := r.GroupAddrs(key); len(got) != 0 {
		t.Fatalf("addresses of the selector after its only endpoint was deleted: %v", got)
	}
	r.UpdateFQDN(key, map[netip.Addr][]uint16{a: {6}}, 1)
	if got, _ := r.GroupAddrs(key); len(got) != 1 {
		t.Fatalf("addresses after another endpoint learned it: %v, want it once", got)
	}
	// Many addresses gone: the policies are recompiled and their CIDR
	// identities released (not kept for good).
	for i := range maxFQDNGone + 10 {
		b := netip.AddrFrom4([4]byte{10, 7, byte(i >> 8), byte(i)})
		r.UpdateFQDN(key, map[netip.Addr][]uint16{b: {6}}, 1)
		r.UpdateFQDN(key, map[netip.Addr][]uint16{b: nil}, 1)
	}
	if n := len(r.CIDRIdentities()); n > maxFQDNGone+2 {
		t.Fatalf("%d CIDR identities after %d addresses came and went: gone ones are never released", n, maxFQDNGone+10)
	}
	for k, cp := range r.compiled {
		if len(cp.prefixes) > 2*maxFQDNGone+2 {
			t.Fatalf("policy %s names %d prefixes after %d addresses came and went", k, len(cp.prefixes), maxFQDNGone+10)
		}
	}
}
