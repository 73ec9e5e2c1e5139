package api_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/policy"
	policyapi "github.com/filament-net/filament/agent/policy/api"
)

const l7Ref = "default/l7/rules[0].ingress[0].toPorts[0]"

// traceServer answers every trace with res.
func traceServer(t *testing.T, res policy.TraceResult) *httptest.Server {
	repo, _ := policy.NewRepository("")
	s := &api.Server{Endpoints: stubEndpoints{}, Identities: stubIdentities{}, Policies: repo,
		Trace: func(src, dst labels.Labels, proto uint8, port uint16) policy.TraceResult { return res }}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv
}

// The seeds' example on ingress: GET /public/.* allowed, anything else 403.
func seedsTrace() policy.TraceResult {
	return policy.TraceResult{Verdict: policy.VerdictAllowed, Reason: "r", Enforced: true, Proxy: true,
		L7: []policy.TraceL7{{Side: "ingress of dst", Rules: []policy.TraceHTTPRule{
			{Ref: l7Ref, PortRuleHTTP: policyapi.PortRuleHTTP{Method: "GET", Path: "/public/.*"}}}}}}
}

func traceBody(http map[string]any) string {
	req := map[string]any{"srcLabels": []string{"app=web"}, "dstLabels": []string{"app=db"}, "port": 80}
	for k, v := range http {
		req[k] = v
	}
	b, _ := json.Marshal(req)
	return string(b)
}

// Bad HTTP parameters are 400 with an error naming the parameter.
func TestTraceHTTPBadParameters(t *testing.T) {
	srv := traceServer(t, seedsTrace())
	for _, tc := range []struct {
		req  map[string]any
		want string
	}{
		{map[string]any{"httpMethod": "GE T"}, "httpMethod"},
		{map[string]any{"httpMethod": ""}, ""}, // no request: fine
		{map[string]any{"httpPath": "public/a"}, "httpPath"},
		{map[string]any{"httpPath": "/a b"}, "httpPath"},
		{map[string]any{"httpPath": "/public/..%2fa"}, "httpPath"}, // the proxy answers 400
		{map[string]any{"httpHost": "a b"}, "httpHost"},
		{map[string]any{"httpHeaders": []string{"X Bad: 1"}}, "httpHeaders[0]"},
		{map[string]any{"httpHeaders": []string{"X-Ok: 1", "host: other"}}, "httpHeaders[1]"}, // the Host is httpHost
		{map[string]any{"httpHeaders": []string{"Transfer-Encoding: chunked"}}, "httpHeaders[0]"},
		{map[string]any{"httpHeaders": []string{"Content-Length: 5"}}, "httpHeaders[0]"},
		{map[string]any{"httpHeaders": []string{"Expect: x"}}, "httpHeaders[0]"},
		{map[string]any{"httpMethod": "GET", "protocol": "UDP"}, "protocol TCP"},
	} {
		code, body := do(t, srv, http.MethodPost, "/v1/policy-trace", traceBody(tc.req))
		if tc.want == "" {
			if code != http.StatusOK {
				t.Errorf("%v: %d %s", tc.req, code, body)
			}
			continue
		}
		if code != http.StatusBadRequest || !strings.Contains(body, tc.want) {
			t.Errorf("%v: %d %s, want 400 naming %s", tc.req, code, body, tc.want)
		}
	}
}

func traceHTTP(t *testing.T, srv *httptest.Server, req map[string]any) (types.TraceResult, string) {
	t.Helper()
	code, body := do(t, srv, http.MethodPost, "/v1/policy-trace", traceBody(req))
	if code != http.StatusOK {
		t.Fatalf("%v: %d %s", req, code, body)
	}
	var out types.TraceResult
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatal(err)
	}
	return out, body
}

// The L7 verdict of a request, and the JSON shape of the L7 part.
func TestTraceHTTPVerdict(t *testing.T) {
	srv := traceServer(t, seedsTrace())
	_, body := traceHTTP(t, srv, map[string]any{"httpMethod": "GET", "httpPath": "/public/a"})
	want := `{"verdict":"allowed","reason":"r","enforced":true,"proxy":true,` +
		`"l7":[{"side":"ingress of dst","rules":[{"ref":"` + l7Ref + `","method":"GET","path":"/public/.*"}]}],` +
		`"http":{"method":"GET","path":"/public/a","verdict":"allowed","reason":"ingress of dst: matches ` + l7Ref + `.rules.http[0]",` +
		`"sides":[{"side":"ingress of dst","verdict":"allowed","rule":{"ref":"` + l7Ref + `","method":"GET","path":"/public/.*"}}]}}`
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(body)); err != nil || compact.String() != want {
		t.Fatalf("got  %s\nwant %s", compact.String(), want)
	}
	got, _ := traceHTTP(t, srv, map[string]any{"httpMethod": "POST", "httpPath": "/public/a"})
	if h := got.HTTP; h == nil || h.Verdict != "denied" || h.Status != 403 || len(h.Sides) != 1 || h.Sides[0].Rule != nil ||
		!strings.Contains(h.Reason, "ingress of dst: no HTTP rule matches") {
		t.Fatalf("POST: %+v", got.HTTP)
	}
	// The path as the proxy decides on it: dot segments resolved.
	got, _ = traceHTTP(t, srv, map[string]any{"httpMethod": "GET", "httpPath": "/public/%2e%2e/private"})
	if h := got.HTTP; h == nil || h.Verdict != "denied" {
		t.Fatalf("GET /public/%%2e%%2e/private: %+v, want denied", got.HTTP)
	}
	// The path defaults to "/", the method to GET.
	got, _ = traceHTTP(t, srv, map[string]any{"httpHost": "db"})
	if h := got.HTTP; h == nil || h.Method != "GET" || h.Path != "/" || h.Verdict != "denied" {
		t.Fatalf("defaults: %+v", got.HTTP)
	}
	// No request asked: no HTTP part.
	if got, _ = traceHTTP(t, srv, nil); got.HTTP != nil || !got.Proxy {
		t.Fatalf("no request: %+v", got)
	}
}

// An egress side's headerMatches ADD changes the request the ingress side
// sees, as in the proxy; flows without proxy or denied at L4 say so.
func TestTraceHTTPSides(t *testing.T) {
	res := policy.TraceResult{Verdict: policy.VerdictAllowed, Proxy: true, L7: []policy.TraceL7{
		{Side: "egress of src", Rules: []policy.TraceHTTPRule{{Ref: "e", PortRuleHTTP: policyapi.PortRuleHTTP{
			HeaderMatches: []policyapi.HeaderMatch{{Name: "X-Team", Value: "ops", Mismatch: "ADD"}}}}}},
		{Side: "ingress of dst", Rules: []policy.TraceHTTPRule{
			{Ref: "i", PortRuleHTTP: policyapi.PortRuleHTTP{Path: "/admin"}},
			{Ref: "i", PortRuleHTTP: policyapi.PortRuleHTTP{Headers: []string{"X-Team: ops"}}}}},
	}}
	got, _ := traceHTTP(t, traceServer(t, res), map[string]any{"httpPath": "/x"})
	h := got.HTTP
	if h == nil || h.Verdict != "allowed" || len(h.Sides) != 2 || h.Sides[1].Rule == nil || h.Sides[1].Rule.Headers[0] != "X-Team: ops" ||
		len(h.Sides[0].Actions) != 1 || h.Reason != "egress of src: matches e.rules.http[0]; ingress of dst: matches i.rules.http[1]" {
		t.Fatalf("sides: %+v", h)
	}

	got, _ = traceHTTP(t, traceServer(t, policy.TraceResult{Verdict: policy.VerdictAllowed}), map[string]any{"httpPath": "/x"})
	if h := got.HTTP; h == nil || h.Verdict != "allowed" || !strings.Contains(h.Reason, "does not go through the proxy") {
		t.Fatalf("no proxy: %+v", h)
	}
	got, _ = traceHTTP(t, traceServer(t, policy.TraceResult{Verdict: policy.VerdictDenied}), map[string]any{"httpPath": "/x"})
	if h := got.HTTP; h == nil || h.Verdict != "denied" || h.Status != 0 || !strings.Contains(h.Reason, "L3/L4") {
		t.Fatalf("denied flow: %+v", h)
	}
}
