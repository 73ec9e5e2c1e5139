package policy

import (
	"fmt"
	"maps"
	"net/netip"
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
	r := NewResolver(ModeDefault)
	rp := newReplica()
	rp.apply(t, r.UpsertIdentity(identity.Identity{ID: other, Labels: rsLabels(t, "app=other")}))
	rp.apply(t, r.UpsertEndpoint(web))
	rp.apply(t, r.SetPolicies([]api.Policy{p}))
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
	// does not fit, and its rule denies every peer on its port.
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
	for _, peer := range []identity.NumericIdentity{identity.World, other} {
		if allowed, _ := dpVerdict(ep, Egress, peer, 6, 22); allowed {
			t.Errorf("a deny group past its namespace's budget was dropped: web reaches %d on 22", peer)
		}
		if allowed, _ := dpVerdict(ep, Egress, peer, 6, 80); !allowed {
			t.Errorf("the refused deny group denied web's other ports too (%d on 80)", peer)
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
		t.Error("the deny group fits now and still denies every peer")
	}
	if id, ok := r.CIDRIdentities()[netip.PrefixFrom(ssh[3], 32)]; !ok {
		t.Error("the deny group fits now and is not applied")
	} else if allowed, _ := dpVerdict(ep, Egress, id, 6, 22); allowed {
		t.Error("the deny group fits now and its member is allowed")
	}
}
