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
