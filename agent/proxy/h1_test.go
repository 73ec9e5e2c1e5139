package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// A response of unknown length reaches the client piece by piece: the
// proxy sends what it has before it waits for more (event streams).
func TestStreamedResponse(t *testing.T) {
	next := make(chan struct{})
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		for i := range 3 {
			fmt.Fprintf(w, "event %d\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-time.After(20 * time.Second):
				return
			}
		}
	}), Options{})
	c := h.dial()
	io.WriteString(c, "GET /public/events HTTP/1.1\r\nHost: pods\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("response: %v %v", resp, err)
	}
	lines := bufio.NewReader(resp.Body)
	for i := range 3 {
		// The upstream writes event i+1 only after the client has event i.
		line, err := lines.ReadString('\n')
		if err != nil || line != fmt.Sprintf("event %d\n", i) {
			t.Fatalf("event %d: %q %v", i, line, err)
		}
		next <- struct{}{}
	}
}

// An HTTP/1.0 client gets its response without chunked framing, ended by
// the close of the connection.
func TestHTTP10Client(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "part one, ")
		w.(http.Flusher).Flush() // unknown length: chunked to an HTTP/1.1 peer
		io.WriteString(w, "part two")
	}), Options{})
	c := h.dial()
	io.WriteString(c, "GET /public/old HTTP/1.0\r\nHost: pods\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	raw, err := io.ReadAll(c) // until the proxy closes
	if err != nil {
		t.Fatal(err)
	}
	head, body, _ := strings.Cut(string(raw), "\r\n\r\n")
	if !strings.HasPrefix(head, "HTTP/1.0 200") || strings.Contains(strings.ToLower(head), "chunked") || body != "part one, part two" {
		t.Fatalf("HTTP/1.0 response:\n%s", raw)
	}
}

// A request head over the limit is refused with 431 and the proxy goes on.
func TestHeadTooLarge(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	c := h.dial()
	go func() {
		io.WriteString(c, "GET /public/big HTTP/1.1\r\nHost: pods\r\n")
		line := "X-Filler: " + strings.Repeat("a", 8000) + "\r\n"
		for range maxHeaderBytes/len(line) + 2 {
			if _, err := io.WriteString(c, line); err != nil {
				return // the proxy closed: expected
			}
		}
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 431") {
		t.Fatalf("oversized head: %q %v, want 431", line, err)
	}
	if got := h.curl("-o", "/dev/null", "-w", "%{http_code}", h.url("/public/after")); got != "200" {
		t.Errorf("after an oversized head: %s", got)
	}
}

// A keep-alive upstream connection the upstream closed while idle is
// replaced for the next request without the client seeing an error.
func TestUpstreamClosedIdleConnection(t *testing.T) {
	uln, err := net.Listen("tcp", net.JoinHostPort(serverIP.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uln.Close() })
	go func() {
		// One response per connection, then a close without saying so
		// (what an upstream's idle timeout does).
		for n := 0; ; n++ {
			c, err := uln.Accept()
			if err != nil {
				return
			}
			if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
				body := fmt.Sprint("connection ", n)
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			}
			c.Close()
		}
	}()
	h := newHarnessTo(t, netip.MustParseAddrPort(uln.Addr().String()), Options{})
	c := h.dial()
	br := bufio.NewReader(c)
	for i := range 3 {
		fmt.Fprintf(c, "GET /public/%d HTTP/1.1\r\nHost: pods\r\n\r\n", i)
		resp, body := readResponse(t, br, "GET")
		if want := fmt.Sprint("connection ", i); resp.StatusCode != 200 || body != want {
			t.Fatalf("request %d: %d %q, want 200 %q", i, resp.StatusCode, body, want)
		}
	}
}

// A graceful shutdown lets a request in flight finish and closes the
// connections between requests (one that has had a response, one that has
// sent nothing yet).
func TestShutdownFinishesRequests(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/public/slow" {
			close(arrived)
			<-release
		}
		io.WriteString(w, "done")
	}), Options{})
	busy, idle, fresh := h.dial(), h.dial(), h.dial()
	io.WriteString(idle, "GET /public/first HTTP/1.1\r\nHost: pods\r\n\r\n")
	idleR := bufio.NewReader(idle)
	if resp, _ := readResponse(t, idleR, "GET"); resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	io.WriteString(busy, "GET /public/slow HTTP/1.1\r\nHost: pods\r\n\r\n")
	<-arrived
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- h.p.Shutdown(ctx)
	}()
	for _, tc := range []struct {
		name string
		c    net.Conn
		r    io.Reader
	}{{"between requests", idle, idleR}, {"not sniffed yet", fresh, fresh}} {
		tc.c.SetReadDeadline(time.Now().Add(20 * time.Second))
		// Closed is closed: EOF, or a reset if the proxy never read it.
		if _, err := io.ReadAll(tc.r); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("connection %s not closed by Shutdown", tc.name)
		}
	}
	close(release)
	busy.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, body := readResponse(t, bufio.NewReader(busy), "GET")
	if resp.StatusCode != 200 || body != "done" {
		t.Errorf("request in flight during Shutdown: %d %q", resp.StatusCode, body)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// A request body that is malformed or cut short is answered 400 and the
// connection closed; the proxy goes on.
func TestMalformedBody(t *testing.T) {
	// The server reads the body before it answers (one that answers at
	// once, told the connection closes after, does not wait for it).
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		echo(w, r)
	}), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Method: "POST", Path: "/upload"}, {Method: "GET", Path: "/public/.*"}}})
	for _, tc := range []struct {
		name, req string
		halfClose bool
	}{
		{"bad chunk size", "POST /upload HTTP/1.1\r\nHost: pods\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", false},
		{"cut short", "POST /upload HTTP/1.1\r\nHost: pods\r\nContent-Length: 10\r\n\r\nshort", true},
	} {
		c := h.dial()
		io.WriteString(c, tc.req)
		if tc.halfClose {
			c.(*net.TCPConn).CloseWrite()
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		raw, err := io.ReadAll(c)
		if err != nil || !strings.HasPrefix(string(raw), "HTTP/1.1 400") {
			t.Errorf("%s: %q %v, want 400 and a close", tc.name, raw, err)
		}
	}
	if got := h.curl("-o", "/dev/null", "-w", "%{http_code}", h.url("/public/after")); got != "200" {
		t.Errorf("after malformed bodies: %s", got)
	}
}

// OPTIONS * is decided by the rules like any request, over HTTP/1.1 and
// HTTP/2 (net/http's server would answer it 200 itself).
func TestOptionsStarDecided(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	for _, proto := range []string{"--http1.1", "--http2-prior-knowledge"} {
		if got := h.curl(proto, "-X", "OPTIONS", "--request-target", "*", "-o", "/dev/null", "-w", "%{http_code}", h.url("/")); got != "403" {
			t.Errorf("%s OPTIONS *: %s, want 403 (the rule allows GET /public/.* only)", proto, got)
		}
	}
}

// A body that arrives in pieces reaches the upstream byte for byte: the
// proxy flushes what it has before it waits for more (a flush inside
// bufio.Writer.ReadFrom once put later bytes at the wrong offset), both
// ways.
func TestBodyInPieces(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Length", fmt.Sprint(2*len(b)))
		w.Write(b)
		w.(http.Flusher).Flush()
		time.Sleep(200 * time.Millisecond) // the proxy waits for the rest of the response
		w.Write(b)
	}), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Method: "POST", Path: "/echo"}}})
	c := h.dial()
	io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: pods\r\nContent-Length: 20\r\n\r\n0123456789")
	time.Sleep(200 * time.Millisecond) // the proxy waits for the rest of the body
	io.WriteString(c, "abcdefghij")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, body := readResponse(t, bufio.NewReader(c), "POST")
	if want := "0123456789abcdefghij0123456789abcdefghij"; resp.StatusCode != 200 || body != want {
		t.Fatalf("echo: %d %q, want %q", resp.StatusCode, body, want)
	}
}

// Review cases of the HTTP/1.x loop.
func TestH1EdgeCases(t *testing.T) {
	stream := make(chan struct{})
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/public/headers":
			json.NewEncoder(w).Encode(r.Header)
		case "/public/early":
			// Answers at once, without reading the body.
			w.Header().Set("Connection", "close")
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
		case "/public/stream":
			// An endless stream, until the client goes.
			for {
				if _, err := io.WriteString(w, strings.Repeat("x", 4096)); err != nil {
					close(stream)
					return
				}
				w.(http.Flusher).Flush()
			}
		case "/public/h2c":
			if r.Header.Get("Upgrade") != "" {
				w.Header().Set("Connection", "Upgrade")
				w.Header().Set("Upgrade", "h2c")
				w.WriteHeader(http.StatusSwitchingProtocols)
				return
			}
			io.WriteString(w, "plain")
		default:
			echo(w, r)
		}
	}), Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Path: "/public/.*"}}})

	t.Run("hop-by-hop headers stay on their hop", func(t *testing.T) {
		c := h.dial()
		io.WriteString(c, "GET /public/headers HTTP/1.1\r\nHost: pods\r\nConnection: X-Secret\r\nX-Secret: 1\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nKeep-Alive: 5\r\nX-Kept: yes\r\n\r\n")
		_, body := readResponse(t, bufio.NewReader(c), "GET")
		var got http.Header
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"X-Secret", "Proxy-Authorization", "Keep-Alive", "Connection"} {
			if v := got.Get(name); v != "" {
				t.Errorf("%s reached the upstream: %q", name, v)
			}
		}
		if got.Get("X-Kept") != "yes" {
			t.Errorf("an end-to-end header was lost: %v", got)
		}
	})

	t.Run("an h2c upgrade goes on as HTTP/1.1", func(t *testing.T) {
		c := h.dial()
		io.WriteString(c, "GET /public/h2c HTTP/1.1\r\nHost: pods\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
		resp, body := readResponse(t, bufio.NewReader(c), "GET")
		if resp.StatusCode != 200 || body != "plain" {
			t.Errorf("h2c upgrade: %d %q, want 200 \"plain\" (no tunnel)", resp.StatusCode, body)
		}
	})

	t.Run("an h2c among the upgrades goes on as HTTP/1.1", func(t *testing.T) {
		c := h.dial()
		io.WriteString(c, "GET /public/h2c HTTP/1.1\r\nHost: pods\r\nConnection: Upgrade\r\nUpgrade: websocket, H2C\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
		resp, body := readResponse(t, bufio.NewReader(c), "GET")
		if resp.StatusCode != 200 || body != "plain" {
			t.Errorf("upgrade to websocket or h2c: %d %q, want 200 \"plain\" (no tunnel)", resp.StatusCode, body)
		}
		c = h.dial()
		io.WriteString(c, "GET /public/headers HTTP/1.1\r\nHost: pods\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
		_, body = readResponse(t, bufio.NewReader(c), "GET")
		var got http.Header
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatal(err)
		}
		if got.Get("Upgrade") != "websocket" || got.Get("Http2-Settings") != "" {
			t.Errorf("upstream saw Upgrade %q and HTTP2-Settings %q, want websocket and none", got.Get("Upgrade"), got.Get("Http2-Settings"))
		}
	})

	t.Run("a CONNECT to a path is refused", func(t *testing.T) {
		// The path rule matches it, and a server answering it 2xx would
		// make it a tunnel for requests the proxy never sees.
		c := h.dial()
		io.WriteString(c, "CONNECT /public/x HTTP/1.1\r\nHost: pods\r\n\r\n")
		br := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusBadRequest {
			io.WriteString(c, "GET /private/x HTTP/1.1\r\nHost: pods\r\n\r\n")
			t.Fatalf("CONNECT /public/x: %d, want 400 (through the tunnel GET /private/x would reach the server)", resp.StatusCode)
		}
	})

	t.Run("paths are decided on as servers resolve them", func(t *testing.T) {
		for path, want := range map[string]int{
			"/public/../admin": 403, "/public/%2e%2e/admin": 403, "/public/..%2fadmin": 400,
			"/public/..;/admin": 400, "/public/./a/../b": 200,
		} {
			c := h.dial()
			io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: pods\r\n\r\n")
			resp, body := readResponse(t, bufio.NewReader(c), "GET")
			if resp.StatusCode != want {
				t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
			} else if want == 200 {
				if e := decodeEcho(t, body); e.Path != "/public/b" {
					t.Errorf("GET %s reached the upstream as %q, want /public/b", path, e.Path)
				}
			}
			c.Close()
		}
	})

	t.Run("an early answer is not held behind the body", func(t *testing.T) {
		c := h.dial()
		// The client waits for 100 Continue before it sends its body.
		io.WriteString(c, "POST /public/early HTTP/1.1\r\nHost: pods\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, _ := readResponse(t, bufio.NewReader(c), "POST")
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("early answer: %d, want 413", resp.StatusCode)
		}
	})

	t.Run("a client gone mid-stream ends the upstream too", func(t *testing.T) {
		c := h.dial()
		io.WriteString(c, "GET /public/stream HTTP/1.1\r\nHost: pods\r\n\r\n")
		br := bufio.NewReader(c)
		if _, err := http.ReadResponse(br, nil); err != nil {
			t.Fatal(err)
		}
		c.Close()
		select {
		case <-stream:
		case <-time.After(10 * time.Second):
			t.Fatal("the upstream still streams 10 s after its client went away")
		}
	})

	t.Run("HTTP/1.0 keep-alive is one request", func(t *testing.T) {
		c := h.dial()
		io.WriteString(c, "GET /public/old HTTP/1.0\r\nHost: pods\r\nConnection: keep-alive\r\n\r\n")
		resp, _ := readResponse(t, bufio.NewReader(c), "GET")
		if !resp.Close {
			t.Errorf("HTTP/1.0 response without Connection: close: %v", resp.Header)
		}
	})
}

// An allowed CONNECT becomes a tunnel: the head, then bytes both ways.
func TestConnectTunnel(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		line, _ := br.ReadString('\n')
		io.WriteString(c, "echo "+line)
	})
	h := newHarnessTo(t, up, Options{})
	h.ingress(PeerRules{HTTP: []HTTPRule{{Method: "CONNECT"}}})
	c := h.dial()
	io.WriteString(c, "CONNECT pods:443 HTTP/1.1\r\nHost: pods:443\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	io.WriteString(c, "through the tunnel\n")
	if line, err := br.ReadString('\n'); line != "echo through the tunnel\n" {
		t.Fatalf("tunnel: %q %v", line, err)
	}
}
