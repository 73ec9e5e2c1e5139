package policysync_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/policy"
	policyapi "github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/policysync"
	"github.com/filament-net/filament/internal/testutil"
)

// npDoc is a NetworkPolicy default/<name> selecting pods labelled
// app=<app> (the label tells two versions apart).
func npDoc(name, app string) string {
	return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: " + name +
		"}\nspec: {podSelector: {matchLabels: {app: " + app + "}}, policyTypes: [Ingress]}\n"
}

// putRaw stores p under key (below the cluster's prefix) as another
// agent, of any version, would.
func putRaw(t *testing.T, kv *kvstore.Client, key string, p policyapi.Policy) {
	t.Helper()
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Raw().Put(ctx(t), policysync.Prefix+"c1/"+key, string(data)); err != nil {
		t.Fatal(err)
	}
}

// storedKinds is the kvstore's policies as "key kind" (kind "?" for a
// value that is not a policy).
func storedKinds(t *testing.T, kv *kvstore.Client) []string {
	t.Helper()
	kvs, _, err := kv.List(ctx(t), policysync.Prefix+"c1/")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range kvs {
		var p policyapi.Policy
		kind := "?"
		if json.Unmarshal(e.Value, &p) == nil && p.Kind != "" {
			kind = p.Kind
		}
		out = append(out, strings.TrimPrefix(e.Key, policysync.Prefix+"c1/")+" "+kind)
	}
	return out
}

// enforced is what a enforces as "key kind app" (app: the first rule's
// endpoint selector's app label).
func enforced(a *agent) []string {
	var out []string
	for _, p := range a.store.List() {
		app := ""
		if len(p.Rules) > 0 && p.Rules[0].EndpointSelector != nil {
			ml := p.Rules[0].EndpointSelector.MatchLabels
			app = ml["app"] + ml["k8s:app"] // a NetworkPolicy's selector has source k8s
		}
		out = append(out, p.Key()+" "+p.Kind+" "+app)
	}
	slices.Sort(out)
	return out
}

// settle makes sure every step a has taken after what it has seen so far
// is done: an unrelated import returns once a applied it, and a's follow
// loop runs one resync (its tidy included) at a time, so whatever a did on
// what it saw before is done by then. The import is then deleted.
func settle(t *testing.T, a *agent) {
	t.Helper()
	if _, err := a.store.ImportContext(ctx(t), parse(t, doc("settle", 1)), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := a.store.DeleteContext(ctx(t), "default/settle", ""); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond (liveness only) and fails with what() if it never
// holds.
func eventually(t *testing.T, what func() string, cond func() bool) {
	t.Helper()
	x := ctx(t)
	for !cond() {
		select {
		case <-x.Done():
			t.Fatal(what())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func want(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: %q, want %q", what, got, want)
	}
}

// A NetworkPolicy is stored under namespace/name, where agents from before
// 2026-12-04 read it (they refuse one under any other key and so would not
// enforce it: fail open during a rolling upgrade or after a rollback),
// unless a CiliumNetworkPolicy of the same name holds that key. One stored
// there by an older agent is enforced and stays where it is.
func TestNetworkPolicyStoredWhereOlderAgentsReadIt(t *testing.T) {
	kv := testutil.EtcdClient(t)
	putRaw(t, kv, "default/old", parse(t, npDoc("old", "a"))[0])
	n1 := startAgent(t, kv, "", false)
	if _, err := n1.store.ImportContext(ctx(t), parse(t, npDoc("db", "a")), ""); err != nil {
		t.Fatal(err)
	}
	settle(t, n1)
	want(t, "enforced", enforced(n1), []string{"default/networkpolicy/db NetworkPolicy a", "default/networkpolicy/old NetworkPolicy a"})
	want(t, "stored", storedKinds(t, kv), []string{"default/db NetworkPolicy", "default/old NetworkPolicy"})
}

// A NetworkPolicy and a CiliumNetworkPolicy of one namespace and name are
// both stored and enforced: the NetworkPolicy goes to
// namespace/networkpolicy/name while the CNP holds namespace/name, and
// back when the CNP goes, each in the transaction that changes the CNP.
func TestNetworkPolicyBesideCNPOfItsName(t *testing.T) {
	kv := testutil.EtcdClient(t)
	n1 := startAgent(t, kv, "", false)
	n2 := startAgent(t, kv, "", false)
	if _, err := n1.store.ImportContext(ctx(t), parse(t, npDoc("db", "a")), ""); err != nil {
		t.Fatal(err)
	}
	// The CNP's import moves the NetworkPolicy out of its way.
	if _, err := n1.store.ImportContext(ctx(t), parse(t, doc("db", 80)), ""); err != nil {
		t.Fatal(err)
	}
	both := []string{"default/db CiliumNetworkPolicy web", "default/networkpolicy/db NetworkPolicy a"}
	want(t, "enforced after the CNP", enforced(n1), both)
	want(t, "stored after the CNP", storedKinds(t, kv), []string{"default/db CiliumNetworkPolicy", "default/networkpolicy/db NetworkPolicy"})
	// A NetworkPolicy imported while the CNP is there goes beside it.
	if _, err := n2.store.ImportContext(ctx(t), parse(t, npDoc("db", "b")), ""); err != nil {
		t.Fatal(err)
	}
	want(t, "enforced after the NetworkPolicy's update", enforced(n2), []string{"default/db CiliumNetworkPolicy web", "default/networkpolicy/db NetworkPolicy b"})
	want(t, "stored after the NetworkPolicy's update", storedKinds(t, kv), []string{"default/db CiliumNetworkPolicy", "default/networkpolicy/db NetworkPolicy"})
	// Deleting the CNP puts the NetworkPolicy back where older agents read
	// it, in the same transaction: namespace/name is never empty between.
	now, err := kv.Raw().Get(ctx(t), policysync.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx(t))
	events := kv.Raw().Watch(wctx, policysync.Prefix+"c1/default/db", clientv3.WithPrefix(), clientv3.WithRev(now.Header.Revision+1))
	if _, err := n2.store.DeleteContext(ctx(t), "default/db", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Raw().Put(ctx(t), policysync.Prefix+"c1/default/db-mark", "x"); err != nil {
		t.Fatal(err)
	}
	var seen []string
watch:
	for w := range events {
		for _, ev := range w.Events {
			if k := strings.TrimPrefix(string(ev.Kv.Key), policysync.Prefix+"c1/"); k == "default/db-mark" {
				break watch
			} else if k == "default/db" {
				seen = append(seen, ev.Type.String())
			}
		}
	}
	stop()
	if _, err := kv.Raw().Delete(ctx(t), policysync.Prefix+"c1/default/db-mark"); err != nil {
		t.Fatal(err)
	}
	want(t, "changes of default/db at the CNP's delete", seen, []string{"PUT"})
	want(t, "enforced after the CNP's delete", enforced(n2), []string{"default/networkpolicy/db NetworkPolicy b"})
	want(t, "stored after the CNP's delete", storedKinds(t, kv), []string{"default/db NetworkPolicy"})
	n1.synced(t, kv)
	want(t, "enforced on n1", enforced(n1), []string{"default/networkpolicy/db NetworkPolicy b"})
	// Both in one import.
	if _, err := n1.store.ImportContext(ctx(t), parse(t, npDoc("db", "c"), doc("db", 80)), ""); err != nil {
		t.Fatal(err)
	}
	want(t, "enforced after both in one import", enforced(n1), []string{"default/db CiliumNetworkPolicy web", "default/networkpolicy/db NetworkPolicy c"})
	if _, err := n1.store.DeleteContext(ctx(t), "default/networkpolicy/db", ""); err != nil {
		t.Fatal(err)
	}
	want(t, "stored after the NetworkPolicy's delete", storedKinds(t, kv), []string{"default/db CiliumNetworkPolicy"})
	want(t, "enforced after the NetworkPolicy's delete", enforced(n1), []string{"default/db CiliumNetworkPolicy web"})
}

// A NetworkPolicy stored under both of its keys (an older agent wrote one
// while a newer wrote the other) is enforced as the newer write, whichever
// key holds it; the older entry is then removed, never the newer one.
func TestNewerNetworkPolicyEntryWins(t *testing.T) {
	for _, tc := range []struct{ name, first, second string }{
		{"old key newer", "default/networkpolicy/db", "default/db"},
		{"new key newer", "default/db", "default/networkpolicy/db"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kv := testutil.EtcdClient(t)
			putRaw(t, kv, tc.first, parse(t, npDoc("db", "first"))[0])
			putRaw(t, kv, tc.second, parse(t, npDoc("db", "second"))[0])
			n1 := startAgent(t, kv, "", false)
			eventually(t, func() string { return "stored: " + strings.Join(storedKinds(t, kv), ", ") },
				func() bool { return len(storedKinds(t, kv)) == 1 })
			settle(t, n1)
			want(t, "enforced", enforced(n1), []string{"default/networkpolicy/db NetworkPolicy second"})
			want(t, "stored", storedKinds(t, kv), []string{"default/db NetworkPolicy"})
		})
	}
}

// A NetworkPolicy stored under namespace/name by an older agent can be
// deleted by its key; asked for namespace/name, the delete answers not
// found, names the NetworkPolicy's key and deletes nothing.
func TestDeleteNetworkPolicyUnderOldKey(t *testing.T) {
	kv := testutil.EtcdClient(t)
	putRaw(t, kv, "default/db", parse(t, npDoc("db", "a"))[0])
	n1 := startAgent(t, kv, "", false)
	n1.synced(t, kv)
	if _, err := n1.store.DeleteContext(ctx(t), "default/db", ""); !errors.Is(err, policy.ErrNotFound) || !strings.Contains(err.Error(), `"default/networkpolicy/db"`) {
		t.Fatalf("delete default/db: %v, want not found naming default/networkpolicy/db", err)
	}
	want(t, "stored after the refused delete", storedKinds(t, kv), []string{"default/db NetworkPolicy"})
	if _, err := n1.store.DeleteContext(ctx(t), "default/networkpolicy/db", ""); err != nil {
		t.Fatal(err)
	}
	want(t, "stored", storedKinds(t, kv), nil)
	want(t, "enforced", enforced(n1), nil)
	if _, err := n1.store.DeleteContext(ctx(t), "default/networkpolicy/db", ""); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("deleting it again: %v, want not found", err)
	}
}

// An entry that is not a valid policy is never overwritten or taken for a
// NetworkPolicy's other key: the NetworkPolicy beside it stays stored and
// enforced.
func TestInvalidEntryBesideNetworkPolicy(t *testing.T) {
	for _, tc := range []struct{ name, garbage, np string }{
		{"garbage under the new key", "default/networkpolicy/db", "default/db"},
		{"garbage under the old key", "default/db", "default/networkpolicy/db"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kv := testutil.EtcdClient(t)
			if _, err := kv.Raw().Put(ctx(t), policysync.Prefix+"c1/"+tc.garbage, "{not json"); err != nil {
				t.Fatal(err)
			}
			putRaw(t, kv, tc.np, parse(t, npDoc("db", "a"))[0])
			n1 := startAgent(t, kv, "", false)
			eventually(t, func() string { return "enforced: " + strings.Join(enforced(n1), ", ") },
				func() bool { return len(enforced(n1)) == 1 })
			settle(t, n1)
			want(t, "enforced", enforced(n1), []string{"default/networkpolicy/db NetworkPolicy a"})
			wantStored := []string{tc.garbage + " ?", tc.np + " NetworkPolicy"}
			slices.Sort(wantStored)
			want(t, "stored", storedKinds(t, kv), wantStored)
		})
	}
}

// An import never overwrites a value this agent cannot read (a newer
// agent's, or damaged) other than under the imported policy's own key: a
// NetworkPolicy goes beside it, and a CNP that would move a NetworkPolicy
// onto it is refused whole.
func TestImportLeavesUnreadableEntries(t *testing.T) {
	kv := testutil.EtcdClient(t)
	if _, err := kv.Raw().Put(ctx(t), policysync.Prefix+"c1/default/db", `{"kind":"CiliumNetworkPolicy","fromTheFuture":1}`); err != nil {
		t.Fatal(err)
	}
	putRaw(t, kv, "default/web", parse(t, npDoc("web", "a"))[0])
	if _, err := kv.Raw().Put(ctx(t), policysync.Prefix+"c1/default/networkpolicy/web", "{not json"); err != nil {
		t.Fatal(err)
	}
	n1 := startAgent(t, kv, "", false)
	if _, err := n1.store.ImportContext(ctx(t), parse(t, npDoc("db", "a")), ""); err != nil {
		t.Fatal(err)
	}
	want(t, "stored after the NetworkPolicy's import", storedKinds(t, kv), []string{"default/db CiliumNetworkPolicy",
		"default/networkpolicy/db NetworkPolicy", "default/networkpolicy/web ?", "default/web NetworkPolicy"})
	_, err := n1.store.ImportContext(ctx(t), parse(t, doc("web", 80), doc("other", 81)), "")
	if !errors.Is(err, policysync.ErrUnreadable) || !strings.Contains(err.Error(), "default/networkpolicy/web") {
		t.Fatalf("CNP import that would move a NetworkPolicy onto an unreadable entry: %v, want ErrUnreadable naming default/networkpolicy/web", err)
	}
	want(t, "stored after the refused import", storedKinds(t, kv), []string{"default/db CiliumNetworkPolicy",
		"default/networkpolicy/db NetworkPolicy", "default/networkpolicy/web ?", "default/web NetworkPolicy"})
	want(t, "enforced", enforced(n1), []string{"default/networkpolicy/db NetworkPolicy a", "default/networkpolicy/web NetworkPolicy a"})
}

// An import plans on the keys it read and commits only if none it depends
// on changed since: a CNP stored between the read and the commit makes it
// plan again (the NetworkPolicy goes beside the CNP rather than over it),
// and keys that keep changing end in ErrBusy with nothing stored.
func TestImportPlansAgainWhenAKeyChanges(t *testing.T) {
	kv := testutil.EtcdClient(t)
	n1 := startAgent(t, kv, "", false)
	cnp := parse(t, doc("db", 80))[0]
	calls := 0
	n1.store.SetBeforeCommit(func(context.Context) {
		if calls++; calls == 1 {
			putRaw(t, kv, "default/db", cnp)
		}
	})
	if _, err := n1.store.ImportContext(ctx(t), parse(t, npDoc("db", "a")), ""); err != nil {
		t.Fatal(err)
	}
	if calls != 2 {
		t.Fatalf("the import planned %d times, want 2", calls)
	}
	want(t, "stored", storedKinds(t, kv), []string{"default/db CiliumNetworkPolicy", "default/networkpolicy/db NetworkPolicy"})

	n1.store.SetBeforeCommit(func(context.Context) { putRaw(t, kv, "default/busy", parse(t, doc("busy", 80))[0]) })
	if _, err := n1.store.ImportContext(ctx(t), parse(t, doc("busy", 81), doc("quiet", 82)), ""); !errors.Is(err, policysync.ErrBusy) {
		t.Fatalf("import under a key that keeps changing: %v, want ErrBusy", err)
	}
	want(t, "stored after the busy import", storedKinds(t, kv), []string{"default/busy CiliumNetworkPolicy", "default/db CiliumNetworkPolicy", "default/networkpolicy/db NetworkPolicy"})
	n1.store.SetBeforeCommit(nil)
}

// An agent of 2026-12-04 (74a8631 to 766246c) moves every NetworkPolicy
// from namespace/name to namespace/networkpolicy/name; a newer agent
// moves it back once and then leaves it for a while, rather than the two
// undoing each other's move without end.
func TestNoEndlessMovesWithAnAgentOf20261204(t *testing.T) {
	kv := testutil.EtcdClient(t)
	putRaw(t, kv, "default/networkpolicy/db", parse(t, npDoc("db", "a"))[0])
	legacy, moved := policysync.Prefix+"c1/default/db", policysync.Prefix+"c1/default/networkpolicy/db"
	now, err := kv.Raw().Get(ctx(t), legacy)
	if err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx(t))
	defer stop()
	events := kv.Raw().Watch(wctx, legacy, clientv3.WithRev(now.Header.Revision+1))
	puts := make(chan int)
	go func() {
		n := 0
		for w := range events {
			for _, ev := range w.Events {
				if ev.Type == clientv3.EventTypePut {
					n++
				}
			}
		}
		puts <- n
	}()
	// The older agent's move, as it did it: on every change, each
	// NetworkPolicy under namespace/name goes to its key.
	olderMoves := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range kv.Raw().Watch(wctx, policysync.Prefix+"c1/", clientv3.WithPrefix()) {
			r, err := kv.Raw().Get(wctx, legacy)
			if err != nil || len(r.Kvs) == 0 {
				continue
			}
			tx, err := kv.Raw().Txn(wctx).If(clientv3.Compare(clientv3.ModRevision(legacy), "=", r.Kvs[0].ModRevision)).
				Then(clientv3.OpDelete(legacy), clientv3.OpPut(moved, string(r.Kvs[0].Value))).Commit()
			if err == nil && tx.Succeeded {
				olderMoves++
			}
		}
	}()
	n1 := startAgent(t, kv, "", false)
	eventually(t, func() string { return "enforced: " + strings.Join(enforced(n1), ", ") },
		func() bool { return len(enforced(n1)) == 1 })
	time.Sleep(2 * time.Second) // moves without end would be hundreds by now
	settle(t, n1)
	stop()
	<-done
	if n := <-puts; n != 1 || olderMoves != 1 {
		t.Fatalf("the newer agent moved the NetworkPolicy to namespace/name %d times and the older agent back %d times in 2 s, want once each", n, olderMoves)
	}
	want(t, "enforced", enforced(n1), []string{"default/networkpolicy/db NetworkPolicy a"})
}
