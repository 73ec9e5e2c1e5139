package api

import (
	"encoding/json"
	"testing"

	"github.com/filament-net/filament/agent/labels"
)

// A NetworkPolicy stored before 2026-12-05 (k8sPeers then took a
// podSelector naming the namespace key as scoped by itself) kept
// selecting the other namespace's pods after the upgrade: the stored
// rules, not the source, are loaded. Its podSelector peers are kept in
// its namespace when it is prepared; a namespaceSelector's are left alone.
func TestStoredNetworkPolicyPeersKeptInTheirNamespace(t *testing.T) {
	stored := `{"kind":"NetworkPolicy","namespace":"a","name":"np","rules":[{
	  "endpointSelector":{"matchLabels":{"k8s:io.kubernetes.pod.namespace":"a"}},
	  "enableDefaultDeny":{"ingress":true,"egress":false},
	  "ingress":[{"fromEndpoints":[
	    {"matchLabels":{"k8s:io.kubernetes.pod.namespace":"b","k8s:app":"db"}},
	    {"matchLabels":{"k8s:io.cilium.k8s.namespace.labels.team":"x"},"matchExpressions":[{"key":"k8s:io.kubernetes.pod.namespace","operator":"Exists"}]}]}],
	  "egress":[{"toEndpoints":[{"matchLabels":{"k8s:io.kubernetes.pod.namespace":"b"}}]}]}]}`
	var p Policy
	if err := json.Unmarshal([]byte(stored), &p); err != nil {
		t.Fatal(err)
	}
	out, err := Prepare([]Policy{p})
	if err != nil {
		t.Fatal(err)
	}
	r := out[0].Rules[0]
	inB, _ := labels.ParseList("k8s:app=db", "k8s:io.kubernetes.pod.namespace=b")
	if r.Ingress[0].FromEndpoints[0].Matches(inB) || r.Egress[0].ToEndpoints[0].Matches(inB) {
		t.Error("a stored NetworkPolicy of namespace a still selects namespace b's pods")
	}
	inA, _ := labels.ParseList("k8s:app=db", "k8s:io.kubernetes.pod.namespace=a")
	if !r.Ingress[0].FromEndpoints[0].Matches(inA) {
		t.Error("its podSelector no longer selects its own namespace's pods")
	}
	team, _ := labels.ParseList("k8s:io.cilium.k8s.namespace.labels.team=x", "k8s:io.kubernetes.pod.namespace=c")
	if !r.Ingress[0].FromEndpoints[1].Matches(team) {
		t.Error("its namespaceSelector peer was narrowed to its own namespace")
	}
}

// A podSelector of `namespace Exists` alone was stored before 2026-12-05
// as a namespaceSelector peer is: only the policy's source tells them
// apart, and Reload makes a stored NetworkPolicy's rules again from it
// (found by a review of the test above). A source that does not parse
// to the stored policy leaves its rules as stored.
func TestStoredNetworkPolicyRulesMadeAgainFromSource(t *testing.T) {
	src := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: a}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: db}
        matchExpressions: [{key: io.kubernetes.pod.namespace, operator: Exists}]
`
	stored := Policy{Kind: KindNetworkPolicy, Namespace: "a", Name: "np", Source: src, Rules: []Rule{{
		EndpointSelector: &EndpointSelector{MatchLabels: map[string]string{podNamespaceKey: "a"}},
		Ingress: []IngressRule{{FromEndpoints: []EndpointSelector{{MatchLabels: map[string]string{"k8s:app": "db"},
			MatchExpressions: []SelectorRequirement{{Key: podNamespaceKey, Operator: OpExists}}}}}},
	}}}
	inB, _ := labels.ParseList("k8s:app=db", "k8s:io.kubernetes.pod.namespace=b")
	inA, _ := labels.ParseList("k8s:app=db", "k8s:io.kubernetes.pod.namespace=a")
	p, err := Reload(stored)
	if err != nil {
		t.Fatal(err)
	}
	if sel := p.Rules[0].Ingress[0].FromEndpoints[0]; sel.Matches(inB) || !sel.Matches(inA) {
		t.Errorf("reloaded peer %+v: selects namespace b's pod %v, namespace a's %v; want a's only", sel, sel.Matches(inB), sel.Matches(inA))
	}
	other := stored.DeepCopy()
	other.Namespace = "c" // the source names another namespace: the stored rules stay
	p, err = Reload(other)
	if err != nil {
		t.Fatal(err)
	}
	if sel := p.Rules[0].Ingress[0].FromEndpoints[0]; !sel.Matches(inB) {
		t.Errorf("a policy whose source is not its own had its rules replaced: %+v", sel)
	}
}

// A toFQDNs of `[]` was stored before 2026-12-07 without the field (its
// JSON tag omitted empty lists), which allowed every peer on the rule's
// ports: a Cilium policy's rules are made again from its source on load
// too (found by a review).
func TestStoredEmptyPeerFieldMadeAgainFromSource(t *testing.T) {
	ps, err := Parse([]byte("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toFQDNs: []\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	old := ps[0].DeepCopy()
	old.Rules[0].Egress[0].ToFQDNs = nil // as an older agent stored it
	p, err := Reload(old)
	if err != nil {
		t.Fatal(err)
	}
	if p.Rules[0].Egress[0].ToFQDNs == nil {
		t.Error("the reloaded rule lost its empty toFQDNs: it allows every peer on 443")
	}
}
