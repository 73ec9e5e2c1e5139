package policy

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/filament-net/filament/agent/policy/api"
)

// Importing the policies stored already, of the same scope (a Kubernetes
// informer's resync), writes nothing and keeps the revision: until
// 2026-12-07 every such import rewrote and synced the whole repository
// file, on every node, for each event of any namespace's policy (found by
// a review). The same policy under another scope, or changed, is written.
func TestSameImportWritesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policies.json")
	r, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := []byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p","namespace":"team-a"},"spec":{"endpointSelector":{},"ingress":[{"fromEndpoints":[{}]}]}}`)
	parse := func(d []byte) []api.Policy {
		ps, err := api.Parse(d)
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	if _, err := r.ImportScoped(ScopeKubernetes, parse(doc)); err != nil {
		t.Fatal(err)
	}
	st1, _ := os.Stat(path)
	rev := r.Revision()
	if got, err := r.ImportScoped(ScopeKubernetes, parse(doc)); err != nil || got != rev || r.Revision() != rev {
		t.Errorf("the same import: revision %d -> %d (%v)", rev, got, err)
	}
	if st2, _ := os.Stat(path); !os.SameFile(st1, st2) {
		t.Error("the same import rewrote the repository file")
	}
	if got, _ := r.ImportScoped(ScopeAgent, parse(doc)); got == rev {
		t.Error("the policy under another scope was not written")
	}
	rev = r.Revision()
	changed := []byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p","namespace":"team-a"},"spec":{"endpointSelector":{},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"x"}}]}]}}`)
	if got, _ := r.ImportScoped(ScopeAgent, parse(changed)); got == rev {
		t.Error("a changed policy was not written")
	}
}
