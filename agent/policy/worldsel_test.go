package policy

import (
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/policy/api"
)

// A selector naming reserved:world selects the CIDR identities too (they
// carry the label, as Cilium's do): a prefix any policy names is written
// to the node's ipcache, and every pod's traffic to it then carries that
// prefix's identity, not world. Until 2026-12-07 such a selector matched
// identity 2 only, so one namespace's toCIDR (a /32, or 0.0.0.0/0) took
// the addresses it names out of another namespace's reserved:world deny
// (which then let them through) and allow (found by a review).
func TestWorldSelectorSelectsCIDRIdentities(t *testing.T) {
	for _, prefix := range []string{"1.2.3.4/32", "0.0.0.0/0"} {
		for _, c := range []struct {
			name, bEgress string
			wantAllowed   bool
		}{
			{"deny", `egress: [{toEntities: [all]}]
  egressDeny: [{toEndpoints: [{matchLabels: {"reserved:world": ""}}]}]`, false},
			{"allow", `egress: [{toEndpoints: [{matchLabels: {"reserved:world": ""}}], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]`, true},
			{"expression", `egress: [{toEndpoints: [{matchExpressions: [{key: "reserved:world", operator: Exists}]}], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]`, true},
			{"not world and more", `egress: [{toEndpoints: [{matchLabels: {"reserved:world": "", "app": "x"}}], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]`, false},
		} {
			t.Run(prefix+"/"+c.name, func(t *testing.T) {
				ps, err := api.Parse([]byte(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a, namespace: a}
spec:
  endpointSelector: {}
  egress: [{toCIDR: [` + prefix + `]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b, namespace: b}
spec:
  endpointSelector: {}
  ` + c.bEgress + "\n"))
				if err != nil {
					t.Fatal(err)
				}
				r := NewResolver(ModeDefault)
				r.UpsertEndpoint(EndpointInfo{ID: 1, Identity: cid(1), Labels: rsLabels(t, "k8s:app=x", "k8s:io.kubernetes.pod.namespace=a")})
				r.UpsertEndpoint(EndpointInfo{ID: 2, Identity: cid(2), Labels: rsLabels(t, "k8s:app=y", "k8s:io.kubernetes.pod.namespace=b")})
				r.SetPolicies(ps)
				id := r.CIDRIdentities()[netip.MustParsePrefix(prefix)]
				if id == 0 {
					t.Fatal("no CIDR identity")
				}
				if ok, _ := dpVerdict(mustEP(t, r, 2), Egress, id, 6, 443); ok != c.wantAllowed {
					t.Errorf("b to %s (CIDR identity %d, made by namespace a's policy): allowed %v, want %v as to world", prefix, id, ok, c.wantAllowed)
				}
			})
		}
	}
}
