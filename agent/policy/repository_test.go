package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/filament-net/filament/agent/policy/api"
)

// policies parses input and requires success.
func policies(t *testing.T, input string) []api.Policy {
	t.Helper()
	ps, err := api.Parse([]byte(input))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return ps
}

func check[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %#v, want %#v", what, got, want)
	}
}

// webPolicy is a CiliumNetworkPolicy ns/name allowing TCP port.
func webPolicy(ns, name string, port int) string {
	return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: %s, namespace: %s}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{toPorts: [{ports: [{port: "%d", protocol: TCP}]}]}]
`, name, ns, port)
}

func keys(ps []api.Policy) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Key()
	}
	return out
}

func port(p api.Policy) string { return p.Rules[0].Ingress[0].ToPorts[0].Ports[0].Port }

func mustImport(t *testing.T, r *Repository, ps []api.Policy, wantRev uint64) {
	t.Helper()
	rev, err := r.Import(ps)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if rev != wantRev || r.Revision() != wantRev {
		t.Fatalf("Import revision = %d, Revision() = %d, want %d", rev, r.Revision(), wantRev)
	}
}

func TestRepositoryImportGetListDelete(t *testing.T) {
	r, err := NewRepository("")
	if err != nil {
		t.Fatal(err)
	}
	check(t, "new revision", r.Revision(), uint64(0))
	check(t, "new list", len(r.List()), 0)

	mustImport(t, r, policies(t, webPolicy("b", "web", 80)+"---\n"+webPolicy("a", "web", 80)+
		"---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: zz}\nspec: {endpointSelector: {}}\n"), 1)
	check(t, "List keys", keys(r.List()), []string{"a/web", "b/web", "zz"})

	got, err := r.Get("a/web")
	if err != nil {
		t.Fatal(err)
	}
	check(t, "Get port", port(got), "80")
	check(t, "Get source", got.Source, webPolicy("a", "web", 80))

	// Same key replaces, a new key adds, others stay.
	mustImport(t, r, policies(t, webPolicy("a", "web", 8080)+"---\n"+webPolicy("c", "web", 80)), 2)
	got, _ = r.Get("a/web")
	check(t, "replaced port", port(got), "8080")
	check(t, "List keys", keys(r.List()), []string{"a/web", "b/web", "c/web", "zz"})

	rev, err := r.Delete("b/web")
	if err != nil || rev != 3 {
		t.Fatalf("Delete = %d, %v; want 3, nil", rev, err)
	}
	if _, err := r.Get("b/web"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: err = %v, want ErrNotFound", err)
	}
	check(t, "List keys", keys(r.List()), []string{"a/web", "c/web", "zz"})

	rev, err = r.Import(nil)
	if err != nil || rev != 3 {
		t.Errorf("empty Import = %d, %v; want the current revision 3 and no error", rev, err)
	}
}

func TestRepositoryDeleteUnknown(t *testing.T) {
	r, _ := NewRepository("")
	mustImport(t, r, policies(t, webPolicy("a", "web", 80)), 1)
	_, err := r.Delete("a/nope")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"a/nope"`) {
		t.Fatalf("Delete unknown: err = %v, want ErrNotFound naming the key", err)
	}
	_, err = r.Get("nope")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("Get unknown: err = %v, want ErrNotFound naming the key", err)
	}
	check(t, "revision after failed delete", r.Revision(), uint64(1))
}

// A NetworkPolicy asked for under namespace/name (its key before
// 2026-12-04) is not found, and the error names its key now.
func TestRepositoryNotFoundNamesNetworkPolicyKey(t *testing.T) {
	r, _ := NewRepository("")
	mustImport(t, r, policies(t, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: a}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
`), 1)
	for what, f := range map[string]func() error{
		"Get":    func() error { _, err := r.Get("a/db"); return err },
		"Delete": func() error { _, err := r.Delete("a/db"); return err },
		"Scope":  func() error { _, err := r.Scope("a/db"); return err },
	} {
		if err := f(); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `a NetworkPolicy of that name is "a/networkpolicy/db"`) {
			t.Errorf("%s(a/db): err = %v, want ErrNotFound naming a/networkpolicy/db", what, err)
		}
	}
	if _, err := r.Get("a/web"); err == nil || strings.Contains(err.Error(), "NetworkPolicy") {
		t.Errorf("Get(a/web) = %v, want a plain not found", err)
	}
	if _, err := r.Get("a/networkpolicy/db"); err != nil {
		t.Errorf("Get(a/networkpolicy/db): %v", err)
	}
}

func TestRepositoryRejectedImportChangesNothing(t *testing.T) {
	r, _ := NewRepository(filepath.Join(t.TempDir(), "policies.json"))
	mustImport(t, r, policies(t, webPolicy("a", "web", 80)), 1)
	before := r.List()

	// One bad document among good ones: Parse returns nothing to import.
	ps, err := api.Parse([]byte(webPolicy("a", "web", 443) + "---\n" + webPolicy("b", "web", 70000)))
	if err == nil || ps != nil {
		t.Fatalf("Parse = %d policies, %v; want none and an error", len(ps), err)
	}

	// One bad policy among good ones given to Import directly.
	good := policies(t, webPolicy("a", "web", 443)+"---\n"+webPolicy("c", "web", 80))
	bad := policies(t, webPolicy("b", "web", 80))[0]
	bad.Rules[0].Ingress[0].ToPorts[0].Ports[0].Port = "70000"
	_, err = r.Import(append(good, bad))
	if !errors.Is(err, api.ErrInvalidPolicy) || !strings.Contains(err.Error(), `policy "b/web": rules[0].ingress[0].toPorts[0].ports[0].port: "70000"`) {
		t.Fatalf("Import: err = %v, want the bad port named", err)
	}

	// Two policies with one key.
	_, err = r.Import(append(good, good[0]))
	if !errors.Is(err, api.ErrInvalidPolicy) || !strings.Contains(err.Error(), `policy "a/web": given more than once`) {
		t.Fatalf("Import of a key twice: err = %v", err)
	}

	check(t, "revision", r.Revision(), uint64(1))
	check(t, "policies", r.List(), before)
	reopened, err := NewRepository(r.path)
	if err != nil {
		t.Fatal(err)
	}
	check(t, "persisted policies", reopened.List(), before)
}

func TestRepositoryPersistence(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", "policies.json")
	r, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	// The CiliumNetworkPolicy with every field the parser tests use.
	fullCNP, err := os.ReadFile("api/testdata/full-cnp.yaml")
	if err != nil {
		t.Fatal(err)
	}
	all := policies(t, string(fullCNP)+"---\n"+webPolicy("a", "web", 80)+"---\n"+
		"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n")
	mustImport(t, r, all, 1)
	if _, err := r.Delete("a/web"); err != nil {
		t.Fatal(err)
	}

	reopened, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	check(t, "revision", reopened.Revision(), uint64(2))
	check(t, "policies", reopened.List(), r.List())
	np, _ := reopened.Get("default/networkpolicy/np")
	check(t, "default deny survives", np.Rules[0].IngressDefaultDeny(), true)

	// The revision continues from the persisted one.
	mustImport(t, reopened, policies(t, webPolicy("b", "web", 80)), 3)

	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "policies.json" {
		t.Errorf("state directory holds %v, want only policies.json (no temporary files)", entries)
	}
}

func TestRepositoryPersistFailureChangesNothing(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "state")
	r, err := NewRepository(filepath.Join(blocker, "policies.json"))
	if err != nil {
		t.Fatal(err)
	}
	// A file where the state directory should be makes every write fail,
	// even for root.
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Import(policies(t, webPolicy("a", "web", 80))); err == nil {
		t.Fatal("Import succeeded although persisting cannot")
	}
	check(t, "revision", r.Revision(), uint64(0))
	check(t, "policies", len(r.List()), 0)

	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	mustImport(t, r, policies(t, webPolicy("a", "web", 80)), 1)
	if err := os.RemoveAll(blocker); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Delete("a/web"); err == nil {
		t.Fatal("Delete succeeded although persisting cannot")
	}
	if _, err := r.Get("a/web"); err != nil || r.Revision() != 1 {
		t.Errorf("after a failed Delete: Get err = %v, revision %d; want the policy kept at revision 1", err, r.Revision())
	}
}

func TestNewRepositoryRejectsBadFile(t *testing.T) {
	tests := []struct{ name, content, want string }{
		{"not JSON", "{", "unexpected EOF"},
		{"unknown field", `{"revision": 1, "policies": [], "extra": 1}`, `unknown field "extra"`},
		{"invalid policy", `{"revision": 1, "policies": [{"kind": "CiliumNetworkPolicy", "namespace": "a", "name": "x", "rules": []}]}`,
			`policy "a/x": rules: at least one rule is required`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policies.json")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := NewRepository(path)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("NewRepository: err = %v, want it to name %s and %q", err, path, tt.want)
			}
		})
	}
}

func TestRepositoryReturnsCopies(t *testing.T) {
	r, _ := NewRepository("")
	ps := policies(t, webPolicy("a", "web", 80))
	mustImport(t, r, ps, 1)

	// Neither the imported value nor a returned one aliases the stored one.
	ps[0].Rules[0].EndpointSelector.MatchLabels["app"] = "changed"
	got, _ := r.Get("a/web")
	got.Rules[0].Ingress[0].ToPorts[0].Ports[0].Port = "1"
	r.List()[0].Rules[0].EndpointSelector.MatchLabels["app"] = "changed"

	again, _ := r.Get("a/web")
	check(t, "port", port(again), "80")
	check(t, "selector", again.Rules[0].EndpointSelector.MatchLabels["app"], "web")
}

func TestRepositoryConcurrentUse(t *testing.T) {
	r, _ := NewRepository(filepath.Join(t.TempDir(), "policies.json"))
	const writers, each = 4, 5
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ps, err := api.Parse([]byte(webPolicy(fmt.Sprintf("ns%d", w), fmt.Sprintf("p%d", i), 80+i)))
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := r.Import(ps); err != nil {
					t.Error(err)
				}
				r.List()
				r.Get(ps[0].Key())
			}
		}()
	}
	wg.Wait()
	check(t, "revision", r.Revision(), uint64(writers*each))
	check(t, "policies", len(r.List()), writers*each)
}

// ReplaceScope makes one scope's policies exactly the given set, leaves
// other scopes alone, and scopes survive a reload; AdoptUnscoped gives a
// scope to policies of a file written before scopes existed.
func TestRepositoryScopes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	r, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	mustImport(t, r, policies(t, webPolicy("ns", "old", 80)), 1)
	adopted, err := r.AdoptUnscoped(ScopeLocal)
	check(t, "adopted", adopted, []string{"ns/old"})
	check(t, "adopt error", err, error(nil))
	if again, _ := r.AdoptUnscoped(ScopeLocal); again != nil {
		t.Fatalf("adopted twice: %v", again)
	}
	if _, err := r.ReplaceScope(ScopeCluster, policies(t, webPolicy("ns", "a", 80)+"---\n"+webPolicy("ns", "b", 81))); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReplaceScope(ScopeCluster, policies(t, webPolicy("ns", "b", 82))); err != nil {
		t.Fatal(err)
	}
	check(t, "keys", keys(r.List()), []string{"ns/b", "ns/old"})
	b, _ := r.Get("ns/b")
	check(t, "b port", port(b), "82")
	// An invalid set changes nothing.
	bad := policies(t, webPolicy("ns", "c", 80))
	bad[0].Rules[0].Ingress[0].ToPorts[0].Ports[0].Port = "99999"
	if _, err := r.ReplaceScope(ScopeCluster, bad); !errors.Is(err, api.ErrInvalidPolicy) {
		t.Fatalf("invalid replace: %v", err)
	}
	check(t, "keys after a rejected replace", keys(r.List()), []string{"ns/b", "ns/old"})

	r2, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"ns/b": ScopeCluster, "ns/old": ScopeLocal} {
		got, err := r2.Scope(key)
		check(t, "reloaded scope of "+key, got, want)
		check(t, "scope error", err, error(nil))
	}
	if _, err := r2.Delete("ns/b"); err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Scope("ns/b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("scope of a deleted policy: %v", err)
	}
}

// A stored scope that is not one the agent writes is refused at load.
func TestRepositoryBadScopeInFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	r, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.ImportScoped(ScopeLocal, policies(t, webPolicy("ns", "a", 80))); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	os.WriteFile(path, []byte(strings.Replace(string(data), `"ns/a": "local"`, `"ns/a": "everywhere"`, 1)), 0o600)
	if _, err := NewRepository(path); err == nil || !strings.Contains(err.Error(), "everywhere") {
		t.Fatalf("bad scope loaded: %v", err)
	}
}

// parseOne parses input, a single document, and requires success.
func parseOne(t *testing.T, input string) api.Policy {
	t.Helper()
	return policies(t, input)[0]
}

// A NetworkPolicy's scope is persisted under namespace/name, where agents
// from before 2026-12-04 look for it (they refuse to load a file with a
// scope of a key they do not know, so a rollback would not start), unless
// a CiliumNetworkPolicy of that name is stored too (which older agents can
// never load). Files in every form load, with the scope on the policy's
// key.
func TestRepositoryNetworkPolicyScopeFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	r, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	np := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: ns}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n"
	if _, err := r.ImportScoped(ScopeKubernetes, policies(t, np)); err != nil {
		t.Fatal(err)
	}
	scopes := func() map[string]string {
		t.Helper()
		var f struct{ Scopes map[string]string }
		data, _ := os.ReadFile(path)
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatal(err)
		}
		return f.Scopes
	}
	check(t, "scopes in the file", scopes(), map[string]string{"ns/np": ScopeKubernetes})
	reload := func(form string, want map[string]string) {
		t.Helper()
		r2, err := NewRepository(path)
		if err != nil {
			t.Fatalf("%s: repository refused: %v", form, err)
		}
		for k, sc := range want {
			got, err := r2.Scope(k)
			check(t, form+": scope of "+k, got, sc)
			check(t, form+": scope error of "+k, err, error(nil))
		}
	}
	reload("older agents' form", map[string]string{"ns/networkpolicy/np": ScopeKubernetes})
	// A file written on 2026-12-04, with the scope under the policy's key.
	data, _ := os.ReadFile(path)
	os.WriteFile(path, []byte(strings.Replace(string(data), `"ns/np": "kubernetes"`, `"ns/networkpolicy/np": "kubernetes"`, 1)), 0o600)
	reload("policy's key", map[string]string{"ns/networkpolicy/np": ScopeKubernetes})
	// Beside a CNP of its name, the NetworkPolicy's scope is under its key.
	if _, err := r.ImportScoped(ScopeLocal, policies(t, webPolicy("ns", "np", 80))); err != nil {
		t.Fatal(err)
	}
	check(t, "scopes in the file beside a CNP", scopes(), map[string]string{"ns/np": ScopeLocal, "ns/networkpolicy/np": ScopeKubernetes})
	reload("beside a CNP", map[string]string{"ns/np": ScopeLocal, "ns/networkpolicy/np": ScopeKubernetes})
	// Without the CNP, back under namespace/name.
	if _, err := r.Delete("ns/np"); err != nil {
		t.Fatal(err)
	}
	check(t, "scopes in the file after the CNP's delete", scopes(), map[string]string{"ns/np": ScopeKubernetes})
	// A scope of a key no policy has, in any form, is still refused.
	data, _ = os.ReadFile(path)
	os.WriteFile(path, []byte(strings.Replace(string(data), `"ns/np": "kubernetes"`, `"ns/other": "kubernetes"`, 1)), 0o600)
	if _, err := NewRepository(path); err == nil || !strings.Contains(err.Error(), "ns/other") {
		t.Fatalf("scope of a policy not stored loaded: %v", err)
	}
}
