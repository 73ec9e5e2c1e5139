package routing

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
)

// A node (or a remote cluster) may claim identities only for addresses in
// its own pod CIDRs.
func TestInPodCIDRs(t *testing.T) {
	n := node.Node{Name: "n2", PodCIDRs: []string{"10.244.1.0/24", "10.244.9.0/24"}}
	for ip, want := range map[string]bool{
		"10.244.1.7": true, "10.244.9.255": true,
		"10.244.0.5": false, // another node's pod
		"172.30.0.1": false, "10.244.2.1": false,
	} {
		if got := InPodCIDRs(netip.MustParseAddr(ip), n); got != want {
			t.Errorf("InPodCIDRs(%s) = %v, want %v", ip, got, want)
		}
	}
	if InPodCIDRs(netip.MustParseAddr("10.244.1.7"), node.Node{Name: "x", PodCIDRs: []string{"garbage"}}) {
		t.Error("an unparsable pod CIDR contains an address")
	}
}

// deletesMaps records the deletions a router makes in fakeMaps.
type deletesMaps struct {
	fakeMaps
	deleted []string
}

func (d *deletesMaps) DeleteNode(ip netip.Addr) error {
	d.deleted = append(d.deleted, "node "+ip.String())
	return nil
}

func (d *deletesMaps) DeleteIPCache(p netip.Prefix) error {
	d.deleted = append(d.deleted, "ipcache "+p.String())
	return d.fakeMaps.DeleteIPCache(p)
}

// A node's record written again with the same addresses but other bytes
// (a new ECDSA signature each time it is signed, as when a node back from
// a kvstore partition writes its record under a new lease; or new labels)
// changes nothing in the datapath: its entries, nodes-map slot and routes
// stay in place throughout, never deleted and written again (lab flake of
// TestKvstorePartitionedAgentKeepsItsPodsReachable: n1's ipcache lost the
// pod on n2 for a moment).
func TestNodeRecordRewrittenKeepsItsEntries(t *testing.T) {
	inNetns(t)
	d := &deletesMaps{fakeMaps: fakeMaps{ipc: map[netip.Prefix]fakeValue{}}}
	r := &Router{dp: d, mode: Tunnel, self: "n1", nodes: map[string]node.Node{}, down: map[string]bool{}, entries: map[netip.Addr]ipcache.Entry{}}
	r.RequireNodes()
	n2 := node.Node{Name: "n2", IPs: []string{"172.30.0.2"}, PodCIDRs: []string{"10.244.1.0/24"}, Signature: "sig-1"}
	r.NodeChanged(n2, false)
	b := ipcache.Entry{IP: netip.MustParseAddr("10.244.1.2"), Identity: 65793, HostIP: netip.MustParseAddr("172.30.0.2"), Node: "n2"}
	r.EntryChanged(b, false)
	if _, ok := d.ipc[netip.PrefixFrom(b.IP, 32)]; !ok {
		t.Fatal("the entry was never written")
	}
	for i, change := range []func(*node.Node){
		func(n *node.Node) { n.Signature = "sig-2" },
		func(n *node.Node) { n.Labels = map[string]string{"zone": "b"} },
		func(n *node.Node) { n.Certificate = "another certificate" },
	} {
		change(&n2)
		r.NodeChanged(n2, false)
		if len(d.deleted) > 0 {
			t.Fatalf("record change %d: the router deleted %v", i, d.deleted)
		}
		if _, ok := d.ipc[netip.PrefixFrom(b.IP, 32)]; !ok {
			t.Fatalf("record change %d: the entry is gone", i)
		}
		if got := r.nodes["n2"]; got.Signature != n2.Signature || got.Certificate != n2.Certificate {
			t.Fatalf("record change %d: the router keeps the old record %+v", i, got)
		}
	}
	// A node that moves is still forgotten at its old address.
	n2.IPs = []string{"172.30.0.9"}
	r.NodeChanged(n2, false)
	if !slices.Contains(d.deleted, "node 172.30.0.2") {
		t.Fatalf("moved node: deletions %v", d.deleted)
	}
}

// An address is its node's: another cluster's entry for an address a node
// of this cluster (or of a third) holds neither replaces nor removes it,
// and a node's late delete does not remove the entry another node of its
// cluster holds now. Before, a remote cluster could claim a local pod's
// address (its traffic tunnelled to the remote; with node authentication
// on, the /32 deleted) and then delete the local entry with its own
// delete.
func TestEntryHeldByAnotherClusterStays(t *testing.T) {
	d := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}}
	r := &Router{dp: d, mode: Tunnel, self: "n1", nodes: map[string]node.Node{}, down: map[string]bool{}, entries: map[netip.Addr]ipcache.Entry{}}
	ip := netip.MustParseAddr("10.244.1.2")
	p := netip.PrefixFrom(ip, 32)
	local := ipcache.Entry{IP: ip, Identity: 65793, HostIP: netip.MustParseAddr("172.30.0.2"), Node: "n2"}
	r.EntryChanged(local, false)
	spoof := ipcache.Entry{IP: ip, Identity: 7<<16 | 300, HostIP: netip.MustParseAddr("203.0.113.9"), Node: "east/ghost"}
	r.EntryChanged(spoof, false)
	if v := d.ipc[p]; v.id != local.Identity || v.tunnel != local.HostIP {
		t.Fatalf("after a remote's claim the local pod's entry is %+v, want identity %d via %s", v, local.Identity, local.HostIP)
	}
	r.EntryChanged(spoof, true)
	if v, ok := d.ipc[p]; !ok || v.id != local.Identity {
		t.Fatalf("after a remote's delete the local pod's entry is %+v (%v)", v, ok)
	}
	if e, ok := r.Entry(ip); !ok || e.Node != "n2" {
		t.Fatalf("the router holds %+v (%v) for the local pod", e, ok)
	}
	// Within a cluster an address may move; the old node's late delete
	// leaves the new node's entry.
	moved := local
	moved.Node, moved.HostIP = "n3", netip.MustParseAddr("172.30.0.3")
	r.EntryChanged(moved, false)
	r.EntryChanged(local, true)
	if v, ok := d.ipc[p]; !ok || v.tunnel != moved.HostIP {
		t.Fatalf("after n2's late delete the entry is %+v (%v), want n3's", v, ok)
	}
	// The holder's own delete removes it.
	r.EntryChanged(moved, true)
	if _, ok := d.ipc[p]; ok {
		t.Fatal("the holder's delete left the entry")
	}
	// This node's pods' entries are the engine's: no other node's or
	// cluster's entry writes or deletes one.
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	mine := netip.MustParsePrefix("10.244.0.5/32")
	d.ipc[mine] = fakeValue{id: 65800}
	for _, claim := range []ipcache.Entry{{IP: mine.Addr(), Identity: 7<<16 | 300, Node: "east/ghost"}, {IP: mine.Addr(), Identity: 65801, Node: "n2"}} {
		r.EntryChanged(claim, false)
		r.EntryChanged(claim, true)
		if v, ok := d.ipc[mine]; !ok || v.id != 65800 {
			t.Fatalf("%s's claim on this node's pod: entry %+v (%v)", claim.Node, v, ok)
		}
	}
}

// A remote cluster's node record claiming this node's pod CIDR is
// refused whole: it would be routed to and made its WireGuard peer's
// allowed IPs. A wide pod CIDR of its own is taken (pod CIDRs from /8
// are valid).
func TestRemoteNodeClaimingOthersRefused(t *testing.T) {
	inNetns(t) // a refusal that fails would route the claimed prefixes
	r := &Router{dp: &fakeMaps{ipc: map[netip.Prefix]fakeValue{}}, mode: Tunnel, self: "n1", nodes: map[string]node.Node{}, down: map[string]bool{}, entries: map[netip.Addr]ipcache.Entry{}}
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	for _, cidrs := range [][]string{{"10.0.0.0/8"}, {"10.7.0.0/24", "10.244.0.0/25"}} {
		r.NodeChanged(node.Node{Name: "east/evil", IPs: []string{"203.0.113.9"}, PodCIDRs: cidrs}, false)
		if _, ok := r.nodes["east/evil"]; ok {
			t.Fatalf("a remote node claiming %v was taken", cidrs)
		}
	}
	r.NodeChanged(node.Node{Name: "east/wide", IPs: []string{"203.0.113.10"}, PodCIDRs: []string{"10.64.0.0/14"}}, false)
	if _, ok := r.nodes["east/wide"]; !ok {
		t.Fatal("a remote node with a /14 pod CIDR of its own was refused")
	}
}

// TestRemoteNodeCannotTakeWhatAnotherClusterHolds: a remote cluster's node
// record whose address or pod CIDRs meet a node of another cluster (this
// one or a third) is refused whole, its delete removes nothing, and an
// entry naming it is not written; a node of this cluster takes back what a
// remote node held, and a refused record is taken once what it met is
// gone. Until 2026-12-04 only an overlap with this node's pod CIDR was
// refused: a remote could route another node's pods to itself (and be
// their WireGuard peer), and its delete removed a local node's address
// from the known nodes (its tunnelled traffic dropped).
func TestRemoteNodeCannotTakeWhatAnotherClusterHolds(t *testing.T) {
	inNetns(t)
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}, nodes: map[netip.Addr]bool{}}
	r := newRouter(f, Tunnel, "n1")
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	addr := netip.MustParseAddr
	r.NodeChanged(node.Node{Name: "n2", IPs: []string{"192.0.2.2"}, PodCIDRs: []string{"10.244.1.0/24"}}, false)
	r.NodeChanged(node.Node{Name: "west/w1", IPs: []string{"198.51.100.1"}, PodCIDRs: []string{"10.50.0.0/24"}}, false)
	evil := func(ip, cidr string) node.Node {
		return node.Node{Name: "east/evil", IPs: []string{ip}, PodCIDRs: []string{cidr}}
	}
	for _, n := range []node.Node{
		evil("192.0.2.2", "10.60.0.0/24"),                       // n2's address
		evil("203.0.113.9", "10.244.1.0/24"),                    // n2's pod CIDR
		evil("203.0.113.9", "10.244.1.128/25"),                  // inside it
		evil("203.0.113.9", "10.240.0.0/12"),                    // around it
		evil("203.0.113.9", "0.0.0.0/1"),                        // around everything
		evil("198.51.100.1", "10.60.0.0/24"),                    // a third cluster's node's address
		evil("203.0.113.9", "10.50.0.0/16"),                     // and pod CIDR
		evil("203.0.113.9", "10.50.0.7/32"),                     // a pod of it
		evil("10.244.1.9", "10.60.0.0/24"),                      // an address in n2's pod CIDR
		evil("203.0.113.9", "192.0.2.0/24"),                     // a pod CIDR holding n2's address
		evil("203.0.113.9", "198.51.100.1/32"),                  // or west's
		evil("203.0.113.9", "192.0.0.0/8"),                      // wider than /16
		{Name: "east/evil", PodCIDRs: []string{"10.60.0.0/24"}}, // no address: never routed, its claims held
	} {
		r.NodeChanged(n, false)
		if _, ok := r.nodes["east/evil"]; ok {
			t.Fatalf("a remote node claiming %v %v was taken", n.IPs, n.PodCIDRs)
		}
		e := ipcache.Entry{IP: netip.MustParsePrefix(n.PodCIDRs[0]).Addr().Next(), Identity: identity.Compose(3, 300), HostIP: addr("203.0.113.9"), Node: "east/evil"}
		r.EntryChanged(e, false)
		if _, ok := f.ipc[netip.PrefixFrom(e.IP, 32)]; ok {
			t.Fatalf("an entry of the refused node %v %v was written", n.IPs, n.PodCIDRs)
		}
		r.EntryChanged(e, true)
		r.NodeChanged(n, true)
		if !f.nodes[addr("192.0.2.2")] || !f.nodes[addr("198.51.100.1")] {
			t.Fatalf("the delete of a refused record %v %v removed a known node: %v", n.IPs, n.PodCIDRs, f.nodes)
		}
	}
	// Nor what a node of its own cluster holds
	// (TestRemoteNodeCannotTakeItsNeighbours).
	r.NodeChanged(node.Node{Name: "west/w2", IPs: []string{"198.51.100.2"}, PodCIDRs: []string{"10.50.0.0/25"}}, false)
	if _, ok := r.nodes["west/w2"]; ok {
		t.Fatal("a node overlapping one of its own cluster was taken")
	}
	// A node of this cluster takes its pod CIDR back from a remote node.
	e1 := node.Node{Name: "east/e1", IPs: []string{"203.0.113.20"}, PodCIDRs: []string{"10.244.2.0/24"}}
	r.NodeChanged(e1, false)
	pod := ipcache.Entry{IP: addr("10.244.2.5"), Identity: identity.Compose(3, 301), HostIP: addr("203.0.113.20"), Node: "east/e1"}
	r.EntryChanged(pod, false)
	if _, ok := f.ipc[netip.MustParsePrefix("10.244.2.5/32")]; !ok {
		t.Fatal("a remote node's entry was not written")
	}
	n3 := node.Node{Name: "n3", IPs: []string{"192.0.2.3"}, PodCIDRs: []string{"10.244.2.0/24"}}
	r.NodeChanged(n3, false)
	if _, ok := r.nodes["east/e1"]; ok {
		t.Fatal("a remote node holding a local node's pod CIDR stayed")
	}
	if _, ok := f.ipc[netip.MustParsePrefix("10.244.2.5/32")]; ok {
		t.Fatal("the evicted remote node's entry stayed in the datapath")
	}
	if !f.nodes[addr("192.0.2.3")] {
		t.Fatal("the local node was not learned")
	}
	// Once the local node is gone, the remote record it met is taken.
	r.NodeChanged(n3, true)
	if _, ok := r.nodes["east/e1"]; !ok {
		t.Fatal("a refused record was not taken once what it met was gone")
	}
	if _, ok := f.ipc[netip.MustParsePrefix("10.244.2.5/32")]; !ok {
		t.Fatal("the taken node's entry was not written")
	}
}

// TestRemotePodCIDRsOutsideTheirRangesRefused: a remote node's pod CIDRs
// must lie in the ranges remote pods may have (--clustermesh-pod-ranges:
// the private ranges by default) and outside this cluster's pool. Before,
// a prefix meeting no known node, as wide as 0.0.0.0/1, was taken: routed
// to the remote's node (and its WireGuard peer's allowed IPs), so the
// node's own traffic to half the Internet went there.
func TestRemotePodCIDRsOutsideTheirRangesRefused(t *testing.T) {
	inNetns(t)
	r := newRouter(&fakeMaps{ipc: map[netip.Prefix]fakeValue{}}, Tunnel, "n1")
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	r.SetOwnPool(netip.MustParsePrefix("10.244.0.0/16"), true)
	r.SetRemotePodRanges([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.0.0/16")}, nil)
	for _, c := range []string{"0.0.0.0/1", "8.8.8.0/24", "10.0.0.0/7", "10.244.9.0/24", "10.240.0.0/12", "172.16.0.0/24"} {
		r.NodeChanged(node.Node{Name: "east/evil", IPs: []string{"203.0.113.9"}, PodCIDRs: []string{"10.60.0.0/24", c}}, false)
		if _, ok := r.nodes["east/evil"]; ok {
			t.Fatalf("a remote node claiming %s was taken", c)
		}
	}
	for i, c := range []string{"10.60.0.0/24", "192.168.7.0/24"} {
		name := fmt.Sprintf("east/ok%d", i)
		r.NodeChanged(node.Node{Name: name, IPs: []string{fmt.Sprintf("203.0.113.%d", 20+i)}, PodCIDRs: []string{c}}, false)
		if _, ok := r.nodes[name]; !ok {
			t.Fatalf("a remote node with pod CIDR %s in the ranges was refused", c)
		}
	}
	// The remote ranges are not a node of this cluster's: it may have any
	// pod CIDR of its pool.
	r.SetRemotePodRanges([]netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, nil)
	r.NodeChanged(node.Node{Name: "n2", IPs: []string{"192.0.2.2"}, PodCIDRs: []string{"10.244.20.0/24"}}, false)
	if _, ok := r.nodes["n2"]; !ok {
		t.Fatal("a node of this cluster outside the remote ranges was refused")
	}
}

// TestPinnedPodRangesStopSquatting: a remote squatting on the pod CIDR of
// another remote whose nodes are gone (lost, or not synced yet after a
// restart) took it, and the rightful remote's nodes were then refused.
// With the rightful remote's ranges pinned (--clustermesh-pod-ranges
// west=CIDR), no other remote may hold a pod CIDR in them, whichever
// comes first, and west may hold pod CIDRs only there.
func TestPinnedPodRangesStopSquatting(t *testing.T) {
	inNetns(t)
	r := newRouter(&fakeMaps{ipc: map[netip.Prefix]fakeValue{}}, Tunnel, "n1")
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	r.SetRemotePodRanges([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		map[string][]netip.Prefix{"west": {netip.MustParsePrefix("10.50.0.0/16")}, "north": {netip.MustParsePrefix("192.168.8.0/24")}})
	taken := func(name string) bool { _, ok := r.nodes[name]; return ok }
	// The squatter comes first (west not synced yet): refused, inside or
	// over west's range.
	for i, c := range []string{"10.50.3.0/24", "10.50.0.0/16", "10.48.0.0/12", "192.168.8.0/25"} {
		name := fmt.Sprintf("east/squat%d", i)
		r.NodeChanged(node.Node{Name: name, IPs: []string{fmt.Sprintf("203.0.113.%d", 10+i)}, PodCIDRs: []string{c}}, false)
		if taken(name) {
			t.Errorf("a remote node of east claiming %s, in west's or north's pinned ranges, was taken", c)
		}
	}
	r.NodeChanged(node.Node{Name: "west/w1", IPs: []string{"198.51.100.1"}, PodCIDRs: []string{"10.50.3.0/24"}}, false)
	if !taken("west/w1") {
		t.Fatal("west's node in its pinned range was refused")
	}
	// Nor an address inside west's range: it would meet west's pod CIDRs
	// there and hold them off.
	r.NodeChanged(node.Node{Name: "east/squat9", IPs: []string{"10.50.9.5"}, PodCIDRs: []string{"10.61.0.0/24"}}, false)
	if taken("east/squat9") {
		t.Error("a remote node of east with its address in west's pinned range was taken")
	}
	// West may not hold pod CIDRs outside its pins, even in the ranges
	// of unpinned remotes.
	r.NodeChanged(node.Node{Name: "west/w2", IPs: []string{"198.51.100.2"}, PodCIDRs: []string{"10.60.0.0/24"}}, false)
	if taken("west/w2") {
		t.Error("west's node outside its pinned range was taken")
	}
	// North's pinned range lies outside the unpinned ranges: allowed to
	// north only.
	r.NodeChanged(node.Node{Name: "north/x1", IPs: []string{"198.51.100.3"}, PodCIDRs: []string{"192.168.8.0/26"}}, false)
	if !taken("north/x1") {
		t.Error("north's node in its pinned range (outside the unpinned ranges) was refused")
	}
	// An unpinned remote elsewhere in the ranges is taken as before.
	r.NodeChanged(node.Node{Name: "east/e1", IPs: []string{"203.0.113.30"}, PodCIDRs: []string{"10.60.0.0/24"}}, false)
	if !taken("east/e1") {
		t.Error("east's node outside every pin, in the ranges, was refused")
	}
	// West lost: its node deleted; the squatter's record again is still
	// refused (without pins it would now be taken).
	r.NodeChanged(node.Node{Name: "west/w1"}, true)
	r.NodeChanged(node.Node{Name: "east/squat0", IPs: []string{"203.0.113.10"}, PodCIDRs: []string{"10.50.3.0/24"}}, false)
	if taken("east/squat0") {
		t.Error("after west's loss, east's record in west's pinned range was taken")
	}
	// Pins only: a remote not pinned may hold nothing.
	r.SetRemotePodRanges(nil, map[string][]netip.Prefix{"west": {netip.MustParsePrefix("10.50.0.0/16")}})
	r.NodeChanged(node.Node{Name: "east/e2", IPs: []string{"203.0.113.31"}, PodCIDRs: []string{"10.61.0.0/24"}}, false)
	if taken("east/e2") {
		t.Error("with pins only, a remote not pinned was taken")
	}
}

// Owns: an address is a remote cluster's when one of its taken nodes has
// it as address or pod CIDR (global services' remote backends).
func TestOwns(t *testing.T) {
	inNetns(t)
	r := newRouter(&fakeMaps{ipc: map[netip.Prefix]fakeValue{}}, Tunnel, "n1")
	r.NodeChanged(node.Node{Name: "n2", IPs: []string{"192.0.2.2"}, PodCIDRs: []string{"10.244.1.0/24"}}, false)
	r.NodeChanged(node.Node{Name: "west/w1", IPs: []string{"198.51.100.1"}, PodCIDRs: []string{"10.50.0.0/24"}}, false)
	r.NodeChanged(node.Node{Name: "east/evil", IPs: []string{"203.0.113.9"}, PodCIDRs: []string{"10.244.1.0/24"}}, false) // refused
	for _, c := range []struct {
		cluster, ip string
		want        bool
	}{
		{"west", "10.50.0.9", true}, {"west", "198.51.100.1", true}, {"west", "10.244.1.5", false}, {"west", "192.0.2.2", false},
		{"east", "10.50.0.9", false}, {"east", "10.244.1.5", false}, {"", "10.244.1.5", false},
	} {
		if got := r.Owns(c.cluster, netip.MustParseAddr(c.ip)); got != c.want {
			t.Errorf("Owns(%q, %s) = %v, want %v", c.cluster, c.ip, got, c.want)
		}
	}
}

// Review of the claims change: a remote node's record replaced by another
// (a new address) keeps its pods' entries written throughout; a node of
// its cluster refused for sharing its pod CIDR leaves its route when it
// goes; an
// eviction does not put back an older record over a newer refused one,
// and what it gives up is tried again for the records it blocked.
func TestRemoteNodeClaimsReview(t *testing.T) {
	inNetns(t)
	// An interface the native routes' gateways are on.
	underlay(t, "203.0.113.1/24")
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}, nodes: map[netip.Addr]bool{}}
	r := newRouter(f, Native, "n1")
	addr := netip.MustParseAddr
	e1 := node.Node{Name: "east/e1", IPs: []string{"203.0.113.20"}, PodCIDRs: []string{"10.60.0.0/24"}}
	r.NodeChanged(e1, false)
	pod := ipcache.Entry{IP: addr("10.60.0.5"), Identity: identity.Compose(3, 301), HostIP: addr("203.0.113.20"), Node: "east/e1"}
	r.EntryChanged(pod, false)
	e1.IPs = []string{"203.0.113.21"}
	f.deletes = nil
	r.NodeChanged(e1, false)
	if slices.Contains(f.deletes, netip.MustParsePrefix("10.60.0.5/32")) {
		t.Fatal("a remote node's new address withdrew its pods' entries on the way")
	}
	route := func(cidr string) netip.Addr {
		rs, _ := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: ipnet(netip.MustParsePrefix(cidr))}, netlink.RT_FILTER_DST)
		if len(rs) == 0 || rs[0].Gw == nil {
			return netip.Addr{}
		}
		a, _ := netip.AddrFromSlice(rs[0].Gw.To4())
		return a
	}
	// e2 shares e1's pod CIDR (the route goes through the last learned);
	// e2 goes: the route goes through e1.
	e2 := node.Node{Name: "east/e2", IPs: []string{"203.0.113.22"}, PodCIDRs: []string{"10.60.0.0/24"}}
	r.NodeChanged(e2, false)
	r.NodeChanged(e2, true)
	if got := route("10.60.0.0/24"); got != addr("203.0.113.21") {
		t.Fatalf("route to a pod CIDR two nodes of a cluster share, after one went: via %v, want e1's", got)
	}
	// West's w1 is refused (it meets east's e1); a newer w1 record is
	// refused too; a local node evicts e1: the newer w1 is taken.
	w1 := node.Node{Name: "west/w1", IPs: []string{"203.0.113.30"}, PodCIDRs: []string{"10.60.0.0/25"}}
	r.NodeChanged(w1, false)
	w1b := w1
	w1b.PodCIDRs = []string{"10.60.0.0/26"}
	r.NodeChanged(w1b, false)
	if _, ok := r.nodes["west/w1"]; ok {
		t.Fatal("a record meeting another cluster's node was taken")
	}
	r.NodeChanged(node.Node{Name: "n3", IPs: []string{"203.0.113.3"}, PodCIDRs: []string{"10.60.0.128/25"}}, false)
	if _, ok := r.nodes["east/e1"]; ok {
		t.Fatal("a local node did not evict the remote node holding its pod CIDR")
	}
	if got, ok := r.nodes["west/w1"]; !ok || !slices.Equal(got.PodCIDRs, w1b.PodCIDRs) {
		t.Fatalf("after the eviction west/w1 is %+v (taken: %v), want its newer record", got, ok)
	}
	// w1 holds 10.60.0.0/26; its newer record meets n3 and is refused;
	// a local node evicts w1: the refused record kept is the newer one.
	w1c := w1b
	w1c.PodCIDRs = []string{"10.60.0.128/26"}
	r.NodeChanged(w1c, false)
	r.NodeChanged(node.Node{Name: "n4", IPs: []string{"203.0.113.4"}, PodCIDRs: []string{"10.60.0.0/26"}}, false)
	if _, ok := r.nodes["west/w1"]; ok {
		t.Fatal("a local node did not evict west/w1")
	}
	if got := r.refused["west/w1"]; !slices.Equal(got.PodCIDRs, w1c.PodCIDRs) {
		t.Fatalf("the refused record kept for west/w1 is %v, want its newer one", got.PodCIDRs)
	}
}

// TakeChangedClusters names the remote clusters whose taken nodes changed
// (their own records, evictions, retries), for the services' ownership.
func TestTakeChangedClusters(t *testing.T) {
	inNetns(t)
	r := newRouter(&fakeMaps{ipc: map[netip.Prefix]fakeValue{}}, Tunnel, "n1")
	w1 := node.Node{Name: "west/w1", IPs: []string{"198.51.100.1"}, PodCIDRs: []string{"10.50.0.0/24"}}
	r.NodeChanged(w1, false)
	r.NodeChanged(node.Node{Name: "n2", IPs: []string{"192.0.2.2"}, PodCIDRs: []string{"10.244.1.0/24"}}, false)
	if got := r.TakeChangedClusters(); !slices.Equal(got, []string{"west"}) {
		t.Fatalf("changed %v, want [west]", got)
	}
	r.NodeChanged(w1, false) // the same record
	if got := r.TakeChangedClusters(); len(got) != 0 {
		t.Fatalf("changed %v after the same record", got)
	}
	r.NodeChanged(node.Node{Name: "n3", IPs: []string{"192.0.2.3"}, PodCIDRs: []string{"10.50.0.0/24"}}, false)
	if got := r.TakeChangedClusters(); !slices.Equal(got, []string{"west"}) {
		t.Fatalf("changed %v after an eviction, want [west]", got)
	}
}

// ClusterHolds: what a policy's CIDR identity may not take in the
// ipcache (a pod CIDR of this node or a known node, anything inside one,
// a node's address) and what it may (a wider prefix, world addresses).
func TestClusterHolds(t *testing.T) {
	inNetns(t)
	r := newRouter(&fakeMaps{ipc: map[netip.Prefix]fakeValue{}}, Tunnel, "n1")
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	r.NodeChanged(node.Node{Name: "n2", IPs: []string{"172.30.0.2"}, PodCIDRs: []string{"10.244.1.0/24"}}, false)
	r.NodeChanged(node.Node{Name: "east/e1", IPs: []string{"203.0.113.30"}, PodCIDRs: []string{"10.60.0.0/24"}}, false)
	for p, want := range map[string]bool{
		"10.244.0.9/32": true, "10.244.0.0/24": true, "10.244.1.17/32": true, "10.244.1.0/25": true,
		"10.60.0.5/32": true, "10.60.0.0/24": true, "172.30.0.2/32": true, "203.0.113.30/32": true,
		"10.244.0.0/16": false, "10.0.0.0/8": false, "192.0.2.0/24": false, "172.30.0.9/32": false, "10.61.0.1/32": false,
	} {
		if got := r.ClusterHolds(netip.MustParsePrefix(p)); got != want {
			t.Errorf("ClusterHolds(%s) = %v, want %v", p, got, want)
		}
	}
}

// A node record of this cluster (any node holding the agents' etcd
// credentials writes one, signed with its own certificate) claims only
// what is its own: before, only remote clusters' records were vetted, so
// a rogue node could claim another node's pods or pod CIDR, this node's
// pods, or 0.0.0.0/0 (every node routed and encrypted that traffic to
// it, and RouteReplace replaced the pod's or the default route). A
// WireGuard key is a claim too: a remote cluster's node publishing a
// local node's public key took over that node's peer (allowed IPs,
// endpoint) on every node of this cluster.
func TestNodeRecordsClaimOnlyTheirOwn(t *testing.T) {
	r, taken := vettingRouter(t)
	K2, K3, K9 := testKey(t), testKey(t), testKey(t)
	r.NodeChanged(node.Node{Name: "n2", IPs: []string{"172.30.0.2"}, PodCIDRs: []string{"10.244.1.0/24"}, WireGuardKey: K2}, false)
	if !taken("n2") {
		t.Fatal("n2 refused")
	}
	for name, n := range map[string]node.Node{
		"another node's pod":         {IPs: []string{"172.30.0.3"}, PodCIDRs: []string{"10.244.1.5/32"}},
		"another node's pod CIDR":    {IPs: []string{"172.30.0.4"}, PodCIDRs: []string{"10.244.1.0/24"}},
		"this node's pods":           {IPs: []string{"172.30.0.5"}, PodCIDRs: []string{"10.244.0.7/32"}},
		"everything":                 {IPs: []string{"172.30.0.6"}, PodCIDRs: []string{"0.0.0.0/0"}},
		"outside the pool":           {IPs: []string{"172.30.0.7"}, PodCIDRs: []string{"192.168.0.0/24"}},
		"another node's address":     {IPs: []string{"172.30.0.2"}, PodCIDRs: []string{"10.244.3.0/24"}},
		"this node's address":        {IPs: []string{"172.30.0.1"}, PodCIDRs: []string{"10.244.4.0/24"}},
		"another node's key":         {IPs: []string{"172.30.0.8"}, PodCIDRs: []string{"10.244.5.0/24"}, WireGuardKey: K2},
		"a pod CIDR with an address": {IPs: []string{"172.30.0.9"}, PodCIDRs: []string{"172.30.0.0/24"}},
	} {
		n.Name = "rogue" + strconv.Itoa(len(r.nodes)+len(r.refused))
		r.NodeChanged(n, false)
		if taken(n.Name) {
			t.Errorf("a local record claiming %s (%v, %v) was taken", name, n.PodCIDRs, n.IPs)
		}
	}
	r.NodeChanged(node.Node{Name: "n3", IPs: []string{"172.30.0.10"}, PodCIDRs: []string{"10.244.6.0/24"}, WireGuardKey: K3}, false)
	if !taken("n3") {
		t.Fatal("a node claiming its own was refused")
	}
	// A remote node publishing a local node's key is refused; a remote
	// node holding a key a local node then publishes gives way.
	r.NodeChanged(node.Node{Name: "east/e1", IPs: []string{"203.0.113.1"}, PodCIDRs: []string{"10.60.0.0/24"}, WireGuardKey: K2}, false)
	if taken("east/e1") {
		t.Error("a remote node publishing local node n2's WireGuard key was taken")
	}
	r.NodeChanged(node.Node{Name: "east/e2", IPs: []string{"203.0.113.2"}, PodCIDRs: []string{"10.60.1.0/24"}, WireGuardKey: K9}, false)
	r.NodeChanged(node.Node{Name: "n4", IPs: []string{"172.30.0.11"}, PodCIDRs: []string{"10.244.7.0/24"}, WireGuardKey: K9}, false)
	if !taken("n4") || taken("east/e2") {
		t.Errorf("a local node publishing a key a remote node held: local taken %v, remote still taken %v", taken("n4"), taken("east/e2"))
	}
	// A refused record meeting a node is taken once that node goes.
	r.NodeChanged(node.Node{Name: "n5", IPs: []string{"172.30.0.12"}, PodCIDRs: []string{"10.244.6.0/24"}}, false)
	if taken("n5") {
		t.Fatal("a record claiming n3's pod CIDR was taken")
	}
	r.NodeChanged(node.Node{Name: "n3"}, true)
	if !taken("n5") {
		t.Error("a refused record was not taken once the node whose pod CIDR it met went")
	}
}

// A remote cluster's node cannot take what another node of its cluster
// holds (its pod CIDR, a part of it or more, its address, its WireGuard
// key): while two claim the same, neither is taken (fail closed), in
// whichever order they came, and the other is taken once one goes or
// gives it up. Until 2026-12-07 nodes of one remote cluster could
// overlap, and with WireGuard a node whose record also listed its
// neighbour's pod CIDR became this cluster's peer for it: a holder of one
// remote node's key received this cluster's encrypted traffic to its
// neighbour's pods (found by a review; the review of the first fix found
// the first holder kept it, so a rogue record read first, at a restart,
// took its neighbour's pods).
func TestRemoteNodeCannotTakeItsNeighbours(t *testing.T) {
	K1 := testKey(t)
	e1 := node.Node{Name: "east/e1", IPs: []string{"203.0.113.1"}, PodCIDRs: []string{"10.60.0.0/24"}, WireGuardKey: K1}
	for i, rogue := range []node.Node{
		{IPs: []string{"203.0.113.2"}, PodCIDRs: []string{"10.60.0.0/24"}},
		{IPs: []string{"203.0.113.3"}, PodCIDRs: []string{"10.60.0.0/23"}},
		{IPs: []string{"203.0.113.4"}, PodCIDRs: []string{"10.60.0.128/25"}},
		{IPs: []string{"203.0.113.1"}, PodCIDRs: []string{"10.60.5.0/24"}},
		{IPs: []string{"203.0.113.5"}, PodCIDRs: []string{"10.60.6.0/24"}, WireGuardKey: K1},
	} {
		rogue.Name = "east/a-rogue" + strconv.Itoa(i)
		for _, rogueFirst := range []bool{false, true} {
			r, taken := vettingRouter(t)
			first, second := e1, rogue
			if rogueFirst {
				first, second = rogue, e1
			}
			r.NodeChanged(first, false)
			if !taken(first.Name) {
				t.Fatalf("%s refused alone", first.Name)
			}
			r.NodeChanged(second, false)
			if taken(e1.Name) || taken(rogue.Name) {
				t.Errorf("%v (rogue first %v): e1 taken %v, the rogue taken %v; want neither while both claim it",
					rogue, rogueFirst, taken(e1.Name), taken(rogue.Name))
			}
			// The rogue gives it up: e1 is taken.
			r.NodeChanged(node.Node{Name: rogue.Name, IPs: []string{"203.0.113.9"}, PodCIDRs: []string{"10.60.9.0/24"}}, false)
			if !taken(e1.Name) || !taken(rogue.Name) {
				t.Errorf("%v (rogue first %v) gave it up: e1 taken %v, the rogue taken %v; want both", rogue, rogueFirst, taken(e1.Name), taken(rogue.Name))
			}
		}
	}
	// One going leaves it to the other.
	r, taken := vettingRouter(t)
	r.NodeChanged(e1, false)
	r.NodeChanged(node.Node{Name: "east/x", IPs: []string{"203.0.113.6"}, PodCIDRs: []string{"10.60.0.0/24"}}, false)
	r.NodeChanged(node.Node{Name: "east/x"}, true)
	if !taken(e1.Name) {
		t.Error("e1 not taken once the other claimant went")
	}
}

// A remote record refused for good (here: overlapping this node's pod
// CIDR), not kept to be tried again, evicts none of its cluster's nodes it
// meets: its delete would give nothing back. The review of the fail-closed
// rule found such a record left its neighbour refused for good.
func TestRemoteNodeRefusedForGoodEvictsNothing(t *testing.T) {
	r, taken := vettingRouter(t)
	e1 := node.Node{Name: "east/e1", IPs: []string{"203.0.113.1"}, PodCIDRs: []string{"10.60.0.0/24"}}
	r.NodeChanged(e1, false)
	r.NodeChanged(node.Node{Name: "east/rogue", IPs: []string{"203.0.113.2"}, PodCIDRs: []string{"10.0.0.0/8"}}, false)
	if taken("east/rogue") || !taken("east/e1") {
		t.Fatalf("a record refused for good: it is taken %v, e1 taken %v; want e1 only", taken("east/rogue"), taken("east/e1"))
	}
	r.NodeChanged(node.Node{Name: "east/rogue"}, true)
	if !taken("east/e1") {
		t.Fatal("e1 not taken after the rogue's delete")
	}
}

// vettingRouter is node n1's router (172.30.0.1, pod CIDR 10.244.0.0/24
// of the pool 10.244.0.0/16), and taken tells whether it took a node.
func vettingRouter(t *testing.T) (r *Router, taken func(name string) bool) {
	inNetns(t)
	r = newRouter(&fakeMaps{ipc: map[netip.Prefix]fakeValue{}}, Tunnel, "n1")
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	r.SetOwnPool(netip.MustParsePrefix("10.244.0.0/16"), true)
	r.SetHostSource(netip.MustParseAddr("172.30.0.1"))
	return r, func(name string) bool { _, ok := r.nodes[name]; return ok }
}

func testKey(t *testing.T) string {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().String()
}

// A WireGuard key is claimed as the key it decodes to, and a rotated key
// moves the claim. Before, the index compared the published strings:
// another spelling of a node's key (base64 skips line breaks) took over
// its peer, and a key rotated in place (same addresses and pod CIDRs)
// was never indexed, so another node could publish it, while the old
// key stayed claimed and held off the record it met.
func TestWireGuardKeyClaimsCanonicalAndRotated(t *testing.T) {
	r, taken := vettingRouter(t)
	old, rotated := testKey(t), testKey(t)
	n2 := node.Node{Name: "n2", IPs: []string{"172.30.0.2"}, PodCIDRs: []string{"10.244.1.0/24"}, WireGuardKey: old}
	r.NodeChanged(n2, false)
	r.NodeChanged(node.Node{Name: "east/e1", IPs: []string{"203.0.113.1"}, PodCIDRs: []string{"10.60.0.0/24"}, WireGuardKey: old[:20] + "\r\n" + old[20:]}, false)
	if !taken("n2") || taken("east/e1") {
		t.Fatalf("another spelling of n2's key: n2 taken %v, the remote taken %v", taken("n2"), taken("east/e1"))
	}
	n2.WireGuardKey = rotated
	r.NodeChanged(n2, false)
	if !taken("east/e1") {
		t.Error("n2 rotated its key, and the record that met the old one was not taken")
	}
	r.NodeChanged(node.Node{Name: "east/e2", IPs: []string{"203.0.113.2"}, PodCIDRs: []string{"10.60.1.0/24"}, WireGuardKey: rotated}, false)
	if taken("east/e2") {
		t.Error("a remote node publishing n2's rotated key was taken")
	}
}

// In Kubernetes mode a node that took the pool (its Node object had no
// pod CIDR) does not hold the others to it, as their Node objects give
// theirs; the pool stays closed to remote clusters' nodes. Before, the
// pool rule held every node of the cluster outside the pool off for good.
func TestPoolNotLocalInKubernetesMode(t *testing.T) {
	r, _ := vettingRouter(t)
	r.SetOwnPool(netip.MustParsePrefix("10.244.0.0/16"), false)
	r.NodeChanged(node.Node{Name: "n2", IPs: []string{"172.30.0.2"}, PodCIDRs: []string{"10.96.3.0/24"}}, false)
	if _, ok := r.Taken("n2"); !ok {
		t.Error("a node whose Node object gives a pod CIDR outside the fallback pool was refused")
	}
	r.NodeChanged(node.Node{Name: "east/e1", IPs: []string{"203.0.113.1"}, PodCIDRs: []string{"10.244.9.0/24"}}, false)
	if _, ok := r.Taken("east/e1"); ok {
		t.Error("a remote node claiming part of this cluster's pool was taken")
	}
}

// Taken is the record the router took: a newer one it refused (here
// claiming this node's pods' range as its address) leaves it, so what
// reads it (node selectors) never sees the refused claim.
func TestTakenKeepsTheVettedRecord(t *testing.T) {
	r, _ := vettingRouter(t)
	n2 := node.Node{Name: "n2", IPs: []string{"172.30.0.2"}, PodCIDRs: []string{"10.244.1.0/24"}}
	r.NodeChanged(n2, false)
	r.NodeChanged(node.Node{Name: "n2", IPs: []string{"172.30.0.1"}, PodCIDRs: []string{"10.244.1.0/24"}}, false)
	if got, ok := r.Taken("n2"); !ok || got.IP() != n2.IP() {
		t.Errorf("after a refused record Taken gives %v (%v), want the vetted %v", got.IPs, ok, n2.IPs)
	}
}

// RemoteHolds: an address in a pod CIDR of a remote cluster's node the
// router took, whether or not its entry is known, or in a remote's pinned
// ranges (before its nodes come); not a local node's pod CIDR, nor an
// address no node claims.
func TestRemoteHolds(t *testing.T) {
	r, _ := vettingRouter(t)
	r.NodeChanged(node.Node{Name: "east/e1", IPs: []string{"203.0.113.1"}, PodCIDRs: []string{"10.60.0.0/24"}}, false)
	r.NodeChanged(node.Node{Name: "n2", IPs: []string{"172.30.0.2"}, PodCIDRs: []string{"10.244.1.0/24"}}, false)
	r.SetRemotePodRanges(nil, map[string][]netip.Prefix{"west": {netip.MustParsePrefix("10.70.0.0/16")}})
	for ip, want := range map[string]bool{"10.60.0.5": true, "10.244.1.5": false, "10.61.0.5": false, "10.70.3.3": true} {
		if got := r.RemoteHolds(netip.MustParseAddr(ip)); got != want {
			t.Errorf("RemoteHolds(%s) = %v, want %v", ip, got, want)
		}
	}
}
