package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// cidrPolicy is a namespace's policy naming n /32 prefixes from base,
// each on ports TCP ports.
func cidrPolicy(namespace, name string, base, n, ports int) string {
	var cidrs, ps []string
	for i := range n {
		cidrs = append(cidrs, fmt.Sprintf(`"10.%d.%d.%d/32"`, base, i/256, i%256))
	}
	for i := range ports {
		ps = append(ps, fmt.Sprintf(`{port: "%d", protocol: TCP}`, 1000+i))
	}
	doc := fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: %s, namespace: %s}
spec:
  endpointSelector: {}
  egress: [{toCIDR: [%s]`, name, namespace, strings.Join(cidrs, ", "))
	if ports > 0 {
		doc += fmt.Sprintf(`, toPorts: [{ports: [%s]}]`, strings.Join(ps, ", "))
	}
	return doc + "}]\n"
}

// A namespace's policies are bounded in what they make every node hold:
// the CIDR prefixes they name (each an ipcache entry of the node's, a map
// shared by every namespace and the mesh) and their CIDR prefixes times
// ports (policy map entries per selected endpoint, a map shared by every
// endpoint). An import past a bound is refused naming the namespace and
// the bound, and changes nothing; another namespace is not affected, and
// clusterwide policies (the operator's) are not bounded. Before
// 2026-12-05 nothing bounded them: a tenant's policies could name
// enough toCIDR prefixes to fill the node's ipcache (524,288 entries),
// and every later write of every namespace failed.
func TestNamespaceBudgets(t *testing.T) {
	r, err := NewRepository("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ImportScoped(ScopeKubernetes, policies(t, cidrPolicy("a", "p1", 1, 3000, 0))); err != nil {
		t.Fatal(err)
	}
	rev := r.Revision()
	_, err = r.ImportScoped(ScopeKubernetes, policies(t, cidrPolicy("a", "p2", 2, MaxNamespacePrefixes-3000+1, 0)))
	if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), `namespace "a"`) || !strings.Contains(err.Error(), fmt.Sprint(MaxNamespacePrefixes)) {
		t.Fatalf("an import past the namespace's prefixes: %v", err)
	}
	if r.Revision() != rev || len(r.List()) != 1 {
		t.Fatalf("the refused import changed the repository: revision %d → %d, %d policies", rev, r.Revision(), len(r.List()))
	}
	// Replacing p1 by a policy of the same key is counted without p1.
	if _, err := r.ImportScoped(ScopeKubernetes, policies(t, cidrPolicy("a", "p1", 1, MaxNamespacePrefixes, 0))); err != nil {
		t.Errorf("replacing a policy within the bound: %v", err)
	}
	// Another namespace has its own budget.
	if _, err := r.ImportScoped(ScopeKubernetes, policies(t, cidrPolicy("b", "p1", 3, 3000, 0))); err != nil {
		t.Errorf("another namespace: %v", err)
	}
	// Prefixes times ports.
	n := MaxNamespaceCIDRPorts/64 + 1
	_, err = r.ImportScoped(ScopeKubernetes, policies(t, cidrPolicy("c", "p1", 4, n, 64)))
	if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), `namespace "c"`) {
		t.Errorf("an import past the namespace's prefixes × ports: %v", err)
	}
	// A clusterwide policy is the operator's.
	ccnp := strings.Replace(strings.Replace(cidrPolicy("x", "wide", 5, MaxNamespacePrefixes+1, 0),
		"CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", 1), ", namespace: x", "", 1)
	if _, err := r.ImportScoped(ScopeKubernetes, policies(t, ccnp)); err != nil {
		t.Errorf("a clusterwide policy: %v", err)
	}
}

// groupsPolicy is a namespace's policy naming n distinct AWS groups (by
// tag) in toGroups.
func groupsPolicy(namespace, name string, n int) string {
	var gs []string
	for i := range n {
		gs = append(gs, fmt.Sprintf(`{aws: {labels: {app: g%d}}}`, i))
	}
	return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: %s, namespace: %s}
spec:
  endpointSelector: {}
  egress: [{toGroups: [%s]}]
`, name, namespace, strings.Join(gs, ", "))
}

// A namespace's policies name at most MaxNamespaceGroups distinct cloud
// groups: each is a selector every node publishes in the kvstore and the
// elected resolver asks the cloud's API about on every refresh, one after
// the other, for every tenant. Found 2026-12-06 by reading the budgets:
// they counted CIDRs only, so one policy of thousands of toGroups
// selectors flooded the kvstore with every node's requests, throttled the
// account's EC2 API and held every other tenant's groups unresolved.
func TestNamespaceGroupsBudget(t *testing.T) {
	r, err := NewRepository("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ImportScoped(ScopeKubernetes, policies(t, groupsPolicy("a", "p1", MaxNamespaceGroups))); err != nil {
		t.Fatal(err)
	}
	rev := r.Revision()
	_, err = r.ImportScoped(ScopeKubernetes, policies(t, groupsPolicy("a", "p2", MaxNamespaceGroups+1)))
	if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), `namespace "a"`) || !strings.Contains(err.Error(), "groups") {
		t.Fatalf("an import past the namespace's groups: %v", err)
	}
	if r.Revision() != rev || len(r.List()) != 1 {
		t.Fatalf("the refused import changed the repository: revision %d → %d", rev, r.Revision())
	}
	// The same groups in a second policy count once.
	if _, err := r.ImportScoped(ScopeKubernetes, policies(t, groupsPolicy("a", "p3", MaxNamespaceGroups))); err != nil {
		t.Errorf("the same groups again: %v", err)
	}
}

// A namespace's toNodes and fromNodes selectors are bounded: each is a
// selector every node follows, and each new one recompiled every policy
// and endpoint of every node (until 2026-12-07 none was counted, and one
// policy of 2,000 selectors matching no node cost each node seconds of
// CPU a round; found by a review).
func TestNamespaceNodeSelectorsBudget(t *testing.T) {
	nodes := func(name string, n int) string {
		var sels []string
		for i := range n {
			sels = append(sels, fmt.Sprintf(`{matchLabels: {x: "v%d"}}`, i))
		}
		return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: %s, namespace: a}
spec:
  endpointSelector: {}
  egress: [{toNodes: [%s]}]
  ingress: [{fromNodes: [%s]}]
`, name, strings.Join(sels, ", "), strings.Join(sels, ", "))
	}
	r, err := NewRepository("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ImportScoped(ScopeKubernetes, policies(t, nodes("p1", MaxNamespaceNodeSelectors))); err != nil {
		t.Fatal(err)
	}
	rev := r.Revision()
	_, err = r.ImportScoped(ScopeKubernetes, policies(t, nodes("p2", MaxNamespaceNodeSelectors+1)))
	if !errors.Is(err, ErrBudget) || !strings.Contains(err.Error(), `namespace "a"`) || !strings.Contains(err.Error(), "node selectors") {
		t.Fatalf("an import past the namespace's node selectors: %v", err)
	}
	if r.Revision() != rev || len(r.List()) != 1 {
		t.Fatalf("the refused import changed the repository: revision %d → %d", rev, r.Revision())
	}
}
