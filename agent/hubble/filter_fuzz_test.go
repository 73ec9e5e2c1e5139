package hubble

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/filament-net/filament/agent/hubble/pb/flow"
)

// FuzzFlowFilter: any FlowFilter a client sends (the wire bytes of one)
// either compiles or is refused with ErrFilter, and a compiled filter
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
	flows := []*flow.Flow{}
	for _, ev := range events(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) {
		flows = append(flows, Meta{NodeName: "n1"}.Flow(ev))
	}
	flows = append(flows, &flow.Flow{}, &flow.Flow{L7: &flow.Layer7{Record: &flow.Layer7_Http{Http: &flow.HTTP{Url: "%zz"}}}})
	f.Fuzz(func(t *testing.T, b []byte) {
		ff := &flow.FlowFilter{}
		if proto.Unmarshal(b, ff) != nil {
			return
		}
		m, err := compileFilter(ff)
		if err != nil {
			if !errors.Is(err, ErrFilter) {
				t.Fatalf("refused without ErrFilter: %v", err)
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
