package routing

import (
	"net/netip"
	"testing"

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
