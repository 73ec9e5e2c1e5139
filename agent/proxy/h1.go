package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
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
	br   *bufio.Reader
	used bool // a request went out on it already
}

func (u *h1Upstream) reader() *bufio.Reader {
	if u.br == nil {
		u.br = readerPool.Get().(*bufio.Reader)
		u.br.Reset(u.conn)
	}
	return u.br
}

func (u *h1Upstream) idle() {
	if u.br != nil && u.br.Buffered() == 0 {
		u.br.Reset(nil)
		readerPool.Put(u.br)
		u.br = nil
	}
}

// headLimit lets the request head be read up to maxHeaderBytes.
type headLimit struct {
	r io.Reader
	n int64 // left; < 0: no limit (a body is being read)
}

func (l *headLimit) Read(b []byte) (int, error) {
	if l.n < 0 {
		return l.r.Read(b)
	}
	if l.n == 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.r.Read(b)
	l.n -= int64(n)
	return n, err
}

var (
	errHeadTooLarge = errors.New("request head too large")
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
	lim := &headLimit{r: dc}
	br := bufio.NewReaderSize(lim, 4<<10)
	for !p.closing.Load() {
		lim.n = maxHeaderBytes
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
		if err != nil {
			p.badRequest(dc, err, lim.n == 0)
			return
		}
		lim.n = -1
		dc.SetReadDeadline(time.Time{})
		keep := p.h1Request(dc, br, req)
		dc.setBusy(false)
		if !keep {
			if !dc.closeNow && !p.closing.Load() {
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
	// ReadRequest keeps the first Host header in req.Host, the one
	// decided on and the only one Request.Write sends on.
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
	if e := req.Header.Get("Expect"); e != "" && !(strings.EqualFold(e, "100-continue") && req.ProtoAtLeast(1, 1)) {
		return fmt.Errorf("unsupported Expect %q", e)
	}
	return nil
}

// badRequest answers a request that could not be parsed and closes.
func (p *Proxy) badRequest(dc *downConn, err error, tooLarge bool) {
	var ne net.Error
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.As(err, &ne) && ne.Timeout() {
		return // the client went away or was too slow: nothing to answer
	}
	status := http.StatusBadRequest
	if tooLarge || errors.Is(err, errHeadTooLarge) {
		status = http.StatusRequestHeaderFieldsTooLarge
	}
	p.log.Debug("L7 proxy: bad request", "src", dc.src, "err", err)
	dc.SetWriteDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(dc.Conn, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n%d %s", status, http.StatusText(status), status, http.StatusText(status))
}

// h1Request decides, forwards or denies one request and reports whether
// the connection may carry another.
func (p *Proxy) h1Request(dc *downConn, br *bufio.Reader, req *http.Request) (keep bool) {
	start := time.Now()
	recs, denied := p.judge(dc, req, start)
	bw := getWriter(dc.Conn)
	defer putWriter(bw)
	if denied {
		keep = drain(req)
		writeStatus(bw, http.StatusForbidden, "Access denied\n", !keep || req.Close)
		p.finish(recs, start, http.StatusForbidden, Denied)
		return bw.Flush() == nil && keep && !req.Close
	}
	status, keep, err := p.forwardH1(dc, br, bw, req)
	switch {
	case errors.Is(err, errRequestBody):
		status, keep, dc.closeNow = http.StatusBadRequest, false, true
		writeStatus(bw, status, "Bad Request\n", true)
	case err != nil:
		status, keep = http.StatusBadGateway, drain(req)
		writeStatus(bw, status, "Upstream unreachable\n", !keep || req.Close)
	}
	p.finish(recs, start, status, Forwarded)
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

// forwardH1 sends an allowed request upstream and its response back. It
// returns the status the client got and whether both connections are
// still in step for another request; or, with nothing written to the
// client, errUpstream (the upstream could not be reached or gave no
// response) or errRequestBody (the client's body was malformed).
func (p *Proxy) forwardH1(dc *downConn, br *bufio.Reader, bw *bufio.Writer, req *http.Request) (status int, keep bool, err error) {
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""} // Request.Write would add Go's
	}
	if req.Body == nil || req.Body == http.NoBody {
		resp, err := p.roundTripNoBody(dc, req, bw)
		return p.forwardResponse(dc, br, bw, req, resp, err, true)
	}
	// A body is written by a goroutine of its own while the response is
	// read: the upstream's 100 Continue reaches the client that waits for
	// it, and an early answer is not held behind the body.
	up, err := dc.upstreamH1()
	if err != nil {
		p.log.Debug("L7 proxy: upstream failed", "dst", dc.dst, "err", err)
		return 0, false, fmt.Errorf("%w: %w", errUpstream, err)
	}
	up.used = true
	written := make(chan error, 1)
	uw := getWriter(up.conn)
	// Flush what is written upstream before waiting for more of the body,
	// so that a slow or streamed body is not held back.
	body := &flushingBody{ReadCloser: req.Body, src: br, dst: uw}
	req.Body = body
	go func() {
		err := req.Write(uw)
		if err == nil {
			err = uw.Flush()
		}
		putWriter(uw)
		if err != nil {
			up.conn.Close() // the response will not come: its reader returns
		}
		written <- err
	}()
	resp, err := readUpstream(up.reader(), req, bw)
	if err != nil {
		<-written
		if body.readErr != nil {
			// The client's body was malformed or cut short; the upstream
			// got it only in part and its connection is closed.
			p.log.Debug("L7 proxy: bad request body", "src", dc.src, "err", body.readErr)
			dc.dropUpstream()
			return 0, false, errRequestBody
		}
	}
	// On failure, or once a response with Connection: close is through,
	// the upstream connection is closed: a writer still blocked on it
	// returns.
	status, keep, err = p.forwardResponse(dc, br, bw, req, resp, err, false)
	if err != nil {
		return status, false, err // the writer is done already
	}
	if err := <-written; err != nil {
		dc.dropUpstream()
		keep = false
	}
	return status, keep, nil
}

// roundTripNoBody writes a request without a body upstream and reads the
// response. A reused connection the upstream had closed is replaced once
// for an idempotent request (as net/http does).
func (p *Proxy) roundTripNoBody(dc *downConn, req *http.Request, bw *bufio.Writer) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		up, err := dc.upstreamH1()
		if err != nil {
			return nil, err
		}
		reused := up.used
		up.used = true
		uw := getWriter(up.conn)
		err = req.Write(uw)
		if err == nil {
			err = uw.Flush()
		}
		putWriter(uw)
		var resp *http.Response
		if err == nil {
			resp, err = readUpstream(up.reader(), req, bw)
		}
		if err == nil || !reused || attempt > 0 || !isIdempotent(req.Method) {
			return resp, err
		}
		dc.dropUpstream()
	}
}

// forwardResponse writes the upstream's response to the client, or
// returns errUpstream for the error err of getting it. An upgrade becomes a
// tunnel when canTunnel (the request had no body still being written).
func (p *Proxy) forwardResponse(dc *downConn, br *bufio.Reader, bw *bufio.Writer, req *http.Request, resp *http.Response, err error, canTunnel bool) (int, bool, error) {
	if err != nil {
		p.log.Debug("L7 proxy: upstream failed", "dst", dc.dst, "err", err)
		dc.dropUpstream()
		return 0, false, fmt.Errorf("%w: %w", errUpstream, err)
	}
	status := resp.StatusCode
	if status == http.StatusSwitchingProtocols || req.Method == http.MethodConnect && status/100 == 2 {
		if resp.Write(bw) == nil && bw.Flush() == nil && canTunnel {
			p.tunnel(dc, br)
		}
		return status, false, nil
	}
	if req.ProtoMajor == 1 && req.ProtoMinor == 0 {
		// An HTTP/1.0 client: no chunked framing, the end is the close.
		resp.ProtoMajor, resp.ProtoMinor = 1, 0
		if chunked(resp.TransferEncoding) {
			resp.TransferEncoding, resp.ContentLength = nil, -1
		}
		resp.Close = resp.Close || resp.ContentLength < 0
	}
	resp.Close = resp.Close || req.Close
	// A body of unknown length without chunked framing ends with the
	// close of the connection (Response.Write makes it so).
	dc.closeNow = resp.ContentLength < 0 && !chunked(resp.TransferEncoding)
	up := dc.upstream()
	resp.Body = &flushingBody{ReadCloser: resp.Body, src: up.br, dst: bw}
	err = resp.Write(bw)
	up.idle()
	if err != nil || resp.Close {
		dc.dropUpstream()
		return status, false, nil
	}
	return status, true, nil
}

func chunked(te []string) bool { return len(te) > 0 && te[0] == "chunked" }

func isIdempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}

// readUpstream reads the upstream's response to req, passing interim 1xx
// responses (other than 101) on to the client.
func readUpstream(ubr *bufio.Reader, req *http.Request, bw *bufio.Writer) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(ubr, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode < 100 || resp.StatusCode > 199 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, nil
		}
		fmt.Fprintf(bw, "HTTP/1.1 %s\r\n", resp.Status)
		resp.Header.Write(bw)
		bw.WriteString("\r\n")
		if err := bw.Flush(); err != nil {
			return nil, err
		}
	}
}

// flushingBody flushes dst before it would wait for src: what is read
// goes out as soon as nothing more has arrived. readErr is the body's own
// read error (malformed framing, cut short), if any.
type flushingBody struct {
	io.ReadCloser
	src     *bufio.Reader
	dst     *bufio.Writer
	readErr error
}

func (b *flushingBody) Read(p []byte) (int, error) {
	if b.src != nil && b.src.Buffered() == 0 && b.dst != nil && b.dst.Buffered() > 0 {
		if err := b.dst.Flush(); err != nil {
			return 0, err
		}
	}
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.readErr = err
	}
	return n, err
}

// tunnel copies bytes both ways after an allowed upgrade, until either
// side closes; then both are closed.
func (p *Proxy) tunnel(dc *downConn, br *bufio.Reader) {
	up := dc.upstream()
	ubr := up.reader()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(up.conn, br) // the client's buffered bytes, then the connection
		closeWrite(up.conn)
	}()
	io.Copy(dc.Conn, ubr)
	closeWrite(dc.Conn)
	dc.Close()
	dc.dropUpstream()
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// upstreamH1 returns the connection's upstream connection, dialled on
// first use (again after the upstream closed it).
func (c *downConn) upstreamH1() (*h1Upstream, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, net.ErrClosed
	}
	up := c.up
	c.mu.Unlock()
	if up != nil {
		return up, nil
	}
	conn, err := c.dial(context.Background(), "", "")
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		conn.Close()
		return nil, net.ErrClosed
	}
	c.up = &h1Upstream{conn: conn}
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
