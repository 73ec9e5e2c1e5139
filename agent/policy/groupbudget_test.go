package policy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy/api"
)

// hosts are n /32 addresses from base on.
func hosts(base string, n int) []netip.Addr {
	a := netip.MustParseAddr(base)
	out := make([]netip.Addr, n)
	for i := range n {
		out[i] = a
		a = a.Next()
	}
	return out
}

// cidrStrings are the /32 prefixes of addrs, as a policy names them.
func cidrStrings(addrs []netip.Addr) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = netip.PrefixFrom(a, 32).String()
	}
	return out
}

func awsGroup(id string) api.Groups {
	return api.Groups{AWS: &api.AWSGroup{SecurityGroupsIDs: []string{id}}}
}

func groupKeyOf(id string) string { return api.GroupKey(*awsGroup(id).AWS) }

// byPrefix is what endpoint 1's entries are, CIDR identities named by
// their prefixes (their numbers depend on the order they came in).
func byPrefix(t *testing.T, r *Resolver) map[string]MapValue {
	t.Helper()
	prefixOf := map[identity.NumericIdentity]netip.Prefix{}
	for p, id := range r.CIDRIdentities() {
		prefixOf[id] = p
	}
	out := map[string]MapValue{}
	for k, v := range mustEP(t, r, 1).Entries {
		peer := fmt.Sprint(k.Identity)
		if p, ok := prefixOf[k.Identity]; ok {
			peer = p.String()
		}
		out[fmt.Sprintf("%v %s %v", k.Dir, peer, k.L4)] = v
	}
	return out
}

func warned(r *Resolver, parts ...string) bool {
	for _, w := range r.Warnings() {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(w, p)
		}
		if all {
			return true
		}
	}
	return false
}

// A cloud group's resolved addresses count against its namespace's
// prefix budget (MaxNamespacePrefixes, each an ipcache entry on every
// node), with the namespace's toCIDR prefixes: the groups that do not fit
// are refused whole, in the order of their keys (not of their addresses,
// nor of when they resolved), and select nothing (fail closed, as an
// unresolved group). A group refused comes in once there is room, and
// goes out again when a group before it grows back. Until 2026-12-07 a
// group counted as one whatever it resolved to (found by a review): 64
// groups of 4,096 addresses made 262,144 ipcache entries on every node.
func TestGroupAddrsCountInNamespaceBudget(t *testing.T) {
	web := EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "app=web")}
	static := hosts("192.168.0.1", 96)
	p := rsPol("groups", api.Rule{EndpointSelector: rsSel("app=web"), Egress: []api.EgressRule{
		{ToCIDR: cidrStrings(static), ToPorts: rsPorts(api.ProtoTCP, "443")},
		{ToGroups: []api.Groups{awsGroup("sg-1"), awsGroup("sg-2"), awsGroup("sg-3")}, ToPorts: rsPorts(api.ProtoTCP, "443")},
	}})
	// sg-3's key comes last and its addresses are the lowest.
	addrs := map[string][]netip.Addr{
		"sg-1": hosts("10.3.0.1", 2000), "sg-2": hosts("10.2.0.1", 2000), "sg-3": hosts("10.1.0.1", 2000),
	}
	build := func(order ...string) (*Resolver, *replica) {
		r := NewResolver(ModeDefault)
		rp := newReplica()
		rp.apply(t, r.UpsertEndpoint(web))
		rp.apply(t, r.SetPolicies([]api.Policy{p}))
		for _, g := range order {
			rp.apply(t, r.SetGroup(groupKeyOf(g), addrs[g]))
			rp.check(t, r)
		}
		return r, rp
	}
	r, rp := build("sg-3", "sg-2", "sg-1")
	reaches := func(a netip.Addr) bool {
		t.Helper()
		id, ok := r.CIDRIdentities()[netip.PrefixFrom(a, 32)]
		if !ok {
			return false
		}
		allowed, _ := dpVerdict(mustEP(t, r, 1), Egress, id, 6, 443)
		return allowed
	}
	check := func(when string, refused string) {
		t.Helper()
		if n := len(r.CIDRIdentities()); n > MaxNamespacePrefixes {
			t.Fatalf("%s: the namespace holds %d CIDR identities, past its budget of %d", when, n, MaxNamespacePrefixes)
		}
		for _, g := range []string{"sg-1", "sg-2", "sg-3"} {
			if len(addrs[g]) == 0 {
				continue
			}
			if got, want := reaches(addrs[g][7]), g != refused; got != want {
				t.Errorf("%s: web reaches a member of %s: %v, want %v", when, g, got, want)
			}
		}
		if !reaches(static[5]) {
			t.Errorf("%s: web lost its toCIDR", when)
		}
		if refused != "" && !warned(r, groupKeyOf(refused), "budget") {
			t.Errorf("%s: no warning names the refused group %s: %q", when, refused, r.Warnings())
		}
	}
	check("resolved last first", "sg-3")
	// The same on a node that got the groups in another order.
	if r2, _ := build("sg-1", "sg-2", "sg-3"); !maps.Equal(byPrefix(t, r), byPrefix(t, r2)) {
		t.Errorf("the order the groups resolved in changed what is applied")
	}
	// sg-2 empties: sg-3 fits and comes in.
	addrs["sg-2"] = nil
	rp.apply(t, r.SetGroup(groupKeyOf("sg-2"), nil))
	rp.check(t, r)
	check("sg-2 emptied", "")
	// sg-2 back: sg-3, after it by key, is refused again.
	addrs["sg-2"] = hosts("10.2.0.1", 2000)
	rp.apply(t, r.SetGroup(groupKeyOf("sg-2"), addrs["sg-2"]))
	rp.check(t, r)
	check("sg-2 back", "sg-3")
}

// A deny rule's group is never trimmed: deny groups are counted before
// allow groups, so an allow group cannot push one out, and one that does
// not fit (its namespace's toCIDR prefixes hold the budget) denies every
// peer on its rule's ports instead (fail closed) until it fits.
func TestNamespaceBudgetNeverTrimsADeny(t *testing.T) {
	web := EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "app=web")}
	other := cid(7) // a cluster identity
	p := rsPol("world", api.Rule{EndpointSelector: rsSel("app=web"),
		Egress: []api.EgressRule{
			{ToEntities: []api.Entity{api.EntityWorld, api.EntityCluster}, ToPorts: rsPorts(api.ProtoTCP, "443", "80", "22")},
			{ToGroups: []api.Groups{awsGroup("sg-a")}, ToPorts: rsPorts(api.ProtoTCP, "8443")},
		},
		EgressDeny: []api.EgressRule{{ToGroups: []api.Groups{awsGroup("sg-z")}, ToPorts: rsPorts(api.ProtoTCP, "443")}},
	})
	r, rp := webAndOther(t, web, other, p)
	allow, deny := hosts("10.1.0.1", MaxNamespacePrefixes), hosts("10.9.0.1", 10)
	rp.apply(t, r.SetGroup(groupKeyOf("sg-a"), allow))
	rp.apply(t, r.SetGroup(groupKeyOf("sg-z"), deny))
	rp.check(t, r)
	if n := len(r.CIDRIdentities()); n > MaxNamespacePrefixes {
		t.Fatalf("the namespace holds %d CIDR identities, past its budget of %d", n, MaxNamespacePrefixes)
	}
	id, ok := r.CIDRIdentities()[netip.PrefixFrom(deny[3], 32)]
	if !ok {
		t.Fatal("the deny group was pushed out by an allow group")
	}
	if allowed, _ := dpVerdict(mustEP(t, r, 1), Egress, id, 6, 443); allowed {
		t.Fatal("a member of the deny group is allowed")
	}

	// Another namespace's toCIDR prefixes hold its budget: its deny group
	// does not fit, and its rule denies on its port every peer the group
	// could have held, world and every CIDR identity, and no cluster peer
	// (until 2026-12-07 it denied every peer: host, kube-dns and the pods
	// too).
	static := hosts("192.168.0.1", MaxNamespacePrefixes-100)
	q := api.Policy{Kind: api.KindCiliumNetworkPolicy, Namespace: "other", Name: "ssh", Rules: []api.Rule{{
		EndpointSelector: rsSel("app=web"),
		Egress:           []api.EgressRule{{ToCIDR: cidrStrings(static), ToPorts: rsPorts(api.ProtoTCP, "80")}},
		EgressDeny:       []api.EgressRule{{ToGroups: []api.Groups{awsGroup("sg-ssh")}, ToPorts: rsPorts(api.ProtoTCP, "22")}},
	}}}
	rp.apply(t, r.SetPolicies([]api.Policy{p, q}))
	ssh := hosts("10.8.0.1", 200)
	rp.apply(t, r.SetGroup(groupKeyOf("sg-ssh"), ssh))
	rp.check(t, r)
	ep := mustEP(t, r, 1)
	cidrPeer, ok := r.CIDRIdentities()[netip.PrefixFrom(deny[3], 32)]
	if !ok {
		t.Fatal("the deny group sg-z's address has no CIDR identity")
	}
	for _, peer := range []identity.NumericIdentity{identity.World, cidrPeer} {
		if allowed, _ := dpVerdict(ep, Egress, peer, 6, 22); allowed {
			t.Errorf("a deny group past its namespace's budget was dropped: web reaches %d on 22", peer)
		}
	}
	for _, peer := range []identity.NumericIdentity{identity.World, other, identity.Host} {
		if allowed, _ := dpVerdict(ep, Egress, peer, 6, 80); !allowed {
			t.Errorf("the refused deny group denied web's other ports too (%d on 80)", peer)
		}
	}
	for _, peer := range []identity.NumericIdentity{other, identity.Host} {
		if allowed, _ := dpVerdict(ep, Egress, peer, 6, 22); !allowed {
			t.Errorf("the refused deny group denies cluster peer %d on 22: it could only ever deny world and CIDR peers", peer)
		}
	}
	if !warned(r, groupKeyOf("sg-ssh"), "budget") {
		t.Errorf("no warning names the refused deny group: %q", r.Warnings())
	}
	// Room again: the group's own addresses are denied, and no more.
	rp.apply(t, r.SetPolicies([]api.Policy{p, {Kind: q.Kind, Namespace: q.Namespace, Name: q.Name, Rules: []api.Rule{{
		EndpointSelector: rsSel("app=web"), EgressDeny: q.Rules[0].EgressDeny}}}}))
	rp.check(t, r)
	ep = mustEP(t, r, 1)
	if allowed, _ := dpVerdict(ep, Egress, other, 6, 22); !allowed {
		t.Error("the deny group fits now and still denies a cluster peer")
	}
	if allowed, _ := dpVerdict(ep, Egress, identity.World, 6, 22); !allowed {
		t.Error("the deny group fits now and still denies world")
	}
	if id, ok := r.CIDRIdentities()[netip.PrefixFrom(ssh[3], 32)]; !ok {
		t.Error("the deny group fits now and is not applied")
	} else if allowed, _ := dpVerdict(ep, Egress, id, 6, 22); allowed {
		t.Error("the deny group fits now and its member is allowed")
	}
}

// The policies' CIDR identities, every namespace's and the clusterwide
// ones together, hold at most MaxPolicyCIDRs (an eighth of the ipcache),
// so that namespaces each within their budget leave this cluster's pods
// their room: clusterwide policies first, then namespaces' toCIDR
// prefixes, deny groups and allow groups, each by name; what does not fit
// is refused whole, as past a namespace's budget (a deny naming it denies
// world on its ports), and toFQDNs' learned addresses get at most
// MaxFQDNCIDRs of the share. Until 2026-12-07 nothing bounded them.
func TestPolicyCIDRShare(t *testing.T) {
	web := EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "app=web")}
	other := cid(7)
	// The namespaces' policies select web only where it is checked (it
	// is not their own: web's entries stay within its share).
	pol := func(ns string, rule api.Rule) api.Policy {
		rule.EndpointSelector = rsSel("app=tenant")
		if ns == "ns12" || ns == "ns13" {
			rule.EndpointSelector = rsSel("app=web")
		}
		return api.Policy{Kind: api.KindCiliumNetworkPolicy, Namespace: ns, Name: "p", Rules: []api.Rule{rule}}
	}
	fqdn := api.FQDNSelector{MatchPattern: "*.example"}
	ps := []api.Policy{
		{Kind: api.KindCiliumClusterwideNetworkPolicy, Name: "cw", Rules: []api.Rule{{EndpointSelector: rsSel("app=web"),
			Egress: []api.EgressRule{{ToEntities: []api.Entity{api.EntityCluster}, ToPorts: rsPorts(api.ProtoTCP, "22", "80", "443")},
				{ToEntities: []api.Entity{api.EntityWorld}, ToPorts: rsPorts(api.ProtoTCP, "22")},
				{ToCIDR: []string{"198.51.100.0/24"}, ToPorts: rsPorts(api.ProtoTCP, "8080")},
				{ToCIDR: []string{"10.9.0.0/16", "10.7.0.0/16"}, ToPorts: rsPorts(api.ProtoTCP, "443")},
				{ToFQDNs: []api.FQDNSelector{fqdn}, ToPorts: rsPorts(api.ProtoTCP, "8443")}},
			EgressDeny: []api.EgressRule{{ToGroups: []api.Groups{awsGroup("sg-cw")}, ToPorts: rsPorts(api.ProtoTCP, "443")}}}}},
	}
	for n := range 13 {
		base := netip.AddrFrom4([4]byte{10, byte(100 + n), 0, 0})
		rule := api.Rule{Egress: []api.EgressRule{{ToCIDR: cidrStrings(hosts(base.String(), MaxNamespacePrefixes)), ToPorts: rsPorts(api.ProtoTCP, "80")}}}
		if n == 12 {
			rule.EgressDeny = []api.EgressRule{{ToCIDR: []string{"203.0.113.7/32"}, ToPorts: rsPorts(api.ProtoTCP, "22")}}
			rule.Egress[0].ToCIDR = rule.Egress[0].ToCIDR[:MaxNamespacePrefixes-1]
		}
		ps = append(ps, pol(fmt.Sprintf("ns%02d", n), rule))
	}
	ps = append(ps,
		pol("ns13", api.Rule{EgressDeny: []api.EgressRule{{ToGroups: []api.Groups{awsGroup("sg-deny")}, ToPorts: rsPorts(api.ProtoTCP, "443")}}}),
		pol("ns14", api.Rule{Egress: []api.EgressRule{{ToGroups: []api.Groups{awsGroup("sg-allow")}, ToPorts: rsPorts(api.ProtoTCP, "443")}}}))
	r := NewResolver(ModeDefault)
	rp := newReplica()
	rp.apply(t, r.UpsertIdentity(identity.Identity{ID: other, Labels: rsLabels(t, "app=other")}))
	rp.apply(t, r.UpsertEndpoint(web))
	rp.apply(t, r.SetPolicies(ps))
	deny, allow, cwDeny := hosts("10.9.0.1", 10), hosts("10.8.0.1", 4090), hosts("10.7.0.1", 4100)
	rp.apply(t, r.SetGroup(groupKeyOf("sg-allow"), allow))
	rp.apply(t, r.SetGroup(groupKeyOf("sg-deny"), deny))
	rp.apply(t, r.SetGroup(groupKeyOf("sg-cw"), cwDeny))
	rp.check(t, r)
	if n := len(r.CIDRIdentities()); n > MaxPolicyCIDRs-MaxFQDNCIDRs {
		t.Fatalf("the policies hold %d CIDR identities, past their share of %d", n, MaxPolicyCIDRs-MaxFQDNCIDRs)
	}
	// The clusterwide policies' 3 prefixes and deny group (4,103, the
	// operator's: the namespaces' toCIDR prefixes cannot push its deny
	// out) and ns00 to ns09 fit (45,063), ns10's to ns12's toCIDR
	// prefixes do not; the deny group comes before the allow group, which
	// does not fit what is left.
	var got []string
	for _, u := range r.Refused() {
		got = append(got, u.Namespace+" "+unitName(u.Unit))
		if !strings.Contains(u.Reason, "share") {
			t.Errorf("%s %s refused for %q, want the share", u.Namespace, unitName(u.Unit), u.Reason)
		}
	}
	if want := []string{"ns10 toCIDR prefixes", "ns11 toCIDR prefixes", "ns12 toCIDR prefixes", "ns14 " + groupKeyOf("sg-allow")}; !slices.Equal(got, want) {
		t.Fatalf("refused %q, want %q", got, want)
	}
	ids := r.CIDRIdentities()
	ep := mustEP(t, r, 1)
	for _, a := range []string{"198.51.100.0/24", "10.100.0.9/32", "10.109.15.255/32", "10.9.0.3/32", "10.7.0.5/32"} {
		if _, ok := ids[netip.MustParsePrefix(a)]; !ok {
			t.Errorf("%s has no CIDR identity", a)
		}
	}
	for _, a := range []string{"10.110.0.9/32", "10.111.0.9/32", "10.112.0.9/32", "10.8.0.9/32", "203.0.113.7/32"} {
		if _, ok := ids[netip.MustParsePrefix(a)]; ok {
			t.Errorf("%s, refused, has a CIDR identity", a)
		}
	}
	for _, a := range []string{"10.9.0.3/32", "10.7.0.5/32"} {
		if allowed, _ := dpVerdict(ep, Egress, ids[netip.MustParsePrefix(a)], 6, 443); allowed {
			t.Errorf("a deny group's member %s is allowed", a)
		}
	}
	// ns12's deny is in its refused toCIDR prefixes: it denies world on
	// 22 (identity world and every CIDR identity), no cluster peer, and
	// no other port.
	for _, peer := range []identity.NumericIdentity{identity.World, ids[netip.MustParsePrefix("10.9.0.3/32")]} {
		if allowed, _ := dpVerdict(ep, Egress, peer, 6, 22); allowed {
			t.Errorf("a refused deny was dropped: web reaches %d on 22", peer)
		}
	}
	if allowed, _ := dpVerdict(ep, Egress, other, 6, 22); !allowed {
		t.Error("a refused toCIDR deny denies a pod on 22")
	}
	if allowed, _ := dpVerdict(ep, Egress, other, 6, 80); !allowed {
		t.Error("a refused deny denies web's other ports")
	}
	if left := r.CIDRsLeftOut(); left != 3*MaxNamespacePrefixes+len(allow) {
		t.Errorf("%d prefixes left out, want %d", left, 3*MaxNamespacePrefixes+len(allow))
	}

	// toFQDNs' learned addresses get MaxFQDNCIDRs at most.
	learned := map[netip.Addr][]uint16{}
	for _, a := range hosts("172.16.0.1", MaxFQDNCIDRs+10) {
		learned[a] = []uint16{1}
	}
	rp.apply(t, r.SetFQDN(api.FQDNKey(fqdn), learned, 0))
	rp.check(t, r)
	if n := len(r.CIDRIdentities()); n > MaxPolicyCIDRs {
		t.Fatalf("the policies hold %d CIDR identities, past their share of %d", n, MaxPolicyCIDRs)
	}
	if left := r.CIDRsLeftOut(); left != 3*MaxNamespacePrefixes+len(allow)+10 {
		t.Errorf("%d prefixes left out with toFQDNs' past theirs, want %d", left, 3*MaxNamespacePrefixes+len(allow)+10)
	}
	// A namespace that goes makes room for the next by name.
	rp.apply(t, r.SetPolicies(slices.DeleteFunc(slices.Clone(ps), func(p api.Policy) bool { return p.Namespace == "ns00" })))
	rp.check(t, r)
	if _, ok := r.CIDRIdentities()[netip.MustParsePrefix("10.110.0.9/32")]; !ok {
		t.Error("ns10's toCIDR prefixes fit once ns00's went, and have no CIDR identity")
	}
	if _, ok := r.CIDRIdentities()[netip.MustParsePrefix("10.111.0.9/32")]; ok {
		t.Error("ns11's toCIDR prefixes do not fit, and have a CIDR identity")
	}
}

// webAndOther is a resolver with endpoint web, cluster identity other
// and policies ps.
func webAndOther(t *testing.T, web EndpointInfo, other identity.NumericIdentity, ps ...api.Policy) (*Resolver, *replica) {
	t.Helper()
	r := NewResolver(ModeDefault)
	rp := newReplica()
	rp.apply(t, r.UpsertIdentity(identity.Identity{ID: other, Labels: rsLabels(t, "app=other")}))
	rp.apply(t, r.UpsertEndpoint(web))
	rp.apply(t, r.SetPolicies(ps))
	return r, rp
}

// A group the groups layer refused (past groups.MaxGroupAddrs at its first
// resolution, so with no good set) is a refused unit, as one past a
// namespace's budget: a deny naming it denies world on its ports, an
// allow selects nothing; applied later, it denies its members only. Until
// 2026-12-07 it was just not resolved yet, and its deny denied nothing
// (found by a review).
func TestGroupRefusedByGroupsLayer(t *testing.T) {
	web := EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "app=web")}
	other := cid(7)
	p := rsPol("big", api.Rule{EndpointSelector: rsSel("app=web"),
		Egress: []api.EgressRule{
			{ToEntities: []api.Entity{api.EntityWorld, api.EntityCluster}, ToPorts: rsPorts(api.ProtoTCP, "22", "80")},
			{ToGroups: []api.Groups{awsGroup("sg-allow")}, ToPorts: rsPorts(api.ProtoTCP, "8443")},
		},
		EgressDeny: []api.EgressRule{{ToGroups: []api.Groups{awsGroup("sg-big")}, ToPorts: rsPorts(api.ProtoTCP, "22")}},
	})
	r, rp := webAndOther(t, web, other, p)
	rp.apply(t, r.SetGroupRefused(groupKeyOf("sg-big"), "the group resolved to 5000 addresses"))
	rp.apply(t, r.SetGroupRefused(groupKeyOf("sg-allow"), "the group resolved to 5000 addresses"))
	rp.check(t, r)
	ep := mustEP(t, r, 1)
	if allowed, _ := dpVerdict(ep, Egress, identity.World, 6, 22); allowed {
		t.Error("a deny group the groups layer refused denies nothing: web reaches world on 22")
	}
	for _, peer := range []identity.NumericIdentity{other, identity.Host} {
		if allowed, _ := dpVerdict(ep, Egress, peer, 6, 22); !allowed {
			t.Errorf("a deny group the groups layer refused denies cluster peer %d on 22", peer)
		}
	}
	if allowed, _ := dpVerdict(ep, Egress, identity.World, 6, 80); !allowed {
		t.Error("the refused deny group denies web's other ports")
	}
	if _, ok := r.GroupRefused("default", groupKeyOf("sg-big")); !ok {
		t.Errorf("the groups layer's refusal is not shown: %v", r.Refused())
	}
	if !warned(r, groupKeyOf("sg-big"), "refused") {
		t.Errorf("no warning names the refused deny group: %q", r.Warnings())
	}
	// Applied: the refusal ends, its members only are denied.
	members := hosts("10.9.0.1", 4)
	rp.apply(t, r.SetGroup(groupKeyOf("sg-big"), members))
	rp.check(t, r)
	ep = mustEP(t, r, 1)
	if allowed, _ := dpVerdict(ep, Egress, identity.World, 6, 22); !allowed {
		t.Error("the group is applied and its deny still denies world")
	}
	if id, ok := r.CIDRIdentities()[netip.PrefixFrom(members[1], 32)]; !ok {
		t.Error("the applied group's member has no CIDR identity")
	} else if allowed, _ := dpVerdict(ep, Egress, id, 6, 22); allowed {
		t.Error("the applied deny group's member is allowed")
	}
	if _, ok := r.GroupRefused("default", groupKeyOf("sg-big")); ok {
		t.Error("the group is applied and still shown refused")
	}
	// The allow group's refusal cleared: still nothing (not resolved).
	rp.apply(t, r.SetGroupRefused(groupKeyOf("sg-allow"), ""))
	rp.check(t, r)
	if _, ok := r.GroupRefused("default", groupKeyOf("sg-allow")); ok {
		t.Error("the allow group's refusal was cleared and is still shown")
	}
}

// A section widens for the namespace's refused toCIDR prefixes exactly
// when admission counts the policy as naming them (an IPv4 prefix, an
// except too): a policy whose toCIDR are IPv6 only widened its deny to
// world but was not recompiled when the prefixes fit again, keeping the
// deny (until 2026-12-07; found by a review).
func TestStaticUnitWidensWhatAdmissionCounts(t *testing.T) {
	for _, sec := range []api.EgressRule{
		{ToCIDR: []string{"2001:db8::/32"}},
		{ToCIDRSet: []api.CIDRRule{{CIDR: "2001:db8::/32", Except: []string{"2001:db8:1::/48"}}}},
		{ToCIDR: []string{"192.0.2.0/24"}},
		{ToCIDR: []string{"2001:db8::/32", "192.0.2.0/24"}},
		{ToCIDRSet: []api.CIDRRule{{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.128/25"}}}},
		{ToCIDR: []string{"not a prefix"}},
	} {
		sec.ToPorts = rsPorts(api.ProtoTCP, "22")
		p := rsPol("deny", api.Rule{EndpointSelector: rsSel("app=web"), EgressDeny: []api.EgressRule{sec}})
		cp := compilePolicy(&p, map[string][]netip.Prefix{}, map[string]string{staticUnit: "full"}, map[string]map[netip.Prefix][]uint16{}, nil, nil, true)
		widened := slices.ContainsFunc(cp.warnings, func(w string) bool { return strings.Contains(w, "toCIDR prefixes refused") })
		if names := useOf(&p).names(staticUnit); names != widened {
			t.Errorf("%v %v: admission counts it naming the toCIDR prefixes %v, compiled widened %v", sec.ToCIDR, sec.ToCIDRSet, names, widened)
		}
	}
}

// A group the groups layer dropped (nobody wanted it: SetGroup with no
// addresses) and later refused (back past the bound) is refused: its
// deny denies world. And a drop arriving after a refusal (the groups
// layer's callbacks run in goroutines of their own) does not end it.
// Until 2026-12-07 the dropped group's empty set stayed and was admitted
// before the refusal was looked at, so the deny denied nothing (found by
// a review of the refusal).
func TestDroppedGroupRefusedLaterStillDenies(t *testing.T) {
	web := EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "app=web")}
	p := rsPol("big", api.Rule{EndpointSelector: rsSel("app=web"),
		Egress: []api.EgressRule{{ToEntities: []api.Entity{api.EntityWorld}, ToPorts: rsPorts(api.ProtoTCP, "22")}},
		EgressDeny: []api.EgressRule{
			{ToGroups: []api.Groups{awsGroup("sg-dropped")}, ToPorts: rsPorts(api.ProtoTCP, "22")},
			{ToGroups: []api.Groups{awsGroup("sg-late")}, ToPorts: rsPorts(api.ProtoTCP, "22")},
		},
	})
	r, rp := webAndOther(t, web, cid(7), p)
	denies := func(what string) {
		t.Helper()
		rp.check(t, r)
		if allowed, _ := dpVerdict(mustEP(t, r, 1), Egress, identity.World, 6, 22); allowed {
			t.Errorf("%s: the refused deny group denies nothing (world reaches 22)", what)
		}
	}
	dropped := groupKeyOf("sg-dropped")
	rp.apply(t, r.SetGroup(dropped, hosts("10.9.0.1", 4)))
	rp.apply(t, r.SetGroup(dropped, nil))
	rp.apply(t, r.SetGroupRefused(dropped, "the group resolved to 5000 addresses"))
	denies("dropped, then refused")
	if _, ok := r.GroupRefused("default", dropped); !ok {
		t.Errorf("the refusal of a group dropped before is not shown: %v", r.Refused())
	}
	rp.apply(t, r.SetGroupRefused(dropped, ""))
	late := groupKeyOf("sg-late")
	rp.apply(t, r.SetGroupRefused(late, "the group resolved to 5000 addresses"))
	rp.apply(t, r.SetGroup(late, nil))
	denies("refused, then a late drop")
}

// A deny naming a cloud group not resolved yet (at agent start, with no
// AWS region, a cloud API failing at its first resolution) denies world
// on its ports until the group resolves, as one refused does: a deny the
// agent cannot evaluate fails closed. Until 2026-12-07 it denied nothing
// meanwhile, so a pod reached the very hosts the deny names, for as long
// as the cloud API kept failing. Resolved, it denies its members only.
func TestDenyGroupNotResolvedYetDeniesWorld(t *testing.T) {
	web := EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "app=web")}
	other := cid(7)
	p := rsPol("deny-db", api.Rule{EndpointSelector: rsSel("app=web"),
		Egress:     []api.EgressRule{{ToEntities: []api.Entity{api.EntityWorld, api.EntityCluster}, ToPorts: rsPorts(api.ProtoTCP, "22", "80")}},
		EgressDeny: []api.EgressRule{{ToGroups: []api.Groups{awsGroup("sg-db")}, ToPorts: rsPorts(api.ProtoTCP, "22")}},
	})
	r, rp := webAndOther(t, web, other, p)
	rp.check(t, r)
	// Before the groups layer loaded the stored results (an agent's
	// start), the group may have a set on its way: not world yet.
	if allowed, _ := dpVerdict(mustEP(t, r, 1), Egress, identity.World, 6, 22); !allowed {
		t.Error("before the stored groups are loaded, a deny group not resolved yet denies world")
	}
	rp.apply(t, r.SetGroupsLoaded())
	rp.check(t, r)
	ep := mustEP(t, r, 1)
	if allowed, _ := dpVerdict(ep, Egress, identity.World, 6, 22); allowed {
		t.Error("a deny group not resolved yet denies nothing: web reaches world on 22")
	}
	if allowed, _ := dpVerdict(ep, Egress, other, 6, 22); !allowed {
		t.Error("a deny group not resolved yet denies a cluster peer on 22")
	}
	if allowed, _ := dpVerdict(ep, Egress, identity.World, 6, 80); !allowed {
		t.Error("a deny group not resolved yet denies web's other ports")
	}
	if !warned(r, groupKeyOf("sg-db"), "not resolved yet") {
		t.Errorf("no warning names the deny group not resolved yet: %q", r.Warnings())
	}
	members := hosts("10.9.0.1", 2)
	rp.apply(t, r.SetGroup(groupKeyOf("sg-db"), members))
	rp.check(t, r)
	ep = mustEP(t, r, 1)
	if allowed, _ := dpVerdict(ep, Egress, identity.World, 6, 22); !allowed {
		t.Error("resolved, the deny group still denies all of world on 22")
	}
	prefixID := r.CIDRIdentities()[netip.PrefixFrom(members[0], 32)]
	if allowed, _ := dpVerdict(ep, Egress, prefixID, 6, 22); allowed || prefixID == 0 {
		t.Errorf("resolved, the deny group does not deny its member %s (identity %d)", members[0], prefixID)
	}
}

// A group the groups layer drops while a deny still names it (its result
// deleted and none come within its grace: a leaderless spell, the cloud
// API failing) is not resolved any more: the deny denies world on its
// ports. Until 2026-12-07 the drop was applied as an empty set, and the
// deny denied nothing (found by a review).
func TestDroppedGroupDenyFailsClosed(t *testing.T) {
	web := EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "app=web")}
	p := rsPol("deny-db", api.Rule{EndpointSelector: rsSel("app=web"),
		Egress:     []api.EgressRule{{ToEntities: []api.Entity{api.EntityWorld}, ToPorts: rsPorts(api.ProtoTCP, "22")}},
		EgressDeny: []api.EgressRule{{ToGroups: []api.Groups{awsGroup("sg-db")}, ToPorts: rsPorts(api.ProtoTCP, "22")}},
	})
	r, rp := webAndOther(t, web, cid(7), p)
	rp.apply(t, r.SetGroupsLoaded())
	rp.apply(t, r.SetGroup(groupKeyOf("sg-db"), hosts("10.9.0.1", 2)))
	rp.check(t, r)
	if allowed, _ := dpVerdict(mustEP(t, r, 1), Egress, identity.World, 6, 22); !allowed {
		t.Fatal("resolved, the deny group denies all of world")
	}
	rp.apply(t, r.DropGroup(groupKeyOf("sg-db")))
	rp.check(t, r)
	if allowed, _ := dpVerdict(mustEP(t, r, 1), Egress, identity.World, 6, 22); allowed {
		t.Error("dropped, the deny group denies nothing: web reaches world on 22")
	}
}
