package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
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

func encode(t *testing.T, e bpf.DatapathEvent) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, &e); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 48 {
		t.Fatalf("struct event is %d bytes, want 48", buf.Len())
	}
	return buf.Bytes()
}

// The proxy flag makes a new connection's verdict a redirected one; on
// other events it means nothing.
func TestDecodeEventRedirected(t *testing.T) {
	for _, tc := range []struct {
		typ, flags uint8
		redirected bool
	}{
		{EventPolicyVerdict, eventFlagProxy, true},
		{EventPolicyVerdict, eventFlagProxy | eventFlagReply, true},
		{EventPolicyVerdict, 0, false},
		{EventDrop, eventFlagProxy, false},
	} {
		ev, err := decodeEvent(encode(t, bpf.DatapathEvent{Type: tc.typ, Proto: 6, Dport: 80, Flags: tc.flags}))
		if err != nil {
			t.Fatal(err)
		}
		if ev.Redirected != tc.redirected {
			t.Errorf("type %d flags %#x: redirected %v, want %v", tc.typ, tc.flags, ev.Redirected, tc.redirected)
		}
	}
}

// The audit flag makes a policy verdict an audited one, keeping the
// reason policy would have dropped it for; on other events it means
// nothing.
func TestDecodeEventAudit(t *testing.T) {
	for _, tc := range []struct {
		typ, flags, reason uint8
		audit              bool
	}{
		{EventPolicyVerdict, eventFlagAudit, ReasonPolicyDenied, true},
		{EventPolicyVerdict, eventFlagAudit | eventFlagReply, ReasonPolicyDenyRule, true},
		{EventPolicyVerdict, 0, ReasonForwarded, false},
		{EventDrop, eventFlagAudit, ReasonPolicyDenied, false},
	} {
		ev, err := decodeEvent(encode(t, bpf.DatapathEvent{Type: tc.typ, Reason: tc.reason, Proto: 6, Dport: 80, Flags: tc.flags}))
		if err != nil {
			t.Fatal(err)
		}
		if ev.Audit != tc.audit || ev.ReasonCode != tc.reason || ev.Reason != ReasonName(tc.reason) {
			t.Errorf("type %d flags %#x reason %d: audit %v reason %d %q, want audit %v", tc.typ, tc.flags, tc.reason, ev.Audit, ev.ReasonCode, ev.Reason, tc.audit)
		}
	}
}

// A translation carries the client and the backend as the addresses and
// the frontend where other events have the interface and length.
func TestDecodeEventTranslated(t *testing.T) {
	e := bpf.DatapathEvent{Type: EventTranslated, Dir: 0, Proto: 6, EpId: 3, PeerEp: 4, SrcIdentity: 4100, DstIdentity: 4200,
		Saddr: ipv4(netip.MustParseAddr("10.0.0.2")), Daddr: ipv4(netip.MustParseAddr("10.0.1.3")), Dport: 8080,
		Ifindex: ipv4(netip.MustParseAddr("10.96.0.10")), Len: 80}
	ev, err := decodeEvent(encode(t, e))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != "translated" || ev.Service != netip.MustParseAddrPort("10.96.0.10:80") ||
		ev.Src != netip.MustParseAddrPort("10.0.0.2:0") || ev.Dst != netip.MustParseAddrPort("10.0.1.3:8080") ||
		ev.Endpoint != 3 || ev.PeerEP != 4 || ev.Direction != "egress" || ev.Protocol != "TCP" || ev.SrcIdentity != 4100 || ev.DstIdentity != 4200 {
		t.Errorf("decoded %+v", ev)
	}
	// Not an interface: the monitor must not name an endpoint by it.
	if ev.IfIndex != 0 || ev.Length != 0 {
		t.Errorf("interface %d length %d, want none", ev.IfIndex, ev.Length)
	}
	// Other events have no frontend.
	e.Type = EventPolicyVerdict
	if ev, _ := decodeEvent(encode(t, e)); ev.Service.IsValid() || ev.IfIndex == 0 {
		t.Errorf("a policy verdict: service %v, interface %d", ev.Service, ev.IfIndex)
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

// A revoked flow's entry (kept so its packets stay judged) is no live
// flow: not counted, and no destination learned DNS addresses are kept
// for. Found 2026-12-06 by rereading the tombstone.
func TestRevokedEntryNotLive(t *testing.T) {
	now := uint64(1000)
	for _, c := range []struct {
		v    bpf.DatapathCtEntry
		want bool
	}{
		{bpf.DatapathCtEntry{Expires: now + 1}, true},
		{bpf.DatapathCtEntry{Expires: now}, false},
		{bpf.DatapathCtEntry{Expires: now + 1, Flags: ctRevoked}, false},
		{bpf.DatapathCtEntry{Expires: now + 1, Flags: 1}, true},
	} {
		if got := live(&c.v, now); got != c.want {
			t.Errorf("entry %+v: live %v, want %v", c.v, got, c.want)
		}
	}
}
