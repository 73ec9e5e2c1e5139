package datapath_test

import (
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/service/maglev"
	"github.com/filament-net/filament/internal/testutil"
)

// Every change the established fast path caches a decision from bumps the
// datapath revision in the pinned map, after the change; a new agent
// continues from the pinned revision.
func TestChangesBumpRevision(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	defer unix.Unmount(root, unix.MNT_DETACH)
	cfg := datapath.Config{BPFRoot: root, Node: "t", MaglevSize: maglev.DefaultSize}
	dp, err := datapath.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pinned := func(dp *datapath.Datapath) uint32 {
		t.Helper()
		var zero, v uint32
		if err := dp.Objects().Revision.Lookup(&zero, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	ep := netip.MustParseAddr("10.0.0.2")
	node := netip.MustParseAddr("172.30.0.9")
	key := policy.MapKey{Endpoint: 7, Dir: policy.Egress, Identity: 300, L4: policy.L4{Proto: 6, Port: 80, PrefixLen: 24}}
	changes := []struct {
		name string
		do   func() error
	}{
		{"endpoint", func() error {
			return dp.UpsertEndpoint(datapath.EndpointEntry{ID: 7, IP: ep, Identity: 1000, HostIfIndex: 1, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, HostMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}})
		}},
		{"enforcement", func() error { return dp.SetEnforcement(ep, true, true) }},
		{"ipcache", func() error {
			return dp.UpsertIPCacheTunnel(netip.MustParsePrefix("10.9.1.5/32"), 300, node)
		}},
		{"ipcache delete", func() error { return dp.DeleteIPCache(netip.MustParsePrefix("10.9.1.5/32")) }},
		{"policy", func() error {
			_, err := dp.ApplyPolicy(map[policy.MapKey]policy.MapValue{key: {}}, nil)
			return err
		}},
		{"policy delete", func() error { _, err := dp.ApplyPolicy(nil, []policy.MapKey{key}); return err }},
		{"config", func() error { return dp.SetFlowEvents(datapath.FlowEventsOff) }},
		{"encryption peer", func() error { return dp.UpsertEncryptPeer(node) }},
		{"encryption peer delete", func() error { dp.DeleteEncryptPeer(node); return nil }},
		{"node", func() error { return dp.UpsertNode(node, true, 0) }},
		{"node delete", func() error { return dp.DeleteNode(node) }},
		{"endpoint delete", func() error { return dp.DeleteEndpoint(ep) }},
	}
	for _, c := range changes {
		before := pinned(dp)
		if err := c.do(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := pinned(dp); got != before+1 || dp.Revision() != got {
			t.Fatalf("%s: revision %d -> %d (agent says %d), want one bump", c.name, before, got, dp.Revision())
		}
	}
	// Held: the changes made under a hold are one bump, at the release.
	held := pinned(dp)
	release := dp.HoldRevision()
	if err := dp.UpsertNode(node, true, 0); err != nil {
		t.Fatal(err)
	}
	if err := dp.UpsertEncryptPeer(node); err != nil {
		t.Fatal(err)
	}
	if got := pinned(dp); got != held {
		t.Fatalf("bumped under a hold: %d -> %d", held, got)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil { // a second call does nothing
		t.Fatal(err)
	}
	if got := pinned(dp); got != held+1 {
		t.Fatalf("after the release: revision %d, want %d", got, held+1)
	}
	// A hold with no change bumps nothing.
	if err := dp.HoldRevision()(); err != nil || pinned(dp) != held+1 {
		t.Fatalf("an empty hold bumped: %d %v", pinned(dp), err)
	}
	last := pinned(dp)
	dp.Close()
	dp2, err := datapath.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	if err := dp2.UpsertNode(node, true, 0); err != nil {
		t.Fatal(err)
	}
	if got := pinned(dp2); got != last+1 {
		t.Fatalf("after reload: revision %d, want %d", got, last+1)
	}
}
