package daemon

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/filament-net/filament/agent/groups"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/internal/testutil"
)

// What `filament policy get` says of a group not resolved yet follows
// what the resolver does with a deny naming it: before the stored group
// results load it denies nothing, afterwards world on its ports (until
// 2026-12-07 the text said "denies world" from the start).
func TestDerivedFollowsGroupsLoaded(t *testing.T) {
	if lo, err := netlink.LinkByName("lo"); err == nil { // the package's own namespace (TestMain)
		netlink.LinkSetUp(lo)
	}
	kv := testutil.EtcdClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := cloudGroups{Manager: groups.New(ctx, groups.Config{KV: kv, Cluster: "c1", Node: "n1"}), res: policy.NewResolver(policy.ModeDefault)}
	p := api.Policy{Kind: "CiliumNetworkPolicy", Namespace: "default", Name: "deny-sg",
		Rules: []api.Rule{{EgressDeny: []api.EgressRule{{ToGroups: []api.Groups{{AWS: &api.AWSGroup{SecurityGroupsIDs: []string{"sg-1"}}}}}}}}}
	note := func() string {
		d := c.Derived(p)
		if len(d) != 1 || d[0].Resolved {
			t.Fatalf("Derived = %+v, want the one group, not resolved", d)
		}
		return d[0].Error
	}
	if got := note(); !strings.Contains(got, "not loaded yet") || !strings.Contains(got, "a deny denies nothing") {
		t.Errorf("before the groups load: %q", got)
	}
	c.res.SetGroupsLoaded()
	if got := note(); !strings.Contains(got, "not resolved yet") || !strings.Contains(got, "a deny denies world on its ports") {
		t.Errorf("once the groups are loaded: %q", got)
	}
}

// A group the policies name with no stored result yet (the cloud API
// failing at its first resolution, or no AWS region) is counted
// unresolved by filament_cloud_groups: before, only stored results were
// counted and such a group showed in no state.
func TestStatesCountWantedGroups(t *testing.T) {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	kv := testutil.EtcdClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lease, err := kv.GrantLease(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c := cloudGroups{Manager: groups.New(ctx, groups.Config{KV: kv, Lease: lease, Cluster: "c1", Node: "n1"}), res: policy.NewResolver(policy.ModeDefault)}
	g := api.AWSGroup{SecurityGroupsIDs: []string{"sg-1"}}
	c.SetWanted(ctx, map[string]api.AWSGroup{api.GroupKey(g): g})
	if got := c.states()["unresolved"]; got != 1 {
		t.Errorf("a named group with no result: unresolved = %d, want 1 (%v)", got, c.states())
	}
}
