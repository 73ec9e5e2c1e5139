package filter

import (
	"errors"
	"testing"

	"github.com/filament-net/filament/agent/hubble/pb/flow"
)

func TestCompileRefuses(t *testing.T) {
	ok := []*flow.FlowFilter{{SourcePod: []string{"default/client"}, Verdict: []flow.Verdict{flow.Verdict_DROPPED}}}
	if err := validate(ok, ok); err != nil {
		t.Errorf("supported filters: %v", err)
	}
	for name, ff := range map[string]*flow.FlowFilter{
		"unsupported field": {HttpHeader: []*flow.HTTPHeader{{Key: "x"}}},
		"bad value":         {DestinationPort: []string{"70000"}},
	} {
		if err := validate(nil, []*flow.FlowFilter{ff}); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s in the deny list: %v, want ErrInvalid", name, err)
		}
		if err := validate([]*flow.FlowFilter{ff}, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s in the allow list: %v, want ErrInvalid", name, err)
		}
	}
}

func validate(allow, deny []*flow.FlowFilter) error {
	_, err := Compile(allow, deny)
	return err
}
