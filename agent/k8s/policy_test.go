package k8s

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/agent/policy/api"
)

// fakePolicies is a policy store that records what the watcher imports
// and deletes, with their scopes.
type fakePolicies struct {
	imported []api.Policy
	deleted  []string
	stored   map[string]api.Policy
	scopes   map[string]string
}

func (f *fakePolicies) ImportScoped(scope string, ps []api.Policy) (uint64, error) {
	f.imported = append(f.imported, ps...)
	for _, p := range ps {
		f.store(p, scope)
	}
	return 1, nil
}

func (f *fakePolicies) store(p api.Policy, scope string) {
	if f.stored == nil {
		f.stored, f.scopes = map[string]api.Policy{}, map[string]string{}
	}
	f.stored[p.Key()], f.scopes[p.Key()] = p, scope
}

func (f *fakePolicies) Delete(key string) (uint64, error) {
	if _, ok := f.stored[key]; !ok {
		return 0, fmt.Errorf("%q not stored", key)
	}
	f.deleted = append(f.deleted, key)
	delete(f.stored, key)
	return 1, nil
}

func (f *fakePolicies) Get(key string) (api.Policy, error) {
	p, ok := f.stored[key]
	if !ok {
		return p, fmt.Errorf("%q not stored", key)
	}
	return p, nil
}

func (f *fakePolicies) Scope(key string) (string, error) {
	if _, ok := f.stored[key]; !ok {
		return "", fmt.Errorf("%q not stored", key)
	}
	return f.scopes[key], nil
}

func (f *fakePolicies) List() []api.Policy { return slices.Collect(maps.Values(f.stored)) }

// l7Spec has HTTP rules with every field on an ingress and an egress port.
const l7Spec = `
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: "/public/.*"
          host: "web\\.example"
          headers: ["X-Token: abc", "X-Trace"]
          headerMatches:
          - {name: X-Env, value: prod, mismatch: REPLACE}
          - {name: X-Secret, mismatch: DELETE}
  egress:
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: POST, path: "/v1/.*"}]
`

var (
	wantIngressHTTP = []api.PortRuleHTTP{{Method: "GET", Path: "/public/.*", Host: `web\.example`,
		Headers: []string{"X-Token: abc", "X-Trace"},
		HeaderMatches: []api.HeaderMatch{{Name: "X-Env", Value: "prod", Mismatch: "REPLACE"},
			{Name: "X-Secret", Mismatch: "DELETE"}}}}
	wantEgressHTTP = []api.PortRuleHTTP{{Method: "POST", Path: "/v1/.*"}}
)

// The watcher hands a CiliumNetworkPolicy's and a
// CiliumClusterwideNetworkPolicy's toPorts[].rules.http, ingress and
// egress, to the policy engine unchanged (as the informer delivers the
// objects: unstructured, with the API server's own metadata), and a
// deletion removes the policy by its key.
func TestCiliumObjectsKeepHTTPRules(t *testing.T) {
	for _, c := range []struct{ kind, header, key string }{
		{api.KindCiliumNetworkPolicy, "metadata: {name: web, namespace: team-a, uid: u1, resourceVersion: \"7\"}", "team-a/web"},
		{api.KindCiliumClusterwideNetworkPolicy, "metadata: {name: web, uid: u2, resourceVersion: \"8\"}", "web"},
	} {
		t.Run(c.kind, func(t *testing.T) {
			var u unstructured.Unstructured
			if err := yaml.Unmarshal([]byte("apiVersion: cilium.io/v2\nkind: "+c.kind+"\n"+c.header+l7Spec), &u.Object); err != nil {
				t.Fatal(err)
			}
			f := &fakePolicies{}
			h := (&Watcher{policies: f}).handler(c.kind, ciliumDoc(c.kind))
			h.OnAdd(&u, false)
			if len(f.imported) != 1 {
				t.Fatalf("imported %d policies, want 1", len(f.imported))
			}
			p := f.imported[0]
			if p.Kind != c.kind || p.Key() != c.key || len(p.Rules) != 1 {
				t.Fatalf("imported %s %s with %d rules, want %s %s with 1", p.Kind, p.Key(), len(p.Rules), c.kind, c.key)
			}
			r := p.Rules[0]
			if len(r.Ingress) != 1 || len(r.Ingress[0].ToPorts) != 1 || r.Ingress[0].ToPorts[0].Rules == nil {
				t.Fatalf("ingress toPorts lost their rules: %+v", r.Ingress)
			}
			if got := r.Ingress[0].ToPorts[0].Rules.HTTP; !reflect.DeepEqual(got, wantIngressHTTP) {
				t.Errorf("ingress rules.http:\n got %+v\nwant %+v", got, wantIngressHTTP)
			}
			if len(r.Egress) != 1 || len(r.Egress[0].ToPorts) != 1 || r.Egress[0].ToPorts[0].Rules == nil {
				t.Fatalf("egress toPorts lost their rules: %+v", r.Egress)
			}
			if got := r.Egress[0].ToPorts[0].Rules.HTTP; !reflect.DeepEqual(got, wantEgressHTTP) {
				t.Errorf("egress rules.http:\n got %+v\nwant %+v", got, wantEgressHTTP)
			}
			h.OnDelete(&u)
			if !reflect.DeepEqual(f.deleted, []string{c.key}) {
				t.Errorf("deleted %q, want [%s]", f.deleted, c.key)
			}
		})
	}
}

// An object whose HTTP rule RE2 cannot express is not imported (the
// watcher logs the parser's error); the engine keeps what it had.
func TestCiliumObjectBadHTTPRuleRejected(t *testing.T) {
	var u unstructured.Unstructured
	if err := yaml.Unmarshal([]byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{path: "/(?!admin).*"}]}
`), &u.Object); err != nil {
		t.Fatal(err)
	}
	f := &fakePolicies{}
	(&Watcher{policies: f}).handler(api.KindCiliumNetworkPolicy, ciliumDoc(api.KindCiliumNetworkPolicy)).OnAdd(&u, false)
	if len(f.imported) != 0 {
		t.Fatalf("imported %+v, want the object rejected", f.imported)
	}
}

// cnp is a CiliumNetworkPolicy object as the informer delivers it.
func cnp(t *testing.T, namespace, name, spec string) *unstructured.Unstructured {
	t.Helper()
	var u unstructured.Unstructured
	doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: " + name + ", namespace: " + namespace + "}\n" + spec
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	return &u
}

const (
	denyFromOther = "spec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingressDeny: [{fromEndpoints: [{matchLabels: {app: other}}]}]\n"
	badSpec       = "spec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{path: \"/(?!a)\"}]}}]}]\n"
)

func policyWatcher(f *fakePolicies) *Watcher {
	w := &Watcher{policies: f, policyKinds: map[string]policyKind{}}
	for _, kind := range []string{api.KindNetworkPolicy, api.KindCiliumNetworkPolicy, api.KindCiliumClusterwideNetworkPolicy} {
		toDoc := networkPolicyDoc
		if kind != api.KindNetworkPolicy {
			toDoc = ciliumDoc(kind)
		}
		w.policyKinds[kind] = policyKind{cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}), toDoc}
	}
	return w
}

// A NetworkPolicy and a CiliumNetworkPolicy of the same namespace and name
// (a Helm chart making both for one release) are two policies: both are
// stored, whatever their order, and deleting one leaves the other. Until
// 2026-12-04 they shared a key and one was refused (before that, the CNP's
// deny replaced the NetworkPolicy, and deleting the NetworkPolicy removed
// the CNP's deny).
func TestSameNameOfTwoKindsBothEnforced(t *testing.T) {
	f := &fakePolicies{}
	w := policyWatcher(f)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "default"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}}
	c := cnp(t, "default", "db", denyFromOther)
	hNP, hCNP := w.handler(api.KindNetworkPolicy, networkPolicyDoc), w.handler(api.KindCiliumNetworkPolicy, ciliumDoc(api.KindCiliumNetworkPolicy))
	w.policyKinds[api.KindCiliumNetworkPolicy].cache.Add(c)
	w.policyKinds[api.KindNetworkPolicy].cache.Add(np)
	hCNP.OnAdd(c, true)
	hNP.OnAdd(np, true)
	both := func(when string) {
		t.Helper()
		if p, err := f.Get("default/db"); err != nil || p.Kind != api.KindCiliumNetworkPolicy {
			t.Fatalf("%s: default/db is %+v %v, want the CiliumNetworkPolicy", when, p, err)
		}
		if p, err := f.Get("default/networkpolicy/db"); err != nil || p.Kind != api.KindNetworkPolicy {
			t.Fatalf("%s: default/networkpolicy/db is %+v %v, want the NetworkPolicy", when, p, err)
		}
	}
	both("both added")
	w.policyKinds[api.KindNetworkPolicy].cache.Delete(np)
	hNP.OnDelete(np)
	if _, err := f.Get("default/db"); err != nil || !reflect.DeepEqual(f.deleted, []string{"default/networkpolicy/db"}) {
		t.Fatalf("after the NetworkPolicy's deletion: deleted %q, CNP stored: %v; want only the NetworkPolicy gone", f.deleted, err)
	}
	// Again, the other way round: the NetworkPolicy first, the CNP goes.
	w.policyKinds[api.KindNetworkPolicy].cache.Add(np)
	hNP.OnAdd(np, false)
	hCNP.OnUpdate(c, c)
	both("the NetworkPolicy added again")
	w.policyKinds[api.KindCiliumNetworkPolicy].cache.Delete(c)
	hCNP.OnDelete(c)
	if _, err := f.Get("default/networkpolicy/db"); err != nil || !reflect.DeepEqual(f.deleted, []string{"default/networkpolicy/db", "default/db"}) {
		t.Fatalf("after the CNP's deletion: deleted %q, NetworkPolicy stored: %v; want only the CNP gone", f.deleted, err)
	}
	// Pruning finds the NetworkPolicy's object under its namespace/name.
	w.prune(api.KindNetworkPolicy)
	if _, err := f.Get("default/networkpolicy/db"); err != nil {
		t.Fatalf("prune removed the NetworkPolicy whose object is there: %v", err)
	}
	w.policyKinds[api.KindNetworkPolicy].cache.Delete(np)
	w.prune(api.KindNetworkPolicy)
	if _, err := f.Get("default/networkpolicy/db"); err == nil {
		t.Fatal("prune kept the NetworkPolicy whose object is gone")
	}
}

// An object updated to a spec the parser rejects keeps its last good
// policy (nothing half-applied), and its deletion removes that policy
// (before, the deletion parsed the bad spec, failed and kept it for good).
func TestPolicyDeletedAfterABadUpdate(t *testing.T) {
	f := &fakePolicies{}
	w := policyWatcher(f)
	h := w.handler(api.KindCiliumNetworkPolicy, ciliumDoc(api.KindCiliumNetworkPolicy))
	good, bad := cnp(t, "default", "db", denyFromOther), cnp(t, "default", "db", badSpec)
	h.OnAdd(good, false)
	h.OnUpdate(good, bad)
	if p, err := f.Get("default/db"); err != nil || len(p.Rules) != 1 || len(p.Rules[0].IngressDeny) != 1 {
		t.Fatalf("after the bad update: %+v %v, want the good policy", p, err)
	}
	h.OnDelete(bad)
	if _, err := f.Get("default/db"); err == nil || !reflect.DeepEqual(f.deleted, []string{"default/db"}) {
		t.Fatalf("after the deletion: deleted %q, still stored: %v", f.deleted, err == nil)
	}
}

// Policies whose objects were deleted while the agent was down are
// removed once the kind's first list has arrived; policies of other kinds,
// objects still there, and policies not from Kubernetes (scope cluster,
// or none: imported before policies had scopes) stay.
func TestPolicyOfObjectGoneWhileDownIsPruned(t *testing.T) {
	f := &fakePolicies{}
	w := policyWatcher(f)
	gone := cnp(t, "default", "gone", denyFromOther)
	kept := cnp(t, "default", "kept", denyFromOther)
	h := w.handler(api.KindCiliumNetworkPolicy, ciliumDoc(api.KindCiliumNetworkPolicy))
	h.OnAdd(gone, false)
	h.OnAdd(kept, false)
	w.policyKinds[api.KindCiliumNetworkPolicy].cache.Add(kept)
	cli := f.stored["default/kept"]
	cli.Name = "cli"
	f.store(cli, "cluster")
	legacy := cli
	legacy.Name = "legacy" // imported before policies had scopes
	f.store(legacy, "")
	w.prune(api.KindNetworkPolicy)
	if len(f.deleted) != 0 {
		t.Fatalf("pruning NetworkPolicies deleted %q", f.deleted)
	}
	w.prune(api.KindCiliumNetworkPolicy)
	if !reflect.DeepEqual(f.deleted, []string{"default/gone"}) {
		t.Fatalf("pruned %q, want [default/gone]", f.deleted)
	}
}

// A Kubernetes object does not replace a policy of the same key imported
// with the CLI (scope cluster or local), nor, deleted, remove it; a
// policy without a scope (a Kubernetes object's, stored before the
// Kubernetes scope) is taken over.
func TestObjectDoesNotReplaceCLIPolicy(t *testing.T) {
	f := &fakePolicies{}
	w := policyWatcher(f)
	h := w.handler(api.KindCiliumNetworkPolicy, ciliumDoc(api.KindCiliumNetworkPolicy))
	c := cnp(t, "default", "db", denyFromOther)
	local := api.Policy{Kind: api.KindCiliumNetworkPolicy, Namespace: "default", Name: "db"}
	f.store(local, "local")
	h.OnAdd(c, false)
	h.OnDelete(c)
	if sc, err := f.Scope("default/db"); err != nil || sc != "local" || len(f.imported) != 0 || len(f.deleted) != 0 {
		t.Fatalf("the local policy: scope %q %v, imported %d, deleted %q", sc, err, len(f.imported), f.deleted)
	}
	f.store(local, "")
	h.OnAdd(c, false)
	if sc, _ := f.Scope("default/db"); sc != "kubernetes" || len(f.imported) != 1 {
		t.Fatalf("an unscoped policy of the same key: scope %q after the object's add, imported %d", sc, len(f.imported))
	}
}
