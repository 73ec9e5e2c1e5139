package daemon

import (
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/ipcache"
)

// An EndpointSlice's address that is a remote cluster's pod is judged by
// that pod's namespace as the router's entry has it, and one whose entry
// has no namespace (the sparse remote ipcache names no pods) is taken as
// another namespace's; this cluster's pods by the cluster's ipcache, as
// before. Until 2026-12-07 only this cluster's ipcache was asked: a
// hand-written slice made a remote cluster's pod of any namespace a
// backend of a tenant's Service (found by a review).
func TestSliceCannotNameARemoteClustersPod(t *testing.T) {
	table := func(m map[string]ipcache.Entry) func(netip.Addr) (ipcache.Entry, bool) {
		return func(ip netip.Addr) (ipcache.Entry, bool) {
			e, ok := m[ip.String()]
			return e, ok
		}
	}
	local := table(map[string]ipcache.Entry{"10.0.0.5": {Namespace: "default", Node: "n1"}})
	remote := table(map[string]ipcache.Entry{
		"10.8.0.9":  {Namespace: "payments", Node: "c2/n7"},
		"10.8.0.10": {Node: "c2/n8"}, // sparse: no names
		"10.8.0.11": {Namespace: "default", Node: "c2/n7"},
		"10.0.0.5":  {Namespace: "other", Node: "n1"}, // the cluster's ipcache answers first
	})
	remoteCIDR := func(ip netip.Addr) bool { return netip.MustParsePrefix("10.8.0.0/16").Contains(ip) }
	for _, c := range []struct {
		ip     string
		ns     string
		listed bool
	}{
		{"10.0.0.5", "default", true},
		{"10.8.0.9", "payments", true},
		{"10.8.0.10", "", true},
		{"10.8.0.11", "default", true},
		{"192.0.2.8", "", false},
		{"10.8.1.3", "", true}, // in c2/n9's pod CIDR, its entry not known (n9 down)
	} {
		ns, ok := podNamespaceOf(netip.MustParseAddr(c.ip), local, remote, remoteCIDR)
		if ns != c.ns || ok != c.listed {
			t.Errorf("%s: namespace %q, %v; want %q, %v", c.ip, ns, ok, c.ns, c.listed)
		}
	}
}
