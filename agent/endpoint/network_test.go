package endpoint_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/internal/testutil"
)

// An endpoint records the CNI network it was created for (issue 13, item
// 8: GC of one network must not collect another's); a request without one
// and a record from before the field get endpoint.DefaultNetwork.
func TestEndpointRecordsNetwork(t *testing.T) {
	dir := t.TempDir()
	ep := testutil.Etcd(t)
	e := newEnv(t, dir, ep, &fakePlumber{devices: map[string]bool{}})
	ctx := context.Background()
	r := req(e, "on-b", "app=web")
	r.Network = "netb"
	b, err := e.m.Create(ctx, r)
	if err != nil || b.Network != "netb" {
		t.Fatalf("create on netb: %+v %v", b, err)
	}
	old, err := e.m.Create(ctx, req(e, "old", "app=web"))
	if err != nil || old.Network != endpoint.DefaultNetwork {
		t.Fatalf("create without a network: %+v %v", old, err)
	}
	bad := req(e, "bad", "app=web")
	bad.Network = "no spaces"
	if _, err := e.m.Create(ctx, bad); !errors.Is(err, endpoint.ErrInvalid) || !contains(err.Error(), "no spaces") {
		t.Fatalf("invalid network name: %v", err)
	}
	// A record written before endpoints knew their network.
	f := filepath.Join(dir, "endpoints", "2.json")
	var m map[string]any
	raw, _ := os.ReadFile(f)
	json.Unmarshal(raw, &m)
	delete(m, "network")
	raw, _ = json.Marshal(m)
	if err := os.WriteFile(f, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	e2 := newEnv(t, dir, ep, e.plumber)
	if _, err := e2.m.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := e2.m.Lookup("on-b", "eth0"); got.Network != "netb" {
		t.Fatalf("restored on-b: network %q", got.Network)
	}
	if got, _ := e2.m.Lookup("old", "eth0"); got.Network != endpoint.DefaultNetwork {
		t.Fatalf("restored old record: network %q, want %q", got.Network, endpoint.DefaultNetwork)
	}
}
