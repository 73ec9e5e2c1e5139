package routing

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/filament-net/filament/agent/node"
)

// The nodes' other addresses follow the records the router takes: an
// address is in node_local_addrs while a taken node lists it, a record
// the router refuses adds none, and what an earlier agent left for nodes
// gone since is pruned.
func TestNodeLocalAddrs(t *testing.T) {
	inNetns(t)
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}, nodes: map[netip.Addr]bool{}, local: map[netip.Addr]bool{}}
	stale := netip.MustParseAddr("198.18.99.1")
	f.local[stale] = true // an earlier agent's, for a node gone since
	r := newRouter(f, Tunnel, "n1")
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	have := func(want ...string) {
		t.Helper()
		got := slices.SortedFunc(maps.Keys(f.local), netip.Addr.Compare)
		var w []netip.Addr
		for _, s := range want {
			w = append(w, netip.MustParseAddr(s))
		}
		slices.SortFunc(w, netip.Addr.Compare)
		if !slices.Equal(got, w) {
			t.Fatalf("node_local_addrs = %v, want %v", got, w)
		}
	}
	n2 := node.Node{Name: "n2", IPs: []string{"192.0.2.2"}, PodCIDRs: []string{"10.244.1.0/24"}, LocalAddrs: []string{"198.18.7.2", "198.18.0.1"}}
	n3 := node.Node{Name: "n3", IPs: []string{"192.0.2.3"}, PodCIDRs: []string{"10.244.2.0/24"}, LocalAddrs: []string{"198.18.0.1"}}
	r.NodeChanged(n2, false)
	r.NodeChanged(n3, false)
	r.PruneLocalAddrs()
	// Their pod gateways too (the first address of each pod CIDR).
	have("198.18.7.2", "198.18.0.1", "10.244.1.1", "10.244.2.1")
	// A record of the same addresses with another list (updated in place).
	n2.LocalAddrs = []string{"198.18.7.3", "198.18.0.1"}
	r.NodeChanged(n2, false)
	have("198.18.7.3", "198.18.0.1", "10.244.1.1", "10.244.2.1")
	// A record that moves (a new address): the old list goes with it.
	n2.IPs, n2.LocalAddrs = []string{"192.0.2.22"}, []string{"198.18.7.4"}
	r.NodeChanged(n2, false)
	have("198.18.7.4", "198.18.0.1", "10.244.1.1", "10.244.2.1")
	// Shared: n2's going leaves n3's.
	n2.LocalAddrs = []string{"198.18.7.4", "198.18.0.1"}
	r.NodeChanged(n2, false)
	r.NodeChanged(n2, true)
	have("198.18.0.1", "10.244.2.1")
	// Pods' addresses (this node's pod CIDR, another node's, its own) are
	// left out (its gateway is in as its gateway), and a list's
	// duplicates count once.
	r.NodeChanged(node.Node{Name: "n5", IPs: []string{"192.0.2.5"}, PodCIDRs: []string{"10.244.5.0/24"},
		LocalAddrs: []string{"10.244.0.7", "10.244.2.9", "10.244.5.1", "198.18.5.5", "198.18.5.5"}}, false)
	have("198.18.0.1", "198.18.5.5", "10.244.2.1", "10.244.5.1")
	r.NodeChanged(node.Node{Name: "n5"}, true)
	have("198.18.0.1", "10.244.2.1")
	// A pod CIDR of fewer than four addresses has no gateway: its "first
	// address" would be a pod's, or outside it, and the list lets an
	// address's ICMP errors pass as related.
	r.NodeChanged(node.Node{Name: "n6", IPs: []string{"192.0.2.6"}, PodCIDRs: []string{"10.244.6.6/31"}}, false)
	have("198.18.0.1", "10.244.2.1")
	r.NodeChanged(node.Node{Name: "n6"}, true)
	// A remote node refused for claiming n3's address adds nothing.
	r.NodeChanged(node.Node{Name: "east/evil", IPs: []string{"192.0.2.3"}, PodCIDRs: []string{"10.60.0.0/24"}, LocalAddrs: []string{"198.18.66.6"}}, false)
	have("198.18.0.1", "10.244.2.1")
	r.NodeChanged(node.Node{Name: "east/evil"}, true) // (its claim would hold east's e1 off)
	// A remote node taken adds its own, and a node of this cluster that
	// evicts it takes them away.
	r.NodeChanged(node.Node{Name: "east/e1", IPs: []string{"203.0.113.1"}, PodCIDRs: []string{"10.60.0.0/24"}, LocalAddrs: []string{"198.18.55.5"}}, false)
	have("198.18.0.1", "198.18.55.5", "10.244.2.1", "10.60.0.1")
	r.NodeChanged(node.Node{Name: "n4", IPs: []string{"192.0.2.4"}, PodCIDRs: []string{"10.60.0.0/25"}}, false)
	if _, ok := r.nodes["east/e1"]; ok {
		t.Fatal("the remote node was not evicted")
	}
	have("198.18.0.1", "10.244.2.1", "10.60.0.1") // n4's gateway now
	r.NodeChanged(n3, true)
	have("10.60.0.1")
}

// Remote clusters' nodes hold at most maxRemoteLocal entries of
// node_local_addrs together, so the rest stays for this cluster's nodes:
// their other addresses keep pods off their control ports whatever the
// remotes publish. An address a node of this cluster also lists is this
// cluster's. Found 2026-12-06 by reading the map's size against the mesh
// limits: remote nodes (49,152 in the nodes map, each listing up to 16
// other addresses and its pod gateways) could fill the map's 65,536, and a
// new local node's other addresses were then not written (its control
// ports open to every pod at them).
func TestRemoteLocalAddrsLeaveRoomForLocalOnes(t *testing.T) {
	inNetns(t)
	r, f := localAddrsRouter(4)
	remote := func(i int, addrs ...string) node.Node {
		return node.Node{Name: "east/e" + string(rune('0'+i)), IPs: []string{"203.0.113." + string(rune('0'+i))},
			PodCIDRs: []string{"10.6" + string(rune('0'+i)) + ".0.0/24"}, LocalAddrs: addrs}
	}
	e1 := remote(1, "198.18.1.1", "198.18.1.2") // and gateway 10.61.0.1
	e2 := remote(2, "198.18.2.1", "198.18.0.9") // and 10.62.0.1
	e3 := remote(3, "198.18.3.1")               // and 10.63.0.1
	for _, n := range []node.Node{e1, e2, e3} {
		r.NodeChanged(n, false)
	}
	remoteHeld := func() int {
		n := 0
		for a := range f.local {
			if !netip.MustParsePrefix("10.244.0.0/16").Contains(a) && a != netip.MustParseAddr("198.18.0.9") && a != netip.MustParseAddr("198.18.7.7") {
				n++
			}
		}
		return n
	}
	if got := len(f.local); got != 4 {
		t.Fatalf("node_local_addrs holds %d remote addresses, want 4 (the bound): %v", got, f.local)
	}
	// A node of this cluster is written whatever the remotes hold, and an
	// address it shares with a remote node is its own.
	n2 := node.Node{Name: "n2", IPs: []string{"192.0.2.2"}, PodCIDRs: []string{"10.244.1.0/24"}, LocalAddrs: []string{"198.18.7.7", "198.18.0.9"}}
	r.NodeChanged(n2, false)
	for _, a := range []string{"198.18.7.7", "198.18.0.9", "10.244.1.1"} {
		if !f.local[netip.MustParseAddr(a)] {
			t.Fatalf("local node's %s not written with the remote nodes at their bound: %v", a, f.local)
		}
	}
	// A remote node that goes frees its places: first for the addresses
	// left out before (e3's), then for the next that comes.
	r.NodeChanged(e1, true)
	for _, a := range []string{"198.18.3.1", "10.63.0.1"} {
		if !f.local[netip.MustParseAddr(a)] {
			t.Errorf("remote node's %s, left out for the bound, not written after another went: %v", a, f.local)
		}
	}
	r.NodeChanged(e2, true)
	e4 := remote(4, "198.18.4.1")
	r.NodeChanged(e4, false)
	for _, a := range []string{"198.18.4.1", "10.64.0.1"} {
		if !f.local[netip.MustParseAddr(a)] {
			t.Errorf("remote node's %s not written after others left their places: %v", a, f.local)
		}
	}
	if got := remoteHeld(); got > 4 {
		t.Errorf("remote nodes hold %d entries, past the bound: %v", got, f.local)
	}
}

// The remote nodes' share holds through addresses they list beside this
// cluster's nodes (free of the bound while a local node lists them), and
// the places freed go to remote nodes left short only once a change is
// complete. Found by the review of the bound: a remote node listing every
// local node's addresses kept them past its share when the local nodes
// left; a local node taking over a remote address freed a place nobody
// was given; and a refill in the middle of an eviction wrote an address
// of the evicting node's pod CIDR.
func TestRemoteLocalAddrsBoundThroughSharingAndEviction(t *testing.T) {
	inNetns(t)
	r, f := localAddrsRouter(2)
	has := func(a string) bool { return f.local[netip.MustParseAddr(a)] }
	// A local node's address, listed by a remote node too; the remote
	// node's own address and gateway fill the share.
	n2 := node.Node{Name: "n2", IPs: []string{"192.0.2.2"}, PodCIDRs: []string{"10.244.1.0/24"}, LocalAddrs: []string{"198.18.7.7"}}
	r.NodeChanged(n2, false)
	copier := node.Node{Name: "east/c", IPs: []string{"203.0.113.1"}, PodCIDRs: []string{"10.61.0.0/24"}, LocalAddrs: []string{"198.18.7.7", "198.18.1.1"}}
	r.NodeChanged(copier, false)
	if !has("198.18.1.1") || !has("10.61.0.1") || !has("198.18.7.7") {
		t.Fatalf("node_local_addrs %v", f.local)
	}
	// The local node goes: its address would be the remote node's third.
	r.NodeChanged(n2, true)
	if has("198.18.7.7") {
		t.Errorf("a local node's address stayed for a remote node past its share: %v", f.local)
	}
	if r.local.remoteHeld != 2 {
		t.Errorf("remote nodes hold %d, want 2 (the bound)", r.local.remoteHeld)
	}
	// A local node takes over one of the remote node's addresses: the
	// place freed goes to a remote node left short.
	short := node.Node{Name: "east/s", IPs: []string{"203.0.113.2"}, PodCIDRs: []string{"10.62.0.0/24"}, LocalAddrs: []string{"198.18.2.2"}}
	r.NodeChanged(short, false)
	if has("198.18.2.2") || has("10.62.0.1") {
		t.Fatalf("a remote node past the share was written: %v", f.local)
	}
	r.NodeChanged(node.Node{Name: "n3", IPs: []string{"192.0.2.3"}, PodCIDRs: []string{"10.244.3.0/24"}, LocalAddrs: []string{"198.18.1.1"}}, false)
	// (east/c, short since its copy went, comes first by name.)
	if !has("198.18.7.7") || r.local.remoteHeld != 2 {
		t.Errorf("the place a local node's takeover freed went to nobody: remote nodes hold %d, %v", r.local.remoteHeld, f.local)
	}

	// Eviction: east/v lists an address in east/r's pod CIDR (left out as
	// a pod's) and is short; a local node claiming that range evicts r.
	// The refill after it must not write v's address, now in the local
	// node's pod CIDR.
	r2, f2 := localAddrsRouter(2)
	r2.NodeChanged(node.Node{Name: "east/r", IPs: []string{"203.0.113.5"}, PodCIDRs: []string{"10.60.0.0/24"}, LocalAddrs: []string{"198.18.5.5"}}, false)
	r2.NodeChanged(node.Node{Name: "east/v", IPs: []string{"203.0.113.6"}, PodCIDRs: []string{"10.66.0.0/24"}, LocalAddrs: []string{"198.18.6.6", "10.60.0.5"}}, false)
	r2.NodeChanged(node.Node{Name: "n4", IPs: []string{"192.0.2.4"}, PodCIDRs: []string{"10.60.0.0/25"}}, false)
	if _, ok := r2.nodes["east/r"]; ok {
		t.Fatal("the remote node was not evicted")
	}
	if f2.local[netip.MustParseAddr("10.60.0.5")] {
		t.Errorf("a pod address of the evicting node's pod CIDR was written for a remote node: %v", f2.local)
	}
	if !f2.local[netip.MustParseAddr("198.18.6.6")] {
		t.Errorf("the remote node left short did not get the places the evicted one freed: %v", f2.local)
	}
}

// localAddrsRouter is a router of node n1 (pod CIDR 10.244.0.0/24) over
// fake maps, its remote nodes' share of node_local_addrs maxRemote.
func localAddrsRouter(maxRemote int) (*Router, *fakeMaps) {
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}, nodes: map[netip.Addr]bool{}, local: map[netip.Addr]bool{}}
	r := newRouter(f, Tunnel, "n1")
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	r.local.maxRemote = maxRemote
	return r, f
}
