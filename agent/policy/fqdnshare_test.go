package policy

import (
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/policy/api"
)

// fqdnLearnedOf is learned addresses for one endpoint.
func fqdnLearnedOf(addrs []netip.Addr) map[netip.Addr][]uint16 {
	out := make(map[netip.Addr][]uint16, len(addrs))
	for _, a := range addrs {
		out[a] = []uint16{1}
	}
	return out
}

// toFQDNs' addresses left out past their share are counted once each, as
// long as they are left out: until 2026-12-07 the count grew by one at
// every refusal, the same address learned, forgotten and learned again
// counted twice, and only a recompile reset it (found by a review). An
// address left out gets its identity at the next change that frees room.
func TestFQDNLeftOutCountedOnce(t *testing.T) {
	a, b := api.FQDNSelector{MatchPattern: "*.a.example"}, api.FQDNSelector{MatchPattern: "*.b.example"}
	pol := func(name string, sel api.FQDNSelector) api.Policy {
		return rsPol(name, api.Rule{EndpointSelector: rsSel("app=web"),
			Egress: []api.EgressRule{{ToFQDNs: []api.FQDNSelector{sel}, ToPorts: rsPorts(api.ProtoTCP, "443")}}})
	}
	r, rp := webAndOther(t, EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "app=web")}, cid(7), pol("a", a), pol("b", b))
	full := hosts("172.16.0.1", fqdnShare(r))
	rp.apply(t, r.SetFQDN(api.FQDNKey(a), fqdnLearnedOf(full), 0))
	extra := hosts("192.0.2.1", 3)
	rp.apply(t, r.SetFQDN(api.FQDNKey(b), fqdnLearnedOf(extra[:1]), 0))
	if left := r.CIDRsLeftOut(); left != 1 {
		t.Fatalf("%d left out, want 1", left)
	}
	// Learned, forgotten and learned again: still one.
	for range 3 {
		rp.apply(t, r.UpdateFQDN(api.FQDNKey(b), map[netip.Addr][]uint16{extra[0]: nil}, 0))
		rp.apply(t, r.UpdateFQDN(api.FQDNKey(b), map[netip.Addr][]uint16{extra[0]: {1}}, 0))
	}
	rp.apply(t, r.UpdateFQDN(api.FQDNKey(b), map[netip.Addr][]uint16{extra[1]: {1}}, 0))
	if left := r.CIDRsLeftOut(); left != 2 {
		t.Errorf("%d left out after learning one address again three times and one more, want 2", left)
	}
	rp.check(t, r)
	// Room frees (a's addresses shrink): b's left out come in.
	rp.apply(t, r.SetFQDN(api.FQDNKey(a), fqdnLearnedOf(full[:len(full)-10]), 0))
	rp.check(t, r)
	for _, x := range extra[:2] {
		if _, ok := r.CIDRIdentities()[netip.PrefixFrom(x, 32)]; !ok {
			t.Errorf("%s, left out, has no identity once room freed", x)
		}
	}
	if left := r.CIDRsLeftOut(); left != 0 {
		t.Errorf("%d left out with room, want 0", left)
	}
}

// fqdnShare is how many toFQDNs addresses r gives identities now.
func fqdnShare(*Resolver) int { return MaxFQDNCIDRs }
