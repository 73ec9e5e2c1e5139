package filter

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/filament-net/filament/agent/hubble/pb/flow"
)

// FuzzFlowFilter: any FlowFilter a client sends (the wire bytes of one)
// either compiles or is refused with ErrInvalid, and a compiled filter
// decides every flow without failing; a filter refused once is refused
// again (no state), one accepted decides the same flow the same way.
func FuzzFlowFilter(f *testing.F) {
	for _, ff := range []*flow.FlowFilter{
		{SourcePod: []string{"default/client"}, Verdict: []flow.Verdict{flow.Verdict_DROPPED}},
		{DestinationLabel: []string{"k8s:app=web", "app in (a,b)"}, DestinationPort: []string{"80"}},
		{HttpPath: []string{"^/public/.*", "("}, HttpStatusCode: []string{"4+", "200"}},
		{DestinationFqdn: []string{"*.allowed.test"}, Protocol: []string{"dns"}},
		{SourceIp: []string{"10.0.0.0/8", "bad"}, EventType: []*flow.EventTypeFilter{{Type: 129}}},
		{HttpHeader: []*flow.HTTPHeader{{Key: "x"}}},
	} {
		b, _ := proto.Marshal(ff)
		f.Add(b)
	}
	flows := []*flow.Flow{{}, {L7: &flow.Layer7{Record: &flow.Layer7_Http{Http: &flow.HTTP{Url: "%zz"}}}},
		{Verdict: flow.Verdict_DROPPED, NodeName: "c1/n1", IP: &flow.IP{Source: "10.0.0.1", Destination: "10.0.0.2"},
			Source:      &flow.Endpoint{Namespace: "default", PodName: "client", Labels: []string{"k8s:app=client"}},
			Destination: &flow.Endpoint{Namespace: "default", PodName: "web", Labels: []string{"k8s:app=web"}},
			L4:          &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{SourcePort: 40000, DestinationPort: 80}}},
			EventType:   &flow.CiliumEventType{Type: 1}},
		{Time: timestamppb.New(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)), DestinationNames: []string{"www.allowed.test"},
			L7: &flow.Layer7{Record: &flow.Layer7_Dns{Dns: &flow.DNS{Query: "www.allowed.test.", Rcode: 3}}}},
		{L7: &flow.Layer7{Record: &flow.Layer7_Http{Http: &flow.HTTP{Code: 403, Method: "POST", Url: "http://web/private"}}}}}
	f.Fuzz(func(t *testing.T, b []byte) {
		ff := &flow.FlowFilter{}
		if proto.Unmarshal(b, ff) != nil {
			return
		}
		m, err := compileFilter(ff)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("refused without ErrInvalid: %v", err)
			}
			if _, again := compileFilter(ff); again == nil {
				t.Fatal("refused once, accepted again")
			}
			return
		}
		m2, _ := compileFilter(ff)
		for _, fl := range flows {
			if m.ok(fl) != m2.ok(fl) {
				t.Fatalf("the same filter decided %v two ways", fl)
			}
		}
	})
}
