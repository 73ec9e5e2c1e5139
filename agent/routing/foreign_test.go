package routing

import (
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
)

// The router deletes from the datapath only the /32s it wrote. An entry it
// refuses (a remote's node not known, an address outside its node's pod
// CIDRs), or the delete of one it never wrote, leaves the address's
// entry alone: it may be another writer's, this node's host entry or a
// policy's CIDR identity. Found 2026-12-06 by reading EntryChanged: a
// remote cluster publishing an entry of an unknown node at this node's
// address, or at a /32 a toCIDR deny named, deleted that entry until the
// agent restarted (host traffic judged as world, the deny bypassed).
func TestForeignSlash32sNotDeleted(t *testing.T) {
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}}
	hostIP := netip.MustParsePrefix("172.30.0.1/32")
	cidrIP := netip.MustParsePrefix("198.51.100.7/32")
	f.ipc[hostIP] = fakeValue{identity.Host, netip.Addr{}, false}
	f.ipc[cidrIP] = fakeValue{identity.NumericIdentity(1<<24 | 5), netip.Addr{}, false}
	r := newRouter(f, Tunnel, "n1")
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	for _, p := range []netip.Prefix{hostIP, cidrIP} {
		e := ipcache.Entry{IP: p.Addr(), Identity: identity.Compose(7, 300), HostIP: netip.MustParseAddr("203.0.113.9"), Node: "east/ghost"}
		r.EntryChanged(e, false)
		r.EntryChanged(e, true)
		if v, ok := f.ipc[p]; !ok || v.tunnel.IsValid() {
			t.Errorf("%s: the entry another writer had is %+v (present %v) after a refused remote entry and its delete", p, v, ok)
		}
	}

	// A node whose entries are held back (refused, or not known where
	// nodes are required) coming back up after failure detection saw it
	// down: its entries stay held.
	r.RequireNodes()
	ghost := ipcache.Entry{IP: netip.MustParseAddr("203.0.113.5"), Identity: identity.Compose(1, 300), HostIP: netip.MustParseAddr("172.30.0.66"), Node: "ghost"}
	r.EntryChanged(ghost, false)
	r.SetNodeDown("ghost", true)
	r.SetNodeDown("ghost", false)
	if v, ok := f.ipc[netip.PrefixFrom(ghost.IP, 32)]; ok {
		t.Errorf("a node not known, back up, had its held entry written: %+v", v)
	}
}

// Nor when the node of a refused entry goes, or its record changes: found
// 2026-12-06 by rereading the fix above, forgetting a node deleted every
// entry held of it, written or not.
func TestForeignSlash32sNotDeletedWithTheirNode(t *testing.T) {
	inNetns(t)
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}}
	hostIP := netip.MustParsePrefix("172.30.0.1/32")
	f.ipc[hostIP] = fakeValue{identity.Host, netip.Addr{}, false}
	r := newRouter(f, Tunnel, "n1")
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	east := node.Node{Name: "east/n1", IPs: []string{"203.0.113.9"}, PodCIDRs: []string{"10.8.1.0/24"}}
	r.NodeChanged(east, false)
	pod := ipcache.Entry{IP: netip.MustParseAddr("10.8.1.5"), Identity: identity.Compose(7, 300), HostIP: netip.MustParseAddr("203.0.113.9"), Node: "east/n1"}
	r.EntryChanged(pod, false)
	r.EntryChanged(ipcache.Entry{IP: hostIP.Addr(), Identity: identity.Compose(7, 300), HostIP: netip.MustParseAddr("203.0.113.9"), Node: "east/n1"}, false)
	if _, ok := f.ipc[netip.PrefixFrom(pod.IP, 32)]; !ok {
		t.Fatal("the node's own pod's entry was not written")
	}
	east.IPs = []string{"203.0.113.10"} // a changed record
	r.NodeChanged(east, false)
	r.NodeChanged(east, true) // and gone
	if v, ok := f.ipc[hostIP]; !ok || v.tunnel.IsValid() {
		t.Errorf("this node's host entry after the remote node went: %+v (present %v)", v, ok)
	}
	if _, ok := f.ipc[netip.PrefixFrom(pod.IP, 32)]; ok {
		t.Error("the node's own pod's entry stayed after the node went")
	}
}
