package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// errAmbiguousPath: a request path servers resolve in different ways (a
// dot segment beside an encoded slash or backslash, or with parameters;
// a backslash; an encoded NUL); it is refused rather than decided on one
// reading.
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
// NormalizePath). Encoded slashes and backslashes stay encoded (APIs put
// names holding them in paths), but a piece between them that is a dot
// segment is refused: servers that decode them first would resolve it.
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
		case v == 0:
			return "", fmt.Errorf("%w %q: an encoded NUL", errAmbiguousPath, ep)
		case unreserved(v):
			b.WriteByte(v)
		default:
			b.WriteString(strings.ToUpper(ep[i : i+3]))
		}
		i += 2
	}
	out := removeDotSegments(b.String())
	for seg := range strings.SplitSeq(out, "/") {
		for p := range strings.SplitSeq(strings.ReplaceAll(seg, "%5C", "%2F"), "%2F") {
			d, err := url.PathUnescape(p)
			if err != nil {
				return "", fmt.Errorf("request path %q: %w", ep, err)
			}
			if name, _, _ := strings.Cut(d, ";"); name == "." || name == ".." {
				return "", fmt.Errorf("%w %q: a dot segment beside an encoded slash or with parameters, %q", errAmbiguousPath, ep, seg)
			}
		}
	}
	return out, nil
}

// removeDotSegments is RFC 3986 5.2.4 for an absolute path.
func removeDotSegments(p string) string {
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
		out = append(out, s)
	}
	return "/" + strings.Join(out, "/")
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
