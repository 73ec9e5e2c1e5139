package routing

import (
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
)

// A pod's entry is tunnelled to its node's address, never to a hostIP the
// entry names otherwise. The entries' writers share the kvstore's
// credentials: one naming another node's pod with the hostIP of a host
// that is no encryption peer had every node send that pod's traffic
// there as clear VXLAN, WireGuard on and its peer up (strict mode
// dropped it instead). Found 2026-12-07 by a review. The tunnel is the
// node's address, whatever the entry says, in this cluster and from a
// remote one.
func TestEntryTunnelledOnlyToItsNode(t *testing.T) {
	inNetns(t)
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}}
	r := newRouter(f, Tunnel, "n1")
	r.RequireNodes()
	n2 := node.Node{Name: "n2", IPs: []string{"172.30.0.2"}, PodCIDRs: []string{"10.244.1.0/24"}}
	e1 := node.Node{Name: "east/e1", IPs: []string{"198.51.100.1"}, PodCIDRs: []string{"10.60.0.0/24"}}
	r.NodeChanged(n2, false)
	r.NodeChanged(e1, false)
	for _, e := range []ipcache.Entry{
		{IP: netip.MustParseAddr("10.244.1.7"), Identity: 65793, HostIP: n2.IP(), Node: "n2"},
		{IP: netip.MustParseAddr("10.244.1.8"), Identity: 65793, HostIP: netip.MustParseAddr("203.0.113.66"), Node: "n2"},
		{IP: netip.MustParseAddr("10.244.1.9"), Identity: 65793, Node: "n2"},
		{IP: netip.MustParseAddr("10.60.0.7"), Identity: identity.Compose(2, 300), HostIP: e1.IP(), Node: "east/e1"},
		{IP: netip.MustParseAddr("10.60.0.8"), Identity: identity.Compose(2, 300), HostIP: netip.MustParseAddr("203.0.113.66"), Node: "east/e1"},
	} {
		r.EntryChanged(e, false)
		if v, ok := f.ipc[netip.PrefixFrom(e.IP, 32)]; !ok || v.tunnel != r.nodes[e.Node].IP() {
			t.Errorf("%s of %s, hostIP %v: %+v (present %v), want tunnelled to its node's %v", e.IP, e.Node, e.HostIP, v, ok, r.nodes[e.Node].IP())
		}
	}
}
