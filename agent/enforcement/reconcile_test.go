package enforcement

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/sparse"
	"github.com/filament-net/filament/bpf"
)

// fakeDP holds the maps and link pins as the kernel would.
type fakeDP struct {
	policy    map[policy.MapKey]bool
	endpoints map[netip.Addr]bpf.DatapathEndpointInfo
	ipcache   map[netip.Prefix]identity.NumericIdentity
	links     map[string]bool
	// Revision holds: open now, and the most open at a write of the
	// policy map (a policy change is written under a hold).
	held, heldAtPolicy int
	// policyErr fails every policy write; capacity (0: none) is the
	// policy map's size, past which adding a key fails as the kernel's
	// does (deletes and rewrites of a key it holds do not); ingress: the
	// ingress enforcement flag set per endpoint address.
	policyErr error
	capacity  int
	// ipcacheErr fails every ipcache delete; ipcacheCap (0: none) is
	// the ipcache's size, past which adding a key fails as the kernel's
	// does.
	ipcacheErr error
	ipcacheCap int
	// l7: the L7 lists of the policy entries that have one.
	l7      map[policy.MapKey]string
	wide    map[policy.MapKey]bool
	ingress map[netip.Addr]bool
	egress  map[netip.Addr]bool
}

func newFakeDP() *fakeDP {
	return &fakeDP{policy: map[policy.MapKey]bool{}, endpoints: map[netip.Addr]bpf.DatapathEndpointInfo{},
		ipcache: map[netip.Prefix]identity.NumericIdentity{}, links: map[string]bool{}}
}

func (f *fakeDP) HoldRevision() func() error {
	f.held++
	return func() error { f.held--; return nil }
}

func (f *fakeDP) ApplyPolicy(up map[policy.MapKey]policy.MapValue, del []policy.MapKey) (int, error) {
	if f.policyErr != nil {
		return 0, f.policyErr
	}
	f.heldAtPolicy = max(f.heldAtPolicy, f.held)
	for _, k := range del {
		delete(f.policy, k)
	}
	for k, v := range up {
		if _, ok := f.policy[k]; !ok && f.capacity > 0 && len(f.policy) >= f.capacity {
			return 0, errors.New("policy map: put: argument list too long")
		}
		f.policy[k] = v.Deny
		if f.l7 == nil {
			f.l7 = map[policy.MapKey]string{}
		}
		f.l7[k] = v.L7
		if f.wide == nil {
			f.wide = map[policy.MapKey]bool{}
		}
		f.wide[k] = v.Wide
	}
	return len(up) + len(del), nil
}
func (f *fakeDP) PolicyValues() (map[policy.MapKey]datapath.PolicyState, error) {
	out := map[policy.MapKey]datapath.PolicyState{}
	for k, deny := range f.policy {
		out[k] = datapath.PolicyState{Deny: deny, Proxy: f.l7[k] != "" && !deny, Named: k.L4.PrefixLen == 24 && !f.wide[k]}
	}
	return out, nil
}
func (f *fakeDP) UpsertEndpoint(e datapath.EndpointEntry) error {
	f.endpoints[e.IP] = bpf.DatapathEndpointInfo{EpId: e.ID, Identity: uint32(e.Identity)}
	if f.ingress == nil {
		f.ingress, f.egress = map[netip.Addr]bool{}, map[netip.Addr]bool{}
	}
	f.ingress[e.IP], f.egress[e.IP] = e.IngressEnforced, e.EgressEnforced
	return nil
}
func (f *fakeDP) SetEnforcement(ip netip.Addr, ingress, egress bool) error {
	if _, ok := f.endpoints[ip]; !ok { // as the kernel's map: set on an entry
		return fmt.Errorf("endpoints map: lookup %s: key does not exist", ip)
	}
	if f.ingress == nil {
		f.ingress, f.egress = map[netip.Addr]bool{}, map[netip.Addr]bool{}
	}
	f.ingress[ip], f.egress[ip] = ingress, egress
	return nil
}
func (f *fakeDP) Enforcement(ip netip.Addr) (bool, bool, error) {
	return f.ingress[ip], f.egress[ip], nil
}
func (f *fakeDP) DeleteEndpoint(ip netip.Addr) error { delete(f.endpoints, ip); return nil }
func (f *fakeDP) Endpoints() (map[netip.Addr]bpf.DatapathEndpointInfo, error) {
	return maps.Clone(f.endpoints), nil
}
func (f *fakeDP) UpsertIPCache(p netip.Prefix, id identity.NumericIdentity) error {
	if _, ok := f.ipcache[p]; !ok && f.ipcacheCap > 0 && len(f.ipcache) >= f.ipcacheCap {
		return errors.New("ipcache: put: argument list too long")
	}
	f.ipcache[p] = id
	return nil
}
func (f *fakeDP) DeleteIPCache(p netip.Prefix) error {
	if f.ipcacheErr != nil {
		return f.ipcacheErr
	}
	delete(f.ipcache, p)
	return nil
}
func (f *fakeDP) IPCache() (map[netip.Prefix]identity.NumericIdentity, error) {
	return maps.Clone(f.ipcache), nil
}
func (f *fakeDP) Attach(ifName string, _ int) (datapath.Attachment, error) {
	f.links[ifName] = true
	return datapath.AttachTCX, nil
}
func (f *fakeDP) Detach(ifName string)  { delete(f.links, ifName) }
func (f *fakeDP) PinnedLinks() []string { return slices.Collect(maps.Keys(f.links)) }

const webPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
`

// newWebEngine is an engine over a fake datapath with the policies of
// doc (none if empty), this node's address and endpoint web up.
func newWebEngine(t *testing.T, doc string) (*fakeDP, *Engine, endpoint.Endpoint, netip.Addr) {
	t.Helper()
	dp := newFakeDP()
	repo, err := policy.NewRepository("")
	if err != nil {
		t.Fatal(err)
	}
	if doc != "" {
		ps, err := api.Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := repo.Import(ps); err != nil {
			t.Fatal(err)
		}
	}
	hostIP := netip.MustParseAddr("172.30.0.1")
	e := New(dp, policy.NewResolver(policy.ModeDefault), repo, []netip.Addr{hostIP}, nil)
	if err := e.LoadPolicies(); err != nil {
		t.Fatal(err)
	}
	web := endpoint.Endpoint{ID: 1, IPv4: netip.MustParseAddr("10.244.0.2"), Identity: 300,
		Labels: labels.Labels{{Source: "k8s", Key: "app", Value: "web"}, {Source: "k8s", Key: "io.kubernetes.pod.namespace", Value: "default"}},
		MAC:    "02:00:00:00:00:01", HostMAC: "02:00:00:00:00:02", HostIfName: "filweb", HostIfIndex: 7}
	if err := e.EndpointUp(context.Background(), web); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Reconcile(); err != nil { // as at the agent's start
		t.Fatal(err)
	}
	return dp, e, web, hostIP
}

// After a restart the pinned maps hold what an earlier agent left: the
// reconcile removes what nobody wants (a vanished endpoint, its ipcache
// and policy entries, its link pin) and writes back what is missing or
// wrong, without root.
func TestReconcile(t *testing.T) {
	dp, e, web, hostIP := newWebEngine(t, webPolicy)
	want := maps.Clone(dp.policy)
	if len(want) == 0 {
		t.Fatal("the policy selecting web wrote no entries")
	}
	if dp.heldAtPolicy == 0 || dp.held != 0 {
		t.Fatalf("policy written without holding the datapath revision (%d), or a hold not released (%d open)", dp.heldAtPolicy, dp.held)
	}

	// What an earlier agent left behind, and what got lost or changed.
	stale := netip.MustParseAddr("10.244.0.99")
	dp.endpoints[stale] = bpf.DatapathEndpointInfo{EpId: 99}
	dp.ipcache[netip.PrefixFrom(stale, 32)] = 301
	dp.ipcache[netip.MustParsePrefix("192.0.2.0/24")] = 1<<24 | 5
	dp.ipcache[netip.PrefixFrom(web.IPv4, 32)] = 999 // wrong identity
	delete(dp.ipcache, netip.PrefixFrom(hostIP, 32))
	staleKey := policy.MapKey{Endpoint: 99, Dir: policy.Ingress, Identity: 301}
	dp.policy[staleKey] = false
	for k := range want {
		delete(dp.policy, k) // one wanted entry lost
		break
	}
	dp.links["filstale"] = true

	removed, err := e.Reconcile()
	if err != nil {
		t.Fatal(err)
	}
	if removed < 4 {
		t.Errorf("removed %d, want at least the stale endpoint, its two ipcache entries and its link", removed)
	}
	if _, ok := dp.endpoints[stale]; ok {
		t.Error("stale endpoint kept")
	}
	if _, ok := dp.endpoints[web.IPv4]; !ok {
		t.Error("web's endpoint removed")
	}
	wantIP := map[netip.Prefix]identity.NumericIdentity{netip.PrefixFrom(web.IPv4, 32): 300, netip.PrefixFrom(hostIP, 32): identity.Host}
	if !maps.Equal(dp.ipcache, wantIP) {
		t.Errorf("ipcache %v, want %v", dp.ipcache, wantIP)
	}
	if !maps.Equal(dp.policy, want) {
		t.Errorf("policy entries %v, want %v", dp.policy, want)
	}
	if !maps.Equal(dp.links, map[string]bool{"filweb": true}) {
		t.Errorf("links %v, want only filweb", dp.links)
	}
}

// A policy's toCIDR naming a pod's or this node's address (a tenant's
// namespaced policy may name any address) must not take that address's
// ipcache entry: before, its CIDR identity replaced the pod's identity
// (and tunnel endpoint) on every node, and the policy's delete removed
// the pod's entry; reconcile ranked CIDR identities above endpoints.
func TestPolicyCIDRCannotTakeClusterAddresses(t *testing.T) {
	dp, e, web, hostIP := newWebEngine(t, "")
	if _, err := e.Reconcile(); err != nil { // as at the agent's start: the host's entries
		t.Fatal(err)
	}
	ps := importTenant(t, e, toCIDRPolicy("10.244.0.2/32", "172.30.0.1/32", "192.0.2.0/24"))
	check := func(when string) {
		t.Helper()
		if id := dp.ipcache[netip.PrefixFrom(web.IPv4, 32)]; id != 300 {
			t.Errorf("%s: the pod's address has identity %d, want its own 300", when, id)
		}
		if id := dp.ipcache[netip.PrefixFrom(hostIP, 32)]; id != identity.Host {
			t.Errorf("%s: this node's address has identity %d, want host", when, id)
		}
	}
	check("policy applied")
	if _, ok := dp.ipcache[netip.MustParsePrefix("192.0.2.0/24")]; !ok {
		t.Error("the policy's world CIDR was not written")
	}
	if _, err := e.Reconcile(); err != nil {
		t.Fatal(err)
	}
	check("after a reconcile")
	if _, err := e.Delete(ps[0].Key()); err != nil {
		t.Fatal(err)
	}
	check("policy deleted")
}

// A policy whose entries the datapath cannot write (its map full) still
// turns enforcement on for the endpoints it selects, so they fail closed
// (their allows missing): before, the engine returned at the failed write
// and the endpoints stayed unenforced, every peer allowed, while the
// resolver took the policy as applied.
func TestPolicyWriteFailureFailsClosed(t *testing.T) {
	dp, e, web, _ := newWebEngine(t, "")
	if dp.ingress[web.IPv4] {
		t.Fatal("web enforced before any policy")
	}
	dp.policyErr = errors.New("policy map: put: no space left on device")
	ps, err := api.Parse([]byte(webPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Import(ps); err == nil {
		t.Fatal("an import whose entries could not be written succeeded")
	}
	if !dp.ingress[web.IPv4] {
		t.Error("the policy's write failed and web was left unenforced: every peer allowed")
	}
}

// fakeRouter is the router as the engine sees it: the prefixes the
// cluster's nodes hold (their pod CIDRs, whose pods' entries the router
// writes as entries of dp) and nothing else.
type fakeRouter struct {
	dp    *fakeDP
	pods  map[netip.Prefix]bool                     // pod CIDRs of known nodes
	entry map[netip.Prefix]identity.NumericIdentity // the pods' entries it writes
}

func (r *fakeRouter) Mode() string { return "tunnel" }
func (r *fakeRouter) ClusterHolds(p netip.Prefix) bool {
	for c := range r.pods {
		if c.Bits() <= p.Bits() && c.Contains(p.Addr()) {
			return true
		}
	}
	return false
}
func (r *fakeRouter) Wanted() map[netip.Prefix]ipcache.Entry { return nil }
func (r *fakeRouter) Rewrite(p netip.Prefix)                 { r.GiveBack(p) }
func (r *fakeRouter) GiveBack(p netip.Prefix) {
	if id, ok := r.entry[p]; ok {
		r.dp.ipcache[p] = id
		return
	}
	delete(r.dp.ipcache, p)
}
func (r *fakeRouter) Reneed(sparse.Diff, bool) {}

// A policy's CIDR identity is kept off the cluster's addresses as the
// cluster changes, not only when the policy is applied: before, a CIDR
// inside a node's pod CIDR written before that node was known (at the
// agent's start, before the mesh's sync) stayed over its pods, and one
// held when applied was never written once its node went. And the
// engine deletes what it wrote, held since or not: before, its delete
// was skipped as the cluster's and the CIDR entry stayed over the pods.
func TestPolicyCIDRFollowsTheCluster(t *testing.T) {
	dp, e, _, hostIP := newWebEngine(t, "")
	r := &fakeRouter{dp: dp, pods: map[netip.Prefix]bool{}, entry: map[netip.Prefix]identity.NumericIdentity{}}
	e.SetCluster(nil, r, hostIP)
	if _, err := e.Reconcile(); err != nil {
		t.Fatal(err)
	}
	inside := netip.MustParsePrefix("10.60.0.0/28") // in east's pod CIDR 10.60.0.0/24
	pod := netip.MustParsePrefix("10.60.0.5/32")
	ps := importTenant(t, e, toCIDRPolicy("10.60.0.0/28", "10.60.0.5/32"))
	if _, ok := dp.ipcache[inside]; !ok {
		t.Fatal("a CIDR no node holds was not written")
	}
	// east's node comes: its pod 10.60.0.5's entry is written.
	r.pods[netip.MustParsePrefix("10.60.0.0/24")] = true
	r.entry[pod] = 5000
	dp.ipcache[pod] = 5000
	if _, err := e.RecheckCIDRs(); err != nil {
		t.Fatal(err)
	}
	if _, ok := dp.ipcache[inside]; ok {
		t.Error("a CIDR inside a pod CIDR stayed over its pods once their node came")
	}
	if id := dp.ipcache[pod]; id != 5000 {
		t.Errorf("the pod's address has identity %d, want its own 5000", id)
	}
	// The node goes: the CIDRs are the policy's again.
	clear(r.pods)
	clear(r.entry)
	delete(dp.ipcache, pod)
	if _, err := e.RecheckCIDRs(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []netip.Prefix{inside, pod} {
		if _, ok := dp.ipcache[p]; !ok {
			t.Errorf("%s was not written once its node went", p)
		}
	}
	// The node comes back; the policy goes before a recheck: what the
	// engine wrote goes with it, the pod's entry is the router's.
	r.pods[netip.MustParsePrefix("10.60.0.0/24")] = true
	r.entry[pod] = 5000
	if _, err := e.Delete(ps[0].Key()); err != nil {
		t.Fatal(err)
	}
	if _, ok := dp.ipcache[inside]; ok {
		t.Error("the policy's CIDR entry stayed after its delete")
	}
	if id := dp.ipcache[pod]; id != 5000 {
		t.Errorf("after the delete the pod's address has identity %d, want its own 5000", id)
	}
}

// A toNodes selector that names this node keeps this node's addresses
// the host identity, as a reconcile writes them: before, the policy's
// apply wrote a CIDR identity over them (a tenant's toNodes: [{}] took
// `host` from every pod's policies on every node) and the next reconcile
// wrote host back. Another node's address does get its CIDR identity:
// that is how toNodes selects it.
func TestNodeSelectorKeepsThisNodeHost(t *testing.T) {
	dp, e, _, hostIP := newWebEngine(t, "")
	other := netip.MustParseAddr("172.30.0.2")
	r := &fakeRouter{dp: dp, pods: map[netip.Prefix]bool{netip.PrefixFrom(other, 32): true}, entry: map[netip.Prefix]identity.NumericIdentity{}}
	e.SetCluster(nil, r, hostIP)
	if _, err := e.Reconcile(); err != nil {
		t.Fatal(err)
	}
	importTenant(t, e, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: x, namespace: tenant}
spec:
  endpointSelector: {}
  egress: [{toNodes: [{}]}]
`)
	for key := range e.res.NodeSelectorsInUse() {
		e.GroupChanged(key, []netip.Addr{hostIP, other})
	}
	check := func(when string) {
		t.Helper()
		if id := dp.ipcache[netip.PrefixFrom(hostIP, 32)]; id != identity.Host {
			t.Errorf("%s: this node's address has identity %d, want host", when, id)
		}
		if id := dp.ipcache[netip.PrefixFrom(other, 32)]; !id.IsLocal() {
			t.Errorf("%s: the other node's address has identity %d, want its CIDR identity", when, id)
		}
	}
	check("node selector resolved")
	if _, err := e.Reconcile(); err != nil {
		t.Fatal(err)
	}
	check("after a reconcile")
}

// importTenant imports the policies of doc as a namespace's (Kubernetes
// scope).
func importTenant(t *testing.T, e *Engine, doc string) []api.Policy {
	t.Helper()
	ps, err := api.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.ImportScoped("kubernetes", ps); err != nil {
		t.Fatal(err)
	}
	return ps
}

// What the engine wrote and the resolver no longer has goes at the next
// recheck: before, a policy change that failed part-way (its policy map
// full) skipped its CIDR deletes, and the prefix kept its freed identity
// number, which the resolver hands to the next new prefix (another
// tenant's toCIDR would then also allow the stale one).
func TestRecheckRemovesCIDRsAFailedChangeLeft(t *testing.T) {
	dp, e, _, _ := newWebEngine(t, "")
	world := netip.MustParsePrefix("192.0.2.0/24")
	ps := importTenant(t, e, toCIDRPolicy("192.0.2.0/24"))
	if _, ok := dp.ipcache[world]; !ok {
		t.Fatal("the policy's CIDR was not written")
	}
	dp.policyErr = errors.New("policy map: put: no space left on device")
	if _, err := e.Delete(ps[0].Key()); err == nil {
		t.Fatal("a delete whose change could not be written succeeded")
	}
	dp.policyErr = nil
	if id, ok := dp.ipcache[world]; ok {
		t.Errorf("the deleted policy's CIDR stayed after the failed change, identity %d", id)
	}
	// Its delete failed too: the recheck removes it.
	ps = importTenant(t, e, toCIDRPolicy("192.0.2.0/24"))
	dp.ipcacheErr = errors.New("ipcache: delete: busy")
	if _, err := e.Delete(ps[0].Key()); err == nil {
		t.Fatal("a delete whose change could not be written succeeded")
	}
	dp.ipcacheErr = nil
	if _, err := e.RecheckCIDRs(); err != nil {
		t.Fatal(err)
	}
	if id, ok := dp.ipcache[world]; ok {
		t.Errorf("the deleted policy's CIDR stayed after a recheck, identity %d", id)
	}
}

// An endpoint that comes and goes on an address a policy's CIDR names
// leaves the CIDR's entry written again by the next recheck: before, the
// endpoint's delete removed the entry and the engine still took it as
// written.
func TestEndpointGoneGivesItsAddressBackToTheCIDR(t *testing.T) {
	dp, e, web, _ := newWebEngine(t, "")
	p := netip.MustParsePrefix("10.244.0.9/32")
	importTenant(t, e, toCIDRPolicy("10.244.0.9/32"))
	want, ok := dp.ipcache[p]
	if !ok {
		t.Fatal("the policy's CIDR was not written")
	}
	ep := web
	ep.ID, ep.IPv4, ep.HostIfName, ep.HostIfIndex = 2, p.Addr(), "filother", 8
	if err := e.EndpointUp(context.Background(), ep); err != nil {
		t.Fatal(err)
	}
	e.EndpointDown(ep)
	if _, err := e.RecheckCIDRs(); err != nil {
		t.Fatal(err)
	}
	if got, ok := dp.ipcache[p]; !ok || got != want {
		t.Errorf("after the endpoint went the CIDR's entry is %d (%v), want %d", got, ok, want)
	}
}

// toCIDRPolicy is a namespace's policy letting every pod of it reach
// cidrs.
func toCIDRPolicy(cidrs ...string) string {
	return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: x, namespace: tenant}
spec:
  endpointSelector: {}
  egress: [{toCIDR: ["` + strings.Join(cidrs, `", "`) + `"]}]
`
}

// stalePolicy is web's egress policy to 192.0.2.0/24 and, kept by a
// second policy, to 203.0.113.0/24.
const stalePolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: old, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress: [{toCIDR: ["192.0.2.0/24"]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: keep, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress: [{toCIDR: ["203.0.113.0/24"]}]
`

// A policy change whose policy map write failed leaves no stale allow
// once writes work again: before, its deletes never reached the map, the
// resolver freed the deleted CIDR's identity number, and the next new
// prefix took it with web's old allow on it (here another namespace's
// toCIDR made web able to reach 198.51.100.0/24 with no policy allowing
// it). The next change, or the next recheck, writes the whole policy.
func TestFailedPolicyWriteLeavesNoStaleAllow(t *testing.T) {
	for _, heal := range []string{"next change", "recheck"} {
		t.Run(heal, func(t *testing.T) {
			dp, e, web, _ := newWebEngine(t, stalePolicy)
			old := e.res.CIDRIdentities()[netip.MustParsePrefix("192.0.2.0/24")]
			found := false
			for k := range dp.policy {
				found = found || (k.Endpoint == web.ID && k.Dir == policy.Egress && k.Identity == old)
			}
			if !found {
				t.Fatalf("web has no egress entry for 192.0.2.0/24 (identity %d): %v", old, dp.policy)
			}
			dp.policyErr = errors.New("policy map: delete: busy")
			if _, err := e.Delete("default/old"); err == nil {
				t.Fatal("a delete whose change could not be written succeeded")
			}
			dp.policyErr = nil
			other := netip.MustParsePrefix("198.51.100.0/24")
			if heal == "next change" {
				importTenant(t, e, toCIDRPolicy(other.String()))
			} else {
				// The resolver takes the prefix with no write yet (as
				// an import whose write failed leaves it).
				dp.policyErr = errors.New("policy map: put: no space left on device")
				ps, _ := api.Parse([]byte(toCIDRPolicy(other.String())))
				if _, err := e.ImportScoped("kubernetes", ps); err == nil {
					t.Fatal("an import whose change could not be written succeeded")
				}
				dp.policyErr = nil
				if _, err := e.RecheckCIDRs(); err != nil {
					t.Fatal(err)
				}
			}
			id, ok := dp.ipcache[other]
			if !ok {
				t.Fatalf("%s not written", other)
			}
			for k := range dp.policy {
				if k.Endpoint == web.ID && k.Identity == id {
					t.Errorf("web's policy allows %s (identity %d, %s): no policy names it for web", other, id, k)
				}
			}
			want := map[policy.MapKey]bool{}
			for ep := range e.endpoints {
				pol, _ := e.res.Endpoint(ep)
				for k, v := range pol.Entries {
					want[k] = v.Deny
				}
			}
			if !maps.Equal(dp.policy, want) {
				t.Errorf("policy map after the failure healed:\n%v\nwant\n%v", dp.policy, want)
			}
		})
	}
}

// A change whose write failed is written whole even where only an
// entry's L7 part changed: a port that gained HTTP rules kept its plain
// allow (no proxy) until a restart before.
func TestFailedPolicyWriteL7Written(t *testing.T) {
	dp, e, web, _ := newWebEngine(t, webPolicy)
	dp.policyErr = errors.New("policy map: put: busy")
	ps, err := api.Parse([]byte(strings.Replace(webPolicy, `protocol: TCP}]}]`,
		`protocol: TCP}], rules: {http: [{method: GET}]}}]`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Import(ps); err == nil {
		t.Fatal("an import whose change could not be written succeeded")
	}
	dp.policyErr = nil
	if _, err := e.RecheckCIDRs(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for k, l7 := range dp.l7 {
		if k.Endpoint == web.ID && k.Dir == policy.Ingress && dp.policy[k] == false {
			n++
			if l7 == "" {
				t.Errorf("web's ingress allow %s has no L7 rules after the failed write healed", k)
			}
		}
	}
	if n == 0 {
		t.Fatal("web has no ingress allow")
	}
}

// An endpoint coming up while the policy map is stale gets its entries:
// the whole policy written then is the resolver's, the new endpoint's
// included (it joins the engine's endpoints after its change).
func TestEndpointUpWhileStaleGetsItsEntries(t *testing.T) {
	dp, e, web, _ := newWebEngine(t, webPolicy)
	dp.policyErr = errors.New("policy map: put: busy")
	ps, _ := api.Parse([]byte(stalePolicy))
	if _, err := e.Import(ps); err == nil {
		t.Fatal("an import whose change could not be written succeeded")
	}
	dp.policyErr = nil
	ep := web
	ep.ID, ep.IPv4, ep.HostIfName, ep.HostIfIndex = 2, netip.MustParseAddr("10.244.0.3"), "filweb2", 8
	if err := e.EndpointUp(context.Background(), ep); err != nil {
		t.Fatal(err)
	}
	pol, _ := e.res.Endpoint(ep.ID)
	if len(pol.Entries) == 0 {
		t.Fatal("the resolver gives the new endpoint no entries")
	}
	for k := range pol.Entries {
		if _, ok := dp.policy[k]; !ok {
			t.Errorf("the new endpoint's entry %s is not in the map", k)
		}
	}
}

// manyPorts is a policy of namespace ns selecting every endpoint of it,
// egress to n /32s on n ports each.
func manyPorts(ns string, n int) string {
	var cidrs, ports []string
	for i := range n {
		cidrs = append(cidrs, fmt.Sprintf(`"192.0.2.%d/32"`, i+1))
		ports = append(ports, fmt.Sprintf(`{port: "%d", protocol: TCP}`, 1000+i))
	}
	return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: many, namespace: ` + ns + `}
spec:
  endpointSelector: {}
  egress: [{toCIDR: [` + strings.Join(cidrs, ", ") + `], toPorts: [{ports: [` + strings.Join(ports, ", ") + `]}]}]
`
}

// An endpoint whose policy would take more than its share of the policy
// map (the map is shared by every endpoint of the node) gets none of its
// entries written and denies everything, both ways; the others' entries
// are written as before. Once its policy fits again its entries and flags
// are its policy's. Before 2026-12-05 one namespace's policy could fill
// the shared map (identities or prefixes times ports per endpoint), and
// every later write of every namespace failed.
func TestEndpointOverItsShareIsolated(t *testing.T) {
	dp, e, web, _ := newWebEngine(t, "")
	e.maxEntries = 10
	other := web
	other.ID, other.IPv4, other.HostIfName, other.HostIfIndex = 2, netip.MustParseAddr("10.244.0.3"), "filother", 8
	other.Labels = labels.Labels{{Source: "k8s", Key: "app", Value: "x"}, {Source: "k8s", Key: "io.kubernetes.pod.namespace", Value: "tenant"}}
	if err := e.EndpointUp(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	entriesOf := func(id uint16) int { return countEntries(dp, id) }
	importTenant(t, e, manyPorts("tenant", 2)) // 4 entries for other: within its share
	if entriesOf(other.ID) != 4 {
		t.Fatalf("other has %d entries, want 4", entriesOf(other.ID))
	}
	importTenant(t, e, toCIDRPolicy("198.51.100.0/24")) // web's namespace is not tenant's
	ps := importTenant(t, e, manyPorts("tenant", 4))    // 16 entries: over
	if n := entriesOf(other.ID); n != 0 {
		t.Errorf("the endpoint over its share has %d entries in the map", n)
	}
	if !dp.ingress[other.IPv4] || !dp.egress[other.IPv4] {
		t.Error("the endpoint over its share is not enforced both ways (it would allow everything)")
	}
	if _, err := e.RecheckCIDRs(); err != nil {
		t.Fatal(err)
	}
	if n := entriesOf(other.ID); n != 0 {
		t.Errorf("after a recheck the endpoint over its share has %d entries", n)
	}
	// Back within its share.
	if _, err := e.Delete(ps[0].Key()); err != nil {
		t.Fatal(err)
	}
	pol, _ := e.res.Endpoint(other.ID)
	if n := entriesOf(other.ID); n != len(pol.Entries) || n == 0 {
		t.Errorf("back within its share: %d entries in the map, the policy has %d", n, len(pol.Entries))
	}
	if dp.ingress[other.IPv4] != pol.IngressEnforced || dp.egress[other.IPv4] != pol.EgressEnforced {
		t.Errorf("back within its share: flags %v/%v, the policy's %v/%v", dp.ingress[other.IPv4], dp.egress[other.IPv4], pol.IngressEnforced, pol.EgressEnforced)
	}
	// An endpoint that comes up over its share is isolated from its start.
	importTenant(t, e, manyPorts("tenant", 4))
	third := other
	third.ID, third.IPv4, third.HostIfName, third.HostIfIndex = 3, netip.MustParseAddr("10.244.0.4"), "filthird", 9
	if err := e.EndpointUp(context.Background(), third); err != nil {
		t.Fatal(err)
	}
	if n := entriesOf(third.ID); n != 0 || !dp.ingress[third.IPv4] || !dp.egress[third.IPv4] {
		t.Errorf("a new endpoint over its share: %d entries, enforced %v/%v", n, dp.ingress[third.IPv4], dp.egress[third.IPv4])
	}
}

// egressAllowed is the datapath's verdict (bpf/lib/policy.h) on ep's new
// flow to a peer of identity id, on any port: the peer's deny or the any
// entry's deny drop it; its allow or the any entry's allow, or egress not
// enforced, pass it.
func egressAllowed(dp *fakeDP, ep endpoint.Endpoint, id identity.NumericIdentity) bool {
	var allow, deny bool
	for k, d := range dp.policy {
		if k.Endpoint != ep.ID || k.Dir != policy.Egress || (k.Identity != id && k.Identity != 0) {
			continue
		}
		deny, allow = deny || d, allow || !d
	}
	return !deny && (allow || !dp.egress[ep.IPv4])
}

// resolve is the identity the ipcache gives addr (its longest prefix),
// world where none holds it.
func resolve(dp *fakeDP, addr netip.Addr) identity.NumericIdentity {
	best, id := -1, identity.World
	for p, v := range dp.ipcache {
		if p.Contains(addr) && p.Bits() > best {
			best, id = p.Bits(), v
		}
	}
	return id
}

// worldPolicy lets web reach every peer: the any entry (toEntities all)
// or world's (toEntities world).
func worldPolicy(entity string) string {
	return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: out, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress: [{toEntities: [` + entity + `]}]
`
}

// A toCIDR deny that a full policy map cannot take fails closed: before
// 2026-12-05 the failed write marked the map stale, every recheck
// returned before writing the deny's CIDR entry, and the address stayed
// world, which web's allow passed, for as long as the map was full.
// Now what is stale is deleted at once (deletes need no room), the CIDR
// entry is written, and web, missing a deny, denies everything until
// the map takes it; its entries are written once there is room.
func TestFullPolicyMapFailsClosed(t *testing.T) {
	for _, entity := range []string{"all", "world"} {
		t.Run(entity, func(t *testing.T) {
			dp, e, web, _ := newWebEngine(t, worldPolicy(entity))
			target := netip.MustParseAddr("192.0.2.7")
			if !egressAllowed(dp, web, resolve(dp, target)) {
				t.Fatal("web cannot reach the world before the deny")
			}
			dp.capacity = len(dp.policy) // full
			ps, err := api.Parse([]byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egressDeny: [{toCIDR: ["192.0.2.0/24"]}]
`))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.Import(ps); err == nil {
				t.Fatal("an import a full map refused succeeded")
			}
			for i := range 2 {
				if id := resolve(dp, target); egressAllowed(dp, web, id) {
					t.Errorf("recheck %d: web reaches %s (identity %d) that a policy denies, the map full", i, target, id)
				}
				e.RecheckCIDRs()
			}
			// Room again: the deny and web's allows are written.
			dp.capacity = 0
			e.retryAt = time.Time{}
			if _, err := e.RecheckCIDRs(); err != nil {
				t.Fatal(err)
			}
			if id := resolve(dp, target); egressAllowed(dp, web, id) {
				t.Errorf("with room: web reaches %s (identity %d)", target, id)
			}
			if !egressAllowed(dp, web, resolve(dp, netip.MustParseAddr("198.51.100.1"))) {
				t.Error("with room: web's allow of the world is not written back")
			}
			pol, _ := e.res.Endpoint(web.ID)
			for k, v := range pol.Entries {
				if d, ok := dp.policy[k]; !ok || d != v.Deny {
					t.Errorf("with room: web's entry %s is %v (%v), want deny %v", k, d, ok, v.Deny)
				}
			}
		})
	}
}

// After a restart the pinned policy map is the earlier agent's, keyed by
// its CIDR identity numbers, which this agent's resolver hands out
// again, to other prefixes: before 2026-12-05 the policies loaded at
// start wrote their CIDR entries before the reconcile wrote this
// agent's policy, and a tenant's new prefix took web's old allow with
// the number. Now nothing is written before the reconcile, which writes
// the policy before the ipcache's new entries.
func TestRestartKeepsEarlierAgentsNumbersApart(t *testing.T) {
	dp, e1, web, hostIP := newWebEngine(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: old, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress: [{toCIDR: ["192.0.2.0/24"]}]
`)
	old := e1.res.CIDRIdentities()[netip.MustParsePrefix("192.0.2.0/24")]
	if !egressAllowed(dp, web, old) {
		t.Fatal("the earlier agent's web cannot reach 192.0.2.0/24")
	}
	// The new agent: web reaches the host only; a tenant reaches
	// 198.51.100.0/24.
	repo, err := policy.NewRepository("")
	if err != nil {
		t.Fatal(err)
	}
	for scope, doc := range map[string]string{policy.ScopeAgent: strings.Replace(worldPolicy("host"), "name: out", "name: web", 1),
		"kubernetes": toCIDRPolicy("198.51.100.0/24")} {
		ps, err := api.Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := repo.ImportScoped(scope, ps); err != nil {
			t.Fatal(err)
		}
	}
	e2 := New(dp, policy.NewResolver(policy.ModeDefault), repo, []netip.Addr{hostIP}, nil)
	target := netip.MustParseAddr("198.51.100.1")
	check := func(when string) {
		t.Helper()
		if id := resolve(dp, target); egressAllowed(dp, web, id) {
			t.Errorf("%s: web reaches %s (identity %d): no policy of this agent allows it", when, target, id)
		}
	}
	if err := e2.LoadPolicies(); err != nil {
		t.Fatal(err)
	}
	if n := e2.res.CIDRIdentities()[netip.MustParsePrefix("198.51.100.0/24")]; n != old {
		t.Fatalf("the new agent gave the tenant's prefix %d, not the earlier agent's %d: the test's premise", n, old)
	}
	check("policies loaded")
	if err := e2.EndpointUp(context.Background(), web); err != nil {
		t.Fatal(err)
	}
	check("web restored")
	if _, err := e2.Reconcile(); err != nil {
		t.Fatal(err)
	}
	check("reconciled")
	if id := resolve(dp, target); id != old {
		t.Errorf("after the reconcile %s has identity %d, want the tenant's CIDR identity %d", target, id, old)
	}
	if dp.heldAtPolicy == 0 || dp.held != 0 {
		t.Errorf("reconcile wrote the policy without holding the revision (%d), or left a hold open (%d)", dp.heldAtPolicy, dp.held)
	}
}

// A namespace's endpoints together hold at most maxNamespace entries of
// the node's policy map: an endpoint that would take its namespace past
// it gets none written and denies everything (the ones there first keep
// theirs), others' namespaces are unaffected, and once one of the
// namespace's endpoints goes the capped one gets its entries. A
// reconcile keeps the same endpoints capped. Before 2026-12-05 only one
// endpoint's share was bounded: sixteen of a tenant's endpoints at
// their share filled the 1M map.
func TestNamespaceEndpointsBudget(t *testing.T) {
	dp, e, web, _ := newWebEngine(t, webPolicy) // web: default's
	e.maxEntries, e.maxNamespace = 10, 15
	importTenant(t, e, manyPorts("tenant", 2)) // 4 entries each tenant endpoint
	var eps []endpoint.Endpoint
	for i := range 4 {
		ep := web
		// Highest ID first: the last up (the lowest ID) is capped, and a
		// reconcile keeps it so rather than going by ID.
		ep.ID, ep.IPv4 = uint16(13-i), netip.AddrFrom4([4]byte{10, 244, 0, byte(10 + i)})
		ep.HostIfName, ep.HostIfIndex, ep.Namespace = fmt.Sprintf("filt%d", i), 20+i, "tenant"
		ep.Labels = labels.Labels{{Source: "k8s", Key: "app", Value: "x"}, {Source: "k8s", Key: "io.kubernetes.pod.namespace", Value: "tenant"}}
		if err := e.EndpointUp(context.Background(), ep); err != nil {
			t.Fatal(err)
		}
		eps = append(eps, ep)
	}
	entriesOf := func(id uint16) int { return countEntries(dp, id) }
	check := func(when string, c endpoint.Endpoint, others ...endpoint.Endpoint) {
		t.Helper()
		for _, ep := range others {
			if n := entriesOf(ep.ID); n != 4 {
				t.Errorf("%s: endpoint %d has %d entries, want its 4", when, ep.ID, n)
			}
		}
		if n := entriesOf(c.ID); n != 0 || !dp.ingress[c.IPv4] || !dp.egress[c.IPv4] {
			t.Errorf("%s: the endpoint past its namespace's budget has %d entries, enforced %v/%v", when, n, dp.ingress[c.IPv4], dp.egress[c.IPv4])
		}
		if entriesOf(web.ID) == 0 {
			t.Errorf("%s: another namespace's endpoint lost its entries", when)
		}
	}
	check("fourth up", eps[3], eps[0], eps[1], eps[2])
	if _, err := e.Reconcile(); err != nil {
		t.Fatal(err)
	}
	check("reconciled", eps[3], eps[0], eps[1], eps[2])
	e.EndpointDown(eps[0])
	if n := entriesOf(eps[3].ID); n != 4 {
		t.Errorf("with room again the capped endpoint has %d entries, want 4", n)
	}
	pol, _ := e.res.Endpoint(eps[3].ID)
	if dp.egress[eps[3].IPv4] != pol.EgressEnforced || dp.ingress[eps[3].IPv4] != pol.IngressEnforced {
		t.Error("with room again the capped endpoint's flags are not its policy's")
	}
}

// countEntries is how many policy map entries endpoint id has.
func countEntries(dp *fakeDP, id uint16) int {
	n := 0
	for k := range dp.policy {
		if k.Endpoint == id {
			n++
		}
	}
	return n
}

// Large endpoints of every namespace together leave the policy map a
// reserve: an endpoint of more than smallEntries entries that would take
// them past maxLarge is capped (as one over its share), so endpoints of
// ordinary policies, of any namespace, still get theirs written when
// tenants' large policies (each within its namespace's budget) would
// fill the map. Until 2026-12-05 four namespaces at their budget filled
// it, and every later endpoint of every namespace denied everything.
func TestLargeEndpointsLeaveAReserve(t *testing.T) {
	dp, e, web, _ := newWebEngine(t, webPolicy) // web: default's, 1 entry
	e.maxEntries, e.maxNamespace = 10, 100
	e.smallEntries, e.maxLarge = 3, 8
	dp.capacity = 11 // the map: two large endpoints and room for three small ones
	up := func(id uint16, ns, app string) endpoint.Endpoint {
		t.Helper()
		ep := web
		ep.ID, ep.IPv4 = id, netip.AddrFrom4([4]byte{10, 244, 0, byte(id)})
		ep.HostIfName, ep.HostIfIndex, ep.Namespace = fmt.Sprintf("fil%d", id), 20+int(id), ns
		ep.Labels = labels.Labels{{Source: "k8s", Key: "app", Value: app}, {Source: "k8s", Key: "io.kubernetes.pod.namespace", Value: ns}}
		if err := e.EndpointUp(context.Background(), ep); err != nil {
			t.Fatal(err)
		}
		return ep
	}
	var large []endpoint.Endpoint
	for i, ns := range []string{"t1", "t2", "t3"} {
		importTenant(t, e, manyPorts(ns, 2)) // 4 entries each endpoint of ns
		large = append(large, up(uint16(10+i), ns, "x"))
	}
	if n := countEntries(dp, large[2].ID); n != 0 || !dp.ingress[large[2].IPv4] || !dp.egress[large[2].IPv4] {
		t.Errorf("the third large endpoint (past the large ones' room) has %d entries, enforced %v/%v", n, dp.ingress[large[2].IPv4], dp.egress[large[2].IPv4])
	}
	for _, ep := range large[:2] {
		if n := countEntries(dp, ep.ID); n != 4 {
			t.Errorf("large endpoint %d has %d entries, want its 4", ep.ID, n)
		}
	}
	// An ordinary endpoint of another namespace still gets its entry.
	small := up(20, "default", "web")
	if n := countEntries(dp, small.ID); n != 1 {
		t.Errorf("an ordinary endpoint has %d entries after the large ones, want its 1", n)
	}
	if _, err := e.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if countEntries(dp, large[2].ID) != 0 || countEntries(dp, small.ID) != 1 || countEntries(dp, large[0].ID) != 4 {
		t.Error("a reconcile changed which endpoints are written")
	}
	// A large endpoint's going makes room for the capped one.
	e.EndpointDown(large[0])
	if n := countEntries(dp, large[2].ID); n != 4 {
		t.Errorf("with room again the capped large endpoint has %d entries, want 4", n)
	}
	// Room made by another's policy shrinking is found at the next
	// recheck (the change touches only that endpoint).
	large = append(large, up(13, "t4", "x"))
	importTenant(t, e, manyPorts("t4", 2))
	if n := countEntries(dp, large[3].ID); n != 0 {
		t.Fatalf("the fourth large endpoint has %d entries before the room", n)
	}
	importTenant(t, e, manyPorts("t2", 1)) // t2's endpoint: 1 entry, no longer large
	if _, err := e.RecheckCIDRs(); err != nil {
		t.Fatal(err)
	}
	if n := countEntries(dp, large[3].ID); n != 4 {
		t.Errorf("after another's policy shrank and a recheck, the capped endpoint has %d entries, want 4", n)
	}
	pol, _ := e.res.Endpoint(large[3].ID)
	if dp.egress[large[3].IPv4] != pol.EgressEnforced || dp.ingress[large[3].IPv4] != pol.IngressEnforced {
		t.Error("the endpoint written at the recheck does not have its policy's flags")
	}
}
