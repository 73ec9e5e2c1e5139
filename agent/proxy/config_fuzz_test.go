package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// FuzzConfig puts arbitrary bodies to the control API's PUT /v1/config,
// as the agent (or anything that reaches the socket) may. Properties:
//   - the answer is 204 exactly when the body is one strict JSON Config
//     that compile accepts, else 400 (413 past the size limit);
//   - a refused config leaves the config in force and the persisted one
//     as they were, and a refusal of a decoded config wraps ErrInvalid
//     and names a field;
//   - an accepted config is the one in force and the persisted one, comes
//     back from GET /v1/config in a form PUT accepts again unchanged, and
//     its ipcache answers every address as a longest-prefix match over
//     its entries would.
func FuzzConfig(f *testing.F) {
	for _, s := range configFuzzSeeds() {
		f.Add([]byte(s))
	}
	p := New(Options{Logger: slog.New(slog.DiscardHandler)})
	stateDir := f.TempDir()
	c, err := NewControl(p, stateDir)
	if err != nil {
		f.Fatal(err)
	}
	put := func(body []byte) (int, string) {
		w := httptest.NewRecorder()
		c.srv.Handler.ServeHTTP(w, httptest.NewRequest(http.MethodPut, "/v1/config", bytes.NewReader(body)))
		return w.Code, w.Body.String()
	}
	if code, body := put([]byte(configFuzzSeeds()[0])); code != http.StatusNoContent {
		f.Fatalf("the first seed is refused: %d %s", code, body)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		before := p.Config()
		persisted, _, err := LoadConfig(stateDir)
		if err != nil {
			t.Fatal(err)
		}
		var cfg Config
		decErr := decodeStrict(bytes.NewReader(in), &cfg)
		var compErr error
		if decErr == nil {
			_, compErr = compile(cfg)
		}

		code, body := put(in)
		switch {
		case decErr == nil && compErr == nil:
			if code != http.StatusNoContent {
				t.Fatalf("a valid config is refused: %d %s\n%s", code, body, in)
			}
		case code != http.StatusBadRequest:
			t.Fatalf("an invalid config (%v, %v) gets %d %s, want 400\n%s", decErr, compErr, code, body, in)
		default:
			if after := p.Config(); !reflect.DeepEqual(after, before) {
				t.Fatalf("a refused config changed the one in force:\n got %+v\nwant %+v", after, before)
			}
			if now, _, err := LoadConfig(stateDir); err != nil || !reflect.DeepEqual(now, persisted) {
				t.Fatalf("a refused config changed the persisted one (%v)", err)
			}
			if decErr == nil && (!errors.Is(compErr, ErrInvalid) || !strings.Contains(body, "policies[") && !strings.Contains(body, "ipcache[")) {
				t.Fatalf("refusal of a decoded config does not wrap ErrInvalid or name the field: %v / %s", compErr, body)
			}
			return
		}

		want := mustJSON(t, cfg)
		if got := mustJSON(t, p.Config()); !bytes.Equal(got, want) {
			t.Fatalf("accepted config not in force:\n got %s\nwant %s", got, want)
		}
		saved, ok, err := LoadConfig(stateDir)
		if err != nil || !ok || !bytes.Equal(mustJSON(t, saved), want) {
			t.Fatalf("accepted config not persisted as is (%v): %+v", err, saved)
		}
		w := httptest.NewRecorder()
		c.srv.Handler.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v1/config", nil))
		if code, body := put(w.Body.Bytes()); code != http.StatusNoContent {
			t.Fatalf("GET /v1/config's answer is refused by PUT: %d %s\n%s", code, body, w.Body.Bytes())
		}
		if got := mustJSON(t, p.Config()); !bytes.Equal(got, want) {
			t.Fatalf("config changed through GET and PUT:\n got %s\nwant %s", got, want)
		}
		checkIPCache(t, cfg)
	})
}

// checkIPCache compares the compiled ipcache's answers with a longest
// prefix match over cfg's entries, at each entry's first address and each
// endpoint.
func checkIPCache(t *testing.T, cfg Config) {
	t.Helper()
	cc, err := compile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	for _, e := range cfg.IPCache {
		addrs = append(addrs, e.Prefix.Addr())
	}
	for _, pol := range cfg.Policies {
		addrs = append(addrs, pol.Endpoint.WithZone(""))
		key := policyKey{pol.Endpoint.Unmap(), pol.Direction, pol.Port, pol.Protocol}
		if _, ok := cc.policies[key]; !ok {
			t.Fatalf("policy for %v not compiled", key)
		}
	}
	for _, a := range addrs {
		want, bits := WorldIdentity, -1
		for _, e := range cfg.IPCache {
			if p := unmapPrefix(e.Prefix); p.Contains(a.Unmap()) && p.Bits() > bits {
				want, bits = e.Identity, p.Bits()
			}
		}
		if got := cc.identity(a); got != want {
			t.Fatalf("identity(%s) = %d, want %d (longest prefix /%d)", a, got, want, bits)
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// configFuzzSeeds are valid configs (the first one is put first) and each
// kind of refusal.
func configFuzzSeeds() []string {
	return []string{
		`{"revision":1,"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":80,"protocol":"TCP",` +
			`"rules":[{"remotes":[6000],"http":[{"method":"GET","path":"/public/.*"}]}]}],` +
			`"ipcache":[{"prefix":"10.0.0.0/8","identity":2},{"prefix":"10.0.0.1/32","identity":5000}]}`,
		`{"revision":2,"policies":[{"endpoint":"fd00::1","direction":"egress","port":443,"protocol":"TCP","rules":[{"http":[` +
			`{"host":"api\\.example\\.com(:443)?","headers":["X-Token: s3cret","X-Present"],` +
			`"headerMatches":[{"name":"X-Team","value":"ops","mismatch":"ADD"},{"name":"X-Del","mismatch":"DELETE"}]}]}]}],` +
			`"ipcache":[{"prefix":"fd00::/64","identity":7},{"prefix":"::ffff:10.2.0.0/112","identity":8},{"prefix":"10.1.0.0/16","identity":9}]}`,
		`{"revision":3,"policies":[{"endpoint":"::ffff:10.0.0.2","direction":"ingress","port":1,"protocol":"TCP","rules":[{"remotes":[]},{"http":[{}]}]},` +
			`{"endpoint":"10.0.0.2","direction":"ingress","port":1,"protocol":"TCP"}],"ipcache":[{"prefix":"0.0.0.0/0","identity":2},{"prefix":"::/0","identity":2}]}`,
		`{}`,
		`{"revision":4,"policies":[],"ipcache":[]}`,
		`null`,
		`{"REVISION":5,"Policies":null}`,
		`{"revision":1}{"revision":2}`,
		`{"revision":1} x`,
		`{"revision":1,"revision":2}`,
		`{"revision":-1}`,
		`{"revision":1e3}`,
		`{"unknown":1}`,
		`[]`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":80,"protocol":"UDP"}]}`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"in","port":80,"protocol":"TCP"}]}`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":0,"protocol":"TCP"}]}`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":65536,"protocol":"TCP"}]}`,
		`{"policies":[{"endpoint":"","direction":"ingress","port":80,"protocol":"TCP"}]}`,
		`{"policies":[{"endpoint":"fe80::1%eth0","direction":"ingress","port":80,"protocol":"TCP"}]}`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":80,"protocol":"TCP","rules":[{"remotes":[0]}]}]}`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":80,"protocol":"TCP","rules":[{"remotes":[33554432]}]}]}`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":80,"protocol":"TCP","rules":[{"http":[{"path":"(a)\\1"}]}]}]}`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":80,"protocol":"TCP","rules":[{"http":[{"path":"/a)|(/b"}]}]}]}`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":80,"protocol":"TCP","rules":[{"http":[{"method":"(x{1000}){1000}"}]}]}]}`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":80,"protocol":"TCP","rules":[{"http":[{"headers":["bad name: x"]}]}]}]}`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":80,"protocol":"TCP","rules":[{"http":[{"headerMatches":[{"name":"a","value":"x\ny"}]}]}]}]}`,
		`{"policies":[{"endpoint":"10.0.0.1","direction":"ingress","port":80,"protocol":"TCP","rules":[{"http":[{"headerMatches":[{"name":"a","mismatch":"DROP"}]}]}]}]}`,
		`{"ipcache":[{"prefix":"10.0.0.1/8","identity":5}]}`,
		`{"ipcache":[{"prefix":"10.0.0.0/8","identity":0}]}`,
		`{"ipcache":[{"prefix":"10.0.0.0/8","identity":5},{"prefix":"10.0.0.0/8","identity":6}]}`,
		`{"ipcache":[{"prefix":"10.0.0.0/8","identity":5},{"prefix":"::ffff:10.0.0.0/104","identity":6}]}`,
		`{"ipcache":[{"prefix":"10.0.0.0/33","identity":5}]}`,
		`{"ipcache":[{"identity":5}]}`,
	}
}
