package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// ErrInvalid is wrapped by every validation error of a rule or a config.
var ErrInvalid = errors.New("invalid L7 policy")

// HTTPRule is one CiliumNetworkPolicy `rules.http` entry. A request
// matches when every field given matches; an empty rule matches every
// request.
type HTTPRule struct {
	// Method, Path and Host are RE2 regular expressions matched against
	// the whole method, request target (path and query, as sent) and
	// Host (":authority"; with or without its port). Empty means any.
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	Host   string `json:"host,omitempty"`
	// Headers are "Name" (the header is present) or "Name: value" (the
	// request has one copy of it, with that value).
	Headers []string `json:"headers,omitempty"`
	// HeaderMatches require a header value and say what to do when the
	// request does not have it.
	HeaderMatches []HeaderMatch `json:"headerMatches,omitempty"`
}

// HeaderMatch requires header Name to have value Value. Mismatch says what
// a request without it gets: "" the rule does not match; LOG the rule
// matches and the record notes the mismatch; ADD the value is added;
// DELETE the header is removed; REPLACE the header is set to Value (the
// last three match the rule too and change the forwarded request).
type HeaderMatch struct {
	Name     string `json:"name"`
	Value    string `json:"value,omitempty"`
	Mismatch string `json:"mismatch,omitempty"`
}

// Mismatch actions.
const (
	MismatchLog     = "LOG"
	MismatchAdd     = "ADD"
	MismatchDelete  = "DELETE"
	MismatchReplace = "REPLACE"
)

// rule is a compiled HTTPRule.
type rule struct {
	method, path, host *regexp.Regexp
	headers            []headerCond
	matches            []HeaderMatch
	// connect: the method, as written, names CONNECT (a pattern that
	// merely matches it, ".*", does not allow it).
	connect bool
}

type headerCond struct {
	name     string // canonical
	value    string
	hasValue bool
}

// CheckHTTPRule says whether the proxy takes r (nil) or refuses it, and
// with it the whole configuration.
func CheckHTTPRule(r HTTPRule) error {
	_, err := compileRule("http", r)
	return err
}

// compileRule checks r and compiles it; errors name the field under
// prefix (e.g. "rules.http[1]").
func compileRule(prefix string, r HTTPRule) (*rule, error) {
	c := &rule{connect: strings.Contains(r.Method, http.MethodConnect)}
	var err error
	for _, f := range []struct {
		name string
		expr string
		re   **regexp.Regexp
	}{{"method", r.Method, &c.method}, {"path", r.Path, &c.path}, {"host", r.Host, &c.host}} {
		if f.expr == "" {
			continue
		}
		// The expression alone first, so that an error quotes it as given.
		if _, err = regexp.Compile(f.expr); err == nil {
			*f.re, err = regexp.Compile("^(?:" + f.expr + ")$")
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s.%s %q: %v", ErrInvalid, prefix, f.name, f.expr, err)
		}
	}
	for i, h := range r.Headers {
		name, value, hasValue := strings.Cut(h, ":")
		name = strings.TrimSpace(name)
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, fmt.Errorf("%w: %s.headers[%d] %q: not a header name", ErrInvalid, prefix, i, h)
		}
		c.headers = append(c.headers, headerCond{http.CanonicalHeaderKey(name), strings.TrimSpace(value), hasValue})
	}
	for i, m := range r.HeaderMatches {
		field := fmt.Sprintf("%s.headerMatches[%d]", prefix, i)
		if !httpguts.ValidHeaderFieldName(m.Name) {
			return nil, fmt.Errorf("%w: %s.name %q: not a header name", ErrInvalid, field, m.Name)
		}
		if !httpguts.ValidHeaderFieldValue(m.Value) {
			return nil, fmt.Errorf("%w: %s.value %q: not a header value", ErrInvalid, field, m.Value)
		}
		switch m.Mismatch {
		case "", MismatchLog, MismatchAdd, MismatchDelete, MismatchReplace:
		default:
			return nil, fmt.Errorf("%w: %s.mismatch %q: want LOG, ADD, DELETE or REPLACE", ErrInvalid, field, m.Mismatch)
		}
		m.Name = http.CanonicalHeaderKey(m.Name)
		switch {
		case m.Name != "Host":
		case m.Mismatch == MismatchDelete:
			return nil, fmt.Errorf("%w: %s.mismatch: DELETE of Host: a request keeps its host", ErrInvalid, field)
		case (m.Mismatch == MismatchAdd || m.Mismatch == MismatchReplace) && (m.Value == "" || !httpguts.ValidHostHeader(m.Value)):
			return nil, fmt.Errorf("%w: %s.value: %s of Host needs a host, not %q", ErrInvalid, field, m.Mismatch, m.Value)
		}
		c.matches = append(c.matches, m)
	}
	return c, nil
}

// match reports whether req matches the rule, without changing req. When
// it matches, the actions its headerMatches ask for are returned; Apply
// runs them.
func (c *rule) match(req *http.Request) (ok bool, acts []HeaderMatch) {
	if c.method != nil && !c.method.MatchString(req.Method) {
		return false, nil
	}
	// A CONNECT makes the connection a tunnel the proxy does not look
	// into: only a rule naming the method allows it (until 2026-12-04 a
	// pattern matching any method, ".*", did).
	if req.Method == http.MethodConnect && !c.connect {
		return false, nil
	}
	if c.path != nil && !c.path.MatchString(requestPath(req)) {
		return false, nil
	}
	if c.host != nil && !c.host.MatchString(req.Host) {
		host, _, err := net.SplitHostPort(req.Host)
		if err != nil || !c.host.MatchString(host) {
			return false, nil
		}
	}
	// A header's value is matched only when the request has one copy of
	// it: servers read several copies differently (the first, the last,
	// all joined), so one copy holding the value would be no cover for
	// another (until 2026-12-04 any copy matched).
	//
	// A header under a name with "_" for "-" (X_Tenant for X-Tenant) is
	// another copy: CGI, WSGI and Rack servers read both as HTTP_X_TENANT
	// (until 2026-12-06 it was not looked at, and "X_Tenant: b" beside
	// "X-Tenant: a" passed a rule wanting a; TestUnderscoreHeaderIsACopy).
	for _, h := range c.headers {
		vals, present := headerValues(req, h.name)
		if !present || h.hasValue && (!onlyValue(vals, h.value) || underscoreCopy(req.Header, h.name)) {
			return false, nil
		}
	}
	for _, m := range c.matches {
		vals, _ := headerValues(req, m.Name)
		if onlyValue(vals, m.Value) && !underscoreCopy(req.Header, m.Name) {
			continue
		}
		if m.Mismatch == "" {
			return false, nil
		}
		acts = append(acts, m)
	}
	return true, acts
}

// headerValues is the request's copies of header name (canonical). Host
// is the request's host (req.Host: net/http keeps it out of the header
// map, and it is what goes upstream), present when not empty.
func headerValues(req *http.Request, name string) ([]string, bool) {
	if name == "Host" {
		return []string{req.Host}, req.Host != ""
	}
	vals, ok := req.Header[name]
	return vals, ok
}

// underscoreCopy reports whether h has a header other than name (canonical)
// that servers folding "_" into "-" read as name (foldedCopy).
func underscoreCopy(h http.Header, name string) bool {
	for k := range h {
		if foldedCopy(k, name) {
			return true
		}
	}
	return false
}

// removeUnderscoreCopies deletes h's headers that servers folding "_"
// into "-" read as name (foldedCopy).
func removeUnderscoreCopies(h http.Header, name string) {
	for k := range h {
		if foldedCopy(k, name) {
			delete(h, k)
		}
	}
}

// foldedCopy reports whether header names k and name differ but one of
// them has "_" and they read the same with "_" taken for "-" and ASCII
// case ignored (CGI's HTTP_X_TENANT for both X-Tenant and X_Tenant).
func foldedCopy(k, name string) bool {
	if k == name || len(k) != len(name) || !strings.Contains(k, "_") && !strings.Contains(name, "_") {
		return false
	}
	fold := func(c byte) byte {
		if c == '_' {
			return '-'
		}
		if 'A' <= c && c <= 'Z' {
			return c + 'a' - 'A'
		}
		return c
	}
	for i := 0; i < len(k); i++ {
		if fold(k[i]) != fold(name[i]) {
			return false
		}
	}
	return true
}

// onlyValue reports whether vals is one copy with value v.
func onlyValue(vals []string, v string) bool { return len(vals) == 1 && vals[0] == v }

// Apply runs the mismatch actions of a matched rule on req and returns a
// note per action for the record.
func Apply(req *http.Request, acts []HeaderMatch) (notes []string) {
	for _, m := range acts {
		if m.Mismatch != MismatchLog {
			removeUnderscoreCopies(req.Header, m.Name)
		}
		switch {
		case m.Name == "Host" && m.Mismatch != MismatchLog:
			// The request's host is one value (req.Host, what goes
			// upstream): ADD and REPLACE set it (a DELETE, or an empty
			// value, is refused when the rule is compiled).
			req.Host = m.Value
		case m.Mismatch == MismatchAdd:
			req.Header.Add(m.Name, m.Value)
		case m.Mismatch == MismatchDelete:
			req.Header.Del(m.Name)
		case m.Mismatch == MismatchReplace:
			req.Header.Set(m.Name, m.Value)
		}
		notes = append(notes, m.Note())
	}
	return notes
}

// Note is what a record says of a mismatch action taken.
func (m HeaderMatch) Note() string {
	return fmt.Sprintf("headerMatches %s: %s %s", m.Mismatch, m.Name, m.Value)
}

// Match decides req against rules as the proxy does for one side of a
// connection: it returns the index of the first rule that matches (-1:
// none, the proxy answers 403) and the headerMatches actions that rule
// asks for (Apply runs them), without changing req. The rules are compiled on each call (an
// error names the first bad one, "http[i]"): it is for one-off questions
// such as policy trace, not for the request path.
func Match(rules []HTTPRule, req *http.Request) (int, []HeaderMatch, error) {
	compiled := make([]*rule, len(rules))
	for i, r := range rules {
		c, err := compileRule(fmt.Sprintf("http[%d]", i), r)
		if err != nil {
			return -1, nil, err
		}
		compiled[i] = c
	}
	for i, c := range compiled {
		if ok, acts := c.match(req); ok {
			return i, acts, nil
		}
	}
	return -1, nil, nil
}

// requestPath is what path rules see: the request target's path and
// query as the client sent them.
func requestPath(req *http.Request) string {
	if req.URL == nil {
		return ""
	}
	return req.URL.RequestURI()
}
