package policysync_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/policy"
	policyapi "github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/policysync"
	"github.com/filament-net/filament/internal/testutil"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func doc(name string, port int) string {
	return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: %s}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{toPorts: [{ports: [{port: "%d", protocol: TCP}]}]}]
`, name, port)
}

func parse(t *testing.T, docs ...string) []policyapi.Policy {
	t.Helper()
	ps, err := policyapi.Parse([]byte(strings.Join(docs, "---\n")))
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// agent is one node: its repository (cached in dir) and its store.
type agent struct {
	repo    *policy.Repository
	store   *policysync.Store
	applies int
}

func startAgent(t *testing.T, kv *kvstore.Client, path string, migrate bool) *agent {
	t.Helper()
	repo, err := policy.NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{repo: repo}
	c, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a.store, err = policysync.Start(c, policysync.Config{Cluster: "c1", KV: kv, Repo: repo, Migrate: migrate,
		Apply: func() error { a.applies++; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// synced waits until a's repository reflects everything in the kvstore
// now (liveness only: the check that follows is what asserts).
func (a *agent) synced(t *testing.T, kv *kvstore.Client) {
	t.Helper()
	x := ctx(t)
	for {
		kvs, _, err := kv.List(x, policysync.Prefix+"c1/")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, p := range a.repo.List() {
			if sc, _ := a.repo.Scope(p.Key()); sc == policy.ScopeCluster {
				n++
			}
		}
		if n == len(kvs) {
			return
		}
		select {
		case <-x.Done():
			t.Fatalf("agent has %d cluster policies, the kvstore %d", n, len(kvs))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func stored(t *testing.T, kv *kvstore.Client) []string {
	t.Helper()
	kvs, _, err := kv.List(ctx(t), policysync.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, k := range kvs {
		keys = append(keys, strings.TrimPrefix(k.Key, policysync.Prefix))
	}
	return keys
}

// An import on one agent is enforced by another, which can delete it for
// both: policies are the cluster's, not the node's.
func TestImportOnOneAgentGovernsAnother(t *testing.T) {
	kv := testutil.EtcdClient(t)
	n1 := startAgent(t, kv, "", false)
	n2 := startAgent(t, kv, "", false)
	if _, err := n1.store.ImportContext(ctx(t), parse(t, doc("a", 80), doc("b", 81)), ""); err != nil {
		t.Fatal(err)
	}
	// The importing agent enforces it when the import returns.
	if got := len(n1.store.List()); got != 2 {
		t.Fatalf("n1 after its import: %d policies, want 2", got)
	}
	n2.synced(t, kv)
	p, err := n2.store.Get("default/a")
	if err != nil || p.Rules[0].Ingress[0].ToPorts[0].Ports[0].Port != "80" {
		t.Fatalf("n2 get default/a: %v %+v", err, p)
	}
	if sc, _ := n2.store.Scope("default/a"); sc != policy.ScopeCluster {
		t.Fatalf("scope on n2 = %q", sc)
	}
	if n2.applies == 0 {
		t.Fatal("n2 never handed the policies to enforcement")
	}
	if _, err := n2.store.DeleteContext(ctx(t), "default/a", ""); err != nil {
		t.Fatal(err)
	}
	n1.synced(t, kv)
	if _, err := n1.store.Get("default/a"); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("n1 still has the policy deleted on n2: %v", err)
	}
	if _, err := n2.store.DeleteContext(ctx(t), "default/a", ""); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("deleting it again: %v, want ErrNotFound", err)
	}
}

// One invalid document stores nothing, on any node.
func TestImportAllOrNothing(t *testing.T) {
	kv := testutil.EtcdClient(t)
	n1 := startAgent(t, kv, "", false)
	bad := parse(t, doc("ok", 80), doc("bad", 80))
	bad[1].Rules[0].Ingress[0].ToPorts[0].Ports[0].Port = "99999"
	if _, err := n1.store.ImportContext(ctx(t), bad, ""); !errors.Is(err, policyapi.ErrInvalidPolicy) {
		t.Fatalf("import with an invalid policy: %v", err)
	}
	if keys := stored(t, kv); len(keys) != 0 || len(n1.store.List()) != 0 {
		t.Fatalf("a rejected import stored %v / applied %d", keys, len(n1.store.List()))
	}
}

// An import of more policies than etcd's default 128 operations per
// transaction is still one transaction.
func TestLargeImportIsOneTransaction(t *testing.T) {
	kv := testutil.EtcdClient(t)
	n1 := startAgent(t, kv, "", false)
	var docs []string
	for i := range 2000 {
		docs = append(docs, doc(fmt.Sprintf("p%d", i), 80))
	}
	if _, err := n1.store.ImportContext(ctx(t), parse(t, docs...), ""); err != nil {
		t.Fatal(err)
	}
	if keys := stored(t, kv); len(keys) != 2000 {
		t.Fatalf("stored %d policies, want 2000", len(keys))
	}
}

// A request the client gave up on before the commit applies nothing: the
// import goes through the API with the request's context, which ends
// (the client cancels) just before the transaction.
func TestCancelledImportAppliesNothing(t *testing.T) {
	kv := testutil.EtcdClient(t)
	n1 := startAgent(t, kv, "", false)
	srv := httptest.NewServer((&api.Server{Policies: n1.store}).Handler())
	defer srv.Close()
	reqCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reached := make(chan struct{})
	n1.store.SetBeforeCommit(func(importCtx context.Context) {
		close(reached)
		cancel()
		// The server notices the client gone on its own schedule; the
		// commit point must see it, so wait until it has.
		select {
		case <-importCtx.Done():
		case <-time.After(10 * time.Second):
			t.Error("the import's context did not end with the request")
		}
	})
	req, _ := http.NewRequestWithContext(reqCtx, http.MethodPut, srv.URL+"/v1/policies", strings.NewReader(doc("late", 80)))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the request completed: %s", resp.Status)
	}
	<-reached
	srv.Close() // waits for the handler to return
	if keys := stored(t, kv); len(keys) != 0 {
		t.Fatalf("a cancelled import was stored: %v", keys)
	}
	if got := n1.store.List(); len(got) != 0 {
		t.Fatalf("a cancelled import was applied: %v", got)
	}
}

// A node-local policy is an explicit choice: only the importing node has
// it, a cluster delete does not take it, a local delete does.
func TestLocalScope(t *testing.T) {
	kv := testutil.EtcdClient(t)
	n1 := startAgent(t, kv, "", false)
	n2 := startAgent(t, kv, "", false)
	if _, err := n1.store.ImportContext(ctx(t), parse(t, doc("mine", 80)), "local"); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.store.ImportContext(ctx(t), parse(t, doc("ours", 80)), ""); err != nil {
		t.Fatal(err)
	}
	n2.synced(t, kv)
	if _, err := n2.store.Get("default/mine"); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("n2 has n1's node-local policy: %v", err)
	}
	if keys := stored(t, kv); len(keys) != 1 || keys[0] != "c1/default/ours" {
		t.Fatalf("kvstore holds %v, want only the cluster policy", keys)
	}
	if _, err := n1.store.DeleteContext(ctx(t), "default/mine", ""); !errors.Is(err, policy.ErrNotFound) || !strings.Contains(err.Error(), "--local") {
		t.Fatalf("cluster delete of a node-local policy: %v", err)
	}
	if _, err := n1.store.DeleteContext(ctx(t), "default/ours", "local"); !errors.Is(err, policysync.ErrScope) {
		t.Fatalf("local delete of a cluster policy: %v", err)
	}
	if _, err := n1.store.ImportContext(ctx(t), parse(t, doc("x", 80)), "everywhere"); !errors.Is(err, policysync.ErrScope) {
		t.Fatalf("unknown scope: %v", err)
	}
	if _, err := n1.store.DeleteContext(ctx(t), "default/mine", "local"); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.store.Get("default/mine"); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("after local delete: %v", err)
	}
}

// An agent from before policies were the cluster's keeps its policies as
// node-local (enforced, not spread to other nodes, not dropped by the empty
// cluster store); a restart keeps cluster policies from the local cache
// until the kvstore answers.
func TestMigrationAndCache(t *testing.T) {
	kv := testutil.EtcdClient(t)
	path := filepath.Join(t.TempDir(), "policies.json")
	old, err := policy.NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Import(parse(t, doc("old", 80))); err != nil {
		t.Fatal(err)
	}
	n1 := startAgent(t, kv, path, true)
	n1.synced(t, kv)
	if sc, err := n1.store.Scope("default/old"); err != nil || sc != policy.ScopeLocal {
		t.Fatalf("old policy after migration: scope %q, %v", sc, err)
	}
	if keys := stored(t, kv); len(keys) != 0 {
		t.Fatalf("migration put node policies in the cluster: %v", keys)
	}
	if _, err := n1.store.ImportContext(ctx(t), parse(t, doc("new", 81)), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.store.Get("default/old"); err != nil {
		t.Fatalf("a cluster import dropped the node-local policy: %v", err)
	}
	cached, err := policy.NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	if sc, err := cached.Scope("default/new"); err != nil || sc != policy.ScopeCluster {
		t.Fatalf("local cache after the import: scope %q, %v", sc, err)
	}
}
