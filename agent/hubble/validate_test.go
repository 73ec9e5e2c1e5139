package hubble

import (
	"errors"
	"testing"

	"github.com/filament-net/filament/agent/hubble/pb/flow"
)

func TestValidateFilters(t *testing.T) {
	ok := []*flow.FlowFilter{{SourcePod: []string{"default/client"}, Verdict: []flow.Verdict{flow.Verdict_DROPPED}}}
	if err := ValidateFilters(ok, ok); err != nil {
		t.Errorf("supported filters: %v", err)
	}
	for name, ff := range map[string]*flow.FlowFilter{
		"unsupported field": {HttpHeader: []*flow.HTTPHeader{{Key: "x"}}},
		"bad value":         {DestinationPort: []string{"70000"}},
	} {
		if err := ValidateFilters(nil, []*flow.FlowFilter{ff}); !errors.Is(err, ErrFilter) {
			t.Errorf("%s in the deny list: %v, want ErrFilter", name, err)
		}
		if err := ValidateFilters([]*flow.FlowFilter{ff}, nil); !errors.Is(err, ErrFilter) {
			t.Errorf("%s in the allow list: %v, want ErrFilter", name, err)
		}
	}
}
