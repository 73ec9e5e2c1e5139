package policy

import (
	"testing"

	"github.com/filament-net/filament/agent/policy/api"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/labels"
)

// Peer selectors without a cluster select the local cluster only; naming a
// cluster (or its Cilium alias) reaches it; allClusters lifts the default.
func TestClusterScope(t *testing.T) {
	mk := func(id uint32, ls ...string) identity.Identity {
		l, err := labels.ParseList(ls...)
		if err != nil {
			t.Fatal(err)
		}
		return identity.Identity{ID: identity.NumericIdentity(id), Labels: l}
	}
	db := mk(1<<16|300, "app=db", "k8s:filament.io/cluster=c1", "k8s:io.kubernetes.pod.namespace=default")
	localWeb := mk(1<<16|301, "app=web", "k8s:filament.io/cluster=c1", "k8s:io.kubernetes.pod.namespace=default")
	remoteWeb := mk(2<<16|301, "app=web", "k8s:filament.io/cluster=c2", "k8s:io.kubernetes.pod.namespace=default")
	doc := func(peer string) []api.Policy {
		ps, err := api.Parse([]byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {` + peer + `}}]
`))
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	peers := func(all bool, ps []api.Policy) map[identity.NumericIdentity]bool {
		r := NewResolver(ModeDefault)
		r.SetClusterScope("c1", all)
		for _, id := range []identity.Identity{db, localWeb, remoteWeb} {
			r.UpsertIdentity(id)
		}
		r.SetPolicies(ps)
		r.UpsertEndpoint(EndpointInfo{ID: 1, Identity: db.ID, Labels: db.Labels})
		ep, _ := r.Endpoint(1)
		out := map[identity.NumericIdentity]bool{}
		for k := range ep.Entries {
			out[k.Identity] = true
		}
		return out
	}
	cases := []struct {
		name         string
		all          bool
		peer         string
		local, peer2 bool
	}{
		{"no cluster: local only", false, "app: web", true, false},
		{"no cluster, all clusters", true, "app: web", true, true},
		{"names c2", false, "app: web, filament.io/cluster: c2", false, true},
		{"Cilium alias", false, "app: web, io.cilium.k8s.policy.cluster: c2", false, true},
	}
	for _, c := range cases {
		got := peers(c.all, doc(c.peer))
		if got[localWeb.ID] != c.local || got[remoteWeb.ID] != c.peer2 {
			t.Errorf("%s: local web %v (want %v), c2 web %v (want %v)", c.name, got[localWeb.ID], c.local, got[remoteWeb.ID], c.peer2)
		}
	}
}
