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
	// A remote node refused for claiming n3's address adds nothing.
	r.NodeChanged(node.Node{Name: "east/evil", IPs: []string{"192.0.2.3"}, PodCIDRs: []string{"10.60.0.0/24"}, LocalAddrs: []string{"198.18.66.6"}}, false)
	have("198.18.0.1", "10.244.2.1")
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
