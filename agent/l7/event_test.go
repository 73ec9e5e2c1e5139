package l7

import (
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/proxy"
)

// A record becomes an event of the endpoint whose policy applied, with
// the other side as its peer endpoint when that is local too; a record
// without a policy side or with a remote peer names none.
func TestRecordEventEndpoints(t *testing.T) {
	client, server, remote := netip.MustParseAddr("10.244.0.3"), netip.MustParseAddr("10.244.0.4"), netip.MustParseAddr("10.244.1.9")
	ids := map[netip.Addr]uint16{client: 7, server: 9}
	s := &Supervisor{cfg: Config{EndpointByIP: func(ip netip.Addr) (uint16, bool) {
		id, ok := ids[ip]
		return id, ok
	}}}
	for _, tc := range []struct {
		name         string
		r            proxy.Record
		endpoint, ep uint16
	}{
		{"ingress, both local", proxy.Record{Direction: proxy.Ingress, Endpoint: server, SrcIP: client, DstIP: server}, 9, 7},
		{"egress, both local", proxy.Record{Direction: proxy.Egress, Endpoint: client, SrcIP: client, DstIP: server}, 7, 9},
		{"egress to a remote pod", proxy.Record{Direction: proxy.Egress, Endpoint: client, SrcIP: client, DstIP: remote}, 7, 0},
		{"ingress from a remote pod", proxy.Record{Direction: proxy.Ingress, Endpoint: server, SrcIP: remote, DstIP: server}, 9, 0},
		{"no policy side", proxy.Record{SrcIP: remote, DstIP: server}, 0, 9},
	} {
		ev := s.event(tc.r)
		if ev.Endpoint != tc.endpoint || ev.PeerEP != tc.ep {
			t.Errorf("%s: endpoint %d, peer %d; want %d, %d", tc.name, ev.Endpoint, ev.PeerEP, tc.endpoint, tc.ep)
		}
	}
}
