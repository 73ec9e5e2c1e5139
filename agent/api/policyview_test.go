package api_test

import (
	"strings"
	"testing"
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
