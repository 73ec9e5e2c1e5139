package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"
)

// Attacks found by the review of 2026-12-04, each checked to pass the
// proxy before its fix.

// TestUpstreamHeadBounded: a server a pod may reach (outside the cluster,
// or a pod of its own) answered with a head that never ends; the proxy
// read it without bound, the node's proxy running out of memory. Now a
// response head past maxHeaderBytes (interim ones included) is a 502.
func TestUpstreamHeadBounded(t *testing.T) {
	for name, head := range map[string]string{
		"headers":  "HTTP/1.1 200 OK\r\n",
		"status":   "HTTP/1.1 200 ",
		"interims": "",
	} {
		t.Run(name, func(t *testing.T) {
			up := rawUpstream(t, func(c net.Conn) {
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, head)
				line := "X-A: " + strings.Repeat("a", 1000) + "\r\n"
				if name == "status" {
					line = strings.Repeat("a", 1024)
				}
				for i := 0; ; i++ { // until the proxy gives up
					if name == "interims" && i%64 == 0 {
						line = "HTTP/1.1 103 Early Hints\r\nLink: </" + strings.Repeat("a", 1000) + ">\r\n\r\n"
					}
					if _, err := io.WriteString(c, line); err != nil {
						return
					}
				}
			})
			h := newHarnessTo(t, up, Options{})
			h.ingress(PeerRules{HTTP: []HTTPRule{{}}})
			c := h.dial()
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(c)
			for {
				resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
				if err != nil {
					t.Fatalf("no final response: %v", err)
				}
				if resp.StatusCode/100 == 1 {
					continue
				}
				if resp.StatusCode != http.StatusBadGateway {
					t.Fatalf("a response head without end: status %d, want 502", resp.StatusCode)
				}
				return
			}
		})
	}
}

// TestHeaderRuleNeedsTheOnlyCopy: a rule pinning a header's value
// (headers "X-Tenant: a", or headerMatches with REPLACE) matched when any
// copy had the value, and the other copies went on: servers that take the
// first copy (Go's Header.Get) saw the client's own value.
func TestHeaderRuleNeedsTheOnlyCopy(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{
		{Path: "/pinned", Headers: []string{"X-Tenant: a"}},
		{Path: "/replaced", HeaderMatches: []HeaderMatch{{Name: "X-Tenant", Value: "a", Mismatch: MismatchReplace}}},
	}})
	c := h.dial()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /pinned HTTP/1.1\r\nHost: svc\r\nX-Tenant: b\r\nX-Tenant: a\r\n\r\n")
	if resp, body := readResponse(t, br, "GET"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("two copies of a pinned header: status %d (%q), want 403", resp.StatusCode, body)
	}
	io.WriteString(c, "GET /pinned HTTP/1.1\r\nHost: svc\r\nX-Tenant: a\r\n\r\n")
	if resp, body := readResponse(t, br, "GET"); resp.StatusCode != http.StatusOK {
		t.Errorf("the one pinned copy: status %d (%q), want 200", resp.StatusCode, body)
	}
	io.WriteString(c, "GET /replaced HTTP/1.1\r\nHost: svc\r\nX-Tenant: b\r\nX-Tenant: a\r\n\r\n")
	resp, body := readResponse(t, br, "GET")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("REPLACE: status %d (%q)", resp.StatusCode, body)
	}
	if got := decodeEcho(t, body).Header["X-Tenant"]; len(got) != 1 || got[0] != "a" {
		t.Errorf("REPLACE with two copies sent: the server got X-Tenant %q, want [a]", got)
	}
}

// TestConnectionCannotStripPolicyHeaders: headers named in Connection
// were removed after the decision, so a header a rule required, added or
// replaced never reached the server.
func TestConnectionCannotStripPolicyHeaders(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{
		{Path: "/pinned", Headers: []string{"X-Tenant: a"}},
		{Path: "/added", HeaderMatches: []HeaderMatch{{Name: "X-Tenant", Value: "a", Mismatch: MismatchAdd}}},
	}})
	c := h.dial()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /pinned HTTP/1.1\r\nHost: svc\r\nConnection: X-Tenant\r\nX-Tenant: a\r\n\r\n")
	resp, body := readResponse(t, br, "GET")
	if resp.StatusCode == http.StatusOK && len(decodeEcho(t, body).Header["X-Tenant"]) == 0 {
		t.Error("a request allowed for its X-Tenant reached the server without it (Connection: X-Tenant)")
	}
	io.WriteString(c, "GET /added HTTP/1.1\r\nHost: svc\r\nConnection: X-Tenant\r\n\r\n")
	resp, body = readResponse(t, br, "GET")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("ADD: status %d (%q)", resp.StatusCode, body)
	}
	if got := decodeEcho(t, body).Header["X-Tenant"]; len(got) != 1 || got[0] != "a" {
		t.Errorf("ADD under Connection: X-Tenant: the server got X-Tenant %q, want [a]", got)
	}
}

// TestConnectNeedsItsLiteralMethod: a method pattern matching anything
// (".*") allowed CONNECT, and a web server answering it 200 with a body
// (a catch-all handler) made the connection a tunnel: the next request
// reached the server unseen.
func TestConnectNeedsItsLiteralMethod(t *testing.T) {
	up := answerEvery(t, func(uri string) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Path: " + uri + "\r\n\r\nok"
	})
	h := newHarnessTo(t, up, Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Method: ".*", Path: "/(public.*)?"}}})
	recs := h.records()
	c := h.dial()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "CONNECT svc:80 HTTP/1.1\r\nHost: svc:80\r\n\r\n")
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("CONNECT under method .*: status %d, want 403", resp.StatusCode)
	}
	if r := recs(1)[0]; r.Method != "CONNECT" || r.Verdict != Denied {
		t.Errorf("CONNECT under method .*: %+v, want denied", r)
	}

	// A rule naming CONNECT allows it; a 2xx with a body is no tunnel.
	h.ingress(PeerRules{HTTP: []HTTPRule{{Method: "CONNECT"}, {Method: "GET", Path: "/public.*"}}})
	c = h.dial()
	br = bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "CONNECT svc:80 HTTP/1.1\r\nHost: svc:80\r\n\r\nGET /admin HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, body := readResponse(t, br, "GET"); resp.StatusCode != http.StatusOK || body != "ok" {
		t.Fatalf("CONNECT answered 200 with a body: %d %q", resp.StatusCode, body)
	}
	// The connection is closed (or the next request decided): /admin
	// must not reach the server through a tunnel.
	if resp, err := http.ReadResponse(br, &http.Request{Method: "GET"}); err == nil && resp.Header.Get("X-Path") == "/admin" {
		t.Error("after a 2xx with a body to CONNECT, GET /admin went through unseen")
	}
}

// TestRequestTargetNotAPath: a target that is no path ("x:../../admin",
// which Go parses as an opaque URL) skipped normalisation and went on as
// "../../admin?.css", matched by rules not anchored at "/".
func TestRequestTargetNotAPath(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Path: ".*\\.css"}}})
	c := h.dial()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET x:../../admin?.css HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, body := readResponse(t, br, "GET"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("GET x:../../admin?.css: status %d (%q), want 400", resp.StatusCode, body)
	}
}

// TestHeadsHeldBounded: a pod's requests held while their server answers
// slowly (one it controls, or one that never answers) kept their parsed
// heads, up to 1 MiB each, on each of its 4,096 connections (and 250
// streams of each HTTP/2 one): gigabytes of the node's proxy. The heads
// of requests in flight now share a budget, of which a source holds at
// most its share; past it a request gets 503, and the budget comes back
// as requests end.
func TestHeadsHeldBounded(t *testing.T) {
	withHeadBudget(t, 1<<20, 40<<10)
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		w.Write([]byte("done"))
	}), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{}}})
	big := strings.Repeat("b", 16<<10)
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		t.Run(proto, func(t *testing.T) {
			tr := h.transport(proto)
			defer tr.CloseIdleConnections()
			get := func(path string) (int, error) {
				req, _ := http.NewRequest("GET", h.url(path), nil)
				req.Header.Set("X-Big", big)
				resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Do(req)
				if err != nil {
					return 0, err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode, nil
			}
			release = make(chan struct{})
			once = sync.Once{}
			codes := make(chan int, 2)
			for range 2 { // 2 × 16 KiB held: within the 40 KiB share
				go func() { c, _ := get("/slow"); codes <- c }()
			}
			deadline := time.Now().Add(10 * time.Second)
			for headBudget.heldBy(source{clientIP, clientID}) < 32<<10 {
				if time.Now().After(deadline) {
					t.Fatalf("the two slow requests do not hold their heads: %d bytes held", headBudget.heldBy(source{clientIP, clientID}))
				}
				time.Sleep(10 * time.Millisecond)
			}
			if c, err := get("/fast"); c != http.StatusServiceUnavailable {
				t.Errorf("a third request past the source's share: %d %v, want 503", c, err)
			}
			once.Do(func() { close(release) })
			for range 2 {
				if c := <-codes; c != http.StatusOK {
					t.Errorf("a slow request within the share: %d, want 200", c)
				}
			}
			if c, err := get("/fast"); c != http.StatusOK {
				t.Errorf("a request once the share is back: %d %v, want 200", c, err)
			}
		})
	}
}

// heldBy is what who holds of b.
func (b *byteShare) heldBy(who source) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.srcs[who]; s != nil {
		return s.held
	}
	return 0
}

// heldBy is what who holds of s.
func (s *slotShare) heldBy(who source) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.bySrc[who]; ss != nil {
		return ss.held
	}
	return 0
}

// TestUpstreamHeadBoundedH2: the HTTP/2 path's upstream transport took
// response heads up to net/http's default, 10 MiB a stream.
func TestUpstreamHeadBoundedH2(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Big", strings.Repeat("b", 2<<20))
		w.Write([]byte("big"))
	}), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{}}})
	tr := h.transport("HTTP/2")
	tr.MaxResponseHeaderBytes = 64 << 20
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Get(h.url("/"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("a 2 MiB response head over HTTP/2: status %d, want 502", resp.StatusCode)
	}
}

// TestUpgradeRuleSeesUpgrade: removing the hop-by-hop headers before the
// decision must leave the upgrade a client asks for visible to rules
// ("Upgrade: websocket"), as it was before.
func TestUpgradeRuleSeesUpgrade(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil || req.Header.Get("Upgrade") != "websocket" {
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		time.Sleep(time.Second)
	})
	h := newHarnessTo(t, up, Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Headers: []string{"Upgrade: websocket"}}}})
	c := h.dial()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "GET"})
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("an upgrade under a rule requiring Upgrade: websocket: %v %v, want 101", resp, err)
	}
	if headBudget.heldBy(source{clientIP, clientID}) == 0 {
		t.Error("a tunnel's head is not counted while it runs (TestTunnelKeepsItsHeadCounted)")
	}
}

// TestConnect204IsNoTunnel: a 204 to CONNECT (what a handler answering
// every request with an empty 204 sends: no framing at all) made a tunnel
// the client's next requests passed unseen.
func TestConnect204IsNoTunnel(t *testing.T) {
	up := answerEvery(t, func(uri string) string { return "HTTP/1.1 204 No Content\r\nX-Path: " + uri + "\r\n\r\n" })
	h := newHarnessTo(t, up, Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Method: "CONNECT"}, {Method: "GET", Path: "/public.*"}}})
	c := h.dial()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "CONNECT svc:80 HTTP/1.1\r\nHost: svc:80\r\n\r\nGET /admin HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, _ := readResponse(t, br, "CONNECT"); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("CONNECT answered 204: %d", resp.StatusCode)
	}
	if resp, err := http.ReadResponse(br, &http.Request{Method: "GET"}); err == nil && resp.Header.Get("X-Path") == "/admin" {
		t.Error("after a 204 to CONNECT, GET /admin went through unseen")
	}
}

// TestHeadHeldUntilResponseHead: a request's hold of the head budget ends
// when its response's head is in, not with a streamed body.
func TestHeadHeldUntilResponseHead(t *testing.T) {
	body := make(chan struct{})
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-body
	}), Options{})
	t.Cleanup(func() { close(body) })
	h.ingress(PeerRules{HTTP: []HTTPRule{{}}})
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		tr := h.transport(proto)
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get(h.url("/stream"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if held := headBudget.heldBy(source{clientIP, clientID}); held != 0 {
			t.Errorf("%s: a response streaming its body: its request's head (%d bytes) still held", proto, held)
		}
	}
}

// answerEvery is an upstream that answers each request on a connection
// with the response resp gives for its target.
func answerEvery(t *testing.T, resp func(uri string) string) netip.AddrPort {
	return rawUpstream(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.WriteString(c, resp(req.URL.RequestURI()))
		}
	})
}

// transport is a client transport from the client pod to the proxy
// speaking proto: "HTTP/1.1" or "HTTP/2" (h2c with prior knowledge).
func (h *harness) transport(proto string) *http.Transport {
	var protocols http.Protocols
	if proto == "HTTP/2" {
		protocols.SetUnencryptedHTTP2(true)
	} else {
		protocols.SetHTTP1(true)
	}
	return &http.Transport{Protocols: &protocols, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return clientDialer().DialContext(ctx, "tcp", h.addr)
	}}
}

// TestCodeLabelBounded: the status of a response is the upstream's, a
// server a pod may run: any three digits made a label value of
// filament_proxy_http_requests_total (about 30,000 series a node).
func TestCodeLabelBounded(t *testing.T) {
	for code, want := range map[int]string{200: "200", 404: "404", 499: "499", 29: "29", 3: "3", -1: "-1", 777: "other", 299: "other", 1000: "other"} {
		if got := codeLabel(code); got != want {
			t.Errorf("codeLabel(%d) = %q, want %q", code, got, want)
		}
	}
}

// TestInterimHeadsBoundedH2: over HTTP/2 the interim (1xx) heads of a
// response were not bounded (the reverse proxy's hook that passes them on
// turns the transport's own bound off): a pod's server could send 103s
// without end.
func TestInterimHeadsBoundedH2(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 4<<10 && r.Context().Err() == nil; i++ { // 4 MiB of interim heads
			w.Header().Set("Link", "</"+strings.Repeat("a", 1000)+">")
			w.WriteHeader(http.StatusEarlyHints)
		}
		w.Header().Del("Link")
		w.Write([]byte("done"))
	}), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{}}})
	tr := h.transport("HTTP/2")
	defer tr.CloseIdleConnections()
	interims := 0
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{Got1xxResponse: func(int, textproto.MIMEHeader) error {
		interims++
		return nil
	}})
	req, _ := http.NewRequestWithContext(ctx, "GET", h.url("/"), nil)
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("4 MiB of interim heads passed (%d interims), then 200", interims)
		}
	}
	if interims > 2<<10 {
		t.Errorf("%d interim heads of 1 KiB passed the proxy, want at most about 1 MiB of them", interims)
	}
}

// TestTrailersNotForwarded: a chunked request's trailers went to the
// server as sent, unjudged, so a header a rule had removed or replaced
// (or that the client may not send) came back after the body, which
// servers merging trailers into headers take as a header. The proxy
// drops request trailers (as Envoy does by default). Found 2026-12-05
// by reading the proxy.
func TestTrailersNotForwarded(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "trailer="+r.Trailer.Get("X-Tenant"))
	}), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{
		{Path: "/replaced", HeaderMatches: []HeaderMatch{{Name: "X-Tenant", Value: "a", Mismatch: MismatchReplace}}},
	}})
	c := h.dial()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /replaced HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nTrailer: X-Tenant\r\n\r\n"+
		"2\r\nhi\r\n0\r\nX-Tenant: admin\r\n\r\n")
	resp, body := readResponse(t, br, "POST")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d (%q)", resp.StatusCode, body)
	}
	if string(body) != "trailer=" {
		t.Errorf("the server got the client's trailer: %q", body)
	}
	// The connection goes on.
	io.WriteString(c, "GET /replaced HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, body := readResponse(t, br, "GET"); resp.StatusCode != http.StatusOK {
		t.Errorf("the next request: status %d (%q)", resp.StatusCode, body)
	}
}
