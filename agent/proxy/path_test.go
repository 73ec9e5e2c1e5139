package proxy

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// Paths are decided on, and sent on, in the form servers resolve them to;
// the ambiguous ones are refused.
func TestNormalizePath(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"/public/a", "/public/a"},
		{"/public/../admin", "/admin"},
		{"/public/%2e%2e/admin", "/admin"},
		{"/public/%2E%2e/admin?x=1", "/admin?x=1"},
		{"/public/./a/../b", "/public/b"},
		{"/public/..", "/"},
		{"/public/.", "/public/"},
		{"/../../etc", "/etc"},
		{"/%7euser/%41", "/~user/A"},
		{"/a%3fb/%c3%a9", "/a%3Fb/%C3%A9"},
		{"/a//b/", "/a//b/"},
		{"/public/a;v=1", "/public/a;v=1"},
		{"/public/...", "/public/..."},
		{"/api/queues/%2f/q", "/api/queues/%2F/q"},
		{"/projects/grp%2Fproj%5cx", "/projects/grp%2Fproj%5Cx"},
	} {
		u, err := url.ParseRequestURI(c.in)
		if err != nil {
			t.Fatal(err)
		}
		req := &http.Request{URL: u}
		if err := NormalizePath(req); err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if got := requestPath(req); got != c.want {
			t.Errorf("%s: decided on and sent as %q, want %q", c.in, got, c.want)
		}
	}
	for _, in := range []string{"/public/..%2fadmin", "/public/%2F..", "/public/..%5cadmin", "/public/..;/admin", "/public/%2e%2e;x/admin", "/public/.;/a",
		"/public/..%3B/admin", "/public/.%00/admin", "/public/a%2F.%2Fb"} {
		u, err := url.ParseRequestURI(in)
		if err != nil {
			t.Fatal(err)
		}
		if err := NormalizePath(&http.Request{URL: u}); !errors.Is(err, errAmbiguousPath) {
			t.Errorf("%s: %v, want errAmbiguousPath", in, err)
		}
	}
}

// A normalized path starts with "/", holds no dot segment, and is its own
// normal form; what NormalizePath accepts, the upstream can parse.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/public/../admin", "/%2e%2E/a", "/a/./b/..", "/a;x/..;/b", "/%7e%41%2f", "/a//b/../c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		u, err := url.ParseRequestURI(in)
		if err != nil || u.Opaque != "" {
			return
		}
		req := &http.Request{URL: u}
		if NormalizePath(req) != nil || !strings.HasPrefix(in, "/") {
			return
		}
		ep := req.URL.EscapedPath()
		for _, seg := range strings.Split(ep, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%q normalized to %q: a dot segment is left", in, ep)
			}
		}
		again, err := normalEscapedPath(ep)
		if err != nil || again != ep {
			t.Fatalf("%q normalized to %q, and that to %q (%v)", in, ep, again, err)
		}
		if _, err := url.ParseRequestURI(req.URL.RequestURI()); err != nil {
			t.Fatalf("%q normalized to %q, which does not parse: %v", in, req.URL.RequestURI(), err)
		}
	})
}
