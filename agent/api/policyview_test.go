package api_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/api/types"
)

// A cluster-wide policy says so: it has no namespace to show.
func TestPolicyViewSaysClusterWide(t *testing.T) {
	srv := server(nil)
	defer srv.Close()
	if code, body := do(t, srv, "PUT", "/v1/policies", `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: everywhere}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [cluster]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: here, namespace: prod}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [cluster]}]
`); code != 200 {
		t.Fatalf("import: %d %s", code, body)
	}
	if code, body := do(t, srv, "GET", "/v1/policies/everywhere", ""); code != 200 || !strings.Contains(body, `"clusterWide": true`) {
		t.Fatalf("cluster-wide policy: %d %s", code, body)
	}
	if code, body := do(t, srv, "GET", "/v1/policies/prod/here", ""); code != 200 || strings.Contains(body, `clusterWide`) || !strings.Contains(body, `"namespace": "prod"`) {
		t.Fatalf("namespaced policy: %d %s", code, body)
	}
}

// The key a listed policy gives (types.Policy.Key, the CLI's POLICY
// column) gets that policy, for every kind: a NetworkPolicy beside a
// CiliumNetworkPolicy of its name included. Before, a NetworkPolicy's
// listed key was the CNP's.
func TestListedPolicyKeyGetsIt(t *testing.T) {
	srv := server(nil)
	defer srv.Close()
	if code, body := do(t, srv, "PUT", "/v1/policies", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [cluster]}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [cluster]}]
`); code != 200 {
		t.Fatalf("import: %d %s", code, body)
	}
	code, body := do(t, srv, "GET", "/v1/policies", "")
	var ps []types.Policy
	if err := json.Unmarshal([]byte(body), &ps); code != 200 || err != nil || len(ps) != 3 {
		t.Fatalf("list: %d %v %s", code, err, body)
	}
	for _, p := range ps {
		code, body := do(t, srv, "GET", "/v1/policies/"+p.Key(), "")
		var got types.PolicyView
		if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil || got.Kind != p.Kind {
			t.Errorf("get %s (a %s): %d %v kind %q", p.Key(), p.Kind, code, err, got.Kind)
		}
	}
}
