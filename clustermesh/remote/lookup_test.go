package remote_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/clustermesh/apiserver/apiservertest"
	"github.com/filament-net/filament/clustermesh/remote"
)

// Lookup reads an entry again, names included, and returns it only as it
// was accepted: not one the mirror refused, changed or never held.
func TestLookupReturnsOnlyTheAccepted(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	put := func(ip string, e ipcache.Entry) {
		b, _ := json.Marshal(e)
		if err := srv.Agent.Put(ctx, ipcache.Prefix+"east/"+ip, b, 0); err != nil {
			t.Fatal(err)
		}
	}
	a := netip.MustParseAddr("10.7.0.2")
	good := ipcache.Entry{IP: a, Identity: identity.Compose(7, 300), Node: "n1", Namespace: "shop", Pod: "cart-1"}
	put("10.7.0.2", good)
	var upserts atomic.Int64
	dir := t.TempDir()
	m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node: func(node.Node, bool) {}, Identity: func(identity.Identity, bool) {},
		Entry: func(_ ipcache.Entry, deleted bool) {
			if !deleted {
				upserts.Add(1)
			}
		},
	})
	go m.Run(ctx)
	srv.WriteRemoteConfig(t, dir)
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: status %+v", what, m.Status())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("synced", func() bool { s := m.Status(); return len(s) == 1 && s[0].Ready && upserts.Load() == 1 })

	e, err := m.Lookup(ctx, "east", a)
	if err != nil || e.Pod != "cart-1" || e.Namespace != "shop" || e.Node != "east/n1" {
		t.Fatalf("Lookup: %+v %v", e, err)
	}
	for _, tc := range []struct {
		cluster string
		ip      string
	}{{"west", "10.7.0.2"}, {"east", "10.7.0.3"}, {"east", "::1"}} {
		if _, err := m.Lookup(ctx, tc.cluster, netip.MustParseAddr(tc.ip)); !errors.Is(err, remote.ErrNotHeld) {
			t.Errorf("Lookup %s in %s: %v, want ErrNotHeld", tc.ip, tc.cluster, err)
		}
	}
	// A refused update (identity outside the cluster's range) is not
	// applied: the mirror keeps the accepted entry, and Lookup, reading the
	// refused value, does not return it.
	bad := good
	bad.Identity, bad.Pod = identity.Compose(8, 300), "impostor"
	put("10.7.0.2", bad)
	waitFor("refused", func() bool { return m.Status()[0].Rejected > 0 })
	if e, err := m.Lookup(ctx, "east", a); !errors.Is(err, remote.ErrNotHeld) {
		t.Fatalf("Lookup of a refused value: %+v %v", e, err)
	}
	// An accepted change is returned once applied.
	next := good
	next.Pod = "cart-2"
	put("10.7.0.2", next)
	waitFor("applied", func() bool { return upserts.Load() == 2 })
	if e, err := m.Lookup(ctx, "east", a); err != nil || e.Pod != "cart-2" {
		t.Fatalf("Lookup after a change: %+v %v", e, err)
	}
}
