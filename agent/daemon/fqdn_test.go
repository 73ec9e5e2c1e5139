package daemon

import (
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/datapath"
)

// An expired address stays for an endpoint while the flows that endpoint
// had open when the address expired for it are: another endpoint's flows
// keep nothing for it, and an endpoint whose entry expires later (another
// name of the same address) pins its own flows then, not the first
// endpoint's from earlier (its connection opened meanwhile is not cut).
func TestKeepPinsPerEndpoint(t *testing.T) {
	d := &dnsNames{pins: map[pinKey]map[datapath.Flow]bool{}}
	a := netip.MustParseAddr("198.51.100.7")
	flow := func(ep uint16, port uint16) datapath.Flow {
		return datapath.Flow{Src: netip.AddrPortFrom(netip.MustParseAddr("10.244.0.9"), port), Dst: netip.AddrPortFrom(a, 443), Proto: 6, Endpoint: ep}
	}
	x1, y1 := flow(1, 40000), flow(2, 40001)
	// a.cdn -> a expires for endpoint 1 (its flow x1 open), endpoint 2 has
	// no flow yet: 1 keeps it, 2 does not.
	if !d.keep(a, 1, []datapath.Flow{x1}) {
		t.Fatal("endpoint 1 with a flow open at the expiry does not keep the address")
	}
	if d.keep(a, 2, []datapath.Flow{x1}) {
		t.Fatal("endpoint 2 keeps the address through endpoint 1's flow")
	}
	// Later b.cdn -> a (endpoint 2's lookup) expires: endpoint 2's flow
	// opened meanwhile keeps it for endpoint 2.
	if !d.keep(a, 2, []datapath.Flow{x1, y1}) {
		t.Fatal("endpoint 2's own flow, open when its entry expired, does not keep the address (its connection would be cut)")
	}
	// A flow endpoint 1 opens after its pin keeps nothing once x1 ends.
	if d.keep(a, 1, []datapath.Flow{flow(1, 40002), y1}) {
		t.Fatal("a flow opened after the expiry keeps the address")
	}
}
