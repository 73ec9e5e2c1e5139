package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/bpf"
)

// An event's TCP flags and reply flag reach the monitor event.
func TestDecodeEventTCPFlagsAndReply(t *testing.T) {
	for _, tc := range []struct {
		flags, tcp uint8
		reply      bool
	}{
		{0, monitor.TCPFlagSYN, false},
		{eventFlagReply, monitor.TCPFlagSYN | monitor.TCPFlagACK, true},
		{eventFlagReply | 0x80, monitor.TCPFlagFIN | monitor.TCPFlagCWR, true}, // unknown flag bits ignored
	} {
		var buf bytes.Buffer
		e := bpf.DatapathEvent{Type: EventPolicyVerdict, Proto: 6, Sport: 40000, Dport: 80, TcpFlags: tc.tcp, Flags: tc.flags}
		if err := binary.Write(&buf, binary.NativeEndian, &e); err != nil {
			t.Fatal(err)
		}
		ev, err := decodeEvent(buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if ev.TCPFlags != tc.tcp || ev.IsReply != tc.reply || ev.Type != "policy-verdict" || ev.Dst.Port() != 80 {
			t.Errorf("flags %#x, TCP %#x: decoded %+v", tc.flags, tc.tcp, ev)
		}
	}
}

// An unknown flow event mode is refused before the datapath is touched.
func TestSetFlowEventsRefusesUnknownMode(t *testing.T) {
	for _, mode := range []string{"", "all", "Connections", "packets"} {
		err := (&Datapath{}).SetFlowEvents(mode)
		if !errors.Is(err, ErrFlowEvents) {
			t.Errorf("mode %q: %v, want ErrFlowEvents", mode, err)
		}
	}
}
