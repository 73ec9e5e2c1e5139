package routing

import (
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/sparse"
)

// The router tells OnRetired of a pod whose address an accepted change
// takes from it (the agent then deletes the conntrack entries naming the
// address, datapath.ScrubPeer): its holder's deletion, or an entry naming
// another pod. Not of a relabel, nor of a change the router refuses (a
// node's late delete, a remote cluster's claim of an address held here),
// which must not let another node or cluster cut this node's flows.
func TestRetiredPods(t *testing.T) {
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}}
	r := newRouter(f, Tunnel, "n1")
	r.SetOwnPodCIDR(netip.MustParsePrefix("10.244.0.0/24"))
	var retired []ipcache.Entry
	r.OnRetired(func(old ipcache.Entry) { retired = append(retired, old) })
	ip := netip.MustParseAddr("10.244.1.7")
	host := netip.MustParseAddr("172.30.0.2")
	db := ipcache.Entry{IP: ip, Identity: identity.NumericIdentity(70002), HostIP: host, Node: "n2", Namespace: "default", Pod: "db-0"}
	relabelled := db
	relabelled.Identity = 70009
	attacker := db
	attacker.Pod, attacker.Identity = "attacker", 70003
	lateDelete := attacker
	lateDelete.Node, lateDelete.HostIP = "n3", netip.MustParseAddr("172.30.0.3")
	claim := ipcache.Entry{IP: ip, Identity: identity.Compose(7, 300), HostIP: netip.MustParseAddr("203.0.113.9"), Node: "east/n9", Namespace: "default", Pod: "x"}
	for _, step := range []struct {
		what    string
		e       ipcache.Entry
		deleted bool
		want    *ipcache.Entry
	}{
		{"a new pod", db, false, nil},
		{"its relabel", relabelled, false, nil},
		{"another pod's entry at the address, no deletion seen", attacker, false, &relabelled},
		{"another node's late delete", lateDelete, true, nil},
		{"a remote cluster's claim", claim, false, nil},
		{"the holder's deletion", attacker, true, &attacker},
		{"a deletion of nothing held", attacker, true, nil},
	} {
		retired = nil
		r.EntryChanged(step.e, step.deleted)
		switch {
		case step.want == nil && len(retired) != 0:
			t.Errorf("%s: retired %+v, want none", step.what, retired)
		case step.want != nil && (len(retired) != 1 || retired[0] != *step.want):
			t.Errorf("%s: retired %+v, want %+v", step.what, retired, *step.want)
		}
	}
}

// With a sparse remote ipcache, a connected cluster's pod that no policy
// tells apart is a compact entry (no pod name): its holder's deletion, or
// an entry of another node at the address, retires it all the same, and
// Held still says whose the address is.
func TestRetiredCompactPods(t *testing.T) {
	inNetns(t)
	r, _ := sparseRouter(sparse.NewNeed(1, false))
	var retired []ipcache.Entry
	r.OnRetired(func(old ipcache.Entry) { retired = append(retired, old) })
	for _, n := range []node.Node{
		{Name: "c2/n1", IPs: []string{"192.168.2.1"}, PodCIDRs: []string{"10.2.1.0/24"}},
		{Name: "c2/n2", IPs: []string{"192.168.2.2"}, PodCIDRs: []string{"10.2.2.0/24"}},
	} {
		r.NodeChanged(n, false)
	}
	ip := netip.MustParseAddr("10.2.1.5")
	e := ipcache.Entry{IP: ip, Identity: identity.Compose(2, 300), HostIP: netip.MustParseAddr("192.168.2.1"), Node: "c2/n1", Namespace: "default", Pod: "db-0"}
	r.EntryChanged(e, false)
	if _, _, owned := r.compactOwner(ip); !owned {
		t.Fatal("the entry is not a compact one: the test tests the full store")
	}
	if held, ok := r.Held(ip); !ok || held.Node != "c2/n1" {
		t.Fatalf("Held: %+v %v, want c2/n1's", held, ok)
	}
	compact := ipcache.Entry{IP: ip, Node: "c2/n1"}
	r.EntryChanged(e, true)
	if len(retired) != 1 || retired[0] != compact {
		t.Fatalf("the holder's deletion retired %+v, want %+v", retired, compact)
	}
	if _, ok := r.Held(ip); ok {
		t.Error("Held still names the deleted entry")
	}
	retired = nil
	r.EntryChanged(e, false)
	moved := e
	moved.Node, moved.HostIP = "c2/n2", netip.MustParseAddr("192.168.2.2")
	r.EntryChanged(moved, false)
	if len(retired) != 1 || retired[0] != compact {
		t.Fatalf("another node's entry at the address retired %+v, want %+v", retired, compact)
	}
}
