package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// HTTP/1.x is served by the proxy itself rather than by net/http's server
// and transport: one goroutine per downstream connection reads a request,
// decides it, writes it to the connection's own upstream connection and
// copies the response back, in order (pipelined requests wait in the read
// buffer). Parsing and serialization stay net/http's (ReadRequest,
// Request.Write, ReadResponse, Response.Write), so the upstream receives
// each request re-framed by the standard library, never the client's raw
// bytes; what the server and transport added per request (a goroutine
// hand-over in each direction, a background read, the reverse proxy's
// header copies) is gone.

const (
	// maxHeaderBytes bounds a request's head (net/http's default).
	maxHeaderBytes = 1 << 20
	// maxDiscard is how much of a request body the proxy reads and drops
	// to keep the connection after answering without forwarding it; a
	// longer body closes the connection instead.
	maxDiscard = 256 << 10
)

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

func getWriter(w io.Writer) *bufio.Writer {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	writerPool.Put(bw)
}

// h1Upstream is a downstream connection's upstream connection. Its reader
// is taken from the pool for a request and given back when nothing is
// left in it, so that an idle connection holds no buffer.
type h1Upstream struct {
	conn net.Conn
	// lim is what br reads from: the connection, bounded while a
	// response head is read (headLimit).
	lim  io.LimitedReader
	br   *bufio.Reader
	used bool // a request went out on it already
}

func newH1Upstream(conn net.Conn) *h1Upstream {
	return &h1Upstream{conn: conn, lim: io.LimitedReader{R: conn, N: math.MaxInt64}}
}

func (u *h1Upstream) reader() *bufio.Reader {
	if u.br == nil {
		u.br = readerPool.Get().(*bufio.Reader)
		u.br.Reset(&u.lim)
	}
	return u.br
}

// headLimit bounds what the connection gives until the response's final
// head is read (on) or from then on not (off): a server a pod may reach
// answering with a head without end ran the proxy out of memory until
// 2026-12-04. Interim responses count against the same bound.
func (u *h1Upstream) headLimit(on bool) {
	if on {
		u.lim.N = maxHeaderBytes
	} else {
		u.lim.N = math.MaxInt64
	}
}

func (u *h1Upstream) idle() {
	if u.br != nil && u.br.Buffered() == 0 {
		u.br.Reset(nil)
		readerPool.Put(u.br)
		u.br = nil
	}
}

var (
	// errUpstream: the upstream could not be reached or gave no response
	// (the proxy answers 502).
	errUpstream = errors.New("upstream failed")
	// errRequestBody: the client's body was malformed or cut short (the
	// proxy answers 400 and closes).
	errRequestBody = errors.New("malformed request body")
)

// serveH1 serves an HTTP/1.x downstream connection until either side
// closes it, the proxy shuts down, or a request cannot be parsed.
func (p *Proxy) serveH1(dc *downConn) {
	defer dc.Close()
	// The head is read up to maxHeaderBytes (then the reader ends), a body
	// without that limit.
	lim := &io.LimitedReader{R: dc}
	br := bufio.NewReaderSize(lim, 4<<10)
	for !p.closing.Load() {
		lim.N = maxHeaderBytes
		dc.SetReadDeadline(time.Now().Add(p.opts.IdleTimeout))
		if _, err := br.Peek(1); err != nil {
			return
		}
		if !dc.setBusy(true) {
			return // closed while idle
		}
		dc.SetReadDeadline(time.Now().Add(p.opts.ReadHeaderTimeout))
		req, err := http.ReadRequest(br)
		if err == nil {
			err = validRequest(req)
		}
		if err == nil {
			err = NormalizePath(req)
		}
		if err != nil {
			p.badRequest(dc, err, lim.N <= 0)
			return
		}
		lim.N = math.MaxInt64
		// A body is read within the idle timeout (a forwarded one's
		// reads move it on, flushingBody; a tunnel clears it).
		dc.SetReadDeadline(time.Now().Add(p.opts.IdleTimeout))
		keep, closeNow := p.h1Request(dc, br, req)
		dc.setBusy(false)
		if !keep {
			if !closeNow && !p.closing.Load() {
				dc.lingerClose()
			}
			return
		}
	}
}

// lingerTimeout is how long a connection the proxy ends after a complete
// response waits for the client to close first.
const lingerTimeout = 2 * time.Second

// lingerClose lets the client close first after the last response (read
// and dropped: up to 256 KiB, lingerTimeout). The side that closes first
// keeps the connection's tuple in TIME_WAIT for a minute; were it the
// proxy's transparent socket, which has the client's own tuple, a new
// connection from the same client port (the client, having closed second,
// may reuse it at once) would meet that socket instead of the listener,
// and its SYN would be lost once.
func (c *downConn) lingerClose() {
	c.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.CopyN(io.Discard, c.Conn, maxDiscard)
}

// validRequest refuses what net/http's server refuses after parsing.
func validRequest(req *http.Request) error {
	if req.ProtoMajor != 1 {
		return fmt.Errorf("unsupported protocol version %s", req.Proto)
	}
	// ReadRequest refuses a second Host header and keeps the one in
	// req.Host, the one decided on and the only one Request.Write sends.
	switch {
	case req.ProtoAtLeast(1, 1) && req.Host == "" && req.Method != "CONNECT":
		return errors.New("missing required Host header")
	case !httpguts.ValidHostHeader(req.Host):
		return errors.New("malformed Host header")
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid header name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("invalid header value for %q", k)
			}
		}
	}
	// CONNECT takes host:port only (RFC 9112 3.2.3). ReadRequest keeps a
	// path there as the URL's path, which path rules would match, and a
	// server answering it 2xx would make the connection a tunnel for
	// requests the proxy never sees.
	if req.Method == http.MethodConnect && (req.URL.Host == "" || req.URL.Path != "" || req.URL.Scheme != "" || req.URL.RawQuery != "") {
		return fmt.Errorf("CONNECT target %q: want host:port", req.RequestURI)
	}
	if err := requestTarget(req); err != nil {
		return err
	}
	if e := req.Header.Get("Expect"); e != "" && !strings.EqualFold(e, "100-continue") {
		return fmt.Errorf("%w %q", errExpect, e)
	}
	if !req.ProtoAtLeast(1, 1) {
		req.Header.Del("Expect") // HTTP/1.0 knows no 100 Continue
	}
	return nil
}

// requestTarget refuses a request target of none of HTTP/1.1's forms
// (RFC 9112 3.2) but CONNECT's (validRequest checks it): a path from "/"
// (origin-form), an http or https URL with a host and a path empty or
// from "/" (absolute-form), or "*" for OPTIONS. Go's parser takes more:
// "x:../../admin/secret?.css" as an opaque URL, "x:/admin/secret?.css" as
// a URL of scheme x. Such a target skipped the path's normalisation, was
// matched whole by path rules and went on as it came; a server taking
// whatever follows the method as its path served /admin/secret to a rule
// of `.*\.css` (until 2026-12-06, found by a review:
// TestRequestTargetNotAPathReachesNoServer).
func requestTarget(req *http.Request) error {
	u := req.URL
	switch {
	case req.Method == http.MethodConnect:
		return nil
	case req.RequestURI == "*" && req.Method == http.MethodOptions:
		return nil
	case u.Opaque == "" && u.Scheme == "" && u.Host == "" && strings.HasPrefix(u.EscapedPath(), "/"):
		return nil
	case u.Opaque == "" && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" &&
		(u.EscapedPath() == "" || strings.HasPrefix(u.EscapedPath(), "/")):
		return nil
	}
	return fmt.Errorf("request target %q: not a path, an http URL, or * for OPTIONS", req.RequestURI)
}

// badRequest answers a request that could not be parsed; the connection
// then closes (letting the client read the answer first).
func (p *Proxy) badRequest(dc *downConn, err error, tooLarge bool) {
	var ne net.Error
	if !tooLarge && (errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne) && ne.Timeout()) {
		return // the client went away or was too slow: nothing to answer
	}
	status := http.StatusBadRequest
	switch {
	case tooLarge:
		status = http.StatusRequestHeaderFieldsTooLarge
	case errors.Is(err, errExpect):
		status = http.StatusExpectationFailed
	case strings.Contains(err.Error(), "unsupported transfer encoding"):
		status = http.StatusNotImplemented
	}
	p.log.Debug("L7 proxy: bad request", "src", dc.src, "err", err)
	dc.SetWriteDeadline(time.Now().Add(time.Second))
	bw := getWriter(dc.Conn)
	writeStatus(bw, status, http.StatusText(status)+"\n", true)
	if bw.Flush() == nil {
		dc.lingerClose()
	}
	putWriter(bw)
}

var errExpect = errors.New("unsupported Expect")

// h1Request decides, forwards or denies one request and reports whether
// the connection may carry another, and whether it must close at once
// (not letting the client close first: the response ends with the close,
// or the request's body could not be read).
func (p *Proxy) h1Request(dc *downConn, br *bufio.Reader, req *http.Request) (keep, closeNow bool) {
	start := time.Now()
	if req.ProtoMajor == 1 && req.ProtoMinor == 0 {
		req.Close = true // HTTP/1.0: one request per connection
	}
	upgrade := DecisionHeaders(req.Header)
	// A chunked body's trailers are not judged, so they do not go on:
	// servers that merge trailers into headers would take one as a header
	// the rules removed or replaced (until 2026-12-05 they were forwarded,
	// TestTrailersNotForwarded). Envoy drops them too by default.
	req.Trailer = nil
	// What is judged is held as it came, before the rules' header actions
	// (judge applies them to req): a later config judges it again, by
	// every side, as the first decision did (until 2026-12-07 the copy
	// was taken after the actions, so any store of a config, even the
	// same, ended requests whose actions rewrote what a rule checks,
	// TestRejudgeSeesTheRequestAsItCame).
	judged := judgedCopy(req, req.Header.Clone())
	recs, cfg, denied := p.judge(dc, req, start)
	bw := getWriter(dc.Conn)
	defer putWriter(bw)
	if denied {
		return p.denyH1(bw, req, recs, start), false
	}
	// Another source may take the head over (headBudget): the request
	// ends as a revoked one does, with the connection, and is recorded
	// 503.
	var shed atomic.Bool
	hold, ok := holdHead(dc.who, req, func(error) {
		shed.Store(true)
		dc.Close()
	})
	if !ok {
		p.log.Debug("L7 proxy: request refused: its source holds its share of request heads", "src", dc.src, "identity", dc.who.id)
		writeStatus(bw, http.StatusServiceUnavailable, "Too many requests in flight\n", true)
		p.finish(recs, start, http.StatusServiceUnavailable, Error)
		bw.Flush()
		return false, false
	}
	// The head is held until the response's head is in (not through a
	// streamed body), or until a tunnel ends (forwardResponse).
	headDone := func() {
		if hold != nil {
			hold.give()
			hold = nil
		}
	}
	defer headDone()
	// A later config that denies what was judged closes the connection
	// (a tunnel or a streamed response with it).
	defer dc.holdLive(judged, func() { dc.Close() })()
	if p.deniedSince(cfg, dc, judged, recs) {
		return p.denyH1(bw, req, recs, start), false
	}
	status, keep, closeNow, err := p.forwardH1(dc, br, bw, req, upgrade, headDone)
	verdict := Forwarded
	switch {
	case shed.Load():
		status, keep, closeNow, verdict = http.StatusServiceUnavailable, false, true, Error
	case errors.Is(err, errClientGone):
		status, keep, closeNow = statusClientGone, false, true
	case errors.Is(err, errRequestBody):
		status, keep, closeNow = http.StatusBadRequest, false, true
		writeStatus(bw, status, "Bad Request\n", true)
	case err != nil:
		// A body half sent upstream (the request was wrapped) cannot be
		// drained any more: close.
		_, sent := req.Body.(*flushingBody)
		status, keep, verdict = http.StatusBadGateway, !sent && drain(req), Error
		writeStatus(bw, status, "Upstream unreachable\n", !keep || req.Close)
	}
	p.finish(recs, start, status, verdict)
	return bw.Flush() == nil && keep && !req.Close, closeNow
}

// denyH1 answers a denied request 403 (its body read and dropped, up to
// maxDiscard) and reports whether the connection may carry another.
func (p *Proxy) denyH1(bw *bufio.Writer, req *http.Request, recs []Record, start time.Time) (keep bool) {
	keep = drain(req)
	writeStatus(bw, http.StatusForbidden, "Access denied\n", !keep || req.Close)
	p.finish(recs, start, http.StatusForbidden, Denied)
	return bw.Flush() == nil && keep && !req.Close
}

// drain reads what is left of a request body that is not forwarded, up to
// maxDiscard; false when the connection cannot be reused after it.
func drain(req *http.Request) bool {
	if req.Body == nil || req.Body == http.NoBody {
		return true
	}
	if req.Header.Get("Expect") != "" {
		return false // the client waits for a 100 that does not come
	}
	n, err := io.CopyN(io.Discard, req.Body, maxDiscard+1)
	return errors.Is(err, io.EOF) && n <= maxDiscard
}

// writeStatus writes a short plain-text response.
func writeStatus(bw *bufio.Writer, status int, body string, closing bool) {
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: %d\r\n", status, http.StatusText(status), len(body))
	if closing {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	bw.WriteString(body)
}

// writeHead writes a response's status line and headers only (an interim
// response, or the answer that turns the connection into a tunnel).
func writeHead(bw *bufio.Writer, resp *http.Response) error {
	fmt.Fprintf(bw, "HTTP/1.1 %s\r\n", resp.Status)
	resp.Header.Write(bw)
	bw.WriteString("\r\n")
	return bw.Flush()
}

// hopHeaders are hop-by-hop (RFC 9110 7.6.1): they are the proxy's to
// handle, never passed on.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopHeaders removes the hop-by-hop headers from h, those it names
// in Connection included, and returns the Upgrade it asked for ("" when
// none).
func removeHopHeaders(h http.Header) (upgrade string) {
	if httpguts.HeaderValuesContainsToken(h["Connection"], "upgrade") {
		upgrade = h.Get("Upgrade")
	}
	te := httpguts.HeaderValuesContainsToken(h["Te"], "trailers")
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
	if te {
		h.Set("Te", "trailers") // gRPC-style trailers asked for end to end
	}
	return upgrade
}

// DecisionHeaders removes from a request's headers h what is this hop's
// (the hop-by-hop headers and those Connection names) before the request
// is decided, so that `Connection: X-Tenant` cannot remove after the
// decision a header a rule required, added or replaced (it did until
// 2026-12-04); an upgrade the client asked for stays visible to rules as
// `Connection: Upgrade` and its Upgrade header. It returns that upgrade
// ("" when none). Policy trace prepares its request with it too.
func DecisionHeaders(h http.Header) (upgrade string) {
	upgrade = removeHopHeaders(h)
	if upgrade != "" {
		h.Set("Connection", "Upgrade")
		h.Set("Upgrade", upgrade)
	}
	return upgrade
}

// upgradesTo reports whether the Upgrade value (a list of protocols,
// each name[/version]) names protocol, in any case.
func upgradesTo(upgrade, protocol string) bool {
	for p := range strings.SplitSeq(upgrade, ",") {
		name, _, _ := strings.Cut(textproto.TrimString(p), "/")
		if strings.EqualFold(textproto.TrimString(name), protocol) {
			return true
		}
	}
	return false
}

// forwardH1 sends an allowed request upstream and its response back. It
// returns the status the client got, whether both connections are still
// in step for another request and whether the client connection must
// close at once; or, with nothing written to the client, errUpstream (the
// upstream could not be reached or gave no response), errRequestBody (the
// client's body was malformed) or errClientGone.
func (p *Proxy) forwardH1(dc *downConn, br *bufio.Reader, bw *bufio.Writer, req *http.Request, upgrade string, headDone func()) (status int, keep, closeNow bool, err error) {
	// Hop-by-hop headers were removed but the upgrade (DecisionHeaders);
	// upgrade is the one the client asked for. It is passed on, except to
	// h2c: its HTTP/2 streams would pass the proxy unseen (the request
	// goes on as HTTP/1.1). An Upgrade naming h2c among others is not
	// passed on either (a server may pick it from the list), and
	// HTTP2-Settings never is.
	req.Header.Del("Http2-Settings")
	if upgradesTo(upgrade, "h2c") {
		req.Header.Del("Connection")
		req.Header.Del("Upgrade")
	}
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""} // Request.Write would add Go's
	}
	if req.Body == nil || req.Body == http.NoBody {
		resp, err := p.roundTripNoBody(dc, req, bw)
		if err != nil {
			dc.dropUpstream()
			return 0, false, false, err
		}
		return p.forwardResponse(dc, br, bw, req, resp, true, headDone)
	}
	// A body is written by a goroutine of its own while the response is
	// read: the upstream's 100 Continue reaches the client that waits for
	// it, and an early answer is not held behind the body.
	up, err := dc.upstreamH1()
	if err != nil {
		return 0, false, false, fmt.Errorf("%w: %w", errUpstream, err)
	}
	up.used = true
	// A request with a body is the last on its upstream connection: a
	// server that does not read a body it expects none for (Python's
	// http.server on a GET, a handler that ignores it) reads what it left
	// as the next request, one no rule saw. Until 2026-12-06 the
	// connection was reused, and GET /public/a with "GET /admin/secret
	// ..." as its body had the server serve /admin/secret
	// (TestBodyNotReadByServerIsNoRequest). The server is told so, and
	// asked for no upgrade (this path makes no tunnel: forwardResponse's
	// canTunnel; with "Connection: Upgrade" kept the close was not said).
	req.Header.Del("Upgrade")
	req.Header["Connection"] = []string{"close"}
	written := make(chan error, 1)
	// Flush what is written upstream before waiting for more of the body,
	// so that a slow or streamed body is not held back.
	body := &flushingBody{ReadCloser: req.Body, src: br, conn: dc.Conn, idle: p.opts.IdleTimeout}
	req.Body = body
	go func() { written <- writeRequest(up, req, body) }()
	// stopBody ends the body's writer: its read of the client is cut short
	// (the proxy reads the client again only in lingerClose) and its
	// upstream connection closed.
	stopBody := func() {
		body.stopped.Store(true)
		dc.SetReadDeadline(time.Now())
		dc.dropUpstream()
		<-written
	}
	up.headLimit(true)
	resp, err := readUpstream(up, req, bw)
	if err != nil {
		stopBody()
		if errors.Is(err, errClientGone) {
			return 0, false, true, err
		}
		if body.readErr != nil {
			// The client's body was malformed or cut short; the upstream
			// got it only in part.
			p.log.Debug("L7 proxy: bad request body", "src", dc.src, "err", body.readErr)
			return 0, false, true, errRequestBody
		}
		p.log.Debug("L7 proxy: upstream failed", "dst", dc.dst, "err", err)
		return 0, false, false, fmt.Errorf("%w: %w", errUpstream, err)
	}
	status, keep, closeNow, err = p.forwardResponse(dc, br, bw, req, resp, false, headDone)
	if err != nil || !body.done.Load() {
		// The response is through before the body: the rest of the body
		// goes nowhere (the client is told by the close), and never on
		// as the start of a request the upstream might parse.
		stopBody()
		return status, false, closeNow, err
	}
	if err := <-written; err != nil {
		keep = false
	}
	dc.dropUpstream()
	return status, keep, closeNow, nil
}

// writeRequest writes req to its upstream connection.
func writeRequest(up *h1Upstream, req *http.Request, body *flushingBody) error {
	uw := getWriter(up.conn)
	if body != nil {
		body.dst = uw
	}
	err := req.Write(bufWriter{uw})
	if err == nil {
		err = uw.Flush()
	}
	if body != nil {
		body.dst = nil // uw goes back to the pool
	}
	putWriter(uw)
	if err != nil {
		up.conn.Close() // the response will not come: its reader returns
	}
	return err
}

// roundTripNoBody writes a request without a body upstream and reads the
// response. A reused connection the upstream had closed (not a byte of
// response from it) is replaced once for an idempotent request, as
// net/http does; a request that may have reached the upstream is never
// sent twice.
func (p *Proxy) roundTripNoBody(dc *downConn, req *http.Request, bw *bufio.Writer) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		up, err := dc.upstreamH1()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errUpstream, err)
		}
		reused := up.used
		up.used = true
		err = writeRequest(up, req, nil)
		if err == nil {
			// Not a byte of response: the upstream had closed the
			// connection before it saw the request.
			up.headLimit(true)
			_, err = up.reader().Peek(1)
		}
		if err != nil {
			if !reused || attempt > 0 || !isIdempotent(req.Method) {
				return nil, fmt.Errorf("%w: %w", errUpstream, err)
			}
			dc.dropUpstream()
			continue
		}
		resp, err := readUpstream(up, req, bw)
		if err != nil && !errors.Is(err, errClientGone) {
			p.log.Debug("L7 proxy: upstream failed", "dst", dc.dst, "err", err)
			err = fmt.Errorf("%w: %w", errUpstream, err)
		}
		return resp, err
	}
}

// forwardResponse writes the upstream's response to the client and
// returns its status, whether the connections may carry another request
// and whether the client connection must close at once. It gives back
// the request's head (headDone) unless the response makes a tunnel.
func (p *Proxy) forwardResponse(dc *downConn, br *bufio.Reader, bw *bufio.Writer, req *http.Request, resp *http.Response, canTunnel bool, headDone func()) (status int, keep, closeNow bool, err error) {
	status = resp.StatusCode
	up := dc.upstream()
	// A 2xx to CONNECT has no content (RFC 9110 9.3.6): one framed as
	// having some (even Content-Length: 0, what a web server sends for an
	// empty 200), or another 2xx than 200 (a 204 has no framing at all),
	// is taken as a server answering CONNECT as any request, which goes on
	// parsing HTTP on the connection: it is passed on as a response and
	// the connection closed, not made a tunnel the client's next requests
	// would pass unseen (until 2026-12-04 it was).
	connect2xx := req.Method == http.MethodConnect && status/100 == 2
	framed := resp.Header.Get("Content-Length") != "" || len(resp.TransferEncoding) > 0
	// A 101 nobody asked for (no Upgrade went upstream: none asked, or a
	// request with a body, whose Upgrade is not passed on) is no response
	// to pass on: the server speaks something else from here (found by
	// review: after the body path dropped Upgrade, such a 101 went to the
	// client as a response and the connection stayed open): the client
	// gets 502, as when the upstream fails.
	if status == http.StatusSwitchingProtocols && req.Header.Get("Upgrade") == "" {
		dc.dropUpstream()
		return 0, false, false, fmt.Errorf("%w: a 101 to a request that asked for no upgrade", errUpstream)
	}
	if upgraded := status == http.StatusSwitchingProtocols && req.Header.Get("Upgrade") != "" ||
		connect2xx && status == http.StatusOK && !framed; upgraded {
		if !canTunnel {
			headDone()
			return status, false, true, writeHead(bw, resp)
		}
		if err := writeHead(bw, resp); err != nil {
			return status, false, true, errClientGone
		}
		// The tunnel keeps its request's head (the request, and the copy
		// endRevoked judges) as long as it runs: it stays counted in the
		// source's share, given back when the request ends. Until
		// 2026-12-07 it was given back at the 101, and a source's quiet
		// tunnels held heads of up to 1 MiB each, counted nowhere
		// (TestTunnelKeepsItsHeadCounted).
		dc.setBusy(false) // a tunnel is not a request in flight
		p.tunnel(dc, br, up)
		return status, false, true, nil
	}
	headDone()
	removeHopHeaders(resp.Header)
	resp.ProtoMajor, resp.ProtoMinor = 1, 1 // the proxy's own version
	if req.ProtoMajor == 1 && req.ProtoMinor == 0 {
		// An HTTP/1.0 client: no chunked framing, the end is the close.
		resp.ProtoMajor, resp.ProtoMinor = 1, 0
		if chunked(resp.TransferEncoding) {
			resp.TransferEncoding, resp.ContentLength = nil, -1
		}
	}
	// A body of unknown length without chunked framing ends with the
	// close of the connection (Response.Write makes it so). Otherwise the
	// upstream's wish to close is its connection's, not the client's.
	closeNow = resp.ContentLength < 0 && !chunked(resp.TransferEncoding)
	upClose := resp.Close || connect2xx
	closeNow = closeNow || connect2xx
	resp.Close = req.Close || closeNow
	resp.Body = &flushingBody{ReadCloser: resp.Body, src: up.br, dst: bw}
	if err := resp.Write(bufWriter{bw}); err != nil {
		p.log.Debug("L7 proxy: response not forwarded", "dst", dc.dst, "err", err)
		dc.dropUpstream()
		return status, false, true, errClientGone
	}
	if err := bw.Flush(); err != nil {
		dc.dropUpstream()
		return status, false, true, errClientGone
	}
	// Bytes after the response are none of any request's: the upstream
	// connection is out of step.
	if upClose || up.br.Buffered() > 0 {
		dc.dropUpstream()
	} else {
		up.idle()
	}
	return status, !resp.Close, closeNow, nil
}

func chunked(te []string) bool { return len(te) > 0 && te[0] == "chunked" }

func isIdempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}

// errClientGone: writing to the client failed.
var errClientGone = errors.New("client connection failed")

// readUpstream reads the upstream's response to req, passing interim 1xx
// responses (other than 101) on to an HTTP/1.1 client. The heads are
// bounded together (headLimit, set by the caller before the response's
// first byte is read): past the bound the response fails (a 502).
func readUpstream(up *h1Upstream, req *http.Request, bw *bufio.Writer) (*http.Response, error) {
	ubr := up.reader()
	for {
		resp, err := http.ReadResponse(ubr, req)
		if err != nil {
			if up.lim.N <= 0 {
				err = fmt.Errorf("response head larger than %d bytes: %w", maxHeaderBytes, err)
			}
			return nil, err
		}
		if resp.StatusCode < 100 || resp.StatusCode > 199 || resp.StatusCode == http.StatusSwitchingProtocols {
			up.headLimit(false)
			return resp, nil
		}
		if !req.ProtoAtLeast(1, 1) {
			continue // HTTP/1.0 knows no interim responses
		}
		if err := writeHead(bw, resp); err != nil {
			return nil, fmt.Errorf("%w: %w", errClientGone, err)
		}
	}
}

// flushingBody flushes dst before it would wait for src: what is read
// goes out as soon as nothing more has arrived. It records the body's own
// read error (malformed framing, cut short) and its end. Close does not
// close the body: net/http's would read the rest of it, without bound;
// the proxy drops the connection instead.
type flushingBody struct {
	io.ReadCloser
	src     *bufio.Reader
	dst     *bufio.Writer
	readErr error
	done    atomic.Bool // the body was read to its end
	stopped atomic.Bool // stopBody cut it short: its error is not the client's
	// conn, idle: a client's body is cut off after idle without a byte
	// (between ¾ and all of it: conn's read deadline is moved at most
	// every quarter); idle 0: not.
	conn  net.Conn
	idle  time.Duration
	moved time.Time
}

func (b *flushingBody) Read(p []byte) (int, error) {
	if now := time.Now(); b.idle > 0 && now.Sub(b.moved) >= b.idle/4 {
		b.moved = now
		b.conn.SetReadDeadline(now.Add(b.idle))
		if b.stopped.Load() {
			b.conn.SetReadDeadline(now) // stopBody's deadline, set before, stays
		}
	}
	if b.src != nil && b.src.Buffered() == 0 && b.dst != nil && b.dst.Buffered() > 0 {
		if err := b.dst.Flush(); err != nil {
			return 0, err
		}
	}
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		b.done.Store(true)
	case err != nil && !b.stopped.Load():
		b.readErr = err
	}
	return n, err
}

func (b *flushingBody) Close() error { return nil }

// bufWriter is a bufio.Writer without ReadFrom, given to Request.Write and
// Response.Write: io.Copy then reads a body into a buffer of its own and
// writes it, so flushingBody may flush the writer between reads.
// bufio.Writer.ReadFrom reads straight into the writer's buffer, and a
// flush in the middle of that read put the bytes at the wrong offset (the
// start of the buffer was sent again). WriteByte keeps Request.Write from
// adding a bufio.Writer of its own.
type bufWriter struct{ bw *bufio.Writer }

func (w bufWriter) Write(p []byte) (int, error)       { return w.bw.Write(p) }
func (w bufWriter) WriteString(s string) (int, error) { return w.bw.WriteString(s) }
func (w bufWriter) WriteByte(c byte) error            { return w.bw.WriteByte(c) }

// tunnel copies bytes both ways after an allowed upgrade, until either
// side ends; then both are closed.
func (p *Proxy) tunnel(dc *downConn, br *bufio.Reader, up *h1Upstream) {
	dc.SetReadDeadline(time.Time{}) // a body before the upgrade had the idle timeout
	ubr := up.reader()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(up.conn, br) // the client's buffered bytes, then the connection
		up.conn.Close()
		dc.Close()
	}()
	io.Copy(dc.Conn, ubr)
	dc.Close()
	up.conn.Close()
	<-done
	dc.dropUpstream()
}

// upstreamH1 returns the connection's upstream connection, dialled on
// first use (again after the upstream closed it).
func (c *downConn) upstreamH1() (*h1Upstream, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, net.ErrClosed
	}
	if up := c.up; up != nil {
		c.mu.Unlock()
		return up, nil
	}
	// The dial ends with the connection (a request whose head another
	// source took, or revoked, returns at once: until 2026-12-07 it
	// waited out the dial timeout, its head counted in the budget's
	// running bytes, TestClosedConnEndsItsDial).
	ctx, cancel := context.WithCancel(context.Background())
	c.dialing = cancel
	c.mu.Unlock()
	conn, err := c.dialUp(ctx)
	c.mu.Lock()
	c.dialing = nil
	c.mu.Unlock()
	cancel()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		conn.Close()
		return nil, net.ErrClosed
	}
	c.up = newH1Upstream(conn)
	return c.up, nil
}

func (c *downConn) upstream() *h1Upstream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up
}

// dropUpstream closes the upstream connection; the next request dials a
// new one.
func (c *downConn) dropUpstream() {
	c.mu.Lock()
	up := c.up
	c.up = nil
	c.mu.Unlock()
	if up != nil {
		up.conn.Close()
		up.idle()
	}
}

// setBusy marks the connection as in a request (not to be closed by a
// graceful shutdown) or idle; false when it is closed already.
func (c *downConn) setBusy(b bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.busy = b
	return !c.closed
}
