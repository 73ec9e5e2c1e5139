package k8s

import (
	"reflect"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/agent/policy/api"
)

// fakePolicies records what the watcher imports and deletes.
type fakePolicies struct {
	imported []api.Policy
	deleted  []string
}

func (f *fakePolicies) Import(ps []api.Policy) (uint64, error) {
	f.imported = append(f.imported, ps...)
	return 1, nil
}

func (f *fakePolicies) Delete(key string) (uint64, error) {
	f.deleted = append(f.deleted, key)
	return 1, nil
}

func (f *fakePolicies) List() []api.Policy { return f.imported }

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
			h := (&Watcher{policies: f}).handler(ciliumDoc(c.kind))
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
	(&Watcher{policies: f}).handler(ciliumDoc(api.KindCiliumNetworkPolicy)).OnAdd(&u, false)
	if len(f.imported) != 0 {
		t.Fatalf("imported %+v, want the object rejected", f.imported)
	}
}
