package hubble

import (
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/monitor"
)

// A packet event's TCP flags and reply direction reach the flow; an L7
// record (a request, not a packet) has no TCP flags.
func TestFlowTCPFlagsAndReply(t *testing.T) {
	base := monitor.Event{Time: time.Unix(1000, 0), Direction: "egress", Endpoint: 1, Protocol: "TCP",
		Src: netip.MustParseAddrPort("10.0.0.2:40000"), Dst: netip.MustParseAddrPort("10.0.1.3:80")}
	for _, tc := range []struct {
		name  string
		ev    func(monitor.Event) monitor.Event
		flags *flow.TCPFlags
		reply bool
	}{
		{"new connection", func(e monitor.Event) monitor.Event {
			e.Type, e.TCPFlags = "policy-verdict", monitor.TCPFlagSYN
			return e
		}, &flow.TCPFlags{SYN: true}, false},
		{"dropped reply", func(e monitor.Event) monitor.Event {
			e.Type, e.TCPFlags, e.IsReply = "drop", monitor.TCPFlagSYN|monitor.TCPFlagACK, true
			return e
		}, &flow.TCPFlags{SYN: true, ACK: true}, true},
		{"every flag", func(e monitor.Event) monitor.Event {
			e.Type, e.TCPFlags = "drop", 0xff
			return e
		}, &flow.TCPFlags{FIN: true, SYN: true, RST: true, PSH: true, ACK: true, URG: true, ECE: true, CWR: true}, false},
		{"L7 record", func(e monitor.Event) monitor.Event {
			e.Type, e.L7 = "l7", &monitor.L7{Protocol: "HTTP/1.1", Method: "GET", Host: "a", Path: "/", Verdict: "forwarded"}
			return e
		}, nil, false},
	} {
		f := Meta{NodeName: "n1"}.Flow(tc.ev(base))
		if got := f.GetL4().GetTCP().GetFlags(); !proto.Equal(got, tc.flags) {
			t.Errorf("%s: TCP flags %v, want %v", tc.name, got, tc.flags)
		}
		if f.GetIsReply() == nil || f.GetIsReply().GetValue() != tc.reply {
			t.Errorf("%s: is_reply %v, want %v", tc.name, f.GetIsReply(), tc.reply)
		}
	}
}
