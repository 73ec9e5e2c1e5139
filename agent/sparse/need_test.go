package sparse

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
)

// Clusters of the property test: c1 is the local one.
var clusterNames = map[uint32]string{1: "c1", 2: "c2", 3: "c3"}

// verdictOf decides a connection from an endpoint's entries as the BPF
// program does (written apart from the resolver): longest-prefix lookups
// with the peer and with identity 0, a deny from either wins, then an
// allow (its L7 lists say whether the proxy takes it), then the default.
func verdictOf(p policy.EndpointPolicy, dir policy.Direction, peer identity.NumericIdentity, proto uint8, port uint16) string {
	key := uint32(proto)<<16 | uint32(port)
	lpm := func(id identity.NumericIdentity) (policy.MapValue, bool) {
		best, bestLen, found := policy.MapValue{}, -1, false
		for k, v := range p.Entries {
			if k.Dir != dir || k.Identity != id {
				continue
			}
			shift := 24 - uint32(k.L4.PrefixLen)
			entry := uint32(k.L4.Proto)<<16 | uint32(k.L4.Port)
			if (k.L4.PrefixLen == 0 || key>>shift == entry>>shift) && int(k.L4.PrefixLen) > bestLen {
				best, bestLen, found = v, int(k.L4.PrefixLen), true
			}
		}
		return best, found
	}
	vp, okp := lpm(peer)
	va, oka := lpm(0)
	switch {
	case okp && vp.Deny, oka && va.Deny:
		return "deny"
	case okp:
		return "allow " + vp.L7
	case oka:
		return "allow " + va.L7
	}
	if (dir == policy.Egress && p.EgressEnforced) || (dir == policy.Ingress && p.IngressEnforced) {
		return "default deny"
	}
	return "default allow"
}

// world is one random scenario: identities of three clusters, local
// endpoints and policies, fed to a real resolver whose every change also
// goes to a Need.
type world struct {
	t    testing.TB
	r    *rand.Rand
	res  *policy.Resolver
	need *Need
	ids  []identity.Identity // remote pod identities
	eps  []uint16
}

func randLabels(r *rand.Rand, cluster uint32) labels.Labels {
	s := []string{"k8s:app=" + []string{"web", "db", "api"}[r.Intn(3)],
		"k8s:io.kubernetes.pod.namespace=" + []string{"default", "other"}[r.Intn(2)],
		"k8s:" + labels.KeyCluster + "=" + clusterNames[cluster]}
	if r.Intn(2) == 0 {
		s = append(s, "k8s:tier="+[]string{"front", "back"}[r.Intn(2)])
	}
	ls, err := labels.ParseList(s...)
	if err != nil {
		panic(err)
	}
	return ls
}

func randSelector(r *rand.Rand) map[string]any {
	app := []string{"web", "db", "api"}[r.Intn(3)]
	cl := clusterNames[uint32(1+r.Intn(3))]
	switch r.Intn(8) {
	case 0:
		return map[string]any{}
	case 1:
		return map[string]any{"matchLabels": map[string]string{"app": app}}
	case 2:
		return map[string]any{"matchLabels": map[string]string{"io.cilium.k8s.policy.cluster": cl}}
	case 3:
		return map[string]any{"matchLabels": map[string]string{labels.KeyCluster: cl, "app": app}}
	case 4:
		return map[string]any{"matchExpressions": []map[string]any{{"key": "app", "operator": "NotIn", "values": []string{app}}}}
	case 5:
		return map[string]any{"matchExpressions": []map[string]any{{"key": "tier", "operator": "Exists"}}}
	case 6:
		return map[string]any{"matchExpressions": []map[string]any{{"key": "tier", "operator": "DoesNotExist"}},
			"matchLabels": map[string]string{"io.cilium.k8s.policy.cluster": cl}}
	default:
		return map[string]any{"matchLabels": map[string]string{"k8s:io.kubernetes.pod.namespace": []string{"default", "other"}[r.Intn(2)]}}
	}
}

func randPeerRule(r *rand.Rand, ingress bool) map[string]any {
	rule := map[string]any{}
	epKey, entKey := "toEndpoints", "toEntities"
	if ingress {
		epKey, entKey = "fromEndpoints", "fromEntities"
	}
	switch r.Intn(5) {
	case 0:
		rule[entKey] = []string{[]string{"cluster", "world", "all"}[r.Intn(3)]}
	case 1: // no peer: every peer, on ports
	default:
		var sels []map[string]any
		for range 1 + r.Intn(2) {
			sels = append(sels, randSelector(r))
		}
		rule[epKey] = sels
	}
	if _, hasPeer := rule[epKey]; r.Intn(2) == 0 || (!hasPeer && rule[entKey] == nil) {
		port := []string{"80", "443", "53"}[r.Intn(3)]
		pr := map[string]any{"ports": []map[string]string{{"port": port, "protocol": []string{"TCP", "UDP"}[r.Intn(2)]}}}
		if port == "80" && r.Intn(3) == 0 {
			pr["ports"] = []map[string]string{{"port": port, "protocol": "TCP"}}
			pr["rules"] = map[string]any{"http": []map[string]string{{"method": "GET"}}}
		}
		rule["toPorts"] = []map[string]any{pr}
	}
	return rule
}

func randPolicy(r *rand.Rand, i int) []byte {
	spec := map[string]any{"endpointSelector": randSelector(r)}
	for _, sec := range []string{"ingress", "egress", "ingressDeny", "egressDeny"} {
		if r.Intn(3) == 0 {
			continue
		}
		var rules []map[string]any
		for range 1 + r.Intn(2) {
			pr := randPeerRule(r, strings.HasPrefix(sec, "ingress"))
			if strings.HasSuffix(sec, "Deny") {
				if tp, ok := pr["toPorts"].([]map[string]any); ok {
					delete(tp[0], "rules")
				}
			}
			rules = append(rules, pr)
		}
		spec[sec] = rules
	}
	doc := map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": fmt.Sprintf("p%d", i), "namespace": []string{"default", "other"}[r.Intn(2)]}, "spec": spec}
	if r.Intn(3) == 0 {
		doc["kind"] = "CiliumClusterwideNetworkPolicy"
		delete(doc["metadata"].(map[string]any), "namespace")
	}
	b, _ := json.Marshal(doc)
	return b
}

func (w *world) apply(c policy.Change) { w.need.Apply(c) }

func newWorld(t testing.TB, seed int64, ingress bool) *world {
	r := rand.New(rand.NewSource(seed))
	w := &world{t: t, r: r, res: policy.NewResolver(policy.ModeDefault), need: NewNeed(1, ingress)}
	w.res.SetClusterScope("c1", r.Intn(4) == 0)
	var ps []api.Policy
	for i := range 1 + r.Intn(4) {
		p, err := api.Parse(randPolicy(r, i))
		if err != nil {
			continue // a shape the model refuses (e.g. L7 on a port it cannot carry)
		}
		ps = append(ps, p...)
	}
	steps := []func(){
		func() { w.apply(w.res.SetPolicies(ps)) },
		func() {
			for c := uint32(2); c <= 3; c++ {
				w.apply(w.res.UpsertIdentity(CoverIdentity(c, clusterNames[c])))
			}
		},
		func() {
			for i := range 3 {
				id := identity.Identity{ID: identity.Compose(1, 256+uint32(i)), Labels: randLabels(r, 1)}
				w.apply(w.res.UpsertIdentity(id))
				w.apply(w.res.UpsertEndpoint(policy.EndpointInfo{ID: uint16(10 + i), Identity: id.ID, Labels: id.Labels}))
				w.eps = append(w.eps, uint16(10+i))
			}
		},
		func() {
			for i := range 8 {
				c := uint32(2 + r.Intn(2))
				id := identity.Identity{ID: identity.Compose(c, 256+uint32(i)), Labels: randLabels(r, c)}
				w.ids = append(w.ids, id)
				w.apply(w.res.UpsertIdentity(id))
			}
		},
	}
	// The order of events varies: need follows changes, whatever they are.
	for _, i := range r.Perm(len(steps)) {
		steps[i]()
	}
	return w
}

// check compares, for every local endpoint, remote pod identity (and one
// the resolver does not know yet), direction and port, the verdict with
// the full ipcache (the pod's identity) with the sparse one's (the cover's
// when the pod's entry is not installed; ingress in tunnel mode takes the
// VNI, the pod's identity, either way).
func (w *world) check(ingress bool) {
	w.t.Helper()
	peers := []identity.NumericIdentity{identity.Compose(2, 999), identity.Compose(3, 999)}
	for _, id := range w.ids {
		peers = append(peers, id.ID)
	}
	ports := []struct {
		proto uint8
		port  uint16
	}{{6, 80}, {6, 443}, {17, 53}, {6, 22}, {1, 8}}
	for _, ep := range w.eps {
		pol, ok := w.res.Endpoint(ep)
		if !ok {
			continue
		}
		for _, peer := range peers {
			installed := w.need.Needed(peer)
			for _, dir := range []policy.Direction{policy.Egress, policy.Ingress} {
				seen := peer
				if !installed && (dir == policy.Egress || ingress) {
					seen = Cover(peer.ClusterID())
				}
				for _, pp := range ports {
					full := verdictOf(pol, dir, peer, pp.proto, pp.port)
					sparse := verdictOf(pol, dir, seen, pp.proto, pp.port)
					if full != sparse {
						w.t.Fatalf("endpoint %d %v peer %d (installed %v) proto %d port %d: full %q, sparse %q",
							ep, dir, peer, installed, pp.proto, pp.port, full, sparse)
					}
				}
			}
		}
	}
}

// churn removes and re-adds identities and policies, checking after each.
func (w *world) churn(ingress bool) {
	for range 4 {
		switch w.r.Intn(3) {
		case 0:
			if len(w.ids) > 0 {
				i := w.r.Intn(len(w.ids))
				w.apply(w.res.DeleteIdentity(w.ids[i].ID))
				w.ids = slices.Delete(w.ids, i, i+1)
			}
		case 1:
			p, err := api.Parse(randPolicy(w.r, 9))
			if err == nil {
				w.apply(w.res.SetPolicies(p))
			}
		default:
			c := uint32(2 + w.r.Intn(2))
			id := identity.Identity{ID: identity.Compose(c, 300+uint32(w.r.Intn(50))), Labels: randLabels(w.r, c)}
			w.ids = append(w.ids, id)
			w.apply(w.res.UpsertIdentity(id))
		}
		w.check(ingress)
	}
}

func TestSparseVerdictsEqualFull(t *testing.T) {
	installedSome, coveredSome := false, false
	for seed := range int64(400) {
		for _, ingress := range []bool{false, true} {
			w := newWorld(t, seed, ingress)
			w.check(ingress)
			for _, id := range w.ids {
				if w.need.Needed(id.ID) {
					installedSome = true
				} else {
					coveredSome = true
				}
			}
			w.churn(ingress)
		}
	}
	// The scenarios must exercise both outcomes, or the test says nothing.
	if !installedSome || !coveredSome {
		t.Fatalf("scenarios never installed (%v) or never covered (%v) a remote identity", installedSome, coveredSome)
	}
}

func FuzzSparseVerdictsEqualFull(f *testing.F) {
	for _, s := range []int64{0, 1, 7, 42, 1234} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, seed int64, ingress bool) {
		w := newWorld(t, seed, ingress)
		w.check(ingress)
		w.churn(ingress)
	})
}

// With no policy at all nothing is distinguished: every remote pod is
// covered.
func TestNoPolicyNothingNeeded(t *testing.T) {
	res := policy.NewResolver(policy.ModeDefault)
	res.SetClusterScope("c1", false)
	n := NewNeed(1, true)
	n.Apply(res.UpsertIdentity(CoverIdentity(2, "c2")))
	id := identity.Identity{ID: identity.Compose(2, 300), Labels: randLabels(rand.New(rand.NewSource(1)), 2)}
	n.Apply(res.UpsertIdentity(id))
	n.Apply(res.UpsertEndpoint(policy.EndpointInfo{ID: 1, Identity: identity.Compose(1, 256), Labels: randLabels(rand.New(rand.NewSource(2)), 1)}))
	if n.Needed(id.ID) || n.Needed(identity.Compose(2, 301)) {
		t.Fatal("a remote identity is needed with no policy")
	}
	if !n.Needed(identity.Compose(1, 256)) {
		t.Fatal("an identity of the local cluster must always have its entry")
	}
}

// An egress policy allowing only app=web of c2 distinguishes the web pods
// (and, since the cover is not selected, nothing else); deleting it
// makes them covered again, and the diffs say so.
func TestEgressPolicyDistinguishes(t *testing.T) {
	res := policy.NewResolver(policy.ModeDefault)
	res.SetClusterScope("c1", false)
	n := NewNeed(1, false)
	n.Apply(res.UpsertIdentity(CoverIdentity(2, "c2")))
	web := identity.Identity{ID: identity.Compose(2, 300), Labels: mustLabels(t, "k8s:app=web", "k8s:filament.io/cluster=c2", "k8s:io.kubernetes.pod.namespace=default")}
	db := identity.Identity{ID: identity.Compose(2, 301), Labels: mustLabels(t, "k8s:app=db", "k8s:filament.io/cluster=c2", "k8s:io.kubernetes.pod.namespace=default")}
	n.Apply(res.UpsertIdentity(web))
	n.Apply(res.UpsertIdentity(db))
	self := mustLabels(t, "k8s:app=client", "k8s:filament.io/cluster=c1", "k8s:io.kubernetes.pod.namespace=default")
	n.Apply(res.UpsertEndpoint(policy.EndpointInfo{ID: 1, Identity: identity.Compose(1, 256), Labels: self}))
	ps, err := api.Parse([]byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-web}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web, io.cilium.k8s.policy.cluster: c2}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	d := n.Apply(res.SetPolicies(ps))
	if !n.Needed(web.ID) || n.Needed(db.ID) {
		t.Fatalf("web needed %v (want true), db needed %v (want false)", n.Needed(web.ID), n.Needed(db.ID))
	}
	if !d.Identities[web.ID] {
		t.Fatalf("diff %v does not install web", d)
	}
	d = n.Apply(res.SetPolicies(nil))
	if n.Needed(web.ID) {
		t.Fatal("web still needed after the policy went")
	}
	if now, ok := d.Identities[web.ID]; !ok || now {
		t.Fatalf("diff %v does not remove web", d)
	}
}

func mustLabels(t *testing.T, s ...string) labels.Labels {
	t.Helper()
	ls, err := labels.ParseList(s...)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// A CIDR identity's prefix longer than a cover makes the addresses inside
// it need their /32s (the full ipcache would give them the pod's identity,
// a cover-only one the CIDR identity); a shorter one does not.
func TestInLongerCIDR(t *testing.T) {
	n := NewNeed(1, false)
	cover := netip.MustParsePrefix("10.2.1.0/24")
	d := n.Apply(policy.Change{CIDRUpserts: map[netip.Prefix]identity.NumericIdentity{
		netip.MustParsePrefix("10.2.1.16/28"): identity.LocalScopeFlag | 1,
		netip.MustParsePrefix("10.0.0.0/8"):   identity.LocalScopeFlag | 2,
	}})
	if len(d.CIDRs) != 2 {
		t.Fatalf("diff %+v", d)
	}
	for a, want := range map[string]bool{"10.2.1.17": true, "10.2.1.31": true, "10.2.1.32": false, "10.2.1.5": false} {
		if got := n.InLongerCIDR(netip.MustParseAddr(a), cover); got != want {
			t.Errorf("InLongerCIDR(%s) = %v, want %v", a, got, want)
		}
	}
	n.Apply(policy.Change{CIDRDeletes: []netip.Prefix{netip.MustParsePrefix("10.2.1.16/28")}})
	if n.InLongerCIDR(netip.MustParseAddr("10.2.1.17"), cover) {
		t.Error("a deleted CIDR prefix still counts")
	}
}
