package lab_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// A pod cannot reach another node's control ports on that node's pod
// gateway address (the first address of its pod CIDR, on filament_host):
// n1 routes it to n2 like any of n2's pods, and n2 delivers it to a
// listener on every address, yet it is n2's own address. Found
// 2026-12-05 by reading the datapath: the gateway is neither a node's
// underlay address nor in its other addresses (pod CIDRs are left out
// of those), nor of identity remote-node, so the control-port check
// passed it. Ordinary ports stay open, as on the underlay address.
func TestPodCannotReachControlPortsOnAnotherNodesGateway(t *testing.T) {
	for _, routing := range []string{"tunnel", "native"} {
		t.Run(routing, func(t *testing.T) {
			l := labtest.UpRouting(t, 2, routing)
			a := labtest.Pod(t, l, "n1", "prober", "app=prober")
			b := labtest.Pod(t, l, "n2", "target", "app=target")
			n2, _ := l.Node("n2")
			if err := pingWithin(t, l, "prober", b.IP, 10*time.Second); err != nil {
				t.Fatalf("before: %v", err)
			}
			gw := netip.MustParsePrefix(n2.PodCIDR).Masked().Addr().Next().String()
			n2NS := lab.NetNSPath(n2.NetNS)
			defer acceptOn(t, n2NS, net.JoinHostPort(gw, "7946")).Close()
			serve(t, n2NS, 7000)
			podNS := lab.NetNSPath(a.NetNS)
			// In tunnel routing n1 has no way to n2's gateway at all (no
			// ipcache entry: from_host drops it); natively it is routed.
			if open := reach(t, podNS, "tcp", gw, 7000); open != (routing == "native") {
				t.Fatalf("pod reaches an ordinary port on n2's gateway (%s:7000): %v, want %v", gw, open, routing == "native")
			}
			if dials(t, podNS, gw, 7946) {
				t.Errorf("pod on n1 reaches a control port (7946) on n2's pod gateway %s", gw)
			}
			// Its own node's gateway is closed too (delivered locally).
			n1, _ := l.Node("n1")
			own := netip.MustParsePrefix(n1.PodCIDR).Masked().Addr().Next().String()
			defer acceptOn(t, lab.NetNSPath(n1.NetNS), net.JoinHostPort(own, "7946")).Close()
			if dials(t, podNS, own, 7946) {
				t.Errorf("pod reaches a control port (7946) on its own node's gateway %s", own)
			}
		})
	}
}
