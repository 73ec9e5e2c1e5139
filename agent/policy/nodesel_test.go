package policy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/identity"
)

// A node selector whose addresses change without changing which
// addresses are nodes' (a new selector matching no node, say) recompiles
// only the policies naming it: until 2026-12-07 each recompiled every
// policy and endpoint of the node, and tenants' selectors matching
// nothing cost each node seconds of CPU a round (found by a review).
func TestNodeSelectorRecompilesOnlyItsPolicies(t *testing.T) {
	repo, err := NewRepository("")
	if err != nil {
		t.Fatal(err)
	}
	var docs []string
	for i := range 30 {
		docs = append(docs, fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: ns%d}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress: [{toEntities: [world], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]
`, i))
	}
	for ns := range 4 {
		var sels []string
		for i := range MaxNamespaceNodeSelectors {
			sels = append(sels, fmt.Sprintf(`{matchLabels: {x: "v%d-%d"}}`, ns, i))
		}
		docs = append(docs, fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: nodes, namespace: tenant%d}
spec:
  endpointSelector: {}
  egress: [{toNodes: [%s]}]
`, ns, strings.Join(sels, ", ")))
	}
	if _, err := repo.ImportScoped(ScopeKubernetes, policies(t, strings.Join(docs, "---\n"))); err != nil {
		t.Fatal(err)
	}
	r := NewResolver(ModeDefault)
	for i := range 30 {
		r.UpsertEndpoint(EndpointInfo{ID: uint16(i + 1), Identity: identity.Compose(1, uint32(300+i)),
			Labels: rsLabels(t, fmt.Sprintf("k8s:io.kubernetes.pod.namespace=ns%d", i), "k8s:app=web")})
	}
	r.SetPolicies(repo.List())
	before := r.endpointRecomputes
	for key := range r.NodeSelectorsInUse() { // one round of followNodeSelectors: no node matches
		r.SetGroup(key, nil)
	}
	if n := r.endpointRecomputes - before; n != 0 {
		t.Errorf("%d node selectors matching no node made %d recomputes of endpoints no policy naming them selects", 4*MaxNamespaceNodeSelectors, n)
	}
}
