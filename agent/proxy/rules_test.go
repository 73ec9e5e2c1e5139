package proxy

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

func TestRuleMatch(t *testing.T) {
	req := func(method, target, host string, hdr ...string) *http.Request {
		r := httptest.NewRequest(method, target, nil)
		r.Host = host
		for i := 0; i < len(hdr); i += 2 {
			r.Header.Add(hdr[i], hdr[i+1])
		}
		return r
	}
	for _, tc := range []struct {
		name string
		rule HTTPRule
		req  *http.Request
		want bool
	}{
		{"empty rule", HTTPRule{}, req("DELETE", "/x", "a"), true},
		{"seeds allow", HTTPRule{Method: "GET", Path: "/public/.*"}, req("GET", "/public/a/b", "a"), true},
		{"seeds method", HTTPRule{Method: "GET", Path: "/public/.*"}, req("POST", "/public/a", "a"), false},
		{"seeds path", HTTPRule{Method: "GET", Path: "/public/.*"}, req("GET", "/private", "a"), false},
		{"anchored", HTTPRule{Path: "/public"}, req("GET", "/public/x", "a"), false},
		{"anchored prefix", HTTPRule{Path: "/public"}, req("GET", "/x/public", "a"), false},
		{"alternation anchored", HTTPRule{Method: "GET|HEAD"}, req("HEAD", "/", "a"), true},
		{"alternation not prefix", HTTPRule{Method: "GET|HEAD"}, req("GETX", "/", "a"), false},
		{"path sees query", HTTPRule{Path: "/q"}, req("GET", "/q?x=1", "a"), false},
		{"host", HTTPRule{Host: `api\.example\.com`}, req("GET", "/", "api.example.com"), true},
		{"host with port", HTTPRule{Host: `api\.example\.com`}, req("GET", "/", "api.example.com:8080"), true},
		{"host other", HTTPRule{Host: `api\.example\.com`}, req("GET", "/", "evil.com"), false},
		{"header present", HTTPRule{Headers: []string{"X-Token"}}, req("GET", "/", "a", "X-Token", ""), true},
		{"header absent", HTTPRule{Headers: []string{"X-Token"}}, req("GET", "/", "a"), false},
		{"header value", HTTPRule{Headers: []string{"x-token: s3cret"}}, req("GET", "/", "a", "X-Token", "s3cret"), true},
		{"header other value", HTTPRule{Headers: []string{"X-Token: s3cret"}}, req("GET", "/", "a", "X-Token", "nope"), false},
		{"headerMatch ok", HTTPRule{HeaderMatches: []HeaderMatch{{Name: "X-A", Value: "1"}}}, req("GET", "/", "a", "X-A", "1"), true},
		{"headerMatch mismatch", HTTPRule{HeaderMatches: []HeaderMatch{{Name: "X-A", Value: "1"}}}, req("GET", "/", "a", "X-A", "2"), false},
		{"headerMatch LOG", HTTPRule{HeaderMatches: []HeaderMatch{{Name: "X-A", Value: "1", Mismatch: "LOG"}}}, req("GET", "/", "a"), true},
	} {
		r, err := compileRule("r", tc.rule)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got, _ := r.match(tc.req); got != tc.want {
			t.Errorf("%s: match = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestHeaderMatchActions(t *testing.T) {
	for _, tc := range []struct {
		mismatch string
		have     []string // X-A values the request has
		want     []string // X-A values after
		note     bool
	}{
		{"LOG", []string{"2"}, []string{"2"}, true},
		{"ADD", []string{"2"}, []string{"2", "1"}, true},
		{"ADD", nil, []string{"1"}, true},
		{"DELETE", []string{"2"}, nil, true},
		{"REPLACE", []string{"2", "3"}, []string{"1"}, true},
		{"REPLACE", []string{"1"}, []string{"1"}, false}, // no mismatch, nothing to do
	} {
		r, err := compileRule("r", HTTPRule{HeaderMatches: []HeaderMatch{{Name: "x-a", Value: "1", Mismatch: tc.mismatch}}})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest("GET", "/", nil)
		for _, v := range tc.have {
			req.Header.Add("X-A", v)
		}
		ok, acts := r.match(req)
		if !ok {
			t.Fatalf("%s %v: no match", tc.mismatch, tc.have)
		}
		if len(req.Header["X-A"]) != len(tc.have) {
			t.Fatalf("match changed the request")
		}
		notes := Apply(req, acts)
		if got := req.Header["X-A"]; strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("%s %v: X-A = %v, want %v", tc.mismatch, tc.have, got, tc.want)
		}
		if (len(notes) > 0) != tc.note {
			t.Errorf("%s %v: notes %v", tc.mismatch, tc.have, notes)
		}
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	ep := netip.MustParseAddr("10.0.0.1")
	pol := func(r ...HTTPRule) Config {
		return Config{Policies: []PortPolicy{
			{Endpoint: ep, Direction: Ingress, Port: 80, Protocol: "TCP"},
			{Endpoint: ep, Direction: Egress, Port: 80, Protocol: "TCP", Rules: []PeerRules{{}, {HTTP: append([]HTTPRule{{}}, r...)}}},
		}}
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{pol(HTTPRule{Method: "("}), `policies[1].rules[1].http[1].method "(": `},
		{pol(HTTPRule{Path: "a[b"}), `policies[1].rules[1].http[1].path "a[b"`},
		{pol(HTTPRule{Host: `(?<x`}), `policies[1].rules[1].http[1].host`},
		{pol(HTTPRule{Path: `(a)\1`}), `policies[1].rules[1].http[1].path`},             // backreference: not RE2
		{pol(HTTPRule{Path: `/a)|(/b`}), `policies[1].rules[1].http[1].path "/a)|(/b"`}, // valid only once wrapped in the anchors
		{pol(HTTPRule{Headers: []string{"ok", "bad name: x"}}), `policies[1].rules[1].http[1].headers[1]`},
		{pol(HTTPRule{HeaderMatches: []HeaderMatch{{Name: ""}}}), `policies[1].rules[1].http[1].headerMatches[0].name`},
		{pol(HTTPRule{HeaderMatches: []HeaderMatch{{Name: "a", Value: "x\ny"}}}), `headerMatches[0].value`},
		{pol(HTTPRule{HeaderMatches: []HeaderMatch{{Name: "a", Mismatch: "DROP"}}}), `policies[1].rules[1].http[1].headerMatches[0].mismatch "DROP"`},
		{Config{Policies: []PortPolicy{{Direction: Ingress, Port: 1, Protocol: "TCP"}}}, `policies[0].endpoint`},
		{Config{Policies: []PortPolicy{{Endpoint: ep, Direction: "in", Port: 1, Protocol: "TCP"}}}, `policies[0].direction "in"`},
		{Config{Policies: []PortPolicy{{Endpoint: ep, Direction: Ingress, Protocol: "TCP"}}}, `policies[0].port`},
		{Config{Policies: []PortPolicy{{Endpoint: ep, Direction: Ingress, Port: 1, Protocol: "UDP"}}}, `policies[0].protocol "UDP"`},
		{Config{Policies: []PortPolicy{{Endpoint: ep, Direction: Ingress, Port: 1, Protocol: "TCP", Rules: []PeerRules{{Remotes: []uint32{5, 0}}}}}}, `policies[0].rules[0].remotes[1]`},
		{Config{IPCache: []IPCacheEntry{{Identity: 5}}}, `ipcache[0].prefix`},
		{Config{IPCache: []IPCacheEntry{{Prefix: netip.MustParsePrefix("10.0.0.1/8"), Identity: 5}}}, `ipcache[0].prefix 10.0.0.1/8: host bits`},
		{Config{IPCache: []IPCacheEntry{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}}}, `ipcache[0].identity`},
		{Config{IPCache: []IPCacheEntry{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Identity: 5}, {Prefix: netip.MustParsePrefix("10.0.0.0/8"), Identity: 6}}}, `ipcache[1].prefix 10.0.0.0/8: listed twice`},
	} {
		_, err := compile(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("want error containing %q, got %v", tc.want, err)
		}
	}
	// A refused config leaves the previous one in force.
	p := New(Options{})
	good := pol()
	good.Revision = 7
	if err := p.SetConfig(good); err != nil {
		t.Fatal(err)
	}
	bad := pol(HTTPRule{Method: "("})
	bad.Revision = 8
	if err := p.SetConfig(bad); err == nil {
		t.Fatal("bad config accepted")
	}
	if got := p.Config().Revision; got != 7 {
		t.Fatalf("revision in force %d, want 7", got)
	}
}

func TestIPCacheLongestPrefix(t *testing.T) {
	c, err := compile(Config{IPCache: []IPCacheEntry{
		{netip.MustParsePrefix("10.0.0.0/8"), 100},
		{netip.MustParsePrefix("10.1.0.0/16"), 200},
		{netip.MustParsePrefix("10.1.2.3/32"), 300},
		{netip.MustParsePrefix("fd00::/64"), 400},
		{netip.MustParsePrefix("::ffff:192.168.0.0/112"), 500},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]uint32{
		"10.9.9.9": 100, "10.1.9.9": 200, "10.1.2.3": 300, "::ffff:10.1.2.3": 300,
		"fd00::1": 400, "fd01::1": WorldIdentity, "11.0.0.1": WorldIdentity, "192.168.1.1": 500,
	} {
		if got := c.identity(netip.MustParseAddr(addr)); got != want {
			t.Errorf("identity(%s) = %d, want %d", addr, got, want)
		}
	}
}

// A node-local CIDR identity (bit 24) has a magic of its own; anything
// wider is the world (TestProxyUpstreamLocalScopeIdentity in bpf).
func TestUpstreamMark(t *testing.T) {
	for id, want := range map[uint32]uint32{1: 0xFA000001, 0x12345: 0xFA012345, 0xFFFFFF: 0xFAFFFFFF, 1<<24 | 7: 0xFB000007, 1<<25 | 7: 0xFA000002} {
		if got := UpstreamMark(id); got != want {
			t.Errorf("UpstreamMark(%#x) = %#x, want %#x", id, got, want)
		}
	}
}

// Match (policy trace's question) answers as the proxy's rules do: the
// first rule that matches, its actions, and errors naming the bad rule.
func TestMatch(t *testing.T) {
	rules := []HTTPRule{{Method: "GET", Path: "/public/.*"}, {Path: "/healthz", HeaderMatches: []HeaderMatch{{Name: "x-team", Value: "ops", Mismatch: MismatchLog}}}}
	r := httptest.NewRequest("GET", "/public/a", nil)
	if i, acts, err := Match(rules, r); i != 0 || acts != nil || err != nil {
		t.Errorf("GET /public/a: %d %v %v", i, acts, err)
	}
	r = httptest.NewRequest("POST", "/healthz", nil)
	i, acts, err := Match(rules, r)
	if i != 1 || len(acts) != 1 || acts[0].Note() != "headerMatches LOG: X-Team ops" || err != nil {
		t.Errorf("POST /healthz: %d %v %v", i, acts, err)
	}
	if len(r.Header) != 0 {
		t.Errorf("Match changed the request: %v", r.Header)
	}
	if i, _, err := Match(rules, httptest.NewRequest("POST", "/public/a", nil)); i != -1 || err != nil {
		t.Errorf("POST /public/a: %d %v", i, err)
	}
	if _, _, err := Match([]HTTPRule{{}, {Path: "("}}, r); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "http[1].path") {
		t.Errorf("bad rule: %v", err)
	}
}

// A CONNECT turns the connection into a tunnel the proxy does not look
// into, so only a rule naming the method lets it through: before, a rule
// without a method allowed it whenever its path matched "/" (what a
// CONNECT's host:port gives) and its host matched.
func TestConnectNeedsItsMethodNamed(t *testing.T) {
	connect := httptest.NewRequest("CONNECT", "api:80", nil)
	connect.Host = "api"
	for _, rules := range [][]HTTPRule{{{}}, {{Path: "/"}}, {{Host: "api", Path: "/.*"}}, {{Method: "GET|CONNECT|POST"}}} {
		want := -1
		if rules[0].Method != "" {
			want = 0
		}
		if i, _, err := Match(rules, connect); i != want || err != nil {
			t.Errorf("CONNECT api:80 under %+v: rule %d (%v), want %d", rules, i, err, want)
		}
	}
}
