package hubble

import (
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/hubble/filter"
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

// A new connection whose verdict sends it to the L7 proxy is REDIRECTED
// (still a policy verdict); one that is not stays FORWARDED.
func TestFlowRedirected(t *testing.T) {
	ev := monitor.Event{Time: time.Unix(1000, 0), Type: "policy-verdict", Direction: "ingress", Endpoint: 1, Protocol: "TCP",
		Src: netip.MustParseAddrPort("10.0.0.2:40000"), Dst: netip.MustParseAddrPort("10.0.1.3:80"), TCPFlags: monitor.TCPFlagSYN}
	if f := (Meta{}).Flow(ev); f.GetVerdict() != flow.Verdict_FORWARDED {
		t.Errorf("a plain verdict: %v, want FORWARDED", f.GetVerdict())
	}
	ev.Redirected = true
	f := Meta{}.Flow(ev)
	if f.GetVerdict() != flow.Verdict_REDIRECTED || f.GetEventType().GetType() != eventPolicyVerdict ||
		f.GetTrafficDirection() != flow.TrafficDirection_INGRESS || !f.GetL4().GetTCP().GetFlags().GetSYN() {
		t.Errorf("redirected: %v", f)
	}
	redirected, err := filter.Compile([]*flow.FlowFilter{{Verdict: []flow.Verdict{flow.Verdict_REDIRECTED}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !redirected.Pass(f) || redirected.Pass(Meta{}.Flow(monitor.Event{Type: "policy-verdict"})) {
		t.Error("--verdict REDIRECTED does not select the redirected flow alone")
	}
}

// A policy verdict of audit mode is AUDIT with the drop reason it would
// have had (a deny rule's too), selected by --verdict AUDIT alone.
func TestFlowAudit(t *testing.T) {
	ev := monitor.Event{Time: time.Unix(1000, 0), Type: "policy-verdict", Direction: "ingress", Endpoint: 1, Protocol: "TCP",
		Src: netip.MustParseAddrPort("10.0.0.2:40000"), Dst: netip.MustParseAddrPort("10.0.1.3:80"), TCPFlags: monitor.TCPFlagSYN,
		Audit: true, ReasonCode: datapath.ReasonPolicyDenied}
	f := Meta{}.Flow(ev)
	if f.GetVerdict() != flow.Verdict_AUDIT || f.GetDropReasonDesc() != flow.DropReason_POLICY_DENIED ||
		f.GetDropReason() != uint32(flow.DropReason_POLICY_DENIED) || f.GetEventType().GetType() != eventPolicyVerdict ||
		f.GetTrafficDirection() != flow.TrafficDirection_INGRESS {
		t.Errorf("audited: %v", f)
	}
	ev.ReasonCode = datapath.ReasonPolicyDenyRule
	if f := (Meta{}).Flow(ev); f.GetVerdict() != flow.Verdict_AUDIT || f.GetDropReasonDesc() != flow.DropReason_POLICY_DENY {
		t.Errorf("audited deny rule: %v", f)
	}
	audit, err := filter.Compile([]*flow.FlowFilter{{Verdict: []flow.Verdict{flow.Verdict_AUDIT}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain := Meta{}.Flow(monitor.Event{Type: "policy-verdict"})
	if !audit.Pass(f) || audit.Pass(plain) || plain.GetDropReasonDesc() != flow.DropReason_DROP_REASON_UNKNOWN {
		t.Error("--verdict AUDIT does not select the audited flow alone, or a plain verdict has a drop reason")
	}
}

// A translation is TRANSLATED from the client to the backend, naming the
// service whose frontend it was: at a socket (the client's egress: a
// trace-sock flow after translation) or from the network (NodePort, the
// backend's ingress).
func TestFlowTranslated(t *testing.T) {
	services := func(fe netip.AddrPort, proto string) (string, string) {
		if fe == netip.MustParseAddrPort("10.96.0.10:80") && proto == "TCP" {
			return "prod", "web"
		}
		return "", ""
	}
	pods := func(ep uint16) (string, string) { return "prod", map[uint16]string{1: "client", 2: "web-1"}[ep] }
	m := Meta{NodeName: "n1", Service: services, Pod: pods}
	sock := monitor.Event{Time: time.Unix(1000, 0), Type: "translated", Direction: "egress", Endpoint: 1, PeerEP: 2, Protocol: "TCP",
		SrcIdentity: 4100, DstIdentity: 4200, Src: netip.MustParseAddrPort("10.0.0.2:0"), Dst: netip.MustParseAddrPort("10.0.1.3:8080"),
		Service: netip.MustParseAddrPort("10.96.0.10:80")}
	f := m.Flow(sock)
	if f.GetVerdict() != flow.Verdict_TRANSLATED || f.GetType() != flow.FlowType_SOCK || f.GetEventType().GetType() != eventTraceSock ||
		f.GetSockXlatePoint() != flow.SocketTranslationPoint_SOCK_XLATE_POINT_POST_DIRECTION_FWD {
		t.Errorf("socket translation: verdict %v type %v event %v point %v", f.GetVerdict(), f.GetType(), f.GetEventType(), f.GetSockXlatePoint())
	}
	if f.GetIP().GetSource() != "10.0.0.2" || f.GetIP().GetDestination() != "10.0.1.3" || f.GetL4().GetTCP().GetDestinationPort() != 8080 {
		t.Errorf("socket translation: IP %v L4 %v, want the client to the backend", f.GetIP(), f.GetL4())
	}
	if f.GetL4().GetTCP().GetFlags() != nil {
		t.Errorf("a translation has no packet's TCP flags: %v", f.GetL4().GetTCP().GetFlags())
	}
	if !proto.Equal(f.GetDestinationService(), &flow.Service{Name: "web", Namespace: "prod"}) {
		t.Errorf("destination_service %v, want prod/web", f.GetDestinationService())
	}
	if f.GetSource().GetPodName() != "client" || f.GetDestination().GetPodName() != "web-1" || f.GetSource().GetIdentity() != 4100 {
		t.Errorf("endpoints %v -> %v", f.GetSource(), f.GetDestination())
	}

	// The node's own socket: no source address known, none shown.
	host := sock
	host.Endpoint, host.SrcIdentity, host.Src = 0, 1, netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	if f := m.Flow(host); f.GetIP().GetSource() != "" || f.GetSource().GetIdentity() != 1 {
		t.Errorf("the node's socket: IP %v source %v", f.GetIP(), f.GetSource())
	}

	// NodePort from the network, at the backend's ingress.
	np := sock
	np.Direction, np.Endpoint, np.PeerEP, np.SrcIdentity = "ingress", 2, 0, 2
	np.Src = netip.MustParseAddrPort("192.168.0.99:51000")
	np.Service = netip.MustParseAddrPort("192.168.0.1:30080")
	f = m.Flow(np)
	if f.GetVerdict() != flow.Verdict_TRANSLATED || f.GetType() != flow.FlowType_L3_L4 || f.GetEventType().GetType() != eventTrace ||
		f.GetTraceObservationPoint() != flow.TraceObservationPoint_FROM_NETWORK || f.GetDestination().GetPodName() != "web-1" {
		t.Errorf("NodePort translation: %v", f)
	}
	if f.GetDestinationService() != nil {
		t.Errorf("a frontend no service has: destination_service %v", f.GetDestinationService())
	}

	// No lookup: no service, the flow all the same.
	if f := (Meta{}).Flow(sock); f.GetVerdict() != flow.Verdict_TRANSLATED || f.GetDestinationService() != nil {
		t.Errorf("without Meta.Service: %v", f)
	}
	translated, err := filter.Compile([]*flow.FlowFilter{{Verdict: []flow.Verdict{flow.Verdict_TRANSLATED}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !translated.Pass(m.Flow(sock)) || translated.Pass(m.Flow(monitor.Event{Type: "policy-verdict"})) {
		t.Error("--verdict TRANSLATED does not select the translation alone")
	}
}

// An L7 request the proxy allowed but could not forward (the upstream
// unreachable: the proxy answered 502) is an ERROR flow, not a drop.
func TestFlowL7Error(t *testing.T) {
	ev := events(time.Now())[3]
	ev.L7.Verdict, ev.L7.Status = "error", 502
	f := Meta{NodeName: "n1"}.Flow(ev)
	if f.Verdict != flow.Verdict_ERROR || f.DropReasonDesc != flow.DropReason_DROP_REASON_UNKNOWN || f.L7.GetHttp().GetCode() != 502 {
		t.Errorf("error record: verdict %v reason %v code %d", f.Verdict, f.DropReasonDesc, f.L7.GetHttp().GetCode())
	}
}
