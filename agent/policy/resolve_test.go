package policy

import (
	"fmt"
	"maps"
	"math/rand"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/policy/api"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/labels"
)

// ---- helpers ----------------------------------------------------------

func rsLabels(t testing.TB, s ...string) labels.Labels {
	t.Helper()
	ls, err := labels.ParseList(s...)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// rsSel is a matchLabels selector of "key=value" pairs.
func rsSel(kv ...string) *api.EndpointSelector {
	s := &api.EndpointSelector{MatchLabels: map[string]string{}}
	for _, x := range kv {
		k, v, _ := strings.Cut(x, "=")
		s.MatchLabels[k] = v
	}
	return s
}

func rsSels(kv ...string) []api.EndpointSelector { return []api.EndpointSelector{*rsSel(kv...)} }

func rsPol(name string, rules ...api.Rule) api.Policy {
	return api.Policy{Kind: api.KindCiliumNetworkPolicy, Namespace: "default", Name: name, Rules: rules}
}

func rsPorts(proto api.Protocol, ps ...string) []api.PortRule {
	pr := api.PortRule{}
	for _, p := range ps {
		pr.Ports = append(pr.Ports, api.PortProtocol{Port: p, Protocol: proto})
	}
	return []api.PortRule{pr}
}

func rsICMP(types ...int32) []api.ICMPRule {
	var r api.ICMPRule
	for _, t := range types {
		r.Fields = append(r.Fields, api.ICMPField{Family: api.ICMPFamilyIPv4, Type: &api.IntOrString{Int: t}})
	}
	return []api.ICMPRule{r}
}

func cid(n uint32) identity.NumericIdentity { return identity.Compose(1, 256+n) }

func rsBool(b bool) *bool { return &b }

// dpVerdict decides a connection from an endpoint's entries the way the BPF
// program does: a longest-prefix lookup with the peer's identity and one
// with identity 0; a deny from either wins, then an allow, then the
// direction's default. It is written independently of the resolver.
func dpVerdict(p EndpointPolicy, dir Direction, peer identity.NumericIdentity, proto uint8, port uint16) (allowed bool, decided *MapValue) {
	key := uint32(proto)<<16 | uint32(port)
	lpm := func(id identity.NumericIdentity) (MapValue, bool) {
		best, bestLen, found := MapValue{}, -1, false
		for k, v := range p.Entries {
			if k.Dir != dir || k.Identity != id {
				continue
			}
			shift := 24 - uint32(k.L4.PrefixLen)
			entry := uint32(k.L4.Proto)<<16 | uint32(k.L4.Port)
			if k.L4.PrefixLen == 0 || key>>shift == entry>>shift {
				if int(k.L4.PrefixLen) > bestLen {
					best, bestLen, found = v, int(k.L4.PrefixLen), true
				}
			}
		}
		return best, found
	}
	vp, okp := lpm(peer)
	va, oka := lpm(0)
	switch {
	case okp && vp.Deny:
		return false, &vp
	case oka && va.Deny:
		return false, &va
	case okp:
		return true, &vp
	case oka:
		return true, &va
	}
	enforced := p.EgressEnforced
	if dir == Ingress {
		enforced = p.IngressEnforced
	}
	return !enforced, nil
}

// rsWorld is a fixture of identities and endpoints.
type rsWorld struct {
	identities []identity.Identity
	endpoints  []EndpointInfo
}

// build returns a fresh resolver holding w and ps, built in the given order.
func (w rsWorld) build(mode Mode, ps []api.Policy) *Resolver {
	r := NewResolver(mode)
	for _, id := range w.identities {
		r.UpsertIdentity(id)
	}
	for _, ep := range w.endpoints {
		r.UpsertEndpoint(ep)
	}
	r.SetPolicies(ps)
	return r
}

// allEntries is the union of the entries of every endpoint.
func allEntries(r *Resolver) map[MapKey]MapValue {
	r.mu.Lock()
	ids := slices.Collect(maps.Keys(r.endpoints))
	r.mu.Unlock()
	out := map[MapKey]MapValue{}
	for _, id := range ids {
		p, _ := r.Endpoint(id)
		maps.Copy(out, p.Entries)
	}
	return out
}

// replica is a policy map the Changes are applied to, as the loader would.
type replica struct {
	lastUpserts map[MapKey]MapValue
	lastDeletes int
	entries     map[MapKey]MapValue
	enforce     map[uint16]EndpointPolicy
	cidrs       map[netip.Prefix]identity.NumericIdentity
}

func newReplica() *replica {
	return &replica{entries: map[MapKey]MapValue{}, enforce: map[uint16]EndpointPolicy{}, cidrs: map[netip.Prefix]identity.NumericIdentity{}}
}

func (rp *replica) apply(t *testing.T, c Change) {
	t.Helper()
	rp.lastUpserts, rp.lastDeletes = c.Upserts, len(c.Deletes)
	for _, k := range c.Deletes {
		if _, ok := rp.entries[k]; !ok {
			t.Fatalf("delete of absent key %v", k)
		}
		if _, ok := c.Upserts[k]; ok {
			t.Fatalf("key %v both deleted and upserted", k)
		}
		delete(rp.entries, k)
	}
	for k, v := range c.Upserts {
		if old, ok := rp.entries[k]; ok && old == v {
			t.Fatalf("upsert of unchanged entry %v", k)
		}
		rp.entries[k] = v
	}
	for id, e := range c.Enforcement {
		if e.Entries != nil {
			t.Fatalf("Enforcement carries entries")
		}
		if old := rp.enforce[id]; old.IngressEnforced == e.IngressEnforced && old.EgressEnforced == e.EgressEnforced {
			t.Fatalf("enforcement of endpoint %d reported but unchanged", id)
		}
		if !e.IngressEnforced && !e.EgressEnforced {
			delete(rp.enforce, id)
		} else {
			rp.enforce[id] = e
		}
	}
	for _, p := range c.CIDRDeletes {
		delete(rp.cidrs, p)
	}
	maps.Copy(rp.cidrs, c.CIDRUpserts)
}

// check compares the replica with the resolver's desired state.
func (rp *replica) check(t *testing.T, r *Resolver) {
	t.Helper()
	if want := allEntries(r); !maps.Equal(rp.entries, want) {
		t.Fatalf("replica has %d entries, resolver wants %d", len(rp.entries), len(want))
	}
	r.mu.Lock()
	ids := slices.Collect(maps.Keys(r.endpoints))
	r.mu.Unlock()
	for _, id := range ids {
		p, _ := r.Endpoint(id)
		got := rp.enforce[id]
		if got.IngressEnforced != p.IngressEnforced || got.EgressEnforced != p.EgressEnforced {
			t.Fatalf("endpoint %d: replica enforcement %+v, resolver %v/%v", id, got, p.IngressEnforced, p.EgressEnforced)
		}
	}
	if !maps.Equal(rp.cidrs, r.CIDRIdentities()) {
		t.Fatalf("replica CIDRs %v, resolver %v", rp.cidrs, r.CIDRIdentities())
	}
}

// sameState reports the first difference between two resolvers' desired
// states, or "".
func sameState(a, b *Resolver) string {
	a.mu.Lock()
	ids := slices.Sorted(maps.Keys(a.endpoints))
	a.mu.Unlock()
	for _, id := range ids {
		pa, _ := a.Endpoint(id)
		pb, ok := b.Endpoint(id)
		if !ok {
			return fmt.Sprintf("endpoint %d missing", id)
		}
		if pa.IngressEnforced != pb.IngressEnforced || pa.EgressEnforced != pb.EgressEnforced {
			return fmt.Sprintf("endpoint %d enforcement differs", id)
		}
		if !maps.Equal(pa.Entries, pb.Entries) {
			for k, v := range pa.Entries {
				if w, ok := pb.Entries[k]; !ok || w != v {
					return fmt.Sprintf("endpoint %d: %v = %+v vs %+v (present %v)", id, k, v, w, ok)
				}
			}
			for k := range pb.Entries {
				if _, ok := pa.Entries[k]; !ok {
					return fmt.Sprintf("endpoint %d: %v only in the second", id, k)
				}
			}
		}
	}
	if !maps.Equal(a.CIDRIdentities(), b.CIDRIdentities()) {
		return "CIDR identities differ"
	}
	return ""
}

// ---- peers ------------------------------------------------------------

func TestResolvePeers(t *testing.T) {
	var (
		web1 = cid(1) // app=web env=dev
		web2 = cid(2) // app=web env=prod
		db   = cid(3) // app=db env=prod
	)
	w := rsWorld{
		identities: []identity.Identity{
			{ID: web1, Labels: rsLabels(t, "k8s:app=web,k8s:env=dev")},
			{ID: web2, Labels: rsLabels(t, "k8s:app=web,k8s:env=prod")},
			{ID: db, Labels: rsLabels(t, "k8s:app=db,k8s:env=prod")},
		},
		endpoints: []EndpointInfo{{ID: 7, Identity: db, Labels: rsLabels(t, "k8s:app=db,k8s:env=prod")}},
	}
	// A policy that selects no endpoint but names prefixes, so that CIDR
	// identities exist.
	holder := rsPol("cidr-holder", api.Rule{EndpointSelector: rsSel("app=nobody"),
		Egress: []api.EgressRule{{ToCIDR: []string{"10.0.0.0/8", "192.168.1.0/24"}}}})
	const (
		cidr10  = identity.LocalScopeFlag | 1
		cidr192 = identity.LocalScopeFlag | 2
	)
	tcp80 := rsPorts(api.ProtoTCP, "80")
	cluster := []identity.NumericIdentity{identity.Host, identity.Unmanaged, identity.Health, identity.Init, identity.RemoteNode, web1, web2, db}

	tests := []struct {
		name    string
		in      *api.IngressRule
		out     *api.EgressRule
		want    []identity.NumericIdentity
		warning string
	}{
		{name: "fromEndpoints by label", in: &api.IngressRule{FromEndpoints: rsSels("app=web"), ToPorts: tcp80},
			want: []identity.NumericIdentity{web1, web2}},
		{name: "empty selector: cluster identities only", in: &api.IngressRule{FromEndpoints: []api.EndpointSelector{{}}, ToPorts: tcp80},
			want: []identity.NumericIdentity{web1, web2, db}},
		{name: "selector naming reserved:host", in: &api.IngressRule{FromEndpoints: rsSels("reserved:host="), ToPorts: tcp80},
			want: []identity.NumericIdentity{identity.Host}},
		{name: "reserved:world selects world and the CIDR identities", in: &api.IngressRule{FromEndpoints: rsSels("reserved:world="), ToPorts: tcp80},
			want: []identity.NumericIdentity{identity.World, cidr10, cidr192}},
		{name: "expression selector", in: &api.IngressRule{FromEndpoints: []api.EndpointSelector{{MatchExpressions: []api.SelectorRequirement{
			{Key: "env", Operator: api.OpIn, Values: []string{"prod"}}}}}, ToPorts: tcp80},
			want: []identity.NumericIdentity{web2, db}},
		{name: "fromRequires", in: &api.IngressRule{FromEndpoints: rsSels("app=web"), FromRequires: rsSels("env=prod"), ToPorts: tcp80},
			want: []identity.NumericIdentity{web2}},
		{name: "requires constrain entities too", in: &api.IngressRule{FromEntities: []api.Entity{api.EntityCluster}, FromRequires: rsSels("env=prod"), ToPorts: tcp80},
			want: []identity.NumericIdentity{web2, db}},
		{name: "entity world includes CIDR identities", in: &api.IngressRule{FromEntities: []api.Entity{api.EntityWorld}, ToPorts: tcp80},
			want: []identity.NumericIdentity{identity.World, cidr10, cidr192}},
		{name: "entity all is identity 0", in: &api.IngressRule{FromEntities: []api.Entity{api.EntityAll}, ToPorts: tcp80},
			want: []identity.NumericIdentity{0}},
		{name: "all with requires is every identity matching them", in: &api.IngressRule{FromEntities: []api.Entity{api.EntityAll}, FromRequires: rsSels("env=prod"), ToPorts: tcp80},
			want: []identity.NumericIdentity{web2, db}},
		{name: "entity cluster", in: &api.IngressRule{FromEntities: []api.Entity{api.EntityCluster}, ToPorts: tcp80},
			want: cluster},
		{name: "entities host and remote-node", in: &api.IngressRule{FromEntities: []api.Entity{api.EntityHost, api.EntityRemoteNode}, ToPorts: tcp80},
			want: []identity.NumericIdentity{identity.Host, identity.RemoteNode}},
		{name: "entities health, init, unmanaged", in: &api.IngressRule{FromEntities: []api.Entity{api.EntityHealth, api.EntityInit, api.EntityUnmanaged}, ToPorts: tcp80},
			want: []identity.NumericIdentity{identity.Health, identity.Init, identity.Unmanaged}},
		{name: "entity kube-apiserver selects nothing", in: &api.IngressRule{FromEntities: []api.Entity{api.EntityKubeAPIServer}, ToPorts: tcp80},
			warning: "entity kube-apiserver selects nothing yet"},
		{name: "ports without peers: every peer", in: &api.IngressRule{ToPorts: tcp80},
			want: []identity.NumericIdentity{0}},
		{name: "ports without peers, with requires", in: &api.IngressRule{FromRequires: rsSels("app=web"), ToPorts: tcp80},
			want: []identity.NumericIdentity{web1, web2}},
		{name: "neither peers nor ports: nothing", in: &api.IngressRule{}},
		{name: "fromCIDR", in: &api.IngressRule{FromCIDR: []string{"10.0.0.0/8"}, ToPorts: tcp80},
			want: []identity.NumericIdentity{cidr10}},
		{name: "fromGroups selects nothing", in: &api.IngressRule{FromGroups: []api.Groups{{AWS: &api.AWSGroup{SecurityGroupsIDs: []string{"sg-1"}}}}, ToPorts: tcp80},
			warning: "not resolved yet: selects nothing"},
		{name: "egress toEndpoints", out: &api.EgressRule{ToEndpoints: rsSels("env=prod"), ToPorts: tcp80},
			want: []identity.NumericIdentity{web2, db}},
		{name: "toFQDNs with ports is not every peer", out: &api.EgressRule{ToFQDNs: []api.FQDNSelector{{MatchName: "example.com"}}, ToPorts: tcp80},
			warning: "this policy has no rules.dns (unless another policy's cover the endpoints' lookups, its toFQDNs select nothing)"},
		{name: "toServices", out: &api.EgressRule{ToServices: []api.Service{{K8sService: &api.K8sServiceNamespace{ServiceName: "s", Namespace: "default"}}}, ToPorts: tcp80},
			warning: "toServices select nothing yet"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rule := api.Rule{EndpointSelector: rsSel("app=db")}
			dir := Ingress
			if tc.in != nil {
				rule.Ingress = []api.IngressRule{*tc.in}
			} else {
				rule.Egress = []api.EgressRule{*tc.out}
				dir = Egress
			}
			r := w.build(ModeDefault, []api.Policy{holder, rsPol("p", rule)})
			p, _ := r.Endpoint(7)
			var got []identity.NumericIdentity
			for k := range p.Entries {
				if k.Dir != dir || k.L4 != (L4{Proto: 6, Port: 80, PrefixLen: 24}) {
					t.Errorf("unexpected entry %v", k)
				}
				got = append(got, k.Identity)
			}
			slices.Sort(got)
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Errorf("peers = %v, want %v", got, want)
			}
			warns := r.Warnings()
			if tc.warning == "" && len(warns) > 0 {
				t.Errorf("warnings %q", warns)
			}
			if tc.warning != "" && (len(warns) != 1 || !strings.HasSuffix(warns[0], tc.warning) ||
				!strings.HasPrefix(warns[0], "default/p: rules[0].")) {
				t.Errorf("warnings %q, want one ending %q", warns, tc.warning)
			}
		})
	}
}

// Computing a section's peers through the label index finds what a scan of
// every identity finds.
func TestResolvePeerIndexMatchesScan(t *testing.T) {
	w := benchWorld(300, 10)
	r := w.build(ModeDefault, benchPolicies(200))
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, cr := range r.rules {
		for _, s := range cr.sections {
			got := r.computePeers(&s.peers)
			want := map[identity.NumericIdentity]struct{}{}
			for _, k := range r.identities {
				if s.peers.matches(k) {
					want[k.id] = struct{}{}
				}
			}
			if !maps.Equal(got, want) {
				t.Fatalf("%s: index found %d peers, scan %d", s.ref, len(got), len(want))
			}
			if s.computed && !maps.Equal(s.cache, want) {
				t.Fatalf("%s: cached %d peers, scan %d", s.ref, len(s.cache), len(want))
			}
			n += len(want)
		}
	}
	if n == 0 {
		t.Fatal("no peers at all")
	}
}

// ---- CIDR -------------------------------------------------------------

func TestResolveCIDR(t *testing.T) {
	pfx := netip.MustParsePrefix
	local := func(n uint32) identity.NumericIdentity { return identity.LocalScopeFlag | identity.NumericIdentity(n) }
	ep := EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "app=db")}
	a := rsPol("a", api.Rule{EndpointSelector: rsSel("app=db"), Ingress: []api.IngressRule{{
		FromCIDRSet: []api.CIDRRule{{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16"}}},
		ToPorts:     rsPorts(api.ProtoTCP, "80")}}})
	b := rsPol("b", api.Rule{EndpointSelector: rsSel("app=nobody"), Egress: []api.EgressRule{{
		ToCIDR: []string{"10.2.0.0/16", "10.1.5.0/24", "192.168.0.0/16", "2001:db8::/32", "10.2.3.4"}}}})
	r := NewResolver(ModeDefault)
	r.UpsertEndpoint(ep)
	rp := newReplica()

	ch := r.SetPolicies([]api.Policy{a, b})
	rp.apply(t, ch)
	wantIDs := map[netip.Prefix]identity.NumericIdentity{
		pfx("10.0.0.0/8"): local(1), pfx("10.1.0.0/16"): local(2), pfx("10.1.5.0/24"): local(3),
		pfx("10.2.0.0/16"): local(4), pfx("10.2.3.4/32"): local(5), pfx("192.168.0.0/16"): local(6),
	}
	if !maps.Equal(ch.CIDRUpserts, wantIDs) || !maps.Equal(r.CIDRIdentities(), wantIDs) {
		t.Fatalf("CIDR identities %v (upserts %v), want %v", r.CIDRIdentities(), ch.CIDRUpserts, wantIDs)
	}
	peers := func() []identity.NumericIdentity {
		p, _ := r.Endpoint(1)
		var ids []identity.NumericIdentity
		for k := range p.Entries {
			ids = append(ids, k.Identity)
		}
		slices.Sort(ids)
		return ids
	}
	// Inside 10/8 and outside 10.1/16: 10/8 itself, 10.2/16, 10.2.3.4/32.
	if got, want := peers(), []identity.NumericIdentity{local(1), local(4), local(5)}; !slices.Equal(got, want) {
		t.Fatalf("peers %v, want %v", got, want)
	}
	if w := r.Warnings(); len(w) != 1 || !strings.Contains(w[0], `IPv6 prefix "2001:db8::/32" ignored`) {
		t.Fatalf("warnings %q", w)
	}
	var cidrListed int
	for _, id := range r.Identities() {
		if id.ID == local(4) {
			cidrListed++
			if id.Labels.String() != "cidr:10.2.0.0/16;reserved:world" {
				t.Errorf("labels of %d: %s", id.ID, id.Labels)
			}
		}
	}
	if cidrListed != 1 {
		t.Errorf("CIDR identity not listed")
	}
	rp.check(t, r)

	// Dropping b frees its prefixes (10.1/16 stays: a names it as except).
	ch = r.SetPolicies([]api.Policy{a})
	rp.apply(t, ch)
	if want := []netip.Prefix{pfx("10.1.5.0/24"), pfx("10.2.0.0/16"), pfx("10.2.3.4/32"), pfx("192.168.0.0/16")}; !slices.Equal(ch.CIDRDeletes, want) {
		t.Fatalf("CIDRDeletes %v, want %v", ch.CIDRDeletes, want)
	}
	if len(ch.CIDRUpserts) != 0 || len(ch.Upserts) != 0 {
		t.Fatalf("unexpected upserts: %s", ch)
	}
	wantDel := []MapKey{
		{1, Ingress, local(4), L4{6, 80, 24}},
		{1, Ingress, local(5), L4{6, 80, 24}},
	}
	if !slices.Equal(ch.Deletes, wantDel) {
		t.Fatalf("Deletes %v, want %v", ch.Deletes, wantDel)
	}
	if got := r.CIDRIdentities(); len(got) != 2 || got[pfx("10.0.0.0/8")] != local(1) || got[pfx("10.1.0.0/16")] != local(2) {
		t.Fatalf("kept CIDR identities changed: %v", got)
	}
	rp.check(t, r)

	// New prefixes take the lowest free numbers; 0.0.0.0/0 also selects world.
	c := rsPol("c", api.Rule{EndpointSelector: rsSel("app=db"), Ingress: []api.IngressRule{{
		FromCIDR: []string{"0.0.0.0/0", "172.16.0.0/12"}, ToPorts: rsPorts(api.ProtoTCP, "443")}}})
	ch = r.SetPolicies([]api.Policy{a, c})
	rp.apply(t, ch)
	if want := map[netip.Prefix]identity.NumericIdentity{pfx("0.0.0.0/0"): local(3), pfx("172.16.0.0/12"): local(4)}; !maps.Equal(ch.CIDRUpserts, want) {
		t.Fatalf("CIDRUpserts %v, want %v", ch.CIDRUpserts, want)
	}
	var got443 []identity.NumericIdentity
	for k := range ch.Upserts {
		if k.L4.Port == 443 {
			got443 = append(got443, k.Identity)
		}
	}
	slices.Sort(got443)
	if want := []identity.NumericIdentity{identity.World, local(1), local(2), local(3), local(4)}; !slices.Equal(got443, want) {
		t.Fatalf("0.0.0.0/0 selects %v, want %v", got443, want)
	}
	// a's 10/8-minus-10.1/16 now also selects nothing new: 0/0 and 172.16/12
	// are outside it.
	if len(ch.Upserts) != 5 {
		t.Fatalf("upserts:\n%s", ch)
	}
	rp.check(t, r)

	// A number released in a call is not reused in the same call.
	r2 := NewResolver(ModeDefault)
	r2.SetPolicies([]api.Policy{a})
	ch = r2.SetPolicies([]api.Policy{rsPol("a", api.Rule{EndpointSelector: rsSel("app=db"), Ingress: []api.IngressRule{{FromCIDR: []string{"11.0.0.0/8"}}}})})
	if want := map[netip.Prefix]identity.NumericIdentity{pfx("11.0.0.0/8"): local(3)}; !maps.Equal(ch.CIDRUpserts, want) {
		t.Fatalf("CIDRUpserts %v, want %v", ch.CIDRUpserts, want)
	}

	// No policies, no CIDR identities and no entries.
	ch = r.SetPolicies(nil)
	rp.apply(t, ch)
	if len(r.CIDRIdentities()) != 0 || len(ch.CIDRDeletes) != 4 || len(rp.entries) != 0 {
		t.Fatalf("after removing every policy: %v, %s", r.CIDRIdentities(), ch)
	}
	rp.check(t, r)
}

// ---- ports ------------------------------------------------------------

func TestPortBlocks(t *testing.T) {
	tests := []struct {
		lo, hi int
		want   []L4
	}{
		{80, 80, []L4{{6, 80, 24}}},
		{80, 83, []L4{{6, 80, 22}}},
		{80, 84, []L4{{6, 80, 22}, {6, 84, 24}}},
		{1000, 2000, []L4{{6, 1000, 21}, {6, 1008, 20}, {6, 1024, 15}, {6, 1536, 16},
			{6, 1792, 17}, {6, 1920, 18}, {6, 1984, 20}, {6, 2000, 24}}},
		{1, 65535, []L4{{6, 1, 24}, {6, 2, 23}, {6, 4, 22}, {6, 8, 21}, {6, 16, 20}, {6, 32, 19},
			{6, 64, 18}, {6, 128, 17}, {6, 256, 16}, {6, 512, 15}, {6, 1024, 14}, {6, 2048, 13},
			{6, 4096, 12}, {6, 8192, 11}, {6, 16384, 10}, {6, 32768, 9}}},
		{0, 65535, []L4{{6, 0, 8}}},
	}
	for _, tc := range tests {
		got := portBlocks(6, tc.lo, tc.hi)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%d-%d: %v, want %v", tc.lo, tc.hi, got, tc.want)
		}
	}
	// Random ranges: blocks are aligned, in order, and cover exactly lo..hi.
	rnd := rand.New(rand.NewSource(1))
	for range 2000 {
		lo := rnd.Intn(65536)
		hi := lo + rnd.Intn(65536-lo)
		next := lo
		for _, b := range portBlocks(17, lo, hi) {
			size := 1 << (24 - int(b.PrefixLen))
			if b.Proto != 17 || int(b.Port) != next || int(b.Port)%size != 0 {
				t.Fatalf("%d-%d: bad block %v at %d", lo, hi, b, next)
			}
			for p := next; p < next+size; p += 97 {
				if !b.Matches(17, uint16(p)) || b.Matches(6, uint16(p)) {
					t.Fatalf("%v and port %d", b, p)
				}
			}
			next += size
		}
		if next != hi+1 {
			t.Fatalf("%d-%d: blocks end at %d", lo, hi, next)
		}
	}
}

func TestResolvePorts(t *testing.T) {
	web := cid(1)
	w := rsWorld{
		identities: []identity.Identity{{ID: web, Labels: rsLabels(t, "app=web")}},
		endpoints:  []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=db")}},
	}
	named := "named port \"http\" skipped"
	tests := []struct {
		name    string
		ports   []api.PortRule
		icmps   []api.ICMPRule
		want    []L4
		warning string
	}{
		{name: "no ports: any L4", want: []L4{{0, 0, 0}}},
		{name: "TCP 80", ports: rsPorts(api.ProtoTCP, "80"), want: []L4{{6, 80, 24}}},
		{name: "UDP all ports", ports: rsPorts(api.ProtoUDP, "0"), want: []L4{{17, 0, 8}}},
		{name: "empty port is all ports", ports: rsPorts(api.ProtoSCTP, ""), want: []L4{{132, 0, 8}}},
		{name: "ANY expands to TCP, UDP, SCTP", ports: rsPorts(api.ProtoAny, "53"),
			want: []L4{{6, 53, 24}, {17, 53, 24}, {132, 53, 24}}},
		{name: "empty protocol is ANY", ports: rsPorts("", "53"),
			want: []L4{{6, 53, 24}, {17, 53, 24}, {132, 53, 24}}},
		{name: "range 80-83", ports: []api.PortRule{{Ports: []api.PortProtocol{{Port: "80", EndPort: 83, Protocol: api.ProtoTCP}}}},
			want: []L4{{6, 80, 22}}},
		{name: "range 1000-2000", ports: []api.PortRule{{Ports: []api.PortProtocol{{Port: "1000", EndPort: 2000, Protocol: api.ProtoUDP}}}},
			want: []L4{{17, 1000, 21}, {17, 1008, 20}, {17, 1024, 15}, {17, 1536, 16},
				{17, 1792, 17}, {17, 1920, 18}, {17, 1984, 20}, {17, 2000, 24}}},
		{name: "ICMP protocol: every type", ports: rsPorts(api.ProtoICMP, "0"), want: []L4{{1, 0, 8}}},
		{name: "ICMPv6 ignored", ports: rsPorts(api.ProtoICMPv6, "0")},
		{name: "icmps types", icmps: []api.ICMPRule{{Fields: []api.ICMPField{
			{Family: api.ICMPFamilyIPv4, Type: &api.IntOrString{Int: 8}},
			{Type: &api.IntOrString{IsString: true, Str: "EchoReply"}},
			{Family: api.ICMPFamilyIPv6, Type: &api.IntOrString{Int: 128}},
		}}}, want: []L4{{1, 8, 24}, {1, 0, 24}}},
		{name: "named port skipped", ports: rsPorts(api.ProtoTCP, "http", "443"), want: []L4{{6, 443, 24}}, warning: named},
		{name: "only a named port: nothing, not any L4", ports: rsPorts(api.ProtoTCP, "http"), warning: named},
		{name: "HTTP rules: their TCP port (marked L7)", ports: []api.PortRule{{Ports: []api.PortProtocol{{Port: "8080", Protocol: api.ProtoTCP}},
			Rules: &api.L7Rules{HTTP: []api.PortRuleHTTP{{Method: "GET"}}}}}, want: []L4{{6, 8080, 24}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := w.build(ModeDefault, []api.Policy{rsPol("p", api.Rule{EndpointSelector: rsSel("app=db"),
				Ingress: []api.IngressRule{{FromEndpoints: rsSels("app=web"), ToPorts: tc.ports, ICMPs: tc.icmps}}})})
			p, _ := r.Endpoint(1)
			var got []L4
			for k, v := range p.Entries {
				if k.Identity != web || k.Dir != Ingress || v.Deny || v.Rule != (RuleRef{"default/p", 0, "ingress[0]"}) {
					t.Errorf("unexpected entry %v %+v", k, v)
				}
				got = append(got, k.L4)
			}
			cmpL4 := func(a, b L4) int { return compareKeys(MapKey{L4: a}, MapKey{L4: b}) }
			slices.SortFunc(got, cmpL4)
			want := slices.SortedFunc(slices.Values(tc.want), cmpL4)
			if !slices.Equal(got, want) {
				t.Errorf("L4s %v, want %v", got, want)
			}
			warns := r.Warnings()
			if tc.warning == "" && len(warns) != 0 || tc.warning != "" && (len(warns) != 1 || !strings.Contains(warns[0], tc.warning)) {
				t.Errorf("warnings %q, want %q", warns, tc.warning)
			}
		})
	}
}

// ---- enforcement ------------------------------------------------------

func TestResolveEnforcement(t *testing.T) {
	web := cid(1)
	w := rsWorld{
		identities: []identity.Identity{{ID: web, Labels: rsLabels(t, "app=web")}},
		endpoints:  []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=db")}},
	}
	in := []api.IngressRule{{FromEndpoints: rsSels("app=web")}}
	out := []api.EgressRule{{ToEndpoints: rsSels("app=web")}}
	tests := []struct {
		name         string
		mode         Mode
		rule         api.Rule
		wantIn       bool
		wantEg       bool
		wantEntries  int
		webIngressOK bool // may web connect in on TCP 80
	}{
		{"ingress rules enforce ingress", ModeDefault, api.Rule{EndpointSelector: rsSel("app=db"), Ingress: in}, true, false, 1, true},
		{"egress rules enforce egress", ModeDefault, api.Rule{EndpointSelector: rsSel("app=db"), Egress: out}, false, true, 1, true},
		{"ingressDeny alone enforces ingress", ModeDefault, api.Rule{EndpointSelector: rsSel("app=db"), IngressDeny: in}, true, false, 1, false},
		{"default deny switched off", ModeDefault, api.Rule{EndpointSelector: rsSel("app=db"), Ingress: in,
			EnableDefaultDeny: api.DefaultDenyConfig{Ingress: rsBool(false)}}, false, false, 1, true},
		{"default deny without rules", ModeDefault, api.Rule{EndpointSelector: rsSel("app=db"),
			EnableDefaultDeny: api.DefaultDenyConfig{Ingress: rsBool(true), Egress: rsBool(true)}}, true, true, 0, false},
		{"not selected", ModeDefault, api.Rule{EndpointSelector: rsSel("app=other"), Ingress: in}, false, false, 0, true},
		{"node selector selects no endpoint", ModeDefault, api.Rule{NodeSelector: &api.EndpointSelector{}, Ingress: in}, false, false, 0, true},
		{"always, not selected", ModeAlways, api.Rule{EndpointSelector: rsSel("app=other"), Ingress: in}, true, true, 0, false},
		{"always, selected", ModeAlways, api.Rule{EndpointSelector: rsSel("app=db"), Ingress: in}, true, true, 1, true},
		{"never", ModeNever, api.Rule{EndpointSelector: rsSel("app=db"), Ingress: in, IngressDeny: in}, false, false, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewResolver(tc.mode)
			r.UpsertIdentity(w.identities[0])
			ch := r.SetPolicies([]api.Policy{rsPol("p", tc.rule)})
			if !ch.Empty() {
				t.Fatalf("policies without endpoints changed entries: %s", ch)
			}
			ch = r.UpsertEndpoint(w.endpoints[0])
			p, _ := r.Endpoint(1)
			if p.IngressEnforced != tc.wantIn || p.EgressEnforced != tc.wantEg || len(p.Entries) != tc.wantEntries {
				t.Fatalf("enforced %v/%v with %d entries, want %v/%v with %d", p.IngressEnforced, p.EgressEnforced,
					len(p.Entries), tc.wantIn, tc.wantEg, tc.wantEntries)
			}
			e, reported := ch.Enforcement[1]
			if reported != (tc.wantIn || tc.wantEg) || e.IngressEnforced != tc.wantIn || e.EgressEnforced != tc.wantEg {
				t.Fatalf("Enforcement %v", ch.Enforcement)
			}
			if ok, _ := dpVerdict(p, Ingress, web, 6, 80); ok != tc.webIngressOK {
				t.Fatalf("web -> db:80 allowed = %v", ok)
			}
			// Removing the policy reports the enforcement going away.
			ch = r.SetPolicies(nil)
			wantIn, wantEg := tc.mode == ModeAlways, tc.mode == ModeAlways
			if e, ok := ch.Enforcement[1]; ok != (tc.wantIn != wantIn || tc.wantEg != wantEg) ||
				ok && (e.IngressEnforced != wantIn || e.EgressEnforced != wantEg) {
				t.Fatalf("after removal: Enforcement %v", ch.Enforcement)
			}
			if p, _ := r.Endpoint(1); len(p.Entries) != 0 || len(ch.Deletes) != tc.wantEntries {
				t.Fatalf("after removal: %d entries, %d deletes", len(p.Entries), len(ch.Deletes))
			}
		})
	}
}

// ---- deny precedence --------------------------------------------------

func TestResolveDenyPrecedence(t *testing.T) {
	web, db := cid(1), cid(2)
	w := rsWorld{
		identities: []identity.Identity{
			{ID: web, Labels: rsLabels(t, "app=web")},
			{ID: db, Labels: rsLabels(t, "app=db")},
		},
		endpoints: []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=srv")}},
	}
	webOnly := rsSels("app=web")
	ref := func(section string) RuleRef { return RuleRef{"default/p", 0, section} }
	type probe struct {
		peer  identity.NumericIdentity
		proto uint8
		port  uint16
		allow bool
		by    string // section of the deciding entry, "" for the default
	}
	tests := []struct {
		name  string
		allow []api.IngressRule
		deny  []api.IngressRule
		want  map[MapKey]MapValue // entries that must be present
		probe []probe
	}{
		{name: "allow inside deny becomes deny",
			allow: []api.IngressRule{{FromEndpoints: webOnly, ToPorts: rsPorts(api.ProtoTCP, "80")}},
			deny:  []api.IngressRule{{FromEndpoints: webOnly, ToPorts: rsPorts(api.ProtoTCP, "0")}},
			want: map[MapKey]MapValue{
				{1, Ingress, web, L4{6, 80, 24}}: {Deny: true, Rule: ref("ingressDeny[0]")},
				{1, Ingress, web, L4{6, 0, 8}}:   {Deny: true, Rule: ref("ingressDeny[0]")},
			},
			probe: []probe{{web, 6, 80, false, "ingressDeny[0]"}, {web, 6, 81, false, "ingressDeny[0]"},
				{web, 17, 80, false, ""}, {db, 6, 80, false, ""}}},
		{name: "allow around a deny stays allow",
			allow: []api.IngressRule{{FromEndpoints: webOnly, ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "80", EndPort: 83, Protocol: api.ProtoTCP}}}}}},
			deny:  []api.IngressRule{{FromEndpoints: webOnly, ToPorts: rsPorts(api.ProtoTCP, "81")}},
			want: map[MapKey]MapValue{
				{1, Ingress, web, L4{6, 80, 22}}: {Rule: ref("ingress[0]")},
				{1, Ingress, web, L4{6, 81, 24}}: {Deny: true, Rule: ref("ingressDeny[0]")},
			},
			probe: []probe{{web, 6, 80, true, "ingress[0]"}, {web, 6, 81, false, "ingressDeny[0]"},
				{web, 6, 83, true, "ingress[0]"}, {web, 6, 84, false, ""}}},
		{name: "deny of any identity against allow of one",
			allow: []api.IngressRule{{FromEndpoints: webOnly, ToPorts: rsPorts(api.ProtoTCP, "0")}},
			deny:  []api.IngressRule{{ToPorts: rsPorts(api.ProtoTCP, "22")}},
			want: map[MapKey]MapValue{
				{1, Ingress, 0, L4{6, 22, 24}}: {Deny: true, Rule: ref("ingressDeny[0]")},
				{1, Ingress, web, L4{6, 0, 8}}: {Rule: ref("ingress[0]")},
			},
			probe: []probe{{web, 6, 22, false, "ingressDeny[0]"}, {web, 6, 23, true, "ingress[0]"},
				{db, 6, 22, false, "ingressDeny[0]"}}},
		{name: "allow all, deny one identity",
			allow: []api.IngressRule{{FromEntities: []api.Entity{api.EntityAll}}},
			deny:  []api.IngressRule{{FromEndpoints: webOnly}},
			want: map[MapKey]MapValue{
				{1, Ingress, 0, L4{}}:   {Rule: ref("ingress[0]")},
				{1, Ingress, web, L4{}}: {Deny: true, Rule: ref("ingressDeny[0]")},
			},
			probe: []probe{{web, 6, 80, false, "ingressDeny[0]"}, {db, 6, 80, true, "ingress[0]"}}},
		{name: "any L4 allowed, one ICMP type denied",
			allow: []api.IngressRule{{FromEndpoints: webOnly}},
			deny:  []api.IngressRule{{FromEndpoints: webOnly, ICMPs: rsICMP(8)}},
			want: map[MapKey]MapValue{
				{1, Ingress, web, L4{}}:         {Rule: ref("ingress[0]")},
				{1, Ingress, web, L4{1, 8, 24}}: {Deny: true, Rule: ref("ingressDeny[0]")},
			},
			probe: []probe{{web, 1, 8, false, "ingressDeny[0]"}, {web, 1, 0, true, "ingress[0]"}, {web, 6, 443, true, "ingress[0]"}}},
		{name: "other protocol is not contained",
			allow: []api.IngressRule{{FromEndpoints: webOnly, ToPorts: rsPorts(api.ProtoTCP, "80")}},
			deny:  []api.IngressRule{{FromEndpoints: webOnly, ToPorts: rsPorts(api.ProtoUDP, "0")}},
			want: map[MapKey]MapValue{
				{1, Ingress, web, L4{6, 80, 24}}: {Rule: ref("ingress[0]")},
				{1, Ingress, web, L4{17, 0, 8}}:  {Deny: true, Rule: ref("ingressDeny[0]")},
			},
			probe: []probe{{web, 6, 80, true, "ingress[0]"}, {web, 17, 80, false, "ingressDeny[0]"}}},
		{name: "same key: deny wins",
			allow: []api.IngressRule{{FromEndpoints: webOnly, ToPorts: rsPorts(api.ProtoTCP, "80")}},
			deny:  []api.IngressRule{{FromEndpoints: webOnly, ToPorts: rsPorts(api.ProtoTCP, "80")}},
			want: map[MapKey]MapValue{
				{1, Ingress, web, L4{6, 80, 24}}: {Deny: true, Rule: ref("ingressDeny[0]")},
			},
			probe: []probe{{web, 6, 80, false, "ingressDeny[0]"}}},
		{name: "nested denies: the longest containing deny's rule",
			allow: []api.IngressRule{{FromEndpoints: webOnly, ToPorts: rsPorts(api.ProtoTCP, "81")}},
			deny: []api.IngressRule{
				{FromEndpoints: webOnly, ToPorts: rsPorts(api.ProtoTCP, "0")},
				{FromEndpoints: webOnly, ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "80", EndPort: 95, Protocol: api.ProtoTCP}}}}},
			},
			want: map[MapKey]MapValue{
				{1, Ingress, web, L4{6, 81, 24}}: {Deny: true, Rule: ref("ingressDeny[1]")},
				{1, Ingress, web, L4{6, 80, 20}}: {Deny: true, Rule: ref("ingressDeny[1]")},
				{1, Ingress, web, L4{6, 0, 8}}:   {Deny: true, Rule: ref("ingressDeny[0]")},
			},
			probe: []probe{{web, 6, 81, false, "ingressDeny[1]"}, {web, 6, 443, false, "ingressDeny[0]"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := w.build(ModeDefault, []api.Policy{rsPol("p", api.Rule{EndpointSelector: rsSel("app=srv"), Ingress: tc.allow, IngressDeny: tc.deny})})
			p, _ := r.Endpoint(1)
			if len(p.Entries) != len(tc.want) {
				t.Errorf("%d entries, want %d: %v", len(p.Entries), len(tc.want), p.Entries)
			}
			for k, v := range tc.want {
				if got, ok := p.Entries[k]; !ok || got != v {
					t.Errorf("%v = %+v (present %v), want %+v", k, got, ok, v)
				}
			}
			for _, pr := range tc.probe {
				ok, v := dpVerdict(p, Ingress, pr.peer, pr.proto, pr.port)
				by := ""
				if v != nil {
					by = v.Rule.Section
				}
				if ok != pr.allow || by != pr.by {
					t.Errorf("peer %d %d/%d: allowed %v by %q, want %v by %q", pr.peer, pr.proto, pr.port, ok, by, pr.allow, pr.by)
				}
				// Trace agrees with the datapath model.
				src := w.identities[0].Labels
				if pr.peer == db {
					src = w.identities[1].Labels
				}
				tr := r.Trace(src, rsLabels(t, "app=srv"), pr.proto, pr.port)
				if (tr.Verdict == VerdictAllowed) != pr.allow {
					t.Errorf("trace peer %d %d/%d: %+v", pr.peer, pr.proto, pr.port, tr)
				}
			}
		})
	}
}

// The allow of the first policy key, rule and section wins, whatever the
// input order.
func TestResolveDeterministicRuleRef(t *testing.T) {
	web := cid(1)
	w := rsWorld{
		identities: []identity.Identity{{ID: web, Labels: rsLabels(t, "app=web")}},
		endpoints:  []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=srv")}},
	}
	allow := api.IngressRule{FromEndpoints: rsSels("app=web"), ToPorts: rsPorts(api.ProtoTCP, "80")}
	deny := api.IngressRule{FromEndpoints: rsSels("app=web"), ToPorts: rsPorts(api.ProtoTCP, "443")}
	mk := func(ns, name string) api.Policy {
		p := api.Policy{Kind: api.KindCiliumNetworkPolicy, Namespace: ns, Name: name, Rules: []api.Rule{
			{EndpointSelector: rsSel("app=srv"), Ingress: []api.IngressRule{{FromEndpoints: rsSels("app=other")}, allow, allow}, IngressDeny: []api.IngressRule{deny, deny}},
			{EndpointSelector: rsSel("app=srv"), Ingress: []api.IngressRule{allow}, IngressDeny: []api.IngressRule{deny}},
		}}
		return p
	}
	ps := []api.Policy{mk("b", "p"), mk("a", "z"), mk("a", "q"), mk("c", "a")}
	want := map[MapKey]MapValue{
		{1, Ingress, web, L4{6, 80, 24}}:  {Rule: RuleRef{"a/q", 0, "ingress[1]"}},
		{1, Ingress, web, L4{6, 443, 24}}: {Deny: true, Rule: RuleRef{"a/q", 0, "ingressDeny[0]"}},
	}
	rnd := rand.New(rand.NewSource(2))
	for i := range 20 {
		rnd.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
		r := w.build(ModeDefault, ps)
		if p, _ := r.Endpoint(1); !maps.Equal(p.Entries, want) {
			t.Fatalf("run %d: %v, want %v", i, p.Entries, want)
		}
	}
}

// ---- incremental ------------------------------------------------------

// incWorld is 3 endpoints, 10 identities and 4 policies.
func incWorld(t testing.TB) (rsWorld, []api.Policy) {
	id := func(n uint32, ls string) identity.Identity {
		return identity.Identity{ID: cid(n), Labels: rsLabels(t, ls)}
	}
	w := rsWorld{
		identities: []identity.Identity{
			id(0, "app=web,env=prod"), id(1, "app=web,env=prod"), id(2, "app=web,env=dev"),
			id(3, "app=db,env=prod"), id(4, "app=db,env=dev"),
			id(5, "app=cache,env=prod"), id(6, "app=cache,env=prod"),
			id(7, "app=batch,env=prod"), id(8, "app=batch,env=dev"), id(9, "app=batch,env=dev"),
		},
		endpoints: []EndpointInfo{
			{ID: 1, Identity: cid(3), Labels: rsLabels(t, "app=db,env=prod")},
			{ID: 2, Identity: cid(0), Labels: rsLabels(t, "app=web,env=prod")},
			{ID: 3, Identity: cid(5), Labels: rsLabels(t, "app=cache,env=prod")},
		},
	}
	ps := []api.Policy{
		rsPol("db", api.Rule{EndpointSelector: rsSel("app=db"),
			Ingress:     []api.IngressRule{{FromEndpoints: rsSels("app=web"), ToPorts: rsPorts(api.ProtoTCP, "5432")}},
			IngressDeny: []api.IngressRule{{FromEndpoints: rsSels("env=dev")}}}),
		rsPol("web", api.Rule{EndpointSelector: rsSel("app=web"),
			Egress: []api.EgressRule{
				{ToEndpoints: rsSels("app=db"), ToPorts: rsPorts(api.ProtoTCP, "5432")},
				{ToEndpoints: rsSels("app=cache"), ToPorts: rsPorts(api.ProtoTCP, "6379")},
				{ToEntities: []api.Entity{api.EntityHost}},
			}}),
		rsPol("cache", api.Rule{EndpointSelector: rsSel("app=cache"),
			Ingress: []api.IngressRule{{FromEndpoints: rsSels("app=web"), ToPorts: rsPorts(api.ProtoAny, "6379")}}}),
		{Kind: api.KindCiliumClusterwideNetworkPolicy, Name: "dns", Rules: []api.Rule{{EndpointSelector: &api.EndpointSelector{},
			Egress: []api.EgressRule{{ToEndpoints: rsSels("k8s-app=kube-dns"), ToPorts: rsPorts(api.ProtoAny, "53")}}}}},
	}
	return w, ps
}

func TestResolveIncremental(t *testing.T) {
	w, ps := incWorld(t)
	r := NewResolver(ModeDefault)
	rp := newReplica()
	for _, id := range w.identities {
		rp.apply(t, r.UpsertIdentity(id))
	}
	for _, ep := range w.endpoints {
		rp.apply(t, r.UpsertEndpoint(ep))
	}
	ch := r.SetPolicies(ps)
	rp.apply(t, ch)
	rp.check(t, r)
	// db (ep 1): web 0,1 allow 5432; web 2 (dev): allow turned deny, deny
	// any; dev 4, 8, 9: deny any. dns: nothing (no dns identity yet).
	// web (ep 2): db 3,4 x 5432, cache 5,6 x 6379, host any.
	// cache (ep 3): web 0,1,2 x 3 protocols.
	if n := len(ch.Upserts); n != 7+5+9 {
		t.Fatalf("initial upserts %d:\n%s", n, ch)
	}
	current := func() map[MapKey]MapValue { return allEntries(r) }
	counters := func() (int, int) {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.endpointRecomputes, r.groupRecomputes
	}

	t.Run("identity matched by one rule", func(t *testing.T) {
		before := current()
		epBefore, _ := counters()
		dns := identity.Identity{ID: cid(100), Labels: rsLabels(t, "k8s-app=kube-dns,env=prod")}
		ch := r.UpsertIdentity(dns)
		rp.apply(t, ch)
		want := map[MapKey]MapValue{}
		for _, ep := range []uint16{1, 2, 3} {
			for _, proto := range []uint8{6, 17, 132} {
				want[MapKey{ep, Egress, dns.ID, L4{proto, 53, 24}}] = MapValue{Rule: RuleRef{"dns", 0, "egress[0]"}}
			}
		}
		if !maps.Equal(ch.Upserts, want) || len(ch.Deletes) != 0 || len(ch.Enforcement) != 0 {
			t.Fatalf("change (%d upserts), want the 9 DNS entries:\n%s", len(ch.Upserts), ch)
		}
		if ep, _ := counters(); ep != epBefore {
			t.Fatalf("an endpoint was recomputed in full")
		}
		after := current()
		maps.DeleteFunc(after, func(k MapKey, _ MapValue) bool { return k.Identity == dns.ID })
		if !maps.Equal(after, before) {
			t.Fatal("entries of other identities changed")
		}
		// Upserting it again changes nothing.
		if ch := r.UpsertIdentity(dns); !ch.Empty() {
			t.Fatalf("re-upsert: %s", ch)
		}
	})

	t.Run("identity matched by several rules", func(t *testing.T) {
		ch := r.UpsertIdentity(identity.Identity{ID: cid(101), Labels: rsLabels(t, "app=web,env=dev")})
		rp.apply(t, ch)
		// db: 5432 allow turned deny, deny any; cache: 3 protocols.
		if len(ch.Upserts) != 5 || len(ch.Deletes) != 0 {
			t.Fatalf("change:\n%s", ch)
		}
		for k, v := range ch.Upserts {
			if k.Identity != cid(101) || (k.Endpoint == 1) != v.Deny {
				t.Fatalf("unexpected %v %+v", k, v)
			}
		}
	})

	t.Run("identity matched by no rule", func(t *testing.T) {
		_, groups := counters()
		ch := r.UpsertIdentity(identity.Identity{ID: cid(102), Labels: rsLabels(t, "app=unrelated")})
		if !ch.Empty() {
			t.Fatalf("change:\n%s", ch)
		}
		if _, g := counters(); g != groups {
			t.Fatalf("%d groups recomputed", g-groups)
		}
	})

	t.Run("relabelled identity", func(t *testing.T) {
		// cid(101) web/dev becomes cache/prod: its db and cache entries
		// go, web's egress to cache comes.
		ch := r.UpsertIdentity(identity.Identity{ID: cid(101), Labels: rsLabels(t, "app=cache,env=prod")})
		rp.apply(t, ch)
		want := map[MapKey]MapValue{{2, Egress, cid(101), L4{6, 6379, 24}}: {Rule: RuleRef{"default/web", 0, "egress[1]"}}}
		if !maps.Equal(ch.Upserts, want) || len(ch.Deletes) != 5 {
			t.Fatalf("change:\n%s", ch)
		}
	})

	t.Run("delete identity", func(t *testing.T) {
		before := current()
		want := []MapKey{}
		for k := range before {
			if k.Identity == cid(0) {
				want = append(want, k)
			}
		}
		slices.SortFunc(want, compareKeys)
		if len(want) != 4 { // db 5432, cache x 3
			t.Fatalf("fixture: %d entries of identity 0", len(want))
		}
		ch := r.DeleteIdentity(cid(0))
		rp.apply(t, ch)
		if !slices.Equal(ch.Deletes, want) || len(ch.Upserts) != 0 {
			t.Fatalf("change:\n%s", ch)
		}
		if ch := r.DeleteIdentity(cid(0)); !ch.Empty() {
			t.Fatalf("second delete: %s", ch)
		}
		if ch := r.DeleteIdentity(identity.Host); !ch.Empty() {
			t.Fatalf("delete of a reserved identity: %s", ch)
		}
	})

	t.Run("new endpoint", func(t *testing.T) {
		before := current()
		epBefore, _ := counters()
		ch := r.UpsertEndpoint(EndpointInfo{ID: 4, Identity: cid(1), Labels: rsLabels(t, "app=web,env=prod")})
		rp.apply(t, ch)
		p, _ := r.Endpoint(4)
		// db 3,4 x 5432; cache 5,6,101 x 6379; host; dns x 3.
		if !maps.Equal(ch.Upserts, p.Entries) || len(p.Entries) != 2+3+1+3 || len(ch.Deletes) != 0 {
			t.Fatalf("change:\n%s", ch)
		}
		if e := ch.Enforcement[4]; len(ch.Enforcement) != 1 || e.IngressEnforced || !e.EgressEnforced {
			t.Fatalf("Enforcement %v", ch.Enforcement)
		}
		if ep, _ := counters(); ep != epBefore+1 {
			t.Fatalf("%d endpoints recomputed", ep-epBefore)
		}
		after := current()
		maps.DeleteFunc(after, func(k MapKey, _ MapValue) bool { return k.Endpoint == 4 })
		if !maps.Equal(after, before) {
			t.Fatal("entries of other endpoints changed")
		}
		if ch := r.UpsertEndpoint(EndpointInfo{ID: 4, Identity: cid(1), Labels: rsLabels(t, "app=web,env=prod")}); !ch.Empty() {
			t.Fatalf("same endpoint again: %s", ch)
		}
	})

	t.Run("one policy changed", func(t *testing.T) {
		epBefore, _ := counters()
		next := slices.Clone(ps)
		next[2] = rsPol("cache", api.Rule{EndpointSelector: rsSel("app=cache"),
			Ingress: []api.IngressRule{{FromEndpoints: rsSels("app=web"), ToPorts: rsPorts(api.ProtoTCP, "6380")}}})
		ch := r.SetPolicies(next)
		rp.apply(t, ch)
		if ep, _ := counters(); ep != epBefore+1 {
			t.Fatalf("%d endpoints recomputed, want 1 (the cache endpoint)", ep-epBefore)
		}
		// web 1, 2 remain: 3 protocols on 6379 go, TCP 6380 comes.
		if len(ch.Upserts) != 2 || len(ch.Deletes) != 6 {
			t.Fatalf("change:\n%s", ch)
		}
		for k := range ch.Upserts {
			if k.Endpoint != 3 || k.L4 != (L4{6, 6380, 24}) {
				t.Fatalf("unexpected upsert %v", k)
			}
		}
		for _, k := range ch.Deletes {
			if k.Endpoint != 3 || k.L4.Port != 6379 {
				t.Fatalf("unexpected delete %v", k)
			}
		}
		ps = next
	})

	t.Run("identical policies", func(t *testing.T) {
		epBefore, groups := counters()
		again := make([]api.Policy, len(ps))
		for i, p := range ps {
			again[i] = p.DeepCopy()
		}
		slices.Reverse(again)
		if ch := r.SetPolicies(again); !ch.Empty() {
			t.Fatalf("change:\n%s", ch)
		}
		if ep, g := counters(); ep != epBefore || g != groups {
			t.Fatal("work done for identical policies")
		}
	})

	t.Run("policy selecting nothing changes nothing", func(t *testing.T) {
		epBefore, _ := counters()
		ch := r.SetPolicies(append(slices.Clone(ps), rsPol("idle", api.Rule{EndpointSelector: rsSel("app=none"), Ingress: []api.IngressRule{{}}})))
		if !ch.Empty() {
			t.Fatalf("change:\n%s", ch)
		}
		if ep, _ := counters(); ep != epBefore {
			t.Fatal("endpoints recomputed")
		}
	})

	t.Run("delete endpoint", func(t *testing.T) {
		p, _ := r.Endpoint(1)
		ch := r.DeleteEndpoint(1)
		rp.apply(t, ch)
		if len(ch.Deletes) != len(p.Entries) || len(ch.Upserts) != 0 {
			t.Fatalf("change:\n%s", ch)
		}
		if e, ok := ch.Enforcement[1]; !ok || e.IngressEnforced || e.EgressEnforced {
			t.Fatalf("Enforcement %v", ch.Enforcement)
		}
		if _, ok := r.Endpoint(1); ok {
			t.Fatal("endpoint still known")
		}
	})

	rp.check(t, r)
	// The incremental state is the state built from scratch.
	fresh := rsWorld{endpoints: []EndpointInfo{w.endpoints[1], w.endpoints[2],
		{ID: 4, Identity: cid(1), Labels: rsLabels(t, "app=web,env=prod")}}}
	r.mu.Lock()
	for _, k := range r.identities {
		if !k.id.IsReserved() && !k.id.IsLocal() {
			fresh.identities = append(fresh.identities, identity.Identity{ID: k.id, Labels: k.labels})
		}
	}
	r.mu.Unlock()
	if d := sameState(r, fresh.build(ModeDefault, append(slices.Clone(ps), rsPol("idle", api.Rule{EndpointSelector: rsSel("app=none"), Ingress: []api.IngressRule{{}}})))); d != "" {
		t.Fatal(d)
	}
}

// Random sequences of changes keep the incremental state equal to the state
// computed from scratch, and the Changes keep a replica equal to it.
func TestResolveIncrementalRandom(t *testing.T) {
	labelPool := [][]string{{"app=web", "app=db", "app=cache", "app=app-0", "app=app-1", "app=app-2", "app=app-8"}, {"env=prod", "env=dev"}, {"k8s-app=kube-dns"}, {"tier=front"}}
	randLabels := func(rnd *rand.Rand) labels.Labels {
		var ls []string
		for _, vs := range labelPool {
			if i := rnd.Intn(len(vs) + 1); i < len(vs) {
				ls = append(ls, vs[i])
			}
		}
		return rsLabels(t, strings.Join(ls, ","))
	}
	ps := benchPolicies(30)
	_, inc := incWorld(t)
	ps = append(ps, inc...)
	ps = append(ps,
		rsPol("cidr", api.Rule{EndpointSelector: rsSel("env=prod"),
			Egress:     []api.EgressRule{{ToCIDRSet: []api.CIDRRule{{CIDR: "10.0.0.0/8", Except: []string{"10.9.0.0/16"}}}}, {ToEntities: []api.Entity{api.EntityWorld}, ToPorts: rsPorts(api.ProtoTCP, "80")}},
			EgressDeny: []api.EgressRule{{ToCIDR: []string{"10.9.0.0/16"}, ToPorts: rsPorts(api.ProtoTCP, "0")}}}),
		// Allows inside denies for peers selected by labels.
		rsPol("overlap", api.Rule{EndpointSelector: rsSel("env=prod"),
			Ingress: []api.IngressRule{
				{FromEndpoints: rsSels("app=web"), ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "80", EndPort: 83, Protocol: api.ProtoTCP}}}}},
				{FromEndpoints: []api.EndpointSelector{{}}, ToPorts: rsPorts(api.ProtoAny, "81")},
			},
			IngressDeny: []api.IngressRule{
				{FromEndpoints: rsSels("env=dev"), ToPorts: rsPorts(api.ProtoTCP, "81")},
				{FromEndpoints: rsSels("tier=front"), ToPorts: rsPorts(api.ProtoTCP, "0")},
			}}))
	// Toggled, so that CIDR identities come and go under unchanged policies.
	cidrPolicies := []api.Policy{
		rsPol("cidr2", api.Rule{EndpointSelector: rsSel("app=web"), Ingress: []api.IngressRule{{FromCIDR: []string{"10.1.0.0/16", "0.0.0.0/0"}}}}),
		rsPol("cidr2", api.Rule{EndpointSelector: rsSel("app=db"),
			IngressDeny: []api.IngressRule{{FromCIDR: []string{"10.2.0.0/16"}, ToPorts: rsPorts(api.ProtoUDP, "53")}},
			Egress:      []api.EgressRule{{ToCIDR: []string{"10.9.5.0/24"}, ToPorts: rsPorts(api.ProtoTCP, "443")}}}),
	}
	for _, mode := range []Mode{ModeDefault, ModeAlways, ModeNever} {
		t.Run(string(mode), func(t *testing.T) {
			rnd := rand.New(rand.NewSource(3))
			r := NewResolver(mode)
			rp := newReplica()
			idents := map[identity.NumericIdentity]labels.Labels{}
			eps := map[uint16]labels.Labels{}
			var cur []api.Policy
			var upserts, deletes int
			for step := range 400 {
				var what string
				switch op := rnd.Intn(10); {
				case op < 3:
					id := cid(uint32(rnd.Intn(40)))
					idents[id] = randLabels(rnd)
					what = fmt.Sprintf("upsert identity %d", id)
					rp.apply(t, r.UpsertIdentity(identity.Identity{ID: id, Labels: idents[id]}))
				case op < 4:
					id := cid(uint32(rnd.Intn(40)))
					delete(idents, id)
					what = fmt.Sprintf("delete identity %d", id)
					rp.apply(t, r.DeleteIdentity(id))
				case op < 6:
					id := uint16(rnd.Intn(8))
					eps[id] = randLabels(rnd)
					what = fmt.Sprintf("upsert endpoint %d", id)
					rp.apply(t, r.UpsertEndpoint(EndpointInfo{ID: id, Labels: eps[id]}))
				case op < 7:
					id := uint16(rnd.Intn(8))
					delete(eps, id)
					what = fmt.Sprintf("delete endpoint %d", id)
					rp.apply(t, r.DeleteEndpoint(id))
				default:
					cur = nil
					for _, p := range ps {
						if rnd.Intn(2) == 0 {
							cur = append(cur, p)
						}
					}
					if n := rnd.Intn(3); n < 2 {
						cur = append(cur, cidrPolicies[n])
					}
					what = fmt.Sprintf("set %d policies", len(cur))
					rp.apply(t, r.SetPolicies(cur))
				}
				upserts, deletes = upserts+len(rp.lastUpserts), deletes+rp.lastDeletes
				rp.check(t, r)
				var w rsWorld
				for _, id := range slices.Sorted(maps.Keys(idents)) {
					w.identities = append(w.identities, identity.Identity{ID: id, Labels: idents[id]})
				}
				for _, id := range slices.Sorted(maps.Keys(eps)) {
					w.endpoints = append(w.endpoints, EndpointInfo{ID: id, Labels: eps[id]})
				}
				fresh := w.build(mode, cur)
				// CIDR numbers depend on history; compare by prefix.
				if !slices.Equal(slices.SortedFunc(maps.Keys(r.CIDRIdentities()), comparePrefixes),
					slices.SortedFunc(maps.Keys(fresh.CIDRIdentities()), comparePrefixes)) {
					t.Fatalf("step %d (%s): CIDR prefixes differ", step, what)
				}
				if d := sameState(r, renumber(fresh, r)); d != "" {
					t.Fatalf("step %d (%s): %s", step, what, d)
				}
			}
			if mode == ModeNever && upserts != 0 {
				t.Fatal("mode never has entries")
			}
			if mode != ModeNever && (upserts < 1000 || deletes < 1000) {
				t.Fatalf("the sequence exercised little: %d upserts, %d deletes", upserts, deletes)
			}
			t.Logf("%d upserts, %d deletes", upserts, deletes)
		})
	}
}

// renumber returns fresh with its CIDR identities renumbered as in ref, by
// rebuilding fresh's endpoint states with translated keys.
func renumber(fresh, ref *Resolver) *Resolver {
	refIDs := ref.CIDRIdentities()
	tr := map[identity.NumericIdentity]identity.NumericIdentity{}
	for p, id := range fresh.CIDRIdentities() {
		tr[id] = refIDs[p]
	}
	fresh.mu.Lock()
	defer fresh.mu.Unlock()
	for _, ep := range fresh.endpoints {
		groups := map[groupKey]map[L4]MapValue{}
		for gk, g := range ep.groups {
			if n, ok := tr[gk.id]; ok {
				gk.id = n
			}
			groups[gk] = g
		}
		ep.groups = groups
	}
	for p, id := range fresh.cidrs {
		fresh.cidrs[p] = tr[id]
	}
	return fresh
}

func TestResolverConcurrentUse(t *testing.T) {
	w, ps := incWorld(t)
	r := w.build(ModeDefault, ps)
	web, db := rsLabels(t, "app=web"), rsLabels(t, "app=db")
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				id := cid(uint32(1000 + g*100 + i))
				r.UpsertIdentity(identity.Identity{ID: id, Labels: web})
				r.Trace(web, db, 6, 5432)
				r.Endpoint(1)
				r.SetPolicies(ps)
				r.DeleteIdentity(id)
			}
		}()
	}
	wg.Wait()
	if d := sameState(r, w.build(ModeDefault, ps)); d != "" {
		t.Fatal(d)
	}
}

// ---- trace ------------------------------------------------------------

func TestResolveTrace(t *testing.T) {
	ps := []api.Policy{
		rsPol("allow-web", api.Rule{EndpointSelector: rsSel("app=db"),
			Ingress: []api.IngressRule{{FromEndpoints: rsSels("app=web"), ToPorts: rsPorts(api.ProtoTCP, "5432")}}}),
		rsPol("deny-db", api.Rule{EndpointSelector: rsSel("app=db"),
			IngressDeny: []api.IngressRule{{FromEndpoints: rsSels("env=dev")}}}),
		rsPol("web-egress", api.Rule{EndpointSelector: rsSel("app=web"),
			Egress: []api.EgressRule{{ToEndpoints: rsSels("app=db"), ToPorts: rsPorts(api.ProtoTCP, "5432")}}}),
		rsPol("host", api.Rule{EndpointSelector: rsSel("app=db"),
			Ingress: []api.IngressRule{{FromEntities: []api.Entity{api.EntityHost}, ICMPs: rsICMP(8)}}}),
	}
	webRef := RuleRef{"default/web-egress", 0, "egress[0]"}
	allowRef := RuleRef{"default/allow-web", 0, "ingress[0]"}
	denyRef := RuleRef{"default/deny-db", 0, "ingressDeny[0]"}
	hostRef := RuleRef{"default/host", 0, "ingress[0]"}
	tests := []struct {
		name      string
		mode      Mode
		src, dst  string
		proto     uint8
		port      uint16
		want      TraceResult
		wantRefOf *RuleRef
	}{
		{"allowed by rules on both sides", ModeDefault, "app=web,env=prod", "app=db", 6, 5432, TraceResult{Verdict: VerdictAllowed,
			Reason: "egress of src: allowed by default/web-egress egress[0]; ingress of dst: allowed by default/allow-web ingress[0]", Enforced: true}, &allowRef},
		{"denied by a deny rule", ModeDefault, "app=web,env=dev", "app=db", 6, 5432, TraceResult{Verdict: VerdictDenied,
			Reason: "ingress of dst: denied by default/deny-db ingressDeny[0]", Enforced: true}, &denyRef},
		{"egress default deny", ModeDefault, "app=web,env=prod", "app=db", 6, 22, TraceResult{Verdict: VerdictDenied,
			Reason: "egress of src: default deny (no rule allows)", Enforced: true}, nil},
		{"ingress default deny", ModeDefault, "app=cache", "app=db", 6, 5432, TraceResult{Verdict: VerdictDenied,
			Reason: "ingress of dst: default deny (no rule allows)", Enforced: true}, nil},
		{"one side not enforced", ModeDefault, "app=web,env=prod", "app=batch", 6, 80, TraceResult{Verdict: VerdictDenied,
			Reason: "egress of src: default deny (no rule allows)", Enforced: true}, nil},
		{"not enforced", ModeDefault, "app=cache", "app=batch", 17, 53, TraceResult{Verdict: VerdictAllowed,
			Reason: "not enforced"}, nil},
		{"reserved source by its labels", ModeDefault, "reserved:host", "app=db", 1, 8, TraceResult{Verdict: VerdictAllowed,
			Reason: "egress of src: not enforced; ingress of dst: allowed by default/host ingress[0]", Enforced: true}, &hostRef},
		{"mode never", ModeNever, "app=web,env=dev", "app=db", 6, 5432, TraceResult{Verdict: VerdictAllowed, Reason: "not enforced"}, nil},
		{"mode always", ModeAlways, "app=cache", "app=batch", 17, 53, TraceResult{Verdict: VerdictDenied,
			Reason: "egress of src: default deny (no rule allows)", Enforced: true}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewResolver(tc.mode)
			r.SetPolicies(ps)
			got := r.Trace(rsLabels(t, tc.src), rsLabels(t, tc.dst), tc.proto, tc.port)
			tc.want.Rule = tc.wantRefOf
			if got.Verdict != tc.want.Verdict || got.Reason != tc.want.Reason || got.Enforced != tc.want.Enforced ||
				!reflect.DeepEqual(got.Rule, tc.want.Rule) {
				t.Errorf("Trace = %+v (rule %v),\n want %+v (rule %v)", got, got.Rule, tc.want, tc.want.Rule)
			}
		})
	}
	// The egress rule is reported when only the egress side has one.
	r := NewResolver(ModeDefault)
	r.SetPolicies(ps[2:3])
	if got := r.Trace(rsLabels(t, "app=web"), rsLabels(t, "app=db"), 6, 5432); got.Rule == nil || *got.Rule != webRef ||
		got.Reason != "egress of src: allowed by default/web-egress egress[0]; ingress of dst: not enforced" {
		t.Errorf("Trace = %+v", got)
	}
}

// ---- benchmark --------------------------------------------------------

// benchWorld is n cluster identities over 200 apps and eps endpoints, one
// per app.
func benchWorld(n, eps int) rsWorld {
	var w rsWorld
	tiers := []string{"front", "back", "data"}
	for i := range n {
		ls, _ := labels.ParseList(fmt.Sprintf("k8s:app=app-%d,k8s:io.kubernetes.pod.namespace=ns-%d,k8s:tier=%s", i%200, i%10, tiers[i%3]))
		w.identities = append(w.identities, identity.Identity{ID: cid(uint32(i)), Labels: ls})
	}
	for i := range eps {
		ls, _ := labels.ParseList(fmt.Sprintf("k8s:app=app-%d,k8s:io.kubernetes.pod.namespace=ns-%d,k8s:tier=%s", i, i%10, tiers[i%3]))
		w.endpoints = append(w.endpoints, EndpointInfo{ID: uint16(i + 1), Identity: cid(uint32(i)), Labels: ls})
	}
	return w
}

// benchPolicies is n rules, 10 per policy, each selecting one app of the
// first 50 and allowing a few others in and out, with some deny, CIDR and
// entity rules.
func benchPolicies(n int) []api.Policy {
	rnd := rand.New(rand.NewSource(42))
	var ps []api.Policy
	for g := range n {
		if g%10 == 0 {
			ps = append(ps, rsPol(fmt.Sprintf("p-%03d", g/10)))
		}
		p := &ps[len(ps)-1]
		r := api.Rule{
			EndpointSelector: rsSel(fmt.Sprintf("k8s:app=app-%d", g%50)),
			Ingress: []api.IngressRule{{FromEndpoints: rsSels(fmt.Sprintf("k8s:app=app-%d", rnd.Intn(200))),
				ToPorts: rsPorts(api.ProtoTCP, fmt.Sprint(8000+rnd.Intn(200)))}},
			Egress: []api.EgressRule{{ToEndpoints: rsSels(fmt.Sprintf("app=app-%d", rnd.Intn(200))),
				ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "5432", Protocol: api.ProtoTCP}, {Port: "53", Protocol: api.ProtoAny}}}}}},
		}
		if g%10 == 3 {
			r.IngressDeny = []api.IngressRule{{FromEndpoints: rsSels(fmt.Sprintf("app=app-%d", rnd.Intn(200)), "tier=data")}}
		}
		if g%20 == 7 {
			r.Egress = append(r.Egress, api.EgressRule{ToCIDRSet: []api.CIDRRule{{CIDR: fmt.Sprintf("10.%d.0.0/16", g%256),
				Except: []string{fmt.Sprintf("10.%d.1.0/24", g%256)}}}, ToPorts: rsPorts(api.ProtoTCP, "443")})
		}
		if g%25 == 11 {
			r.Egress = append(r.Egress, api.EgressRule{ToEntities: []api.Entity{api.EntityWorld}, ToPorts: []api.PortRule{{Ports: []api.PortProtocol{{Port: "8000", EndPort: 8099, Protocol: api.ProtoTCP}}}}})
		}
		if g%50 == 13 {
			r.Ingress = append(r.Ingress, api.IngressRule{FromEntities: []api.Entity{api.EntityCluster}, ICMPs: rsICMP(8)})
		}
		p.Rules = append(p.Rules, r)
	}
	return ps
}

func BenchmarkResolve(b *testing.B) {
	const nIdentities, nEndpoints, nRules = 1000, 50, 1000
	w := benchWorld(nIdentities, nEndpoints)
	ps := benchPolicies(nRules)
	// The added identity: an app that ~20 rules allow in or out.
	added := identity.Identity{ID: cid(5000)}
	added.Labels, _ = labels.ParseList("k8s:app=app-8,k8s:io.kubernetes.pod.namespace=ns-8,k8s:tier=data")
	msPerOp := func(b *testing.B) {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1e6/float64(b.N), "ms/op")
	}

	b.Run("1000rules-x-1000identities", func(b *testing.B) {
		var entries int
		for range b.N {
			b.StopTimer()
			r := NewResolver(ModeDefault)
			for _, id := range w.identities {
				r.UpsertIdentity(id)
			}
			for _, ep := range w.endpoints {
				r.UpsertEndpoint(ep)
			}
			b.StartTimer()
			entries = len(r.SetPolicies(ps).Upserts)
		}
		msPerOp(b)
		b.ReportMetric(float64(entries), "entries")
	})

	b.Run("one-added-identity", func(b *testing.B) {
		r := w.build(ModeDefault, ps)
		var upserts int
		b.ResetTimer()
		for i := range b.N {
			id := added
			id.ID = cid(uint32(5000 + i))
			upserts = len(r.UpsertIdentity(id).Upserts)
		}
		msPerOp(b)
		b.ReportMetric(float64(upserts), "upserts")
	})

	b.Run("baseline-full-recompute-for-one-identity", func(b *testing.B) {
		w2 := w
		w2.identities = append(slices.Clone(w.identities), added)
		var entries int
		for range b.N {
			r := w2.build(ModeDefault, ps)
			entries = len(allEntries(r))
		}
		msPerOp(b)
		b.ReportMetric(float64(entries), "entries")
	})
}

// The benchmark fixture is realistic: every endpoint has entries, and an
// added identity touches a few endpoints only.
func TestBenchFixture(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the benchmark fixture")
	}
	start := time.Now()
	w := benchWorld(1000, 50)
	ps := benchPolicies(1000)
	r := w.build(ModeDefault, ps)
	total := 0
	for _, ep := range w.endpoints {
		p, _ := r.Endpoint(ep.ID)
		if len(p.Entries) == 0 || !p.IngressEnforced || !p.EgressEnforced {
			t.Fatalf("endpoint %d: %d entries", ep.ID, len(p.Entries))
		}
		total += len(p.Entries)
	}
	added := identity.Identity{ID: cid(5000)}
	added.Labels, _ = labels.ParseList("k8s:app=app-8,k8s:io.kubernetes.pod.namespace=ns-8,k8s:tier=data")
	ch := r.UpsertIdentity(added)
	touched := map[uint16]bool{}
	for k := range ch.Upserts {
		if k.Identity != added.ID {
			t.Fatalf("upsert of another identity: %v", k)
		}
		touched[k.Endpoint] = true
	}
	if len(ch.Upserts) == 0 || len(touched) >= 50 {
		t.Fatalf("added identity: %d upserts on %d endpoints", len(ch.Upserts), len(touched))
	}
	t.Logf("%d entries, %d CIDR identities, built in %v; added identity: %d upserts on %d endpoints",
		total, len(r.CIDRIdentities()), time.Since(start), len(ch.Upserts), len(touched))
}

// toGroups fail closed until resolved, then become /32 CIDR peers; a
// membership change recomputes only the policies naming that group and
// changes only the entries of the addresses that came or went.
func TestResolveAWSGroups(t *testing.T) {
	addr := netip.MustParseAddr
	web := EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "app=web")}
	other := EndpointInfo{ID: 2, Identity: cid(2), Labels: rsLabels(t, "app=other")}
	g := api.AWSGroup{SecurityGroupsIDs: []string{"sg-2", "sg-1"}}
	p := rsPol("egress-groups", api.Rule{EndpointSelector: rsSel("app=web"), Egress: []api.EgressRule{{
		ToGroups: []api.Groups{{AWS: &g}}, ToPorts: rsPorts(api.ProtoTCP, "443")}}})
	q := rsPol("other", api.Rule{EndpointSelector: rsSel("app=other"), Egress: []api.EgressRule{{ToCIDR: []string{"192.0.2.0/24"}}}})
	r := NewResolver(ModeDefault)
	rp := newReplica()
	rp.apply(t, r.UpsertEndpoint(web))
	rp.apply(t, r.UpsertEndpoint(other))
	rp.apply(t, r.SetPolicies([]api.Policy{p, q}))
	rp.check(t, r)
	key := api.GroupKey(api.AWSGroup{SecurityGroupsIDs: []string{"sg-1", "sg-2"}})
	if api.GroupKey(g) != key {
		t.Fatal("GroupKey depends on order")
	}
	if _, ok := r.GroupsInUse()[key]; !ok {
		t.Fatalf("groups in use: %v", r.GroupsInUse())
	}
	// Never resolved: web's egress is enforced and allows nothing.
	if ep, _ := r.Endpoint(1); !ep.EgressEnforced || len(ep.Entries) != 0 {
		t.Fatalf("unresolved group: %+v", ep)
	}
	ch := r.SetGroup(key, []netip.Addr{addr("10.0.1.5"), addr("10.0.1.6"), addr("10.0.1.5")})
	rp.apply(t, ch)
	rp.check(t, r)
	if len(ch.CIDRUpserts) != 2 || len(ch.Upserts) != 2 {
		t.Fatalf("resolving the group: %d CIDR identities, %d entries", len(ch.CIDRUpserts), len(ch.Upserts))
	}
	id5 := ch.CIDRUpserts[netip.MustParsePrefix("10.0.1.5/32")]
	if ok, _ := dpVerdict(mustEP(t, r, 1), Egress, id5, 6, 443); !ok {
		t.Fatal("web cannot reach a group member")
	}
	// Same membership: nothing.
	if ch := r.SetGroup(key, []netip.Addr{addr("10.0.1.6"), addr("10.0.1.5")}); !ch.Empty() {
		t.Fatalf("an unchanged group produced %+v", ch)
	}
	// 10.0.1.6 leaves, 10.0.1.7 joins: only those entries change, and the
	// other policy's endpoint is not recomputed.
	before := r.endpointRecomputes
	ch = r.SetGroup(key, []netip.Addr{addr("10.0.1.5"), addr("10.0.1.7")})
	rp.apply(t, ch)
	rp.check(t, r)
	if len(ch.Upserts) != 1 || len(ch.Deletes) != 1 || len(ch.CIDRUpserts) != 1 || len(ch.CIDRDeletes) != 1 {
		t.Fatalf("membership change: %d upserts, %d deletes, CIDR +%d -%d", len(ch.Upserts), len(ch.Deletes), len(ch.CIDRUpserts), len(ch.CIDRDeletes))
	}
	if got := r.endpointRecomputes - before; got != 1 {
		t.Fatalf("%d endpoints recomputed, want only web", got)
	}
	if ok, _ := dpVerdict(mustEP(t, r, 1), Egress, id5, 6, 443); !ok {
		t.Fatal("the member that stayed lost access")
	}
	// Emptied: fails closed again.
	rp.apply(t, r.SetGroup(key, nil))
	rp.check(t, r)
	if ep, _ := r.Endpoint(1); len(ep.Entries) != 0 {
		t.Fatalf("empty group still allows %v", ep.Entries)
	}
}

func mustEP(t *testing.T, r *Resolver, id uint16) EndpointPolicy {
	t.Helper()
	p, ok := r.Endpoint(id)
	if !ok {
		t.Fatalf("endpoint %d unknown", id)
	}
	return p
}

// toNodes: a node selector selects nothing until the agent gives it the
// matching nodes' addresses, then those as /32 peers.
func TestResolveToNodes(t *testing.T) {
	ps, err := api.Parse([]byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: metrics}
spec:
  endpointSelector: {matchLabels: {app: scraper}}
  egress:
  - toNodes: [{matchLabels: {topology.kubernetes.io/zone: us-east-1b}}]
    toPorts: [{ports: [{port: "9100", protocol: TCP}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	r := NewResolver(ModeDefault)
	r.UpsertEndpoint(EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "k8s:app=scraper", "k8s:io.kubernetes.pod.namespace=default")})
	r.SetPolicies(ps)
	sels := r.NodeSelectorsInUse()
	if len(sels) != 1 {
		t.Fatalf("node selectors in use: %v", sels)
	}
	var key string
	for k, s := range sels {
		key = k
		if !s.Matches(labels.Labels{{Source: "node", Key: "topology.kubernetes.io/zone", Value: "us-east-1b"}}) {
			t.Fatal("the selector does not match a node label")
		}
	}
	if ep, _ := r.Endpoint(1); !ep.EgressEnforced || len(ep.Entries) != 0 {
		t.Fatalf("before any node matched: %+v", ep)
	}
	ch := r.SetGroup(key, []netip.Addr{netip.MustParseAddr("172.30.0.2")})
	id := ch.CIDRUpserts[netip.MustParsePrefix("172.30.0.2/32")]
	if id == 0 {
		t.Fatalf("no CIDR identity for the node: %+v", ch)
	}
	if ok, _ := dpVerdict(mustEP(t, r, 1), Egress, id, 6, 9100); !ok {
		t.Fatal("the scraper cannot reach the matched node")
	}
}

// A node selector in one namespace's policy changes no other policy's
// verdict for the nodes it names: their addresses get CIDR identities
// (so that the selector can select them), but for every other rule they
// stay the remote nodes they were: `remote-node` and `cluster` select
// them, `world` and CIDR rules do not. Before 2026-12-05 a tenant's
// `toNodes: [{}]` made another namespace's `toEntities: [remote-node]`
// allow stop matching the nodes and its world and CIDR allows start
// reaching them.
func TestNodeSelectorLeavesOtherPoliciesVerdicts(t *testing.T) {
	_, r := nodesAndB(t, `
  - toEntities: [remote-node]
    toPorts: [{ports: [{port: "9100", protocol: TCP}]}]
  - toEntities: [cluster]
    toPorts: [{ports: [{port: "9200", protocol: TCP}]}]
  - toEntities: [world]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toCIDR: [172.30.0.0/16]
    toPorts: [{ports: [{port: "22", protocol: TCP}]}]
`)
	key := nodeKeyOf(r)
	node := netip.MustParsePrefix("172.30.0.2/32")
	r.SetGroup(key, []netip.Addr{node.Addr()})
	id := r.CIDRIdentities()[node]
	if id == 0 {
		t.Fatal("no CIDR identity for the selected node")
	}
	if ok, _ := dpVerdict(mustEP(t, r, 1), Egress, id, 6, 80); !ok {
		t.Error("namespace a's node selector does not select the node")
	}
	for _, c := range []struct {
		port uint16
		want bool
	}{{9100, true}, {9200, true}, {443, false}, {22, false}} {
		if ok, _ := dpVerdict(mustEP(t, r, 2), Egress, id, 6, c.port); ok != c.want {
			t.Errorf("namespace b to the node on %d: allowed %v, want %v (as to the remote node without a's selector)", c.port, ok, c.want)
		}
	}
	// The selector gone, the node is the remote node again for everyone.
	ps2, _ := api.Parse([]byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b, namespace: b}
spec:
  endpointSelector: {}
  egress: [{toEntities: [world], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]
`))
	r.SetPolicies(ps2)
	if _, ok := r.CIDRIdentities()[node]; ok {
		t.Error("the node's CIDR identity stayed after its selector went")
	}
}

// nodesAndB is a resolver with endpoint 1 in namespace a, whose policy
// selects every node (toNodes), and endpoint 2 in namespace b, whose
// policy has the egress rules egressYAML (a YAML list, indented two
// spaces); and the policies.
func nodesAndB(t *testing.T, egressYAML string) ([]api.Policy, *Resolver) {
	t.Helper()
	ps, err := api.Parse([]byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: nodes, namespace: a}
spec:
  endpointSelector: {}
  egress: [{toNodes: [{}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b, namespace: b}
spec:
  endpointSelector: {}
  egress:` + egressYAML))
	if err != nil {
		t.Fatal(err)
	}
	r := NewResolver(ModeDefault)
	r.UpsertEndpoint(EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "k8s:app=x", "k8s:io.kubernetes.pod.namespace=a")})
	r.UpsertEndpoint(EndpointInfo{ID: 2, Identity: cid(2), Labels: rsLabels(t, "k8s:app=y", "k8s:io.kubernetes.pod.namespace=b")})
	r.SetPolicies(ps)
	return ps, r
}

// nodeKeyOf is the key of the (one) node selector r's policies use.
func nodeKeyOf(r *Resolver) (key string) {
	for k := range r.NodeSelectorsInUse() {
		key = k
	}
	return key
}

// A group's special-purpose addresses (the test toFQDNs answers pass,
// fqdn.Learnable) never become CIDR peers: an EC2 answer holding the
// metadata service's 169.254.169.254 let a toGroups rule allow pods to
// fetch the node role's credentials until 2026-12-07 (found by a
// review); this network, loopback, multicast and broadcast neither.
func TestGroupSpecialAddressesDropped(t *testing.T) {
	addr := netip.MustParseAddr
	g := api.AWSGroup{SecurityGroupsIDs: []string{"sg-1"}}
	p := rsPol("egress-groups", api.Rule{EndpointSelector: rsSel("app=web"), Egress: []api.EgressRule{{
		ToGroups: []api.Groups{{AWS: &g}}}}})
	r := NewResolver(ModeDefault)
	rp := newReplica()
	rp.apply(t, r.UpsertEndpoint(EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "app=web")}))
	rp.apply(t, r.SetPolicies([]api.Policy{p}))
	key := api.GroupKey(g)
	ch := r.SetGroup(key, []netip.Addr{addr("169.254.169.254"), addr("0.0.0.0"), addr("127.0.0.1"),
		addr("224.0.0.1"), addr("255.255.255.255"), addr("168.63.129.16"), addr("10.0.1.5")})
	rp.apply(t, ch)
	rp.check(t, r)
	got, _ := r.GroupAddrs(key)
	if want := []netip.Prefix{netip.MustParsePrefix("10.0.1.5/32")}; !slices.Equal(got, want) {
		t.Fatalf("group addresses %v, want %v", got, want)
	}
	if len(ch.CIDRUpserts) != 1 {
		t.Fatalf("CIDR identities %v, want 10.0.1.5/32 alone", ch.CIDRUpserts)
	}
}
