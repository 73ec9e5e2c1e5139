package routing

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/node"
)

// Remote clusters' nodes hold at most maxRemoteNodes entries of the
// nodes map, so the rest stays for this cluster's nodes: a remote
// publishing node records without end (each within the mesh's per-remote
// bound) cannot keep a new local node's tunnel traffic out. Found
// 2026-12-05 by reading the mesh limits: one remote's MaxRemoteNodes was
// the whole map, shared with the local nodes.
func TestRemoteNodesLeaveRoomForLocalOnes(t *testing.T) {
	inNetns(t)
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}, nodes: map[netip.Addr]bool{}}
	r := newRouter(f, Tunnel, "n1")
	r.maxRemoteNodes = 3
	remote := func(i int) node.Node {
		return node.Node{Name: fmt.Sprintf("east/e%d", i), IPs: []string{fmt.Sprintf("203.0.113.%d", i)}}
	}
	for i := 1; i <= 5; i++ {
		r.NodeChanged(remote(i), false)
	}
	if n := len(f.nodes); n != 3 {
		t.Fatalf("%d remote nodes in the nodes map, want 3 (the bound)", n)
	}
	r.NodeChanged(node.Node{Name: "n2", IPs: []string{"192.0.2.2"}}, false)
	if !f.nodes[netip.MustParseAddr("192.0.2.2")] {
		t.Fatal("a local node was not written with the remote nodes at their bound")
	}
	// A remote node that goes frees its place for the next that comes.
	r.NodeChanged(remote(1), true)
	r.NodeChanged(remote(6), false)
	if !f.nodes[netip.MustParseAddr("203.0.113.6")] {
		t.Error("a remote node was not written after another left its place")
	}
	if f.nodes[netip.MustParseAddr("203.0.113.1")] {
		t.Error("a deleted remote node stayed in the nodes map")
	}
}
