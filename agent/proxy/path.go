package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// errAmbiguousPath: a request path servers resolve in different ways
// (an encoded slash or backslash, a backslash, a dot segment with
// parameters); it is refused rather than decided on one reading.
var errAmbiguousPath = errors.New("ambiguous request path")

// NormalizePath puts req's path in the form path rules are decided on and
// the upstream gets (RFC 3986 6.2.2: percent-encoded unreserved
// characters decoded, other escapes in upper case, dot segments removed),
// so a rule's "/public/.*" cannot be passed by "/public/../admin" or
// "/public/%2e%2e/admin", which servers resolve to "/admin". Paths not
// starting with "/" (OPTIONS *, a CONNECT's host:port) are left alone.
func NormalizePath(req *http.Request) error {
	if req.URL == nil || req.URL.Opaque != "" {
		return nil
	}
	ep := req.URL.EscapedPath()
	if !strings.HasPrefix(ep, "/") {
		return nil
	}
	norm, err := normalEscapedPath(ep)
	if err != nil {
		return err
	}
	if norm == ep {
		return nil
	}
	p, err := url.PathUnescape(norm)
	if err != nil {
		return fmt.Errorf("request path %q: %w", ep, err)
	}
	req.URL.Path, req.URL.RawPath = p, norm
	return nil
}

// normalEscapedPath normalizes an escaped absolute path (see
// NormalizePath).
func normalEscapedPath(ep string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(ep); i++ {
		c := ep[i]
		switch {
		case c == '\\':
			return "", fmt.Errorf("%w %q: a backslash", errAmbiguousPath, ep)
		case c != '%':
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(ep) || !ishex(ep[i+1]) || !ishex(ep[i+2]) {
			return "", fmt.Errorf("request path %q: a malformed escape", ep)
		}
		v := unhex(ep[i+1])<<4 | unhex(ep[i+2])
		switch {
		case v == '/' || v == '\\':
			return "", fmt.Errorf("%w %q: an encoded slash or backslash", errAmbiguousPath, ep)
		case unreserved(v):
			b.WriteByte(v)
		default:
			b.WriteString(strings.ToUpper(ep[i : i+3]))
		}
		i += 2
	}
	out, err := removeDotSegments(b.String())
	if err != nil {
		return "", fmt.Errorf("%w %q: %w", errAmbiguousPath, ep, err)
	}
	return out, nil
}

// removeDotSegments is RFC 3986 5.2.4 for an absolute path. A segment
// that is a dot segment once its parameters (";...") are cut is refused:
// some servers (Tomcat) resolve "/a/..;/b" to "/b".
func removeDotSegments(p string) (string, error) {
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
			continue
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
			continue
		}
		if name, _, ok := strings.Cut(s, ";"); ok && (name == "." || name == "..") {
			return "", fmt.Errorf("a dot segment with parameters, %q", s)
		}
		out = append(out, s)
	}
	return "/" + strings.Join(out, "/"), nil
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
