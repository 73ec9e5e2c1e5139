package hubble

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/filament-net/filament/agent/hubble/filter"
	"github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/agent/monitor"
)

var (
	clientAddr = netip.MustParseAddrPort("10.244.0.3:40000")
	webAddr    = netip.MustParseAddrPort("10.244.0.2:80")
	clientLbls = []string{"k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"}
	webLbls    = []string{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=default"}
)

// events: a drop at the web pod's ingress, a forwarded connection, an L7
// request denied (403) and one forwarded (200), a DNS answer.
func events(t0 time.Time) []monitor.Event {
	base := monitor.Event{Src: clientAddr, Dst: webAddr, Protocol: "TCP", Direction: "ingress", Endpoint: 1, PeerEP: 2,
		SrcIdentity: 65793, DstIdentity: 65792, SrcLabels: clientLbls, DstLabels: webLbls}
	drop, fwd, deny, ok, dns := base, base, base, base, base
	drop.Time, drop.Type, drop.ReasonCode = t0, "drop", 1
	fwd.Time, fwd.Type = t0.Add(time.Second), "policy-verdict"
	deny.Time, deny.Type = t0.Add(2*time.Second), "l7"
	deny.L7 = &monitor.L7{Protocol: "HTTP/1.1", Method: "POST", Host: "web", Path: "/private", Status: 403, Verdict: "denied"}
	ok.Time, ok.Type = t0.Add(3*time.Second), "l7"
	ok.L7 = &monitor.L7{Protocol: "HTTP/1.1", Method: "GET", Host: "web", Path: "/public/a", Status: 200, Verdict: "forwarded"}
	dns.Time, dns.Type, dns.Protocol, dns.Direction, dns.Endpoint, dns.PeerEP = t0.Add(4*time.Second), "l7", "UDP", "egress", 2, 0
	dns.Dst, dns.DstLabels, dns.DstIdentity = netip.MustParseAddrPort("10.244.0.9:53"), []string{"k8s:app=dns", "k8s:io.kubernetes.pod.namespace=default"}, 65794
	dns.L7 = &monitor.L7{Protocol: "DNS/UDP", Method: "A", Host: "www.allowed.test.", Verdict: "forwarded",
		DNSAnswers: []netip.Addr{netip.MustParseAddr("10.0.9.1")}, DNSTTL: 30}
	return []monitor.Event{drop, fwd, deny, ok, dns}
}

func newTestServer(t *testing.T, capacity int) (*Server, observer.ObserverClient) {
	t.Helper()
	return newTestServerConfig(t, Config{Capacity: capacity})
}

// newTestServerConfig is newTestServer with c (its Meta, Address and
// Version set here).
func newTestServerConfig(t *testing.T, c Config) (*Server, observer.ObserverClient) {
	t.Helper()
	c.Meta = Meta{NodeName: "n1", ClusterName: "c1", Pod: func(ep uint16) (string, string) {
		return "default", map[uint16]string{1: "web-1", 2: "client-1"}[ep]
	}}
	c.Address, c.Version = "127.0.0.1:4244", "test"
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return s, observer.NewObserverClient(conn)
}

// getFlows runs a GetFlows request to its end.
func getFlows(t *testing.T, c observer.ObserverClient, req *observer.GetFlowsRequest) ([]*flow.Flow, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.GetFlows(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*flow.Flow
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, r.GetFlow())
	}
}

func TestFlowsFromEvents(t *testing.T) {
	s, c := newTestServer(t, 0)
	t0 := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	for _, ev := range events(t0) {
		s.Record(ev)
	}
	all, err := getFlows(t, c, &observer.GetFlowsRequest{})
	if err != nil || len(all) != 5 {
		t.Fatalf("all flows: %d, %v", len(all), err)
	}
	d := all[0]
	if d.Verdict != flow.Verdict_DROPPED || d.DropReasonDesc != flow.DropReason_POLICY_DENIED || d.NodeName != "c1/n1" ||
		d.Source.PodName != "client-1" || d.Destination.PodName != "web-1" || d.Source.Namespace != "default" ||
		d.TrafficDirection != flow.TrafficDirection_INGRESS || d.IP.Source != "10.244.0.3" || d.L4.GetTCP().DestinationPort != 80 ||
		d.EventType.Type != eventDrop || !d.Time.AsTime().Equal(t0) {
		t.Errorf("drop flow: %v", d)
	}
	if h := all[2].L7.GetHttp(); all[2].Type != flow.FlowType_L7 || all[2].Verdict != flow.Verdict_DROPPED || h.Code != 403 || h.Method != "POST" || h.Url != "http://web/private" {
		t.Errorf("denied L7 flow: %v", all[2])
	}
	if q := all[4].L7.GetDns(); q == nil || q.Query != "www.allowed.test." || len(q.Ips) != 1 || all[4].DestinationNames[0] != "www.allowed.test" ||
		all[4].Source.PodName != "client-1" || all[4].TrafficDirection != flow.TrafficDirection_EGRESS {
		t.Errorf("DNS flow: %v", all[4])
	}
	st, err := c.ServerStatus(context.Background(), &observer.ServerStatusRequest{})
	if err != nil || st.NumFlows != 5 || st.SeenFlows != 5 || st.MaxFlows != 4095 {
		t.Errorf("status: %v %v", st, err)
	}
}

// The filters the hubble CLI sends (hubble observe --print-raw-filters).
func TestFlowFilters(t *testing.T) {
	s, c := newTestServer(t, 0)
	for _, ev := range events(time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)) {
		s.Record(ev)
	}
	for _, tc := range []struct {
		name        string
		allow, deny []*flow.FlowFilter
		want        int
	}{
		{"verdict DROPPED", []*flow.FlowFilter{{Verdict: []flow.Verdict{flow.Verdict_DROPPED}}}, nil, 2},
		{"from-pod default/client", []*flow.FlowFilter{{SourcePod: []string{"default/client"}}}, nil, 5},
		{"to-pod default/web (prefix)", []*flow.FlowFilter{{DestinationPod: []string{"default/web"}}}, nil, 4},
		{"namespace other", []*flow.FlowFilter{{SourcePod: []string{"other/"}}, {DestinationPod: []string{"other/"}}}, nil, 0},
		{"label app=web either side", []*flow.FlowFilter{{SourceLabel: []string{"app=web"}}, {DestinationLabel: []string{"k8s:app=web"}}}, nil, 4},
		{"http-method get", []*flow.FlowFilter{{HttpMethod: []string{"get"}}}, nil, 1},
		{"http-path /public/.*", []*flow.FlowFilter{{HttpPath: []string{"^/public/.*"}}}, nil, 1},
		{"http-status 4+", []*flow.FlowFilter{{HttpStatusCode: []string{"4+"}}}, nil, 1},
		{"protocol http", []*flow.FlowFilter{{Protocol: []string{"http"}}}, nil, 2},
		{"protocol dns", []*flow.FlowFilter{{Protocol: []string{"DNS"}}}, nil, 1},
		{"to-fqdn *.allowed.test", []*flow.FlowFilter{{DestinationFqdn: []string{"*.allowed.test"}}}, nil, 1},
		{"port 80 and dropped", []*flow.FlowFilter{{DestinationPort: []string{"80"}, Verdict: []flow.Verdict{flow.Verdict_DROPPED}}}, nil, 2},
		{"not L7", nil, []*flow.FlowFilter{{EventType: []*flow.EventTypeFilter{{Type: eventAccessLog}}}}, 2},
		{"ip", []*flow.FlowFilter{{DestinationIp: []string{"10.244.0.8/29"}}}, nil, 1},
		{"pod without namespace: default's", []*flow.FlowFilter{{SourcePod: []string{"client"}}}, nil, 5},
		{"pod in any namespace", []*flow.FlowFilter{{DestinationPod: []string{"/web"}}}, nil, 4},
		{"node name without cluster", []*flow.FlowFilter{{NodeName: []string{"n1"}}}, nil, 5},
		{"node name with cluster", []*flow.FlowFilter{{NodeName: []string{"c1/n*"}}}, nil, 5},
		{"node of another cluster", []*flow.FlowFilter{{NodeName: []string{"c2/*"}}}, nil, 0},
		{"fqdn * crosses dots", []*flow.FlowFilter{{DestinationFqdn: []string{"*.test"}}}, nil, 1},
	} {
		got, err := getFlows(t, c, &observer.GetFlowsRequest{Whitelist: tc.allow, Blacklist: tc.deny})
		if err != nil || len(got) != tc.want {
			t.Errorf("%s: %d flows (%v), want %d", tc.name, len(got), err, tc.want)
		}
	}
	// A filter the server does not implement is refused, naming it, not
	// answered with flows it would have excluded.
	_, err := getFlows(t, c, &observer.GetFlowsRequest{Whitelist: []*flow.FlowFilter{{HttpHeader: []*flow.HTTPHeader{{Key: "x"}}}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "http_header") {
		t.Errorf("unsupported filter: %v", err)
	}
	_, err = getFlows(t, c, &observer.GetFlowsRequest{Whitelist: []*flow.FlowFilter{{SourcePod: []string{"/"}}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("a pod filter without namespace or name: %v", err)
	}
	many := make([]string, filter.MaxValues+1)
	for i := range many {
		many[i] = "^/x"
	}
	_, err = getFlows(t, c, &observer.GetFlowsRequest{Whitelist: []*flow.FlowFilter{{HttpPath: many}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("%d values in one filter: %v", len(many), err)
	}
}

func TestNumberFirstFollowLost(t *testing.T) {
	s, c := newTestServer(t, 3)
	evs := events(time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC))
	for _, ev := range evs {
		s.Record(ev) // 5 into a ring of 3: the first two are overwritten
	}
	last, _ := getFlows(t, c, &observer.GetFlowsRequest{Number: 2})
	first, _ := getFlows(t, c, &observer.GetFlowsRequest{Number: 1, First: true})
	if len(last) != 2 || last[1].L7.GetDns() == nil || len(first) != 1 || first[0].L7.GetHttp().GetCode() != 403 {
		t.Fatalf("last 2: %v; first 1: %v", last, first)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.GetFlows(ctx, &observer.GetFlowsRequest{Number: 1, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := st.Recv(); err != nil || r.GetFlow().L7.GetDns() == nil {
		t.Fatalf("follow, backlog: %v %v", r, err)
	}
	s.Record(evs[0])
	if r, err := st.Recv(); err != nil || r.GetFlow().Verdict != flow.Verdict_DROPPED {
		t.Fatalf("follow, a new flow: %v %v", r, err)
	}
	// Following with neither a number nor a start: only new flows.
	only, err := c.GetFlows(ctx, &observer.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	// New flows (a later time) are written until one comes: the first to
	// come must be one of them, never a held one.
	fresh := evs[3]
	fresh.Time = time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
				s.Record(fresh)
			}
		}
	}()
	if r, err := only.Recv(); err != nil || !r.GetFlow().GetTime().AsTime().Equal(fresh.Time) {
		t.Fatalf("follow alone: first %v %v, want a new flow", r, err)
	}
}

// A client's Host header may hold what a URL's host may not ("%" is a
// valid Host byte to net/http): the flow's URL still parses, and
// --http-path still sees the path.
func TestHostileHostStillFiltered(t *testing.T) {
	s, c := newTestServer(t, 0)
	ev := events(time.Now())[3]
	ev.L7 = &monitor.L7{Protocol: "HTTP/1.1", Method: "GET", Host: "x%41y", Path: "/admin?a=1", Status: 200, Verdict: "forwarded"}
	s.Record(ev)
	got, err := getFlows(t, c, &observer.GetFlowsRequest{Whitelist: []*flow.FlowFilter{{HttpPath: []string{"^/admin$"}}}})
	if err != nil || len(got) != 1 {
		t.Fatalf("--http-path ^/admin$ for Host x%%41y: %d flows, %v", len(got), err)
	}
}

// lostBeforeNext follows c's flows: it records a flow until the stream
// has one (it started; no loss may come before), calls grow, records
// another and returns the lost events reported before that one's flow, by
// source.
func lostBeforeNext(t *testing.T, c observer.ObserverClient, record func(monitor.Event), grow func()) map[flow.LostEventSource]uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.GetFlows(ctx, &observer.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	evs := events(time.Now())
	got := make(chan *observer.GetFlowsResponse)
	go func() {
		defer close(got)
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			select {
			case got <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	for first := true; first; {
		record(evs[0])
		select {
		case r, ok := <-got:
			if !ok || r.GetLostEvents() != nil {
				t.Fatalf("before any loss: %v", r)
			}
			first = false
		case <-time.After(10 * time.Millisecond):
		}
	}
	grow()
	record(evs[1])
	lost := map[flow.LostEventSource]uint64{}
	for r := range got {
		if l := r.GetLostEvents(); l != nil {
			lost[l.Source] += l.NumEventsLost
		}
		if r.GetFlow().GetTime().AsTime().Equal(evs[1].Time) {
			return lost
		}
	}
	t.Fatalf("stream ended before the flow after the loss; lost %v", lost)
	return nil
}

// Events the monitor could not queue for the server reach following
// clients as lost events (OBSERVER_EVENTS_QUEUE), before the next flow.
func TestQueueLossReported(t *testing.T) {
	s, c := newTestServer(t, 0)
	ch := make(chan monitor.Event)
	defer close(ch)
	var missed atomic.Uint64
	go s.Follow(ch, missed.Load)
	lost := lostBeforeNext(t, c, func(ev monitor.Event) { ch <- ev }, func() { missed.Store(7) })
	if len(lost) != 1 || lost[flow.LostEventSource_OBSERVER_EVENTS_QUEUE] != 7 {
		t.Errorf("lost events reported before the next flow: %v, want 7 from the queue", lost)
	}
}

// Events the datapath could not report (its ring was full) reach
// following clients as lost events (PERF_EVENT_RING_BUFFER), before the
// next flow; those lost before the stream began do not.
func TestDatapathLossReported(t *testing.T) {
	var dpLost atomic.Uint64
	dpLost.Store(100) // before the stream: not this client's
	s, c := newTestServerConfig(t, Config{DatapathLost: dpLost.Load})
	lost := lostBeforeNext(t, c, s.Record, func() { dpLost.Add(5) })
	if len(lost) != 1 || lost[flow.LostEventSource_PERF_EVENT_RING_BUFFER] != 5 {
		t.Errorf("lost events reported before the next flow: %v, want 5 from the datapath's ring", lost)
	}
}

// A client's huge Number is the ring's size: no panic, no overflow.
func TestHugeNumber(t *testing.T) {
	s, c := newTestServer(t, 0)
	for _, ev := range events(time.Now()) {
		s.Record(ev)
	}
	for _, n := range []uint64{1 << 62, 1<<63 - 1, 1<<64 - 1} {
		for _, first := range []bool{false, true} {
			got, err := getFlows(t, c, &observer.GetFlowsRequest{Number: n, First: first})
			if err != nil || len(got) != 5 {
				t.Errorf("Number %d first %v: %d flows, %v", n, first, len(got), err)
			}
		}
	}
}

// A handler's panic is that call's Internal error; streams past the
// server's bound are refused, not queued.
func TestInterceptors(t *testing.T) {
	info := &grpc.StreamServerInfo{FullMethod: "/observer.Observer/GetFlows"}
	err := recoverStream(nil, nil, info, func(any, grpc.ServerStream) error { panic("boom") })
	if status.Code(err) != codes.Internal {
		t.Errorf("a panicking stream: %v", err)
	}
	_, err = recoverUnary(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x"}, func(context.Context, any) (any, error) { panic("boom") })
	if status.Code(err) != codes.Internal {
		t.Errorf("a panicking call: %v", err)
	}
	limit := limitStreams(1)
	in, release := make(chan struct{}), make(chan struct{})
	done := make(chan error)
	go func() {
		done <- limit(nil, nil, info, func(any, grpc.ServerStream) error { close(in); <-release; return nil })
	}()
	<-in
	if err := limit(nil, nil, info, func(any, grpc.ServerStream) error { return nil }); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a stream past the bound: %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := limit(nil, nil, info, func(any, grpc.ServerStream) error { return nil }); err != nil {
		t.Errorf("a stream after the first ended: %v", err)
	}
}

// A workload's bytes that are not UTF-8 (a Kafka topic "\xff", a query
// string with 0xff; the proxy records denied requests too) made the flow
// impossible to encode as protobuf (proto3 strings are UTF-8): every
// GetFlows whose window held it ended with an error, the relay's and the
// web page's too, until newer flows pushed it out. They now reach clients
// with the invalid bytes escaped (\xff; U+FFFD until 2026-12-06, when the
// escaping of control characters took them in).
func TestInvalidUTF8FromWorkloads(t *testing.T) {
	s, c := newTestServer(t, 0)
	evs := events(time.Now())
	kafka := evs[3]
	kafka.L7 = &monitor.L7{Protocol: "Kafka", Method: "Metadata\xfe", Path: "topic\xff", Status: 29, Verdict: "denied"}
	http := evs[3]
	http.L7 = &monitor.L7{Protocol: "HTTP/1.1", Method: "GET", Host: "web", Path: "/?q=\xff\xfe", Status: 403, Verdict: "denied"}
	dns := evs[4]
	dns.L7 = &monitor.L7{Protocol: "DNS/UDP", Method: "A", Host: "x\xff.allowed.test.", Verdict: "forwarded"}
	for _, ev := range []monitor.Event{kafka, http, dns, evs[0]} {
		s.Record(ev)
	}
	got, err := getFlows(t, c, &observer.GetFlowsRequest{})
	if err != nil || len(got) != 4 {
		t.Fatalf("flows after invalid UTF-8 from a workload: %d, %v", len(got), err)
	}
	if k := got[0].L7.GetKafka(); k == nil || k.Topic != `topic\xff` || k.ApiKey != `Metadata\xfe` {
		t.Errorf("Kafka flow: %v", got[0].L7)
	}
	if h := got[1].L7.GetHttp(); h == nil || !strings.HasSuffix(h.Url, `/?q=\xff\xfe`) {
		t.Errorf("HTTP flow: %v", got[1].L7)
	}
}

// A connection that never completes its handshake (no TLS ClientHello,
// no HTTP/2 preface) is closed after handshakeTimeout: gRPC's default
// held each for 120 s, and a pod reaching the Hubble listener could hold
// tens of thousands of them.
func TestSilentConnectionClosed(t *testing.T) {
	defer func(d time.Duration) { handshakeTimeout = d }(handshakeTimeout)
	handshakeTimeout = 300 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ServeGRPC(ctx, ln, nil, func(*grpc.Server) {})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, c)
	if err != nil || time.Since(start) > 5*time.Second {
		t.Fatalf("a connection sending nothing: %v after %v; want closed by the server", err, time.Since(start))
	}
}

// clientStream is a server stream of a client whose certificate has the
// common name cn ("": no TLS, as on the agent's unix socket).
type clientStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s clientStream) Context() context.Context { return s.ctx }

func streamOf(cn string) grpc.ServerStream {
	ctx := context.Background()
	if cn != "" {
		ctx = grpcpeer.NewContext(ctx, &grpcpeer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{{Subject: pkix.Name{CommonName: cn}}}}}})
	}
	return clientStream{ctx: ctx}
}

// Each client name has its own pool of streams: a connected cluster's
// relay (hubble-remote) holding all of its streams does not lock this
// cluster's relay, nor local clients, out. Before 2026-12-05 the 256
// streams were one pool for every client.
func TestStreamPoolPerClient(t *testing.T) {
	info := &grpc.StreamServerInfo{FullMethod: "/observer.Observer/GetFlows"}
	limit := limitStreams(2)
	release := make(chan struct{})
	var open sync.WaitGroup
	for range 2 {
		in := make(chan struct{})
		open.Add(1)
		go func() {
			defer open.Done()
			limit(nil, streamOf("hubble-remote"), info, func(any, grpc.ServerStream) error { close(in); <-release; return nil })
		}()
		<-in
	}
	if err := limit(nil, streamOf("hubble-remote"), info, func(any, grpc.ServerStream) error { return nil }); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a stream past the remote relay's bound: %v", err)
	}
	for _, cn := range []string{"hubble-relay", ""} {
		if err := limit(nil, streamOf(cn), info, func(any, grpc.ServerStream) error { return nil }); err != nil {
			t.Errorf("client %q locked out by another client's streams: %v", cn, err)
		}
	}
	close(release)
	open.Wait()
}

// A workload's strings reached Hubble clients with their control and
// format characters as they came: a Kafka topic, an HTTP query string or
// an HTTP/2 method holding C1 controls (U+009B is a terminal's CSI),
// backspaces, newlines or a right-to-left override went raw to `hubble
// observe -o json` and to the web page, whose service map then showed a
// made-up "FORWARDED ×4200" line (found 2026-12-06 by a review). They
// are now escaped (\x08, \u009b, \u202e): clients show them as text.
func TestControlCharactersFromWorkloadsEscaped(t *testing.T) {
	s, c := newTestServer(t, 0)
	evs := events(time.Now())
	kafka := evs[3]
	kafka.L7 = &monitor.L7{Protocol: "Kafka", Method: "Produce", Path: "orders ×1\nFORWARDED ×4200\b\u009b2J\u202e", Status: 29, Verdict: "denied"}
	http := evs[3]
	http.L7 = &monitor.L7{Protocol: "HTTP/2", Method: "GE\u009bT", Host: "web", Path: "/?x=\u202egnp.exe\u009b2J", Status: 403, Verdict: "denied"}
	for _, ev := range []monitor.Event{kafka, http} {
		s.Record(ev)
	}
	got, err := getFlows(t, c, &observer.GetFlowsRequest{})
	if err != nil || len(got) != 2 {
		t.Fatalf("flows: %d, %v", len(got), err)
	}
	k, h := got[0].L7.GetKafka(), got[1].L7.GetHttp()
	if k == nil || h == nil {
		t.Fatalf("flows: %v, %v", got[0].L7, got[1].L7)
	}
	for _, s := range []string{k.Topic, h.Method, h.Url} {
		for _, r := range s {
			if r != ' ' && !unicode.IsGraphic(r) {
				t.Errorf("%q reaches clients with %U", s, r)
				break
			}
		}
	}
	if want := `orders ×1\x0aFORWARDED ×4200\x08\u009b2J\u202e`; k.Topic != want {
		t.Errorf("topic %q, want %q", k.Topic, want)
	}
}
