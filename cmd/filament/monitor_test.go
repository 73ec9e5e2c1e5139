package main

import (
	"bytes"
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/monitor"
)

func TestFormatEventICMPShowsTypeNotPorts(t *testing.T) {
	ev := types.Event{Time: time.Now(), Type: "drop", Reason: "policy denied", Direction: "ingress", Endpoint: 7, Protocol: "ICMP",
		Src: netip.MustParseAddrPort("10.0.0.1:4660"), Dst: netip.MustParseAddrPort("10.0.1.2:0")}
	got := formatEvent(ev)
	if !strings.Contains(got, "ICMP type 8 code 0 (echo request, id 4660) 10.0.0.1 identity") || strings.Contains(got, ":4660") || strings.Contains(got, ":0 ") {
		t.Fatalf("echo request: %s", got)
	}
	ev.Src, ev.Dst = netip.MustParseAddrPort("10.0.1.2:0"), netip.MustParseAddrPort("10.0.0.1:4660")
	if got := formatEvent(ev); !strings.Contains(got, "ICMP type 0 code 0 (echo reply, id 4660) 10.0.1.2 identity") {
		t.Fatalf("echo reply: %s", got)
	}
	ev.Src, ev.Dst = netip.MustParseAddrPort("10.0.1.2:0"), netip.MustParseAddrPort("10.0.0.1:0")
	if got := formatEvent(ev); !strings.Contains(got, "ICMP (not echo) 10.0.1.2 identity") {
		t.Fatalf("other ICMP: %s", got)
	}
	// The datapath's tuples since 2026-12-05 (parse.h icmp_tuple): echo
	// request (id, 0xff08), reply (0xff08, id), other types (0xff00|t twice).
	for _, c := range []struct{ src, dst, want string }{
		{"10.0.0.1:4660", "10.0.1.2:65288", "ICMP type 8 code 0 (echo request, id 4660) 10.0.0.1 identity"},
		{"10.0.1.2:65288", "10.0.0.1:4660", "ICMP type 0 code 0 (echo reply, id 4660) 10.0.1.2 identity"},
		{"10.0.1.2:65285", "10.0.0.1:65285", "ICMP type 5 10.0.1.2 identity"},
		{"10.0.0.1:7", "10.0.1.2:65293", "ICMP type 13 (request, id 7) 10.0.0.1 identity"},
		{"10.0.1.2:65293", "10.0.0.1:7", "ICMP type 14 (reply, id 7) 10.0.1.2 identity"},
	} {
		ev.Src, ev.Dst = netip.MustParseAddrPort(c.src), netip.MustParseAddrPort(c.dst)
		if got := formatEvent(ev); !strings.Contains(got, c.want) || strings.Contains(got, ":652") {
			t.Errorf("%s -> %s: %s, want %q", c.src, c.dst, got, c.want)
		}
	}
	ev.Protocol, ev.Src, ev.Dst = "TCP", netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.1.2:80")
	if got := formatEvent(ev); !strings.Contains(got, "TCP 10.0.0.1:40000 identity") || !strings.Contains(got, "-> 10.0.1.2:80 identity") {
		t.Fatalf("TCP keeps its ports: %s", got)
	}
}

// A redirected verdict and a translation say so; a translation names the
// frontend beside the backend it went to.
func TestFormatEventRedirectedAndTranslated(t *testing.T) {
	ev := types.Event{Time: time.Now(), Type: "policy-verdict", Direction: "egress", Endpoint: 7, Protocol: "TCP",
		Src: netip.MustParseAddrPort("10.0.0.1:40000"), Dst: netip.MustParseAddrPort("10.0.1.2:80")}
	if got := formatEvent(ev); !strings.Contains(got, "ALLOWED (new connection)") {
		t.Errorf("verdict: %s", got)
	}
	ev.Redirected = true
	if got := formatEvent(ev); !strings.Contains(got, "REDIRECTED (new connection, to the L7 proxy)") {
		t.Errorf("redirected: %s", got)
	}
	ev.Type, ev.Redirected, ev.Service = "translated", false, netip.MustParseAddrPort("10.96.0.10:80")
	if got := formatEvent(ev); !strings.Contains(got, "TRANSLATED (service 10.96.0.10:80)") || !strings.Contains(got, "-> 10.0.1.2:80 identity") {
		t.Errorf("translated: %s", got)
	}
}

// An audited verdict (policy audit mode) says so and what the connection
// would have been dropped for.
func TestFormatEventAudit(t *testing.T) {
	ev := types.Event{Time: time.Now(), Type: "policy-verdict", Direction: "ingress", Endpoint: 7, Protocol: "TCP",
		Src: netip.MustParseAddrPort("10.0.0.1:40000"), Dst: netip.MustParseAddrPort("10.0.1.2:80"), Audit: true, Reason: "policy denied"}
	if got := formatEvent(ev); !strings.Contains(got, "AUDIT (new connection, would be dropped: policy denied) ingress endpoint 7") {
		t.Errorf("audit: %s", got)
	}
}

// syncBuf is a bytes.Buffer safe to read while the command writes it.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// `filament monitor` says it is listening as soon as the agent accepted
// the stream, before any event.
func TestMonitorSaysListeningBeforeTheFirstEvent(t *testing.T) {
	hub := monitor.NewHub(func(identity.NumericIdentity) []string { return nil })
	s := &api.Server{Monitor: hub}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	if err := s.Serve(sock); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	var out, errOut syncBuf
	root := newRoot(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"--socket", sock, "monitor"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(errOut.String(), "Listening"); {
		if time.Now().After(deadline) {
			t.Fatalf("no listening line before any event; stderr %q stdout %q", errOut.String(), out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out.String() != "" {
		t.Fatalf("stdout before any event: %q", out.String())
	}
	// The stream is live: an event published now is printed.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "ICMP type 8"); {
		if time.Now().After(deadline) {
			t.Fatalf("event not printed: %q", out.String())
		}
		hub.Publish(monitor.Event{Type: "drop", Reason: "policy denied", Protocol: "ICMP",
			Src: netip.MustParseAddrPort("10.0.0.1:7"), Dst: netip.MustParseAddrPort("10.0.0.2:0")})
		time.Sleep(50 * time.Millisecond)
	}
}

func TestFormatEventDNS(t *testing.T) {
	ev := types.Event{Time: time.Now(), Type: "l7", Direction: "egress", Endpoint: 3, Protocol: "UDP",
		Src: netip.MustParseAddrPort("10.244.0.3:40000"), Dst: netip.MustParseAddrPort("10.244.0.2:53"),
		L7: &types.L7{Protocol: "DNS/UDP", Method: "A", Host: "www.example.com.", Status: 0, Verdict: "forwarded",
			DNSRcode: "NOERROR", DNSAnswers: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}, DNSTTL: 30}}
	got := formatEvent(ev)
	if !strings.Contains(got, "L7 FORWARDED egress endpoint 3: DNS/UDP A www.example.com. -> NOERROR [192.0.2.1 192.0.2.2] ttl 30") {
		t.Fatalf("allowed query: %s", got)
	}
	ev.Reason, ev.L7.Verdict, ev.L7.DNSRcode, ev.L7.DNSAnswers, ev.L7.DNSTTL = "no egress DNS rule matches", "denied", "REFUSED", nil, 0
	if got := formatEvent(ev); !strings.Contains(got, "L7 DENIED (no egress DNS rule matches) egress endpoint 3: DNS/UDP A www.example.com. -> REFUSED []") {
		t.Fatalf("denied query: %s", got)
	}
}

// A workload's bytes (a Kafka topic or client ID with ESC sequences, a
// CR, C1 controls, bidi overrides) reached the operator's terminal raw:
// they could erase a DENIED line or forge others. They are escaped as
// filament observe escapes them.
func TestFormatEventEscapesWorkloadBytes(t *testing.T) {
	ev := types.Event{Time: time.Now(), Type: "l7", Direction: "ingress", Endpoint: 3, Protocol: "TCP",
		Src: netip.MustParseAddrPort("10.244.0.3:40000"), Dst: netip.MustParseAddrPort("10.244.0.2:9092"),
		L7: &types.L7{Protocol: "Kafka", Method: "Produce", Path: "t\x1b[2K\r\x1b[1Aforged\u009b1A\u202e", Status: 29, Verdict: "denied",
			Notes: []string{"client ID \x1b]52;c;ZXZpbA==\x07"}}}
	got := formatEvent(ev)
	for _, bad := range []string{"\x1b", "\r", "\x07", "\u009b", "\u202e"} {
		if strings.Contains(got, bad) {
			t.Errorf("monitor line holds %q raw: %q", bad, got)
		}
	}
	if !strings.Contains(got, `t\x1b[2K\x0d\x1b[1Aforged`) {
		t.Errorf("monitor line: %q, want the topic escaped", got)
	}
}
