package datapath

import (
	"fmt"
	"net/netip"

	"github.com/filament-net/filament/bpf"
)

// Enforcement reads from the endpoints map whether the programs enforce
// policy on the endpoint at ip in each direction, as the kernel holds it.
func (d *Datapath) Enforcement(ip netip.Addr) (ingress, egress bool, err error) {
	k := ipv4(ip)
	var v bpf.DatapathEndpointInfo
	if err := d.objs.Endpoints.Lookup(&k, &v); err != nil {
		return false, false, fmt.Errorf("endpoints map: lookup %s: %w", ip, err)
	}
	return v.Flags&flagIngressEnforced != 0, v.Flags&flagEgressEnforced != 0, nil
}
