package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// bodyBlind is an upstream that, like Python's http.server, never reads
// a request's body: what follows a request's head on the connection is
// read as the next request, unless the request said "Connection: close"
// (then the connection ends after its response). It answers each request
// with its target and returns the requests it served.
func bodyBlind(t *testing.T) (func() []string, *harness) {
	var mu sync.Mutex
	var seen []string
	up := rawUpstream(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			mu.Lock()
			seen = append(seen, req.Method+" "+req.RequestURI)
			mu.Unlock()
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.RequestURI), req.RequestURI)
			if req.Close {
				return
			}
		}
	})
	h := newHarnessTo(t, up, Options{})
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}, h
}

// A request's body went upstream on a connection the proxy then reused:
// a server that does not read the body of a request it does not expect
// one for (Python's http.server, a GET or a handler that ignores it)
// parsed the body as the next request, which no rule had seen, and
// answered it as the response to the client's next request (found
// 2026-12-06 by a review; GET /admin/secret, denied, was served). The
// upstream connection now carries no request after one with a body.
func TestBodyNotReadByServerIsNoRequest(t *testing.T) {
	seen, h := bodyBlind(t)
	h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Method: "GET|POST", Path: "/public/.*"}}})
	smuggled := "GET /admin/secret HTTP/1.1\r\nHost: svc\r\n\r\n"
	for _, c := range []struct{ name, head string }{
		{"GET, Content-Length", fmt.Sprintf("GET /public/a HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n%s", len(smuggled), smuggled)},
		{"POST, chunked", fmt.Sprintf("POST /public/a HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)},
		// From the review of the fix: an upgrade kept "Connection: Upgrade"
		// and the close was not said.
		{"GET, an upgrade, Content-Length", fmt.Sprintf("GET /public/a HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: %d\r\n\r\n%s", len(smuggled), smuggled)},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(seen())
			conn := h.dial()
			defer conn.Close()
			br := bufio.NewReader(conn)
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(conn, c.head)
			if resp, body := readResponse(t, br, "GET"); resp.StatusCode != http.StatusOK || body != "/public/a" {
				t.Fatalf("the request with a body: %d %q", resp.StatusCode, body)
			}
			io.WriteString(conn, "GET /public/b HTTP/1.1\r\nHost: svc\r\n\r\n")
			if resp, body := readResponse(t, br, "GET"); resp.StatusCode != http.StatusOK || body != "/public/b" {
				t.Errorf("the next request: %d %q, want 200 \"/public/b\" (the body was served as a request)", resp.StatusCode, body)
			}
			if got := seen()[before:]; slices.Contains(got, "GET /admin/secret") {
				t.Errorf("the server served a request in a body: %q", got)
			}
		})
	}
}

// TestRequestTargetNotAPath, with a server that takes whatever target it
// gets: "x:../../admin/secret?.css" (an opaque URL to Go) skipped the
// path's normalisation and went on as "../../admin/secret?.css", which a
// rule not anchored at "/" matched and Python's http.server served as
// /admin/secret (found 2026-12-06 by a review; the Go server of the
// earlier test refused it itself).
func TestRequestTargetNotAPathReachesNoServer(t *testing.T) {
	seen, h := bodyBlind(t)
	h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Path: `.*\.css`}}})
	for _, target := range []string{"x:../../admin/secret?.css", "x:/admin/secret?.css", "mailto:a.css", "admin/secret.css"} {
		conn := h.dial()
		br := bufio.NewReader(conn)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "GET "+target+" HTTP/1.1\r\nHost: svc\r\n\r\n")
		if resp, body := readResponse(t, br, "GET"); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET %s: %d %q, want 400", target, resp.StatusCode, body)
		}
		conn.Close()
	}
	// HTTP/2's :path likewise (from the review: it went on as
	// "/admin/secret?.css").
	for _, target := range []string{"x:/admin/secret?.css", "x:../../admin/secret?.css"} {
		if status := h.h2Once(t, [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "svc"}, {":path", target}}); status != "400" {
			t.Errorf("HTTP/2 :path %s: %s, want 400", target, status)
		}
	}
	if got := seen(); len(got) > 0 {
		t.Errorf("the server got %q", got)
	}
	// A Host DELETE is refused (a request keeps its host).
	if _, _, err := Match([]HTTPRule{{HeaderMatches: []HeaderMatch{{Name: "host", Value: "a.svc", Mismatch: MismatchDelete}}}}, &http.Request{}); err == nil {
		t.Error("a headerMatches DELETE of Host compiled")
	}
}

// h2Once sends one HTTP/2 request of header fields (prior knowledge, on
// a connection of its own) and returns its response's :status (or
// "reset CODE").
func (h *harness) h2Once(t *testing.T, fields [][2]string) string {
	t.Helper()
	conn := h.dial()
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b bytes.Buffer
	b.WriteString(h2Preface)
	fr := http2.NewFramer(&b, nil)
	fr.WriteSettings()
	h2Headers(fr, 1, fields)
	if _, err := conn.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	return h2Status(t, conn, 1)
}

// h2Status reads frames from conn up to stream id's response head or
// reset and returns its :status (or "reset CODE").
func h2Status(t *testing.T, conn net.Conn, id uint32) string {
	t.Helper()
	rf := http2.NewFramer(io.Discard, conn)
	rf.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	for {
		f, err := rf.ReadFrame()
		if err != nil {
			t.Fatalf("HTTP/2 stream %d: %v", id, err)
		}
		if mh, ok := f.(*http2.MetaHeadersFrame); ok && mh.StreamID == id {
			return mh.PseudoValue("status")
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
			return "reset " + rst.ErrCode.String()
		}
	}
}

// A header a rule names had a second copy under a name with "_" for "-"
// (X_Tenant for X-Tenant), which the rule did not see and servers that
// fold the two (CGI, WSGI, Rack: HTTP_X_TENANT) read as the same header:
// a rule wanting "X-Tenant: a" let "X_Tenant: b" through, and a
// headerMatches REPLACE left it in place (found 2026-12-06 by a review).
// Such a copy now counts as a second copy: a value condition fails, and a
// mismatch action removes it.
func TestUnderscoreHeaderIsACopy(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	get := func(hdr map[string]string) (int, echoed) {
		t.Helper()
		conn := h.dial()
		defer conn.Close()
		br := bufio.NewReader(conn)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		head := "GET /public/x HTTP/1.1\r\nHost: svc\r\n"
		for k, v := range hdr {
			head += k + ": " + v + "\r\n"
		}
		io.WriteString(conn, head+"\r\n")
		resp, body := readResponse(t, br, "GET")
		if resp.StatusCode != http.StatusOK {
			return resp.StatusCode, echoed{}
		}
		return resp.StatusCode, decodeEcho(t, body)
	}
	h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Headers: []string{"X-Tenant: a"}}}})
	if code, _ := get(map[string]string{"X-Tenant": "a"}); code != http.StatusOK {
		t.Errorf("X-Tenant: a alone: %d, want 200", code)
	}
	for _, alias := range []string{"X_Tenant", "x_tenant", "X_TENANT"} {
		if code, _ := get(map[string]string{"X-Tenant": "a", alias: "b"}); code != http.StatusForbidden {
			t.Errorf("X-Tenant: a with %s: b: %d, want 403", alias, code)
		}
	}
	h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{HeaderMatches: []HeaderMatch{{Name: "X-Tenant", Value: "a", Mismatch: MismatchReplace}}}}})
	code, e := get(map[string]string{"X-Tenant": "a", "X_Tenant": "b"})
	if code != http.StatusOK || len(e.Header["X-Tenant"]) != 1 || e.Header.Get("X-Tenant") != "a" || len(e.Header["X_tenant"]) != 0 {
		t.Errorf("REPLACE X-Tenant with X_Tenant: b beside it: %d, the server got %v; want X-Tenant: a only", code, e.Header)
	}
	// Other headers with "_" pass as they are.
	if code, e := get(map[string]string{"X-Tenant": "a", "My_Header": "v"}); code != http.StatusOK || e.Header.Get("My_header") != "v" {
		t.Errorf("an unrelated header with _: %d, the server got %v", code, e.Header)
	}
}

// Rules on the Host header judged a header that is not the one that goes
// upstream (found 2026-12-06 by a review): over HTTP/1.1 net/http keeps
// Host out of the header map, so a rule wanting "Host: allowed.svc"
// never matched and a headerMatches REPLACE of it did nothing; over
// HTTP/2 a "host" header beside :authority was judged while :authority
// went upstream. Host rules now act on the request's host, and an HTTP/2
// request whose host header differs from its :authority is malformed
// (RFC 9113 8.3.1): 400.
func TestHostRulesJudgeTheHostSent(t *testing.T) {
	h := newHarness(t, http.HandlerFunc(echo), Options{})
	get := func(host string) (int, echoed) {
		t.Helper()
		conn := h.dial()
		defer conn.Close()
		br := bufio.NewReader(conn)
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "GET /x HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		resp, body := readResponse(t, br, "GET")
		if resp.StatusCode != http.StatusOK {
			return resp.StatusCode, echoed{}
		}
		return resp.StatusCode, decodeEcho(t, body)
	}
	h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Headers: []string{"Host: allowed.svc"}}}})
	if code, _ := get("allowed.svc"); code != http.StatusOK {
		t.Errorf("Host: allowed.svc to a rule wanting it: %d, want 200", code)
	}
	if code, _ := get("admin.svc"); code != http.StatusForbidden {
		t.Errorf("Host: admin.svc to a rule wanting allowed.svc: %d, want 403", code)
	}
	h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{HeaderMatches: []HeaderMatch{{Name: "Host", Value: "allowed.svc", Mismatch: MismatchReplace}}}}})
	if code, e := get("admin.svc"); code != http.StatusOK || e.Host != "allowed.svc" {
		t.Errorf("REPLACE Host: %d, the server got Host %q; want allowed.svc", code, e.Host)
	}

	// HTTP/2: :authority admin.svc with a host header allowed.svc.
	h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Headers: []string{"Host: allowed.svc"}}}})
	for _, c := range []struct {
		authority, host string
		want            string
	}{
		{"admin.svc", "allowed.svc", "400"},
		{"allowed.svc", "allowed.svc", "200"},
		{"admin.svc", "", "403"},
	} {
		fields := [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", c.authority}, {":path", "/x"}}
		if c.host != "" {
			fields = append(fields, [2]string{"host", c.host})
		}
		if status := h.h2Once(t, fields); status != c.want {
			t.Errorf("HTTP/2 :authority %s, host %q: %s, want %s", c.authority, c.host, status, c.want)
		}
	}
}

// A 101 to a request that sent no Upgrade upstream (none asked; or a
// request with a body, whose Upgrade is not passed on) went to the client
// as a response, the connection kept open while the server spoke another
// protocol (found 2026-12-06 by the review of the body fix): it is now
// answered 502, as when the upstream fails, and the upstream connection
// dropped.
func TestUnaskedSwitchIsNoResponse(t *testing.T) {
	up := rawUpstream(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\nnot HTTP any more")
		}
	})
	h := newHarnessTo(t, up, Options{})
	for _, req := range []string{
		"GET /public/a HTTP/1.1\r\nHost: svc\r\n\r\n",
		"GET /public/a HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: x\r\nContent-Length: 2\r\n\r\nhi",
	} {
		conn := h.dial()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, req)
		if resp, body := readResponse(t, bufio.NewReader(conn), "GET"); resp.StatusCode != http.StatusBadGateway || strings.Contains(body, "not HTTP") {
			t.Errorf("%q: the client got %d %q, want 502", req, resp.StatusCode, body)
		}
		conn.Close()
	}
}
