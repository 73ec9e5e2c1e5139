package policy

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/filament-net/filament/agent/policy/api"

	"github.com/filament-net/filament/agent/identity"
)

// fromEndpoints/toEndpoints present but empty select nothing, as in
// CiliumNetworkPolicy; absent (with toPorts) selects every peer and [{}]
// every endpoint of the policy's namespace. Checked from the YAML through
// the resolver, for ingress and egress, and after a JSON round trip (how
// policies are stored).
func TestEmptyPeerListSelectsNothing(t *testing.T) {
	var (
		web   = cid(1)
		db    = cid(2)
		other = cid(3) // another namespace
	)
	w := rsWorld{
		identities: []identity.Identity{
			{ID: web, Labels: rsLabels(t, "k8s:app=web,k8s:io.kubernetes.pod.namespace=default")},
			{ID: db, Labels: rsLabels(t, "k8s:app=db,k8s:io.kubernetes.pod.namespace=default")},
			{ID: other, Labels: rsLabels(t, "k8s:app=web,k8s:io.kubernetes.pod.namespace=other")},
		},
		endpoints: []EndpointInfo{{ID: 7, Identity: db, Labels: rsLabels(t, "k8s:app=db,k8s:io.kubernetes.pod.namespace=default")}},
	}
	shapes := []struct {
		name, peers string // the peer field's YAML; "" leaves it out
		want        []identity.NumericIdentity
	}{
		{"absent", "", []identity.NumericIdentity{0}},
		{"empty", "[]", nil},
		{"one empty selector", "[{}]", []identity.NumericIdentity{web, db}},
	}
	dirs := []struct {
		section, field string
		dir            Direction
	}{
		{"ingress", "fromEndpoints", Ingress},
		{"egress", "toEndpoints", Egress},
	}
	for _, d := range dirs {
		for _, s := range shapes {
			t.Run(d.section+" "+s.name, func(t *testing.T) {
				peer := ""
				if s.peers != "" {
					peer = fmt.Sprintf("    %s: %s\n", d.field, s.peers)
				}
				doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n" +
					"  endpointSelector: {matchLabels: {app: db}}\n  " + d.section + ":\n  - toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n" + peer
				p := parseOne(t, doc)
				var stored api.Policy
				b, err := json.Marshal(p)
				if err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal(b, &stored); err != nil {
					t.Fatal(err)
				}
				for _, pol := range []api.Policy{p, stored} {
					ep := mustEP(t, w.build(ModeDefault, []api.Policy{pol}), 7)
					var got []identity.NumericIdentity
					for k := range ep.Entries {
						if k.Dir == d.dir {
							got = append(got, k.Identity)
						}
					}
					slices.Sort(got)
					if !slices.Equal(got, s.want) {
						t.Errorf("peers = %v, want %v (policy %s)", got, s.want, b)
					}
					allowed, _ := dpVerdict(ep, d.dir, web, 6, 80)
					if want := len(s.want) > 0; allowed != want {
						t.Errorf("web on tcp/80 allowed = %v, want %v", allowed, want)
					}
				}
			})
		}
	}

	// The other peer fields Cilium treats the same way.
	for _, f := range []string{"ingress:\n  - fromCIDR", "ingress:\n  - fromCIDRSet", "ingress:\n  - fromEntities", "ingress:\n  - fromNodes",
		"egress:\n  - toCIDR", "egress:\n  - toCIDRSet", "egress:\n  - toEntities", "egress:\n  - toNodes"} {
		p := parseOne(t, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n"+
			"  endpointSelector: {matchLabels: {app: db}}\n  "+f+": []\n    toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n")
		if ep := mustEP(t, w.build(ModeDefault, []api.Policy{p}), 7); len(ep.Entries) != 0 {
			t.Errorf("%s: [] selects %v, want nothing", f, ep.Entries)
		}
	}

	// NetworkPolicy keeps Kubernetes' meaning: an empty from is every peer.
	np := parseOne(t, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n"+
		"  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: []\n    ports: [{port: 80}]\n")
	ep := mustEP(t, w.build(ModeDefault, []api.Policy{np}), 7)
	if allowed, _ := dpVerdict(ep, Ingress, other, 6, 80); !allowed {
		t.Errorf("NetworkPolicy from: [] does not allow every peer: %v", ep.Entries)
	}
}
