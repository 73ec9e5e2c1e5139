package policy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/identity"
)

// What the resolver builds for one endpoint is bounded while it is
// built, not only once built: a tenant's policy within every namespace
// budget (4,096 toCIDR prefixes in one section, toEntities world on many
// ports in another) made 4,097 identities times the ports for each of its
// endpoints, all held before the engine capped them (a thousand ports:
// millions of entries, the agent out of memory at every start, its
// policies being stored). Until 2026-12-07 (found by a review). Past
// MaxEndpointEntries the endpoint is over (the engine then denies it
// everything), and comes back whole when its policy fits again.
func TestEndpointBuildBounded(t *testing.T) {
	const ports = 100
	var cidrs, ps []string
	for i := range MaxNamespacePrefixes {
		cidrs = append(cidrs, fmt.Sprintf(`"203.%d.%d.1/32"`, i/256, i%256))
	}
	for i := range ports {
		ps = append(ps, fmt.Sprintf(`{port: "%d", protocol: TCP}`, 1000+i))
	}
	wide := fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: wide, namespace: tenant}
spec:
  endpointSelector: {}
  egress:
  - toCIDR: [%s]
  - toEntities: [world]
    toPorts: [{ports: [%s]}]
`, strings.Join(cidrs, ", "), strings.Join(ps, ", "))
	repo, err := NewRepository("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.ImportScoped(ScopeKubernetes, policies(t, wide)); err != nil {
		t.Fatalf("the namespace budgets refuse it: %v", err)
	}
	r := NewResolver(ModeDefault)
	r.UpsertEndpoint(EndpointInfo{ID: 7, Identity: identity.Compose(1, 300),
		Labels: rsLabels(t, "k8s:io.kubernetes.pod.namespace=tenant", "k8s:app=x")})
	ch := r.SetPolicies(repo.List())
	n := r.EntryCount(7)
	if n <= MaxEndpointEntries || n > MaxEndpointEntries+2*ports {
		t.Fatalf("one endpoint of a budgeted tenant policy holds %d entries in the resolver (%d upserts); want just past %d, where its build stops",
			n, len(ch.Upserts), MaxEndpointEntries)
	}
	// Its policy fits again: it is whole again.
	repo2, _ := NewRepository("")
	if _, err := repo2.ImportScoped(ScopeKubernetes, policies(t, strings.Replace(wide, strings.Join(ps, ", "), `{port: "1000", protocol: TCP}`, 1))); err != nil {
		t.Fatal(err)
	}
	r.SetPolicies(repo2.List())
	// Each prefix's identity on any port (the toCIDR section) and on port
	// 1000 (world's), and world's own on port 1000.
	if want := 2*MaxNamespacePrefixes + 1; r.EntryCount(7) != want {
		t.Fatalf("once its policy fits: %d entries, want %d", r.EntryCount(7), want)
	}
}

// An endpoint that other namespaces' CIDR identities push past the bound
// (its world rule on many ports) is over while they are there, and
// whole again once they go.
func TestEndpointOverComesBackWhole(t *testing.T) {
	var ps, cidrs []string
	for i := range 20 {
		ps = append(ps, fmt.Sprintf(`{port: "%d", protocol: TCP}`, 1000+i))
	}
	for i := range MaxNamespacePrefixes {
		cidrs = append(cidrs, fmt.Sprintf(`"198.18.%d.%d/32"`, i/256, i%256))
	}
	victim := fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {}
  egress: [{toEntities: [world], toPorts: [{ports: [%s]}]}]
`, strings.Join(ps, ", "))
	tenant := fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidrs, namespace: tenant}
spec:
  endpointSelector: {}
  egress: [{toCIDR: [%s]}]
`, strings.Join(cidrs, ", "))
	r := NewResolver(ModeDefault)
	r.UpsertEndpoint(EndpointInfo{ID: 7, Identity: identity.Compose(1, 300),
		Labels: rsLabels(t, "k8s:io.kubernetes.pod.namespace=default", "k8s:app=web")})
	set := func(docs ...string) {
		t.Helper()
		repo, _ := NewRepository("")
		if _, err := repo.ImportScoped(ScopeKubernetes, policies(t, strings.Join(docs, "---\n"))); err != nil {
			t.Fatal(err)
		}
		r.SetPolicies(repo.List())
	}
	set(victim)
	if n := r.EntryCount(7); n != 20 {
		t.Fatalf("alone: %d entries, want world on 20 ports", n)
	}
	set(victim, tenant)
	if n := r.EntryCount(7); n <= MaxEndpointEntries || n > MaxEndpointEntries+40 {
		t.Fatalf("with the tenant's prefixes: %d entries, want just past %d", n, MaxEndpointEntries)
	}
	set(victim)
	if n := r.EntryCount(7); n != 20 {
		t.Fatalf("once they go: %d entries, want world on 20 ports", n)
	}
}
