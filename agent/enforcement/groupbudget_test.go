package enforcement

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/groups"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/routing"
)

// groupsPolicy is namespace ns's policy letting its pods reach the cloud
// groups of the security group IDs ids.
func groupsPolicy(ns string, ids ...string) string {
	var gs []string
	for _, id := range ids {
		gs = append(gs, fmt.Sprintf(`{aws: {securityGroupsIds: [%s]}}`, id))
	}
	return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: groups, namespace: %s}
spec:
  endpointSelector: {}
  egress: [{toGroups: [%s]}]
`, ns, strings.Join(gs, ", "))
}

// groupAddrs are n distinct addresses of 100.64.0.0/10 from the n*k-th.
func groupAddrs(k, n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range n {
		v := uint32(100)<<24 | uint32(64)<<16 + uint32(k*n+i)
		out[i] = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return out
}

// Cloud groups' addresses leave this cluster's pods their room in the
// ipcache, with the remote clusters' entries at their share: tenants
// whose policies name groups of groups.MaxGroupAddrs addresses each
// (every one an ipcache key on every node), in namespaces of their own,
// take the policies' share at most, so a new pod still gets its entry
// and another tenant's toCIDR is written. Found by the 2026-12-07
// review: a group counted as one in its namespace's prefix budget and
// nothing bounded the policies' CIDR keys on a node, so 64 groups of
// 4,096 addresses put 262,144 keys on every node from one namespace, and
// two such namespaces filled the ipcache: every later write failed, a
// new pod's own /32 (its creation) and other tenants' CIDRs included.
func TestCloudGroupsLeaveTheIPCacheToPods(t *testing.T) {
	dp, e, web, _ := newWebEngine(t, "")
	dp.ipcacheCap = routing.IPCacheMax
	for i := range routing.MaxRemoteIPCacheEntries {
		dp.ipcache[netip.PrefixFrom(netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), 32)] = 1<<16 | 300
	}
	// Another tenant's CIDR, imported after the groups' policies.
	const tenants, perTenant = 34, 2
	k := 0
	for n := range tenants {
		ns := fmt.Sprintf("evil%02d", n)
		var ids []string
		for j := range perTenant {
			ids = append(ids, fmt.Sprintf("sg-%s-%d", ns, j))
		}
		importTenant(t, e, groupsPolicy(ns, ids...))
		for _, id := range ids {
			e.GroupChanged(api.GroupKey(api.AWSGroup{SecurityGroupsIDs: []string{id}}), groupAddrs(k, groups.MaxGroupAddrs))
			k++
		}
	}
	importTenant(t, e, toCIDRPolicy("198.51.100.0/24"))
	if _, ok := dp.ipcache[netip.MustParsePrefix("198.51.100.0/24")]; !ok {
		t.Error("another tenant's toCIDR was not written: the ipcache is full")
	}
	pod := web
	pod.ID, pod.IPv4, pod.HostIfName, pod.HostIfIndex = 2, netip.MustParseAddr("10.244.0.3"), "filpod", 8
	if err := e.EndpointUp(context.Background(), pod); err != nil {
		t.Fatalf("a new pod cannot be created: %v", err)
	}
	if _, ok := dp.ipcache[netip.PrefixFrom(pod.IPv4, 32)]; !ok {
		t.Fatal("the new pod has no ipcache entry")
	}
	if n := len(e.cidrs); n > policy.MaxPolicyCIDRs {
		t.Errorf("the policies wrote %d ipcache keys, past their share of %d", n, policy.MaxPolicyCIDRs)
	}
	// The first namespaces by name keep their groups; the last are
	// refused, counted and reported.
	if _, ok := e.res.GroupRefused("evil00", api.GroupKey(api.AWSGroup{SecurityGroupsIDs: []string{"sg-evil00-0"}})); ok {
		t.Error("the first namespace's first group is refused")
	}
	if why, ok := e.res.GroupRefused("evil33", api.GroupKey(api.AWSGroup{SecurityGroupsIDs: []string{"sg-evil33-0"}})); !ok || !strings.Contains(why, "share") {
		t.Errorf("the last namespace's group is not refused for the share: %q", why)
	}
	if e.res.CIDRsLeftOut() == 0 {
		t.Error("no prefix counted as left out")
	}
}

// The policies' share of the ipcache and the remote clusters' leave this
// cluster's pods and nodes an eighth of it.
func TestPolicyCIDRShareLeavesRoom(t *testing.T) {
	if rest := routing.IPCacheMax - routing.MaxRemoteIPCacheEntries - policy.MaxPolicyCIDRs; rest < routing.IPCacheMax/8 {
		t.Fatalf("this cluster's pods and nodes have %d ipcache keys left", rest)
	}
}
