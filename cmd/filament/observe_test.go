package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/crypto/ca"
)

var obsT0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// obsEvents: a drop at web's ingress, a policy verdict, an L7 request
// denied (403), a DNS answer.
func obsEvents() []monitor.Event {
	base := monitor.Event{Src: netip.MustParseAddrPort("10.244.0.3:40000"), Dst: netip.MustParseAddrPort("10.244.0.2:80"), Protocol: "TCP",
		Direction: "ingress", Endpoint: 1, PeerEP: 2, SrcIdentity: 65793, DstIdentity: 65792,
		SrcLabels: []string{"k8s:app=client"}, DstLabels: []string{"k8s:app=web"}}
	drop, fwd, deny, dns := base, base, base, base
	drop.Time, drop.Type, drop.ReasonCode = obsT0, "drop", 1
	fwd.Time, fwd.Type = obsT0.Add(time.Second), "policy-verdict"
	deny.Time, deny.Type = obsT0.Add(2*time.Second), "l7"
	deny.L7 = &monitor.L7{Protocol: "HTTP/1.1", Method: "POST", Host: "web", Path: "/private", Status: 403, Verdict: "denied", Latency: 1500 * time.Microsecond}
	dns.Time, dns.Type, dns.Protocol, dns.Direction, dns.Endpoint, dns.PeerEP = obsT0.Add(3*time.Second), "l7", "UDP", "egress", 2, 0
	dns.Dst, dns.DstIdentity, dns.DstLabels = netip.MustParseAddrPort("10.244.0.9:53"), 2, nil
	dns.L7 = &monitor.L7{Protocol: "DNS/UDP", Method: "A", Host: "www.allowed.test.", Verdict: "forwarded",
		DNSAnswers: []netip.Addr{netip.MustParseAddr("10.0.9.1")}, DNSTTL: 30}
	return []monitor.Event{drop, fwd, deny, dns}
}

var obsMeta = hubble.Meta{NodeName: "n1", ClusterName: "c1", Pod: func(ep uint16) (string, string) {
	return "default", map[uint16]string{1: "web", 2: "client"}[ep]
}}

func TestCompactFlow(t *testing.T) {
	evs := obsEvents()
	for i, want := range []string{
		"Dec  1 10:00:00.000 [c1/n1]: default/client:40000 (ID:65793) -> default/web:80 (ID:65792) drop DROPPED (POLICY_DENIED)",
		"Dec  1 10:00:01.000 [c1/n1]: default/client:40000 (ID:65793) -> default/web:80 (ID:65792) policy-verdict INGRESS ALLOWED (TCP)",
		"Dec  1 10:00:02.000 [c1/n1]: default/client:40000 (ID:65793) -> default/web:80 (ID:65792) http-response DROPPED (HTTP/1.1 POST http://web/private => 403 in 1.5ms; POLICY_DENIED)",
		"Dec  1 10:00:03.000 [c1/n1]: default/client:40000 (ID:65793) -> www.allowed.test:53 (world) dns-response FORWARDED (DNS www.allowed.test. A => rcode 0 [10.0.9.1] ttl 30 in 0s)",
	} {
		if got := compactFlow(obsMeta.Flow(evs[i])); got != want {
			t.Errorf("event %d:\n got %s\nwant %s", i, got, want)
		}
	}
	// An audited connection (policy audit mode) says what it would have
	// been dropped for.
	audit := evs[1]
	audit.Audit, audit.ReasonCode = true, 1
	if got, want := compactFlow(obsMeta.Flow(audit)), "policy-verdict INGRESS AUDIT (POLICY_DENIED)"; !strings.HasSuffix(got, want) {
		t.Errorf("audited: %s, want it to end with %s", got, want)
	}
	// A reply swaps the ends and the arrow; unknown direction is <>; an
	// IPv6 address with a port is bracketed; what the ends sent cannot
	// reach the terminal as control characters.
	reply := &flow.Flow{Time: timestamppb.New(obsT0), NodeName: "n1", IsReply: wrapperspb.Bool(true), Verdict: flow.Verdict_FORWARDED,
		IP:     &flow.IP{Source: "fd00::2", Destination: "fd00::1"},
		L4:     &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{SourcePort: 80, DestinationPort: 4000, Flags: &flow.TCPFlags{SYN: true, ACK: true}}}},
		Source: &flow.Endpoint{Identity: 1}, Destination: &flow.Endpoint{Identity: 7, Namespace: "ns", PodName: "evil\x1b[2Jpod"},
		EventType: &flow.CiliumEventType{Type: 4}}
	if got, want := compactFlow(reply), `Dec  1 10:00:00.000 [n1]: ns/evil\x1b[2Jpod:4000 (ID:7) <- [fd00::2]:80 (host) trace FORWARDED (TCP Flags: SYN, ACK)`; got != want {
		t.Errorf("reply:\n got %s\nwant %s", got, want)
	}
	reply.IsReply = nil
	if got := compactFlow(reply); !strings.Contains(got, "[fd00::2]:80 (host) <> ns/evil") {
		t.Errorf("unknown direction: %s", got)
	}
	if got := printable("a\tb\u202ec\xffd é"); got != `a\x09b\u202ec\xffd é` {
		t.Errorf("printable: %q", got)
	}
	// A flow's strings come escaped by the server (monitor.Printable: a
	// backslash as \\): a second pass leaves backslashes alone (until
	// 2026-12-07 it doubled them, a review found); the agent's monitor
	// events, raw, are escaped backslashes and all.
	if got := printable(`orders\x1bX\\y /api/\d+`); got != `orders\x1bX\\y /api/\d+` {
		t.Errorf("printable of a server's escaped text: %q", got)
	}
	if got := printableRaw("/x\u009b and `/x\\u009b`"); got != `/x\u009b and `+"`"+`/x\\u009b`+"`" {
		t.Errorf("printableRaw: %q", got)
	}
}

func TestFlowPrinterOutputs(t *testing.T) {
	f := obsMeta.Flow(obsEvents()[0])
	res := &observer.GetFlowsResponse{ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: f}, NodeName: f.NodeName, Time: f.Time}
	lost := &observer.GetFlowsResponse{NodeName: "c1/n1", Time: timestamppb.New(obsT0), ResponseTypes: &observer.GetFlowsResponse_LostEvents{
		LostEvents: &flow.LostEvent{Source: flow.LostEventSource_HUBBLE_RING_BUFFER, NumEventsLost: 7}}}
	for _, format := range []string{"json", "jsonpb", "yaml", "compact"} {
		var out, errOut bytes.Buffer
		p, err := newFlowPrinter(format, &out, &errOut)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []*observer.GetFlowsResponse{res, lost, res} {
			if err := p.print(r); err != nil {
				t.Fatal(err)
			}
		}
		if errOut.String() != "warning: 7 flows lost (HUBBLE_RING_BUFFER) on node c1/n1 at 2026-12-01T10:00:00Z\n" {
			t.Errorf("%s: stderr %q", format, errOut.String())
		}
		var docs []string
		switch format {
		case "compact":
			if lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"); len(lines) != 2 || lines[0] != compactFlow(f) {
				t.Errorf("compact: %q", out.String())
			}
			continue
		case "yaml":
			for _, d := range strings.Split(out.String(), "---\n")[1:] {
				j, err := yaml.YAMLToJSON([]byte(d))
				if err != nil {
					t.Fatalf("yaml %q: %v", d, err)
				}
				docs = append(docs, string(j))
			}
		default:
			docs = strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		}
		if len(docs) != 2 {
			t.Fatalf("%s: %d documents, want 2 (no lost event): %q", format, len(docs), out.String())
		}
		// hubble observe -o json: the GetFlowsResponse, proto field names.
		var r struct {
			Flow struct {
				Verdict        string `json:"verdict"`
				DropReasonDesc string `json:"drop_reason_desc"`
				Source         struct {
					PodName string `json:"pod_name"`
				} `json:"source"`
				L4 struct {
					TCP struct {
						DestinationPort int `json:"destination_port"`
					} `json:"TCP"`
				} `json:"l4"`
			} `json:"flow"`
			NodeName string `json:"node_name"`
			Time     string `json:"time"`
		}
		if err := json.Unmarshal([]byte(docs[0]), &r); err != nil {
			t.Fatalf("%s: %v: %s", format, err, docs[0])
		}
		if r.Flow.Verdict != "DROPPED" || r.Flow.DropReasonDesc != "POLICY_DENIED" || r.Flow.Source.PodName != "client" ||
			r.Flow.L4.TCP.DestinationPort != 80 || r.NodeName != "c1/n1" || r.Time != "2026-12-01T10:00:00Z" {
			t.Errorf("%s: %+v from %s", format, r, docs[0])
		}
	}
	if _, err := newFlowPrinter("table", nil, nil); err == nil || !strings.Contains(err.Error(), `output "table"`) {
		t.Errorf("-o table: %v", err)
	}
}

// serveHubble serves a Hubble API holding evs on hubble.sock in dir.
func serveHubble(t *testing.T, dir string, evs []monitor.Event) {
	t.Helper()
	s, err := hubble.New(hubble.Config{Meta: obsMeta})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		s.Record(ev)
	}
	ln, err := hubble.ListenUnix(filepath.Join(dir, "hubble.sock"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(t.Context(), ln, nil) }() // ends before the cleanups run
	t.Cleanup(func() {
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

func runObserve(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// `filament observe` finds the node's Hubble socket beside the agent's
// (--socket), and the server applies the filters it builds.
func TestObserveAgainstTheNodesSocket(t *testing.T) {
	dir := t.TempDir()
	serveHubble(t, dir, obsEvents())
	sock := filepath.Join(dir, "agent.sock")
	out, _, err := runObserve(t, "--socket", sock, "observe", "--verdict", "dropped", "--from-pod", "default/client", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"drop_reason_desc":"POLICY_DENIED"`) || !strings.Contains(lines[1], `"method":"POST"`) {
		t.Errorf("--verdict dropped --from-pod default/client: %q", out)
	}
	t.Setenv("FILAMENT_API_SOCKET", sock) // as the lab runs it: no --socket
	out, _, err = runObserve(t, "observe", "--protocol", "dns", "--to-fqdn", "*.allowed.test")
	if err != nil || !strings.Contains(out, "www.allowed.test:53 (world) dns-response FORWARDED") || strings.Count(out, "\n") != 1 {
		t.Errorf("--protocol dns --to-fqdn: %v %q", err, out)
	}
	out, _, err = runObserve(t, "observe", "--pod", "default/web", "--last", "2")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, "http-response") {
		t.Errorf("--pod default/web --last 2: %v %q", err, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"observe", "--verdict", "LOST"}, `--verdict "LOST": want FORWARDED`},
		{[]string{"observe", "--port", "70000"}, `--port "70000": want a port number`},
		{[]string{"observe", "--since", "yesterday"}, `--since "yesterday"`},
		{[]string{"observe", "-o", "table"}, `output "table"`},
		{[]string{"observe", "--server", "unix://" + filepath.Join(dir, "none.sock")}, "none.sock"},
		{[]string{"observe", "--tls-client-cert-file", "x.pem"}, "--tls-client-cert-file and --tls-client-key-file go together"},
	} {
		if out, _, err := runObserve(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) || out != "" {
			t.Errorf("%v: %v (want %q), output %q", tc.args, err, tc.want, out)
		}
	}
}

// --tcp-flags takes hubble's syntax: a value's comma-separated names all
// must be set (SYN,ACK: a SYN-ACK, not a SYN), repeated values OR'd.
func TestObserveTCPFlags(t *testing.T) {
	dir := t.TempDir()
	base := obsEvents()[1] // a forwarded TCP connection
	syn, synAck, fin := base, base, base
	syn.TCPFlags = monitor.TCPFlagSYN
	synAck.TCPFlags, synAck.Src = monitor.TCPFlagSYN|monitor.TCPFlagACK, netip.MustParseAddrPort("10.244.0.3:40001")
	fin.TCPFlags, fin.Src = monitor.TCPFlagFIN|monitor.TCPFlagACK, netip.MustParseAddrPort("10.244.0.3:40002")
	serveHubble(t, dir, []monitor.Event{syn, synAck, fin})
	sock := filepath.Join(dir, "agent.sock")
	for _, tc := range []struct {
		args  []string
		ports []string // the flows' source ports, in order
	}{
		{[]string{"--tcp-flags", "SYN,ACK"}, []string{":40001"}},
		{[]string{"--tcp-flags", "syn"}, []string{":40000", ":40001"}},
		{[]string{"--tcp-flags", "FIN", "--tcp-flags", "SYN,ACK"}, []string{":40001", ":40002"}},
		{[]string{"--tcp-flags", "RST"}, nil},
	} {
		out, _, err := runObserve(t, append([]string{"--socket", sock, "observe"}, tc.args...)...)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if out == "" {
			lines = nil
		}
		if len(lines) != len(tc.ports) {
			t.Errorf("%v: %q, want %d flows", tc.args, out, len(tc.ports))
			continue
		}
		for i, p := range tc.ports {
			if !strings.Contains(lines[i], "default/client"+p+" ") {
				t.Errorf("%v: flow %d %q, want source port %s", tc.args, i, lines[i], p)
			}
		}
	}
	if _, _, err := runObserve(t, "--socket", sock, "observe", "--tcp-flags", "SYN,BOGUS"); err == nil || !strings.Contains(err.Error(), `--tcp-flags "SYN,BOGUS"`) {
		t.Errorf("--tcp-flags SYN,BOGUS: %v", err)
	}
}

// Over TCP with mutual TLS (a relay's way): the server's certificate is
// verified against --tls-ca-cert-files and --tls-server-name, and the
// client's own certificate is presented; without either it fails.
func TestObserveMutualTLS(t *testing.T) {
	dir := t.TempDir()
	authority, err := ca.New("c1")
	if err != nil {
		t.Fatal(err)
	}
	serverPair, err := authority.Issue("relay", true, nil, []string{"relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	clientPair, err := authority.Issue("observer", false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := authority.Save(dir); err != nil {
		t.Fatal(err)
	}
	if err := ca.WritePair(dir, "client", clientPair); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(serverPair.Cert, serverPair.Key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(authority.PEM)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := tls.NewListener(tcp, &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool,
		NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
	s, err := hubble.New(hubble.Config{Meta: obsMeta})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range obsEvents() {
		s.Record(ev)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(t.Context(), ln, nil) }()
	t.Cleanup(func() {
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	addr := tcp.Addr().String()
	caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	out, _, err := runObserve(t, "observe", "--server", addr, "--tls", "--tls-ca-cert-files", caFile, "--tls-client-cert-file", certFile,
		"--tls-client-key-file", keyFile, "--tls-server-name", "relay.test", "--type", "drop")
	if err != nil || strings.Count(out, "\n") != 1 || !strings.Contains(out, "drop DROPPED (POLICY_DENIED)") {
		t.Fatalf("mutual TLS: %v %q", err, out)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no client certificate", []string{"--server", "tls://" + addr, "--tls-ca-cert-files", caFile, "--tls-server-name", "relay.test"}, "hubble API at tls://" + addr}, // TLS 1.3: the refusal comes after the handshake, how it shows varies
		{"no CA", []string{"--server", addr, "--tls", "--tls-client-cert-file", certFile, "--tls-client-key-file", keyFile, "--tls-server-name", "relay.test"}, "unknown authority"},
		{"another name", []string{"--server", addr, "--tls-ca-cert-files", caFile, "--tls-client-cert-file", certFile, "--tls-client-key-file", keyFile, "--tls-server-name", "other.test"}, "not other.test"},
		{"no TLS", []string{"--server", addr}, "hubble API at " + addr},
	} {
		if out, _, err := runObserve(t, append([]string{"observe"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) || out != "" {
			t.Errorf("%s: %v (want %q), output %q", tc.name, err, tc.want, out)
		}
	}
}

// -f follows new flows until the context ends, then returns without error.
func TestObserveFollowsUntilTheContextEnds(t *testing.T) {
	dir := t.TempDir()
	s, err := hubble.New(hubble.Config{Meta: obsMeta})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := hubble.ListenUnix(filepath.Join(dir, "hubble.sock"))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(t.Context(), ln, nil) }()
	t.Cleanup(func() { <-served })
	var out, errOut syncBuf
	root := newRoot(&out)
	root.SetErr(&errOut)
	root.SetArgs([]string{"--socket", filepath.Join(dir, "agent.sock"), "observe", "-f", "--type", "drop"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	ev := obsEvents()
	// Flows recorded while the stream starts: the drops show, one a line,
	// the other events are filtered out.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "drop DROPPED"); {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no flow followed: stdout %q stderr %q (%v)", out.String(), errOut.String(), <-done)
		}
		for _, e := range ev {
			s.Record(e)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ended by its context: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if !strings.HasSuffix(line, "drop DROPPED (POLICY_DENIED)") {
			t.Errorf("a line --type drop excludes: %q", line)
		}
	}
}
