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

// tcp_flags (hubble observe --tcp-flags): a flow matches a value when it
// has every flag the value sets; values are OR'd; a flow without TCP
// flags (UDP, an L7 record) matches none.
func TestTCPFlags(t *testing.T) {
	tcpFlow := func(fl *flow.TCPFlags) *flow.Flow {
		return &flow.Flow{L4: &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{DestinationPort: 80, Flags: fl}}}}
	}
	syn := tcpFlow(&flow.TCPFlags{SYN: true})
	synAck := tcpFlow(&flow.TCPFlags{SYN: true, ACK: true})
	ack := tcpFlow(&flow.TCPFlags{ACK: true})
	fin := tcpFlow(&flow.TCPFlags{FIN: true, ACK: true})
	none := tcpFlow(nil)
	udp := &flow.Flow{L4: &flow.Layer4{Protocol: &flow.Layer4_UDP{UDP: &flow.UDP{DestinationPort: 53}}}}
	flows := map[string]*flow.Flow{"syn": syn, "syn-ack": synAck, "ack": ack, "fin-ack": fin, "no flags": none, "udp": udp}
	for _, tc := range []struct {
		name string
		vals []*flow.TCPFlags
		want []string
	}{
		{"SYN", []*flow.TCPFlags{{SYN: true}}, []string{"syn", "syn-ack"}},
		{"SYN,ACK", []*flow.TCPFlags{{SYN: true, ACK: true}}, []string{"syn-ack"}},
		{"SYN or FIN", []*flow.TCPFlags{{SYN: true}, {FIN: true}}, []string{"syn", "syn-ack", "fin-ack"}},
		{"RST", []*flow.TCPFlags{{RST: true}}, nil},
		{"none set: any flow with flags", []*flow.TCPFlags{{}}, []string{"syn", "syn-ack", "ack", "fin-ack"}},
	} {
		fs, err := Compile([]*flow.FlowFilter{{TcpFlags: tc.vals}}, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for name, f := range flows {
			want := false
			for _, w := range tc.want {
				want = want || w == name
			}
			if got := fs.Pass(f); got != want {
				t.Errorf("--tcp-flags %s on the %s flow: %v, want %v", tc.name, name, got, want)
			}
		}
	}
	// As a deny filter: everything but SYNs.
	fs, err := Compile(nil, []*flow.FlowFilter{{TcpFlags: []*flow.TCPFlags{{SYN: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	if fs.Pass(syn) || !fs.Pass(ack) || !fs.Pass(udp) {
		t.Error("deny tcp_flags SYN: want SYNs dropped, the rest passed")
	}
	// Its JSON form (config flags, the exporter's lists).
	ffs, err := Parse(`{"tcp_flags":[{"SYN":true,"ACK":true}]}`)
	if err != nil {
		t.Fatal(err)
	}
	if fs, err = Compile(ffs, nil); err != nil || !fs.Pass(synAck) || fs.Pass(syn) {
		t.Errorf("parsed tcp_flags SYN,ACK: %v", err)
	}
}
