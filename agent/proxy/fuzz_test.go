package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// fuzzAllowed is the harness's rule (GET on /public/.*) as the upstream
// checks it: the method, and the request target as the proxy sent it.
var fuzzAllowed = struct {
	method string
	path   *regexp.Regexp
}{"GET", regexp.MustCompile(`^(?:/public/.*)$`)}

// How long the proxy has to end a hostile connection once the client has
// sent all it will (it answers, then sees the end of input, or gives up
// on the request), and to answer a valid request. Generous: a hang is a
// failure, a slow machine is not.
const (
	fuzzCloseWithin  = 5 * time.Second
	fuzzAnswerWithin = 10 * time.Second
)

// upstreamLog records every request the upstream is sent.
type upstreamLog struct {
	mu   sync.Mutex
	seen []string // "METHOD target", but for the test's own probes
	bad  []string // those the rule does not allow
}

// fuzzProbe marks the test's own requests.
const fuzzProbe = "X-Fuzz-Probe"

func (l *upstreamLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	l.mu.Lock()
	req := r.Method + " " + r.RequestURI
	if r.Header.Get(fuzzProbe) == "" {
		l.seen = append(l.seen, req)
	}
	if r.Method != fuzzAllowed.method || !fuzzAllowed.path.MatchString(r.RequestURI) {
		l.bad = append(l.bad, req)
	}
	l.mu.Unlock()
	io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	io.WriteString(w, "from upstream\n")
}

// take returns, and forgets, the requests seen since the last call.
func (l *upstreamLog) take() (seen, bad []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen, bad = l.seen, l.bad
	l.seen, l.bad = nil, nil
	return seen, bad
}

// FuzzProxyHTTP sends arbitrary client bytes to the proxy on one raw
// connection of the client pod (the server's ingress allows GET on
// /public/.* and nothing else), followed by an allowed request that asks
// to close, and reads what comes back until the proxy closes or goes
// quiet. Properties:
//   - the upstream never sees a request the rule denies: not a smuggled
//     one, not one in a body, not one after a denied request (request
//     smuggling);
//   - an HTTP/1 client gets HTTP/1 back, and no 200 the upstream did not
//     send;
//   - meanwhile and afterwards a fresh allowed GET gets 200 from the
//     upstream (the proxy stays up and serving).
//
// One proxy and upstream serve the whole run; only the network and the
// Options/SetConfig API are used, so that the target holds whatever the
// forwarding internals become.
func FuzzProxyHTTP(f *testing.F) { fuzzProxy(f, false) }

// FuzzProxyHTTPHalfClose is FuzzProxyHTTP with a client that ends its
// side (shutdown SHUT_WR, as `nc -N` or an HTTP/1.0 client may) right
// after its bytes, and also checks that the proxy then ends the
// connection (no hang).
func FuzzProxyHTTPHalfClose(f *testing.F) { fuzzProxy(f, true) }

// fuzzEnd ends FuzzProxyHTTP's input: once the proxy has answered it, it
// closes.
const fuzzEnd = "GET /public/end HTTP/1.1\r\nHost: pods\r\nConnection: close\r\n\r\n"

// fuzzQuiet is how long FuzzProxyHTTP waits for more of an answer; the
// proxy may wait longer than that for the rest of a request, and the
// client gives up (the properties do not depend on it).
const fuzzQuiet = 500 * time.Millisecond

func fuzzProxy(f *testing.F, halfClose bool) {
	for _, s := range proxyFuzzSeeds() {
		f.Add(s)
	}
	log := &upstreamLog{}
	h := newHarness(f, log, Options{
		ReadHeaderTimeout: 2 * time.Second, IdleTimeout: 2 * time.Second, DialTimeout: 2 * time.Second,
		Logger: slog.New(slog.DiscardHandler), // per-iteration logs would fill the fuzzer's memory
	})
	f.Cleanup(func() {
		if _, bad := log.take(); len(bad) > 0 {
			f.Errorf("the upstream got requests the rule denies: %q", bad)
		}
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := clientDialer().Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// The proxy may stop reading (and close) at any point: a write
		// error is its right. The write deadline only keeps a proxy that
		// neither reads nor closes from hanging the run.
		c.SetWriteDeadline(time.Now().Add(fuzzCloseWithin))
		send := in
		if !halfClose {
			send = append(slices.Clip(in), fuzzEnd...)
		}
		_, werr := c.Write(send)
		if werr != nil && errors.Is(werr, os.ErrDeadlineExceeded) {
			t.Fatalf("the proxy neither read %d bytes of input nor closed within %v", len(send), fuzzCloseWithin)
		}
		if halfClose {
			c.(*net.TCPConn).CloseWrite()
		}

		// Another client is served meanwhile.
		fuzzAllowedGet(t, h, "/public/beside")

		var out []byte
		if halfClose {
			c.SetReadDeadline(time.Now().Add(fuzzCloseWithin))
			var rerr error
			out, rerr = io.ReadAll(c)
			if errors.Is(rerr, os.ErrDeadlineExceeded) {
				t.Fatalf("the proxy did not end the connection within %v of the client's end of input; it sent %q", fuzzCloseWithin, trim(out))
			}
		} else {
			out = readUntilQuiet(c, fuzzQuiet)
		}
		c.Close()

		fuzzAllowedGet(t, h, "/public/after")
		seen, bad := log.take()
		if len(bad) > 0 {
			t.Fatalf("the upstream got requests the rule denies: %q\nclient sent %q\nproxy answered %q", bad, trim(send), trim(out))
		}
		if bytes.HasPrefix(in, []byte(h2Preface)) {
			return
		}
		if len(out) > 0 && !bytes.HasPrefix(out, []byte("HTTP/1.")) {
			t.Errorf("an HTTP/1 client got %q", trim(out))
		}
		// Each 200 is the upstream's answer to a request it saw (its
		// body may not contain a status line).
		if oks := len(status200.FindAll(out, -1)); oks > len(seen) {
			t.Errorf("the client got %d responses 200, the upstream saw %d requests (%q)\nclient sent %q\nproxy answered %q", oks, len(seen), seen, trim(send), trim(out))
		}
	})
}

// readUntilQuiet reads c until it ends or sends nothing for quiet.
func readUntilQuiet(c net.Conn, quiet time.Duration) []byte {
	var out []byte
	buf := make([]byte, 32<<10)
	for {
		c.SetReadDeadline(time.Now().Add(quiet))
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return out
		}
	}
}

// fuzzAllowedGet checks that an allowed GET on a new connection gets the
// upstream's 200.
func fuzzAllowedGet(t *testing.T, h *harness, path string) {
	t.Helper()
	c, err := clientDialer().Dial("tcp", h.addr)
	if err != nil {
		t.Fatalf("the proxy no longer accepts connections: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(fuzzAnswerWithin))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: pods\r\n%s: 1\r\nConnection: close\r\n\r\n", path, fuzzProbe)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "GET"})
	if err != nil {
		t.Fatalf("GET %s: no answer: %v", path, err)
	}
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || err != nil || string(b) != "from upstream\n" {
		t.Fatalf("GET %s: %s %q %v, want 200 from the upstream", path, resp.Status, b, err)
	}
}

var status200 = regexp.MustCompile(`HTTP/1\.[01] 200 `)

func trim(b []byte) []byte {
	if len(b) > 512 {
		return append(b[:512:512], "..."...)
	}
	return b
}

// proxyFuzzSeeds are valid, denied and malformed requests, and the
// classic smuggling shapes: each tries to get a POST or /private request
// to the upstream behind an allowed one.
func proxyFuzzSeeds() [][]byte {
	const smuggled = "POST /private HTTP/1.1\r\nHost: pods\r\nContent-Length: 0\r\n\r\n"
	get := func(path, headers, body string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: pods\r\n" + headers + "\r\n" + body
	}
	seeds := []string{
		get("/public/x", "", ""),
		get("/public/x?y=1", "Connection: close\r\n", ""),
		"POST /public/x HTTP/1.1\r\nHost: pods\r\nContent-Length: 5\r\n\r\nhello",
		get("/private", "", ""),
		"HEAD /public/x HTTP/1.1\r\nHost: pods\r\n\r\n",
		"GET /public/x HTTP/1.0\r\n\r\n",
		"GET http://pods/public/x HTTP/1.1\r\nHost: pods\r\n\r\n",
		"GET http://pods/private HTTP/1.1\r\nHost: pods\r\n\r\n",
		"GET /public/../private HTTP/1.1\r\nHost: pods\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: pods\r\n\r\n",
		"CONNECT pods:80 HTTP/1.1\r\nHost: pods:80\r\n\r\n",
		// Pipelined: allowed, denied, allowed.
		get("/public/1", "", "") + get("/private", "", "") + get("/public/2", "", ""),
		get("/public/1", "", "") + smuggled + get("/public/2", "", ""),
		// Chunked bodies, good and bad.
		get("/public/c", "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n") + smuggled,
		get("/public/c", "Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n") + smuggled,
		get("/public/c", "Transfer-Encoding: chunked\r\n", "-1\r\nhello\r\n0\r\n\r\n"),
		get("/public/c", "Transfer-Encoding: chunked\r\n", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
		get("/public/c", "Transfer-Encoding: chunked\r\n", "5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"),
		get("/public/c", "Transfer-Encoding: chunked\r\n", "3\r\nhello\r\n0\r\n\r\n") + smuggled,
		get("/public/c", "Transfer-Encoding: chunked\r\n", "5\nhello\n0\n\n") + smuggled,
		// Content-Length and Transfer-Encoding together (CL.TE, TE.CL).
		get("/public/s", "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"+smuggled),
		get("/public/s", "Transfer-Encoding: chunked\r\nContent-Length: 60\r\n", "0\r\n\r\n"+smuggled),
		get("/public/s", "Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"+smuggled),
		get("/public/s", "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"+smuggled),
		get("/public/s", "Transfer-Encoding : chunked\r\n", "0\r\n\r\n"+smuggled),
		get("/public/s", "Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"+smuggled),
		get("/public/s", "Transfer-Encoding:\tchunked\r\n", "0\r\n\r\n"+smuggled),
		// Duplicate, conflicting and odd Content-Lengths.
		get("/public/d", "Content-Length: 0\r\nContent-Length: 58\r\n", smuggled),
		get("/public/d", "Content-Length: 58, 0\r\n", smuggled),
		get("/public/d", "Content-Length: +5\r\n", "hello"),
		get("/public/d", "Content-Length: 99999999999999999999\r\n", "x"),
		get("/public/d", "Content-Length: 10\r\n", "short"),
		// Header folding, bare LF, NUL, spaces and a huge header line.
		get("/public/f", "X-A: 1\r\n Transfer-Encoding: chunked\r\n", "0\r\n\r\n"+smuggled),
		"GET /public/lf HTTP/1.1\nHost: pods\n\n" + smuggled,
		"GET /public/lf HTTP/1.1\rHost: pods\r\r" + smuggled,
		get("/public/\x00/x", "", ""),
		get("/public/n", "X-Nul: a\x00b\r\n", ""),
		"GET  /public/x HTTP/1.1\r\nHost: pods\r\n\r\n",
		"GET /public/x /private HTTP/1.1\r\nHost: pods\r\n\r\n",
		"GET /public/x HTTP/1.1 \r\nHost: pods\r\n\r\n",
		"get /public/x HTTP/1.1\r\nHost: pods\r\n\r\n",
		get("/public/h", "X-Big: "+strings.Repeat("a", 70<<10)+"\r\n", ""),
		get("/public/h", "Host: other\r\n", ""),
		"GET /public/x HTTP/1.1\r\n\r\n",
		// Upgrades: allowed, denied, and h2c from HTTP/1.1.
		get("/public/ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n", "raw bytes after the upgrade\r\n"+smuggled),
		get("/private/ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n", smuggled),
		get("/public/h2c", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n", smuggled),
		get("/public/e", "Expect: 100-continue\r\nContent-Length: 5\r\n", "hello"+smuggled),
		// HTTP/2: the preface alone, with garbage, cut short, and requests.
		h2Preface,
		h2Preface + "garbage\r\n\r\n" + smuggled,
		h2Preface[:10],
		"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + smuggled,
		"",
		"GARBAGE\r\n\r\n",
	}
	out := make([][]byte, 0, len(seeds)+3)
	for _, s := range seeds {
		out = append(out, []byte(s))
	}
	return append(out,
		h2Requests([][2]string{{"GET", "/public/x"}}),
		h2Requests([][2]string{{"GET", "/private"}, {"POST", "/public/x"}, {"GET", "/public/y"}}),
		h2Requests([][2]string{{"GET", "/public/x"}, {"GET", "/public/x"}}), // a stream ID used twice
	)
}

// h2Requests is a prior-knowledge HTTP/2 connection's bytes: the preface,
// SETTINGS and one HEADERS frame (end of stream) per request, with stream
// IDs 1, 3, ... (the last one repeats an ID when asked twice for the same
// request, a protocol error).
func h2Requests(reqs [][2]string) []byte {
	var b bytes.Buffer
	b.WriteString(h2Preface)
	fr := http2.NewFramer(&b, nil)
	fr.WriteSettings()
	id := uint32(1)
	for i, r := range reqs {
		if i > 0 && r != reqs[i-1] {
			id += 2
		}
		h2Headers(fr, id, [][2]string{{":method", r[0]}, {":scheme", "http"}, {":authority", "pods"}, {":path", r[1]}})
	}
	return b.Bytes()
}

// h2Headers writes a HEADERS frame of stream id with fields (name, value),
// ending the stream.
func h2Headers(fr *http2.Framer, id uint32, fields [][2]string) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range fields {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
}
