package routing

import (
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/sparse"
)

// remoteKeysIn counts the prefixes of f's ipcache inside one of cidrs.
func remoteKeysIn(f *fakeMaps, cidrs ...string) int {
	n := 0
	for p := range f.ipc {
		for _, c := range cidrs {
			if netip.MustParsePrefix(c).Overlaps(p) {
				n++
				break
			}
		}
	}
	return n
}

// podEntry is pod i of node name (pod CIDR 10.<b>.<c>.0/24, cluster id).
func podEntry(name string, b, c, i int, cluster uint32, host string) ipcache.Entry {
	return ipcache.Entry{IP: netip.AddrFrom4([4]byte{10, byte(b), byte(c), byte(i)}), Identity: identity.Compose(cluster, uint32(300+i)),
		HostIP: netip.MustParseAddr(host), Node: name}
}

// Remote clusters' entries hold at most maxRemoteIPCache keys of the BPF
// ipcache, so the rest stays for this cluster's pods and the policies'
// CIDRs: a remote publishing endpoints without end (each within the mesh's
// per-remote bound of 1,048,576, twice the map) cannot keep a new local
// pod's entry out. A remote key that goes frees its place for an entry
// refused before. Found 2026-12-06 by reading the mesh limits: with
// --remote-ipcache full (the default) one remote's endpoints filled the
// map, and every later write failed, this node's own pods' included.
func TestRemoteIPCacheEntriesLeaveRoomForLocalOnes(t *testing.T) {
	inNetns(t)
	for _, mode := range []string{"full", "sparse"} {
		t.Run(mode, func(t *testing.T) {
			f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}, nodes: map[netip.Addr]bool{}}
			r := newRouter(f, Tunnel, "n1")
			need := sparse.NewNeed(1, false)
			if mode == "sparse" {
				r.SetSparse(need, netip.MustParsePrefix("10.1.1.0/24"))
			}
			r.maxRemoteIPCache = 6
			east := node.Node{Name: "east/e1", IPs: []string{"203.0.113.1"}, PodCIDRs: []string{"10.2.1.0/24"}}
			west := node.Node{Name: "west/w1", IPs: []string{"203.0.113.2"}, PodCIDRs: []string{"10.3.1.0/24"}}
			local := node.Node{Name: "n2", IPs: []string{"192.0.2.2"}, PodCIDRs: []string{"10.1.2.0/24"}}
			for _, n := range []node.Node{east, west, local} {
				r.NodeChanged(n, false)
			}
			// The need tells every east and west pod apart, so that the
			// sparse router writes their /32s too.
			var eastPods []ipcache.Entry
			for i := 1; i <= 10; i++ {
				e := podEntry(east.Name, 2, 1, i, 7, "203.0.113.1")
				distinguish(need, e.Identity, true)
				eastPods = append(eastPods, e)
				r.EntryChanged(e, false)
			}
			if n := remoteKeysIn(f, "10.2.0.0/16", "10.3.0.0/16"); n != 6 {
				t.Fatalf("remote keys in the ipcache: %d, want 6 (the bound)", n)
			}
			for i := 1; i <= 3; i++ {
				r.EntryChanged(podEntry(local.Name, 1, 2, i, 0, "192.0.2.2"), false)
			}
			if n := remoteKeysIn(f, "10.1.2.0/24"); n != 3 {
				t.Fatalf("local pods' keys: %d, want 3 with the remote keys at their bound", n)
			}
			wpod := podEntry(west.Name, 3, 1, 1, 8, "203.0.113.2")
			distinguish(need, wpod.Identity, true)
			r.EntryChanged(wpod, false)
			if n := remoteKeysIn(f, "10.2.0.0/16", "10.3.0.0/16"); n != 6 {
				t.Fatalf("remote keys after another remote's pod: %d, want 6", n)
			}
			if v, ok := f.ipc[netip.PrefixFrom(wpod.IP, 32)]; ok {
				t.Fatalf("%s has its /32 (%+v) with the remote keys at their bound", wpod.IP, v)
			}
			// What the reconciler wants holds no more remote keys than
			// the bound while some are refused.
			n := 0
			for p := range r.Wanted() {
				if !netip.MustParsePrefix("10.1.0.0/16").Overlaps(p) {
					n++
				}
			}
			if n != 6 {
				t.Errorf("Wanted holds %d remote keys with some refused, want 6 (the bound)", n)
			}
			// The east pods go: their places go to what was refused.
			for _, e := range eastPods {
				r.EntryChanged(e, true)
			}
			if v, ok := f.ipc[netip.PrefixFrom(wpod.IP, 32)]; !ok || v.id != wpod.Identity || v.tunnel != wpod.HostIP {
				t.Fatalf("%s after the east pods went: %+v (found %v), want its entry through %s", wpod.IP, v, ok, wpod.HostIP)
			}
			r.NodeChanged(east, true)
			if n := remoteKeysIn(f, "10.2.0.0/16"); n != 0 {
				t.Fatalf("%d east keys after east went", n)
			}
			if got := r.RemoteIPCacheRefused(); got == 0 {
				t.Error("no refused remote entry counted")
			}
		})
	}
}

// Past the remote share: a policy's CIDR entry given back at an address
// whose remote entry is refused goes all the same (it stayed, untracked,
// found by the review of the share); an address that moves to a node that
// is down loses the other node's entry, and its place (it stayed, and
// counted for good).
func TestRemoteIPCacheShareGiveBackAndDownNodes(t *testing.T) {
	inNetns(t)
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}, nodes: map[netip.Addr]bool{}}
	r := newRouter(f, Tunnel, "n1")
	r.maxRemoteIPCache = 1
	east := node.Node{Name: "east/e1", IPs: []string{"203.0.113.1"}, PodCIDRs: []string{"10.2.1.0/24"}}
	east2 := node.Node{Name: "east/e2", IPs: []string{"203.0.113.3"}, PodCIDRs: []string{"10.2.1.0/24"}}
	west := node.Node{Name: "west/w1", IPs: []string{"203.0.113.2"}, PodCIDRs: []string{"10.3.1.0/24"}}
	for _, n := range []node.Node{east, west} {
		r.NodeChanged(n, false)
	}
	r.EntryChanged(podEntry(east.Name, 2, 1, 1, 7, "203.0.113.1"), false)
	// A policy's CIDR entry at a west pod's address, written before west
	// was known; west's pod is refused; the engine gives the prefix back.
	wp := podEntry(west.Name, 3, 1, 1, 8, "203.0.113.2")
	p := netip.PrefixFrom(wp.IP, 32)
	f.ipc[p] = fakeValue{id: identity.NumericIdentity(1<<24 | 9)}
	r.EntryChanged(wp, false)
	r.GiveBack(p)
	if v, ok := f.ipc[p]; ok {
		t.Fatalf("the policy's entry at %s stayed after it was given back: %+v", p, v)
	}
	// East's pod moves to a node of east that is down: e1's entry goes,
	// and its place goes to west's pod.
	r.NodeChanged(east2, false)
	r.SetNodeDown(east2.Name, true)
	r.EntryChanged(podEntry(east2.Name, 2, 1, 1, 7, "203.0.113.3"), false)
	if v, ok := f.ipc[netip.MustParsePrefix("10.2.1.1/32")]; ok {
		t.Errorf("the entry of a node the address left stayed: %+v", v)
	}
	if v, ok := f.ipc[p]; !ok || v.id != wp.Identity {
		t.Errorf("west's pod did not take the place freed: %+v (%v)", v, ok)
	}
}
