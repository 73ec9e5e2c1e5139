package api

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/policy"
	policyapi "github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/proxy"
)

// traceParam names the parameter an error of traceRequest is about.
var traceParam = regexp.MustCompile(`^bad request: (httpMethod|httpPath|httpHost|httpHeaders\[(\d+)\]|httpMethod/httpPath)[ :]`)

// FuzzTraceHTTP feeds arbitrary `policy trace` HTTP parameters
// (--http-method, --http-path, --http-host, two --http-header) and an
// arbitrary HTTP rule to traceRequest and traceHTTP, and the proxy's
// matcher. Properties:
//   - a refused request is a bad request naming the parameter, and
//     nothing of it is used;
//   - an accepted request is one the proxy's HTTP server accepts as it
//     stands (sent on the wire), and parses to the same method, target,
//     host and headers: the matcher gives both the same verdict and
//     actions, so that the trace says what the proxy does;
//   - matching does not change the request, and a rule made of the
//     request's own method, path and host matches it;
//   - traceHTTP's verdict is the matcher's, and a bad rule is an error.
func FuzzTraceHTTP(f *testing.F) {
	for _, s := range [][12]string{
		{"GET", "/public/a", "", "", "", "GET", "/public/.*", "", "", "", "", ""},
		{"", "", "db", "", "", "GET", "/public/.*", "", "", "", "", ""},
		{"POST", "/public/a?x=1&y=%20", "db:8080", "X-Token: s3cret", "X-Present", "", "", "db", "X-Token: s3cret", "X-Team", "ops", "ADD"},
		{"DELETE", "/", "api.example.com", "X-Team: dev", "x-team: ops", "DELETE|GET", "/.*", `api\.example\.com`, "X-Team", "X-Team", "ops", "REPLACE"},
		{"GE T", "/a", "", "", "", "", "", "", "", "", "", ""},
		{"GET", "public/a", "", "", "", "", "", "", "", "", "", ""},
		{"GET", "/a b", "", "", "", "", "", "", "", "", "", ""},
		{"GET", "/a\x00", "", "", "", "", "", "", "", "", "", ""},
		{"GET", "/ä?q=é", "", "", "", "", "/%C3%A4.*", "", "", "", "", ""},
		{"GET", "//x/../y", "[::1]:80", "", "", "", "", `\[::1\]`, "", "", "", ""},
		{"GET", "/", "a b", "", "", "", "", "", "", "", "", ""},
		{"GET", "/", "", "X Bad: 1", "", "", "", "", "", "", "", ""},
		{"GET", "/", "", "X-Ok: a\r\nX-Injected: b", "", "", "", "", "", "", "", ""},
		{"GET", "/", "", ": novalue", "NoColon", "", "", "", "NoColon", "", "", ""},
		{"GET", "/", "", "Host: other", "", "", "", "other", "", "", "", ""},
		{"GET", "/", "", "X-A:  spaced\t", "X-B: \u00a0nbsp", "", "", "", "X-A: spaced", "", "", ""},
		{"GET", "/", "", "", "", "(", "a[b", "(?<x", "bad name", "", "x\ny", "DROP"},
		{"GET", "/", "", "", "", `(a)\1`, "/a)|(/b", "", "", "X-Del", "", "DELETE"},
		{"GET", "/", "", "", "", "", "", "", "", "X-Log", "v", "LOG"},
		{"GET", "/", "", "Transfer-Encoding: chunked", "", "", "", "", "Transfer-Encoding", "", "", ""},
		{"POST", "/", "", "Content-Length: 5", "", "", "", "", "Content-Length: 5", "", "", ""},
		{"GET", "/", "", "Expect: 100-continue", "Connection: close", "", "", "", "", "", "", ""},
		{"GET", "/", "", "transfer-encoding: gzip", "", "", "", "", "", "", "", ""},
		{"GET", "/", "", "Expect: x", "", "", "", "", "", "", "", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11])
	}
	srv := newRequestEcho(f)
	f.Fuzz(func(t *testing.T, method, path, host, h0, h1, rMethod, rPath, rHost, rHeader, mName, mValue, mMismatch string) {
		tr := types.TraceRequest{HTTPMethod: method, HTTPPath: path, HTTPHost: host}
		for _, h := range []string{h0, h1} {
			if h != "" {
				tr.HTTPHeaders = append(tr.HTTPHeaders, h)
			}
		}
		req, err := traceRequest(tr, "TCP")
		if err != nil {
			m := traceParam.FindStringSubmatch(err.Error())
			if !errors.Is(err, errBadRequest) || m == nil {
				t.Fatalf("refusal does not name the parameter: %v", err)
			}
			if n, err := strconv.Atoi(m[2]); m[2] != "" && (err != nil || n >= len(tr.HTTPHeaders)) {
				t.Fatalf("refusal names a header that is not there: %v", err)
			}
			if req != nil {
				t.Fatalf("refused, and yet a request: %+v", req)
			}
			return
		}
		if req == nil {
			if method != "" || path != "" || host != "" || len(tr.HTTPHeaders) > 0 {
				t.Fatalf("parameters given, no request")
			}
			return
		}
		if want := cmpOr(method, http.MethodGet); req.Method != want {
			t.Fatalf("method %q, want %q", req.Method, want)
		}

		// The same request as the proxy's server parses it.
		seen, err := srv.roundTrip(req)
		if err == nil {
			err = proxy.NormalizePath(seen) // as the proxy does next
		}
		if err != nil {
			t.Fatalf("trace accepts a request the proxy's server does not: %v", err)
		}
		if seen.Method != req.Method || seen.URL.RequestURI() != req.URL.RequestURI() || seen.Host != req.Host || !reflect.DeepEqual(seen.Header, req.Header) {
			t.Fatalf("the proxy sees another request:\n got %s %s host %q %v\nwant %s %s host %q %v",
				seen.Method, seen.URL.RequestURI(), seen.Host, seen.Header, req.Method, req.URL.RequestURI(), req.Host, req.Header)
		}

		rule := policyapi.PortRuleHTTP{Method: rMethod, Path: rPath, Host: rHost}
		if rHeader != "" {
			rule.Headers = []string{rHeader}
		}
		if mName != "" {
			rule.HeaderMatches = []policyapi.HeaderMatch{{Name: mName, Value: mValue, Mismatch: mMismatch}}
		}
		rules := []proxy.HTTPRule{{Method: rule.Method, Path: rule.Path, Host: rule.Host, Headers: rule.Headers}}
		for _, m := range rule.HeaderMatches {
			rules[0].HeaderMatches = append(rules[0].HeaderMatches, proxy.HeaderMatch{Name: m.Name, Value: m.Value, Mismatch: m.Mismatch})
		}
		before := req.Clone(req.Context())
		i, acts, merr := proxy.Match(rules, req)
		if !reflect.DeepEqual(req.Header, before.Header) || req.Method != before.Method || req.Host != before.Host || req.URL.String() != before.URL.String() {
			t.Fatalf("Match changed the request")
		}
		if merr != nil && (!errors.Is(merr, proxy.ErrInvalid) || !strings.Contains(merr.Error(), "http[0].")) {
			t.Fatalf("a bad rule's error does not name it: %v", merr)
		}
		si, sacts, serr := proxy.Match(rules, seen)
		if si != i || !reflect.DeepEqual(sacts, acts) || (serr == nil) != (merr == nil) {
			t.Fatalf("the trace's request gets %d %v %v, the proxy's %d %v %v", i, acts, merr, si, sacts, serr)
		}
		// (A rule is UTF-8: a query's raw bytes need not be, and then no
		// rule names them literally.)
		self := []proxy.HTTPRule{{Method: regexp.QuoteMeta(req.Method), Path: regexp.QuoteMeta(req.URL.RequestURI()), Host: regexp.QuoteMeta(req.Host)}}
		if si, _, err := proxy.Match(self, req); utf8.ValidString(req.URL.RequestURI()) && (si != 0 || err != nil) {
			t.Fatalf("the request's own method, path and host do not match it: %d %v", si, err)
		}

		res := policy.TraceResult{Verdict: policy.VerdictAllowed, Proxy: true, L7: []policy.TraceL7{
			{Side: "ingress of dst", Rules: []policy.TraceHTTPRule{{Ref: "r", PortRuleHTTP: rule}}}}}
		out, err := traceHTTP(res, req)
		switch {
		case merr != nil:
			if err == nil || !strings.Contains(err.Error(), "ingress of dst: ") {
				t.Fatalf("a bad rule traced: %+v %v", out, err)
			}
		case err != nil:
			t.Fatalf("traceHTTP: %v", err)
		case (out.Verdict == policy.VerdictAllowed) != (i == 0):
			t.Fatalf("trace verdict %s, matcher %d", out.Verdict, i)
		case i == 0 && len(out.Sides[0].Actions) != len(acts):
			t.Fatalf("trace actions %v, matcher %v", out.Sides[0].Actions, acts)
		}
	})
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// requestEcho is an HTTP/1.1 server (net/http's, whose parsing the
// proxy's own loop shares: http.ReadRequest) that hands over each request
// it accepts.
type requestEcho struct {
	addr string
	got  chan *http.Request
}

func newRequestEcho(tb testing.TB) *requestEcho {
	e := &requestEcho{got: make(chan *http.Request, 1)}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case e.got <- r.Clone(r.Context()):
		default: // never blocks the server
		}
	}))
	srv.Config.DisableGeneralOptionsHandler = true
	srv.Start()
	tb.Cleanup(srv.Close)
	e.addr = srv.Listener.Addr().String()
	return e
}

// roundTrip sends req as its bytes on the wire and returns the request
// the server parsed, or why the server refused it.
func (e *requestEcho) roundTrip(req *http.Request) (*http.Request, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", req.Method, req.RequestURI, req.Host)
	keys := make([]string, 0, len(req.Header))
	for k := range req.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range req.Header[k] {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	b.WriteString("\r\n")
	select {
	case <-e.got: // a request from a round trip that failed
	default:
	}
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: req.Method})
	if err != nil {
		return nil, fmt.Errorf("%q: %w", b.String(), err)
	}
	resp.Body.Close()
	select {
	case r := <-e.got:
		return r, nil
	default:
		return nil, fmt.Errorf("%q: %s", b.String(), resp.Status)
	}
}
