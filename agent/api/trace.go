package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/l7"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/proxy"
)

// traceRequest is the HTTP request of a trace request, checked; nil when
// the trace request names none. Errors name the bad parameter.
func traceRequest(req types.TraceRequest, proto string) (*http.Request, error) {
	if req.HTTPMethod == "" && req.HTTPPath == "" && req.HTTPHost == "" && len(req.HTTPHeaders) == 0 {
		return nil, nil
	}
	if proto != "TCP" {
		return nil, fmt.Errorf("%w: httpMethod/httpPath: an HTTP request needs protocol TCP, not %s", errBadRequest, proto)
	}
	method, path := req.HTTPMethod, req.HTTPPath
	if method == "" {
		method = http.MethodGet
	}
	if path == "" {
		path = "/"
	}
	// A method is a token, like a header name.
	if !httpguts.ValidHeaderFieldName(method) {
		return nil, fmt.Errorf("%w: httpMethod %q: not an HTTP method (a token)", errBadRequest, method)
	}
	if !strings.HasPrefix(path, "/") || strings.ContainsFunc(path, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, fmt.Errorf("%w: httpPath %q: want a request target starting with \"/\", without spaces", errBadRequest, path)
	}
	// As the proxy's HTTP server parses the request target.
	u, err := url.ParseRequestURI(path)
	if err != nil {
		return nil, fmt.Errorf("%w: httpPath %q: %v", errBadRequest, path, err)
	}
	// As the proxy decides on it (dot segments resolved, ...).
	r0 := &http.Request{URL: u}
	if err := proxy.NormalizePath(r0); err != nil {
		return nil, fmt.Errorf("%w: httpPath %q: the proxy answers 400: %v", errBadRequest, path, err)
	}
	if !httpguts.ValidHostHeader(req.HTTPHost) {
		return nil, fmt.Errorf("%w: httpHost %q: not a host", errBadRequest, req.HTTPHost)
	}
	r := &http.Request{Method: method, URL: u, RequestURI: path, Host: req.HTTPHost, Header: http.Header{},
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
	for i, h := range req.HTTPHeaders {
		name, value, _ := strings.Cut(h, ":")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(value) {
			return nil, fmt.Errorf("%w: httpHeaders[%d] %q: want \"Name: value\"", errBadRequest, i, h)
		}
		// The proxy sees the Host as the request's host, never as a
		// header (and refuses a request with two).
		switch http.CanonicalHeaderKey(name) {
		case "Host":
			return nil, fmt.Errorf("%w: httpHeaders[%d] %q: the Host is httpHost (--http-host)", errBadRequest, i, h)
		case "Content-Length", "Transfer-Encoding":
			// They frame a body, which a traced request does not have
			// (and the proxy's rules never see Transfer-Encoding).
			return nil, fmt.Errorf("%w: httpHeaders[%d] %q: a traced request has no body", errBadRequest, i, h)
		case "Expect":
			if !strings.EqualFold(value, "100-continue") {
				return nil, fmt.Errorf("%w: httpHeaders[%d] %q: the proxy answers 417 to an Expect but 100-continue, before any rule", errBadRequest, i, h)
			}
		}
		r.Header.Add(name, value)
	}
	return r, nil
}

// traceHTTP says what the flow's proxies do with req, deciding with the
// proxy's own matcher: each L7 side in the order the request meets it
// (egress of the source, then ingress of the destination, the first
// side's header actions applied before the next).
func traceHTTP(res policy.TraceResult, req *http.Request) (*types.TraceHTTP, error) {
	// What the proxy's rules see: no hop-by-hop headers but the upgrade.
	req = req.Clone(req.Context())
	proxy.DecisionHeaders(req.Header)
	out := &types.TraceHTTP{Method: req.Method, Path: req.URL.RequestURI(), Host: req.Host, Verdict: policy.VerdictAllowed}
	for name, vals := range req.Header {
		for _, v := range vals {
			out.Headers = append(out.Headers, name+": "+v)
		}
	}
	switch {
	case res.Verdict != policy.VerdictAllowed:
		out.Verdict, out.Reason = policy.VerdictDenied, "the flow is denied at L3/L4: no request gets through"
		return out, nil
	case !res.Proxy:
		out.Reason = "no HTTP rules apply: the flow does not go through the proxy"
		return out, nil
	}
	for _, sd := range res.L7 {
		rules := make([]proxy.HTTPRule, len(sd.Rules))
		for i, r := range sd.Rules {
			rules[i] = l7.HTTPRule(r.PortRuleHTTP)
		}
		i, acts, err := proxy.Match(rules, req)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", sd.Side, err)
		}
		side := types.TraceHTTPSide{Side: sd.Side, Verdict: policy.VerdictDenied}
		if i < 0 {
			out.Sides = append(out.Sides, side)
			out.Verdict, out.Status = policy.VerdictDenied, http.StatusForbidden
			out.Reason = sd.Side + ": no HTTP rule matches"
			return out, nil
		}
		rule := wireHTTPRule(sd.Rules[i])
		side.Verdict, side.Rule, side.Actions = policy.VerdictAllowed, &rule, proxy.Apply(req, acts)
		out.Sides = append(out.Sides, side)
		out.Reason = appendReason(out.Reason, sd.Side+": matches "+ruleName(sd.Rules, i))
	}
	return out, nil
}

// ruleName names rule i of rules: its ref and its index among the
// rules of that ref (`policy/rules[0].ingress[0].toPorts[0].rules.http[1]`).
func ruleName(rules []policy.TraceHTTPRule, i int) string {
	n := 0
	for _, r := range rules[:i] {
		if r.Ref == rules[i].Ref {
			n++
		}
	}
	return fmt.Sprintf("%s.rules.http[%d]", rules[i].Ref, n)
}

func appendReason(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}
