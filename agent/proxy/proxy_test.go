package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/filament-net/filament/internal/testutil"
)

// The seeds' example with curl: GET /public/.* goes through, everything
// else gets 403, and the connection stays usable after a 403.
func TestSeedsExampleCurl(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	out := h.curl("-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-w", `%{http_code} %{num_connects}\n`,
		h.url("/private"), h.url("/public/a"), h.url("/public/b?x=1"))
	if want := "403 1\n200 0\n200 0\n"; out != want {
		t.Fatalf("curl (code, new connections) = %q, want %q", out, want)
	}
	if got := h.curl("-X", "POST", "-o", "/dev/null", "-w", "%{http_code}", h.url("/public/a")); got != "403" {
		t.Errorf("POST /public/a: %s, want 403", got)
	}
	if got := h.curl(h.url("/private")); got != "Access denied\n" {
		t.Errorf("403 body %q", got)
	}
	e := decodeEcho(t, h.curl("-H", "X-Forwarded-For: 1.2.3.4", h.url("/public/x?y=1")))
	if e.Proto != "HTTP/1.1" || e.Path != "/public/x?y=1" || e.Host != h.addr || e.Header.Get("X-Forwarded-For") != "1.2.3.4" || e.Header.Get("User-Agent") == "" {
		t.Errorf("upstream got %+v", e)
	}
	// Another source (the host, 127.0.0.1) is not in the rule's remotes.
	out2, err := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", h.url("/public/a")).Output()
	if err != nil || string(out2) != "403" {
		t.Errorf("from the host: %s %v, want 403", out2, err)
	}
}

// curl --http2-prior-knowledge, one request per run: curl 7.88 fails to
// reuse a prior-knowledge connection (even straight to a Go server), so
// keep-alive over HTTP/2 is checked with Go's client and h2load.
func TestHTTP2PriorKnowledge(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	// Paths as servers resolve them (--path-as-is: curl would resolve
	// the dot segments itself).
	for path, want := range map[string]string{"/private": "2 403", "/public/a": "2 200", "/public/../private": "2 403",
		"/public/%2e%2e/private": "2 403", "/public/..%2fprivate": "2 400"} {
		if out := h.curl("--http2-prior-knowledge", "--path-as-is", "-o", "/dev/null", "-w", `%{http_version} %{http_code}`, h.url(path)); out != want {
			t.Errorf("curl h2 %s = %q, want %q", path, out, want)
		}
	}
	e := decodeEcho(t, h.curl("--http2-prior-knowledge", h.url("/public/a")))
	if e.Proto != "HTTP/2.0" || e.Path != "/public/a" {
		t.Errorf("upstream got %+v", e)
	}
	// A 403 and then a 200 on one HTTP/2 connection.
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	dials := 0
	tr := &http.Transport{Protocols: &protocols, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		dials++
		return clientDialer().DialContext(ctx, "tcp", h.addr)
	}}
	defer tr.CloseIdleConnections()
	for _, tc := range []struct {
		path string
		code int
	}{{"/private", 403}, {"/public/b", 200}, {"/other", 403}, {"/public/c", 200}} {
		resp, err := (&http.Client{Transport: tr}).Get(h.url(tc.path))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || resp.ProtoMajor != 2 {
			t.Errorf("%s: %s %s, want %d", tc.path, resp.Proto, resp.Status, tc.code)
		}
	}
	if dials != 1 {
		t.Errorf("%d connections for 4 requests, want 1", dials)
	}
}

func TestH2load(t *testing.T) {
	if _, err := exec.LookPath("h2load"); err != nil {
		t.Skip("h2load not installed (apt-get install nghttp2-client)")
	}
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Method: "GET", Path: "/public/.*"}}}) // h2load cannot bind: any peer
	for _, tc := range []struct {
		path, want string
	}{
		{"/public/load", "2000 succeeded, 0 failed, 0 errored, 0 timeout\nstatus codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx"},
		{"/private", "0 succeeded, 2000 failed, 0 errored, 0 timeout\nstatus codes: 0 2xx, 0 3xx, 2000 4xx, 0 5xx"}, // h2load counts 4xx as failed
	} {
		out, err := exec.Command("h2load", "-n", "2000", "-c", "8", "-m", "10", h.url(tc.path)).CombinedOutput()
		if err != nil {
			t.Fatalf("h2load: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("h2load %s:\n%s", tc.path, out)
		}
		if m := regexp.MustCompile(`finished in .*`).FindString(string(out)); m != "" {
			t.Logf("h2load %s: %s", tc.path, m)
		}
	}
}

// Header presence and value rules, and each headerMatches action, seen
// from the upstream.
func TestHeadersAndHeaderMatches(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{
		{Path: "/token", Headers: []string{"X-Token: s3cret", "X-Present"}},
		{Path: "/add", HeaderMatches: []HeaderMatch{{Name: "X-Add", Value: "added", Mismatch: "ADD"}}},
		{Path: "/delete", HeaderMatches: []HeaderMatch{{Name: "X-Del", Value: "keep", Mismatch: "DELETE"}}},
		{Path: "/replace", HeaderMatches: []HeaderMatch{{Name: "X-Rep", Value: "new", Mismatch: "REPLACE"}}},
		{Path: "/log", HeaderMatches: []HeaderMatch{{Name: "X-Log", Value: "v", Mismatch: "LOG"}}},
		{Path: "/strict", HeaderMatches: []HeaderMatch{{Name: "X-Strict", Value: "v"}}},
	}})
	rec := h.records()
	c := h.client()
	do := func(path string, hdr ...string) (int, echoed) {
		t.Helper()
		req, _ := http.NewRequest("GET", h.url(path), nil)
		for i := 0; i < len(hdr); i += 2 {
			req.Header.Add(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return resp.StatusCode, echoed{}
		}
		return 200, decodeEcho(t, string(b))
	}
	if code, _ := do("/token", "X-Token", "s3cret", "X-Present", ""); code != 200 {
		t.Errorf("/token with both headers: %d", code)
	}
	if code, _ := do("/token", "X-Token", "s3cret"); code != 403 {
		t.Errorf("/token without X-Present: %d", code)
	}
	if code, _ := do("/token", "X-Token", "other", "X-Present", "1"); code != 403 {
		t.Errorf("/token with the wrong value: %d", code)
	}
	rec(3)
	if _, e := do("/add", "X-Add", "mine"); strings.Join(e.Header["X-Add"], ",") != "mine,added" {
		t.Errorf("ADD: upstream got X-Add %q", e.Header["X-Add"])
	}
	if _, e := do("/add", "X-Add", "added"); strings.Join(e.Header["X-Add"], ",") != "added" {
		t.Errorf("ADD with the value already there: upstream got X-Add %q", e.Header["X-Add"])
	}
	if _, e := do("/delete", "X-Del", "other"); e.Header["X-Del"] != nil {
		t.Errorf("DELETE: upstream got X-Del %q", e.Header["X-Del"])
	}
	if _, e := do("/delete", "X-Del", "keep"); e.Header.Get("X-Del") != "keep" {
		t.Errorf("DELETE with the value: upstream got X-Del %q", e.Header["X-Del"])
	}
	if _, e := do("/replace", "X-Rep", "old"); strings.Join(e.Header["X-Rep"], ",") != "new" {
		t.Errorf("REPLACE: upstream got X-Rep %q", e.Header["X-Rep"])
	}
	code, e := do("/log", "X-Log", "w")
	if code != 200 || e.Header.Get("X-Log") != "w" {
		t.Errorf("LOG: %d, upstream got X-Log %q", code, e.Header["X-Log"])
	}
	if code, _ := do("/strict", "X-Strict", "w"); code != 403 {
		t.Errorf("mismatch without action: %d, want 403", code)
	}
	rs := rec(7)
	for i, want := range []string{"ADD", "", "DELETE", "", "REPLACE", "LOG", ""} {
		got := strings.Join(rs[i].Notes, ";")
		if want == "" && got != "" || !strings.Contains(got, want) {
			t.Errorf("record %d (%s) notes %q, want %s", i, rs[i].Path, got, want)
		}
	}
}

// Pipelined requests on one raw connection come back in order, a 403 in
// the middle included.
func TestPipelining(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	c := h.dial()
	var reqs strings.Builder
	for _, p := range []string{"/public/1", "/private", "/public/2", "/public/3"} {
		fmt.Fprintf(&reqs, "GET %s HTTP/1.1\r\nHost: pods\r\n\r\n", p)
	}
	if _, err := io.WriteString(c, reqs.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var remote string
	for _, want := range []string{"/public/1", "403", "/public/2", "/public/3"} {
		resp, body := readResponse(t, br, "GET")
		if want == "403" {
			if resp.StatusCode != 403 {
				t.Fatalf("got %d %q, want 403", resp.StatusCode, body)
			}
			continue
		}
		e := decodeEcho(t, body)
		if resp.StatusCode != 200 || e.Path != want {
			t.Fatalf("got %d %+v, want %s", resp.StatusCode, e, want)
		}
		// One client connection, one upstream connection.
		if remote != "" && e.Remote != remote {
			t.Errorf("upstream connection changed: %s then %s", remote, e.Remote)
		}
		remote = e.Remote
	}
	// Another client connection gets an upstream connection of its own.
	c2 := h.dial()
	io.WriteString(c2, "GET /public/4 HTTP/1.1\r\nHost: pods\r\n\r\n")
	_, body := readResponse(t, bufio.NewReader(c2), "GET")
	if e := decodeEcho(t, body); e.Remote == remote {
		t.Errorf("two clients share the upstream connection %s", remote)
	}
}

// A 64 MiB chunked upload is streamed: the upstream reads its start while
// the client is still writing, and the proxy does not hold it.
func TestChunkedUploadStreamed(t *testing.T) {
	const total, chunk = 64 << 20, 1 << 20
	started := make(chan struct{})
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64<<10)
		var n int64
		for {
			m, err := r.Body.Read(buf)
			if n < chunk && n+int64(m) >= chunk {
				close(started)
			}
			n += int64(m)
			if err != nil {
				break
			}
		}
		fmt.Fprintf(w, "%d %v", n, r.TransferEncoding)
	}), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Method: "POST", Path: "/upload"}}})
	pr, pw := io.Pipe()
	go func() {
		b := make([]byte, chunk)
		for sent := 0; sent < total; sent += chunk {
			if _, err := pw.Write(b); err != nil {
				return
			}
			if sent == 4*chunk {
				// Go on only once the upstream has the first MiB: a proxy
				// that buffered the body would never let it through.
				select {
				case <-started:
				case <-time.After(20 * time.Second):
					pw.CloseWithError(fmt.Errorf("upstream saw nothing of the upload after %d bytes", sent+chunk))
					return
				}
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", h.url("/upload"), pr) // no length: chunked
	resp, err := h.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("%d [chunked]", total); resp.StatusCode != 200 || string(b) != want {
		t.Fatalf("upload: %d %q, want %q", resp.StatusCode, b, want)
	}
}

// An allowed Upgrade request becomes a tunnel: 101, then bytes both ways.
// A denied one gets 403.
func TestUpgrade(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want upgrade", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello from server\n")
		line, _ := brw.ReadString('\n')
		io.WriteString(conn, "echo "+line)
	}), Options{})
	up := "Host: pods\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
	c := h.dial()
	io.WriteString(c, "GET /private/ws HTTP/1.1\r\n"+up)
	br := bufio.NewReader(c)
	if resp, _ := readResponse(t, br, "GET"); resp.StatusCode != 403 {
		t.Fatalf("denied upgrade: %d", resp.StatusCode)
	}
	io.WriteString(c, "GET /public/ws HTTP/1.1\r\n"+up)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if line, _ := br.ReadString('\n'); line != "hello from server\n" {
		t.Fatalf("server to client: %q", line)
	}
	io.WriteString(c, "hello from client\n")
	if line, _ := br.ReadString('\n'); line != "echo hello from client\n" {
		t.Fatalf("client to server: %q", line)
	}
}

// Malformed HTTP gets 400 and the proxy goes on.
func TestMalformedRequest(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	for _, bad := range []string{"GARBAGE\r\n\r\n", "GET /public/x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", "GET /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n"} {
		c := h.dial()
		io.WriteString(c, bad)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 400") {
			t.Errorf("%q: %q %v, want 400", bad, line, err)
		}
	}
	if got := h.curl("-o", "/dev/null", "-w", "%{http_code}", h.url("/public/after")); got != "200" {
		t.Errorf("after malformed requests: %s", got)
	}
}

// A client that never finishes its headers neither blocks others nor
// keeps its connection past the read-header timeout.
func TestSlowloris(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{ReadHeaderTimeout: 2 * time.Second})
	var slow []net.Conn
	for range 20 {
		c := h.dial()
		io.WriteString(c, "GET /public/slow HTTP/1.1\r\nHost: a\r\n")
		slow = append(slow, c)
	}
	if got := h.curl("-o", "/dev/null", "-w", "%{http_code}", h.url("/public/fast")); got != "200" {
		t.Errorf("normal request beside slow ones: %s", got)
	}
	for _, c := range slow {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("slow connection not closed by the proxy: %v", err)
		}
	}
}

// A client that sends a request's head and then stalls in its body is
// cut off after the idle timeout, whether the request is forwarded (its
// body streamed upstream) or denied (its body drained): before, the proxy
// cleared the read deadline once the head was read, and the connection,
// its goroutines and its upstream connection were held for as long as
// the client kept it open.
func TestStalledBodyClosed(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{IdleTimeout: time.Second})
	h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Method: "POST", Path: "/public/.*"}}})
	for _, path := range []string{"/public/slow", "/denied"} {
		c := h.dial()
		defer c.Close()
		io.WriteString(c, "POST "+path+" HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("%s: a body stalled after 10 of 100 bytes: connection not closed by the proxy after %v: %v", path, time.Since(start), err)
		}
	}
	// A body that keeps coming, slower than the idle timeout in all but
	// not between its bytes, is not cut off.
	c := h.dial()
	defer c.Close()
	io.WriteString(c, "POST /public/trickle HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n")
	for _, b := range "abcdef" {
		time.Sleep(400 * time.Millisecond)
		io.WriteString(c, string(b))
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if resp, _ := readResponse(t, bufio.NewReader(c), "POST"); resp.StatusCode != 200 {
		t.Fatalf("a trickled body: %s", resp.Status)
	}
}

// Both sides' policies must allow: the client's egress and the server's
// ingress; a flow with neither is denied.
func TestEgressAndIngress(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	rec := h.records()
	port := h.upstream.Port()
	egress := PortPolicy{Endpoint: clientIP, Direction: Egress, Port: port, Protocol: "TCP",
		Rules: []PeerRules{{Remotes: []uint32{serverID}, HTTP: []HTTPRule{{Path: "/public/.*|/both"}}}}}
	ingress := PortPolicy{Endpoint: serverIP, Direction: Ingress, Port: port, Protocol: "TCP",
		Rules: []PeerRules{{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Path: "/both|/ingress-only"}}}}}
	code := func(path string) string {
		return h.curl("-o", "/dev/null", "-w", "%{http_code}", h.url(path))
	}
	h.set(egress)
	if code("/public/x") != "200" || code("/both") != "200" || code("/ingress-only") != "403" {
		t.Error("egress only: wrong verdicts")
	}
	rs := rec(3)
	if r := rs[2]; r.Direction != Egress || r.Endpoint != clientIP || r.Verdict != Denied || r.SrcIdentity != clientID || r.DstIdentity != serverID {
		t.Errorf("egress record %+v", r)
	}
	h.set(egress, ingress)
	if code("/public/x") != "403" || code("/both") != "200" || code("/ingress-only") != "403" {
		t.Error("egress and ingress: wrong verdicts")
	}
	rs = rec(5) // /public/x: egress allows, ingress denies; /both: both allow; /ingress-only: egress denies
	if rs[0].Direction != Egress || rs[0].Verdict != Denied || rs[1].Direction != Ingress || rs[1].Reason != "no ingress rule matches" {
		t.Errorf("records %+v", rs[:2])
	}
	h.set()
	if code("/public/x") != "403" {
		t.Error("no policy: not denied")
	}
	if r := rec(1)[0]; r.Reason != "no L7 policy" || r.Verdict != Denied {
		t.Errorf("no-policy record %+v", r)
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(serverIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	h := newHarnessTo(t, dead, Options{})
	rec := h.records()
	// HTTP/1.1, then HTTP/2: the proxy answers 502, and the record says
	// error (allowed, not answered by the upstream), not forwarded.
	for _, args := range [][]string{nil, {"--http2-prior-knowledge"}} {
		if got := h.curl(append(args, "-o", "/dev/null", "-w", "%{http_code}", h.url("/public/x"))...); got != "502" {
			t.Errorf("unreachable upstream %v: %s, want 502", args, got)
		}
		if r := rec(1)[0]; r.Verdict != Error || r.Status != 502 {
			t.Errorf("unreachable upstream %v: record %+v, want verdict error, 502", args, r)
		}
	}
}

// curl's own upload: a file with Expect: 100-continue, then a chunked one.
func TestCurlUpload(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d %s %v", n, r.Header.Get("Expect"), r.TransferEncoding)
	}), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Method: "POST|PUT", Path: "/upload"}}})
	file := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(file, make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := h.curl("--data-binary", "@"+file, h.url("/upload")); got != "8388608 100-continue []" {
		t.Errorf("upload with Expect: %q", got)
	}
	if got := h.curl("-H", "Transfer-Encoding: chunked", "-T", file, h.url("/upload")); got != "8388608 100-continue [chunked]" {
		t.Errorf("chunked upload: %q", got)
	}
	if got := h.curl("--data-binary", "@"+file, "-o", "/dev/null", "-w", "%{http_code}", h.url("/other")); got != "403" {
		t.Errorf("denied upload: %s", got)
	}
}

// Close ends every connection, upgraded ones included, and every
// goroutine the proxy started.
func TestCloseLeavesNothing(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { testutil.NoLeaks(t, before) }) // after the harness's cleanups
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			echo(w, r)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
		io.Copy(conn, brw) // until the proxy goes
	}), Options{})
	h.curl(h.url("/public/a"))
	h.curl("--http2-prior-knowledge", h.url("/public/a"))
	c := h.dial()
	io.WriteString(c, "GET /public/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n")
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	idle := h.dial() // a connection that never sends anything
	h.p.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(br); err != nil {
		t.Errorf("upgraded connection after Close: %v", err)
	}
	idle.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(idle); err != nil {
		t.Errorf("idle connection after Close: %v", err)
	}
}

// The datapath can steer a flow a moment before its policy reaches the
// proxy: a request with no policy waits for the next config (up to
// policyWait) instead of failing at once.
func TestRequestWaitsForItsPolicy(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	h.set()
	go func() {
		time.Sleep(300 * time.Millisecond)
		h.p.SetConfig(Config{Revision: 2, IPCache: ipcache, Policies: []PortPolicy{{Endpoint: serverIP, Direction: Ingress,
			Port: h.upstream.Port(), Protocol: "TCP", Rules: []PeerRules{{HTTP: []HTTPRule{{Path: "/late"}}}}}}})
	}()
	resp, err := h.client().Get(h.url("/late"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a request that came before its policy: %s, want 200 once the policy arrived", resp.Status)
	}
}

// dialFrom opens a TCP connection to addr from the address from, closed
// at the test's end.
func dialFrom(t *testing.T, addr string, from netip.Addr) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))}
	c, err := d.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// servedOn tells whether the proxy answers a request for /public/x on c
// with 200 (a refused connection is closed without an answer).
func servedOn(t *testing.T, c net.Conn) bool { return answerOn(t, c) == http.StatusOK }

// answerOn is the status of the proxy's answer to a request for
// /public/x on c, 0 for none.
func answerOn(t *testing.T, c net.Conn) int {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /public/x HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
		return 0
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// The attack (found 2026-12-07 by a hunt of shared state): connections
// were bounded per source only, so many sources (a tenant's pods, each
// within its MaxConnsPerSource) held as many as they liked, some 53 KiB
// of the proxy's memory each, until the node's proxy ran out of memory or
// file descriptors, and with it every tenant's L7 and DNS. The node's
// connections are bounded now (MaxConns), shared fairly: a source
// holding less than its share takes the oldest connection of the source
// holding the most, once held a second.
func TestConnsNodeBounded(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), Options{MaxConns: 4, MaxConnsPerSource: 4})
	// No connection is taken over however slowly this machine makes the
	// four (the proxy's own grace is a second).
	if old := setTakeover(h.p.connShare, time.Hour); old != minSlotTakeover {
		t.Errorf("the proxy's connections are taken over after %v, want %v", old, minSlotTakeover)
	}
	var held []net.Conn
	for i := range 4 {
		c := dialFrom(t, h.addr, clientIP)
		if !servedOn(t, c) {
			t.Fatalf("connection %d of the first source, within the bounds: not served", i+1)
		}
		held = append(held, c)
	}
	// Another source (the host's address, allowed by no rule: its
	// request is denied, but answered). Within the grace the
	// full pool keeps it out...
	other := netip.MustParseAddr("127.0.0.3")
	if answerOn(t, dialFrom(t, h.addr, other)) != 0 {
		t.Fatal("a fifth connection was answered: the node holds 4 at most")
	}
	// ...then (once they are held a second: here at once) it takes the
	// first source's oldest connection.
	setTakeover(h.p.connShare, 0)
	if answerOn(t, dialFrom(t, h.addr, other)) == 0 {
		t.Fatal("another source gets no connection while the first holds the whole pool")
	}
	held[0].SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := held[0].Read(make([]byte, 1)); err == nil {
		t.Error("the first source's oldest connection was not closed for the newcomer")
	}
	if !servedOn(t, held[3]) {
		t.Error("the first source's newest connection was closed too")
	}
	var m dto.Metric
	h.p.metrics.connsShed.Write(&m)
	if m.GetCounter().GetValue() != 1 {
		t.Errorf("shed connections counted %v, want 1", m.GetCounter().GetValue())
	}
}

// The attack: a pod opens connections through the node's proxy without
// end (each costs the proxy two sockets and a goroutine). Past its share
// (MaxConnsPerSource) its new connections are closed at once, while
// another source's are served; a closed one frees its place.
func TestConnsPerSourceBounded(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), Options{MaxConnsPerSource: 3})
	dial := func(from netip.Addr) net.Conn { return dialFrom(t, h.addr, from) }
	served := func(c net.Conn) bool { return servedOn(t, c) }
	var held []net.Conn
	for i := range 3 {
		c := dial(clientIP)
		if !served(c) {
			t.Fatalf("connection %d of the source, within its share: not served", i+1)
		}
		held = append(held, c)
	}
	if served(dial(clientIP)) {
		t.Fatal("a fourth connection of the source was served (share 3)")
	}
	var m dto.Metric
	h.p.metrics.connsRefused.Write(&m)
	if m.GetCounter().GetValue() != 1 {
		t.Errorf("refused connections counted %v, want 1", m.GetCounter().GetValue())
	}
	// Another source is served meanwhile (the host's address, allowed
	// by no rule: its request is denied, but answered).
	other := dial(netip.MustParseAddr("127.0.0.3"))
	other.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(other, "GET /public/x HTTP/1.1\r\nHost: web\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(other), nil); err != nil {
		t.Fatalf("another source's connection while the first holds its share: %v", err)
	} else {
		resp.Body.Close()
	}
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for !served(dial(clientIP)) {
		if time.Now().After(deadline) {
			t.Fatal("a closed connection did not free its place")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An HTTP/2 stream's request body that stalls before the upstream
// answers is cut off after the idle timeout, as an HTTP/1.x body is:
// before, net/http's server has no per-stream timeout, and the stream
// held its goroutines and upstream stream for as long as the client
// kept the connection. Once the upstream has answered the head, the
// stream is a live exchange (a gRPC bidirectional stream, quiet for a
// while) and is not cut.
func TestStalledH2BodyCut(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/public/stream" {
			w.WriteHeader(200)
			http.NewResponseController(w).Flush()
		}
		b, _ := io.ReadAll(r.Body)
		fmt.Fprint(w, len(b))
	}), Options{IdleTimeout: time.Second})
	h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Method: "POST", Path: "/public/.*"}}})
	tr := h.transport("HTTP/2")
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	// A gRPC call's body waits four idle timeouts, no more: its content
	// type is the client's word.
	for _, contentType := range []string{"application/octet-stream", "application/grpc"} {
		pr, pw := io.Pipe()
		defer pw.Close()
		go pw.Write([]byte("0123456789")) // then nothing
		resp, err := c.Post(h.url("/public/slow"), contentType, pr)
		switch {
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || err != nil && strings.Contains(err.Error(), "Client.Timeout"):
			t.Fatalf("%s: a stream's body stalled after 10 bytes was not cut off by the proxy: %v", contentType, err)
		case err == nil:
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			grpcStatus := resp.Header.Get("Grpc-Status") + resp.Trailer.Get("Grpc-Status")
			if contentType == "application/grpc" && grpcStatus != "14" || contentType != "application/grpc" && resp.StatusCode != http.StatusBadGateway {
				t.Fatalf("%s: a stream's body stalled: %s (grpc-status %q), want the stream reset, 502 or UNAVAILABLE", contentType, resp.Status, grpcStatus)
			}
		}
	}
	// Answered first, then quiet for twice the idle timeout: kept; and a
	// gRPC call, whose server answers at its end: not timed.
	for _, tc := range []struct{ path, contentType string }{
		{"/public/stream", "application/octet-stream"},
		{"/public/grpc-like", "application/grpc"},
	} {
		pr, pw := io.Pipe()
		go func() {
			pw.Write([]byte("a"))
			time.Sleep(2 * time.Second)
			pw.Write([]byte("b"))
			pw.Close()
		}()
		resp, err := c.Post(h.url(tc.path), tc.contentType, pr)
		if err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "2" {
			t.Errorf("%s, quiet for twice the idle timeout: %q, %v", tc.path, b, err)
		}
	}
}

// The attack: a pod holds HTTP/2 requests open (bodies never ended) on
// its connections, 250 streams each, every one a handler, a transport
// stream and a body buffer of up to 512 KiB in the proxy. Past its share
// (MaxStreamsPerSource) over all its connections, its next request is
// answered 503 at once; a finished one frees its place. Before
// 2026-12-05 only connections were bounded.
func TestStreamsPerSourceBounded(t *testing.T) {
	arrived, release := make(chan struct{}, 8), make(chan struct{})
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/public/hold" {
			arrived <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok")
	}), Options{MaxStreamsPerSource: 2})
	tr := h.transport("HTTP/2")
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	get := func(path string) int {
		t.Helper()
		resp, err := c.Get(h.url(path))
		if err != nil {
			t.Errorf("GET %s: %v", path, err)
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	done := make(chan int, 2)
	for range 2 {
		go func() { done <- get("/public/hold") }()
	}
	for range 2 {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("the held requests did not reach the server")
		}
	}
	if code := get("/public/x"); code != http.StatusServiceUnavailable {
		t.Errorf("a third request in flight of the source (share 2): %d, want 503", code)
	}
	var m dto.Metric
	h.p.metrics.streamsRefused.Write(&m)
	if m.GetCounter().GetValue() != 1 {
		t.Errorf("refused streams counted %v, want 1", m.GetCounter().GetValue())
	}
	close(release)
	for range 2 {
		if code := <-done; code != http.StatusOK {
			t.Errorf("a held request: %d, want 200", code)
		}
	}
	if code := get("/public/x"); code != http.StatusOK {
		t.Errorf("a request after the held ones ended: %d, want 200", code)
	}
}
