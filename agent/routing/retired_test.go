package routing

import (
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
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
