// Package fqdn owns the DNS names the agent learns from allowed DNS answers
// (which addresses each name had, until when, which endpoints asked) and the
// matching of toFQDNs selectors against them.
//
// Names and addresses come from DNS answers a workload can influence, so
// every input is treated as hostile: names that are not DNS names are
// ignored, and every bound (addresses per name, entries in the cache) holds
// at all times.
package fqdn

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/filament-net/filament/agent/policy/api"
)

// ErrBadSelector is wrapped by the errors of Compile and SetSelectors for a
// selector that cannot be compiled.
var ErrBadSelector = errors.New("bad toFQDNs selector")

// maxNameLen is the longest name (normalized, trailing dot included) kept
// or matched.
const maxNameLen = 255

// patternStar is what `*` in a matchPattern stands for: any run of DNS name
// characters except '.' (names are lowercased before matching).
const patternStar = `[-a-z0-9_]*`

// Matcher is a compiled toFQDNs selector (matchName or matchPattern).
type Matcher struct {
	name string         // normalized matchName, or "" for a pattern
	re   *regexp.Regexp // anchored pattern, nil for a name or a lone "*"
	all  bool           // a lone "*": every name
	str  string
	// A pattern's literal text before its first and after its last '*': a
	// name without them cannot match (checked before the regexp).
	prefix, suffix string
	// oneStar: the pattern has a single '*', so a name with prefix and
	// suffix matches when what lies between them is DNS characters.
	oneStar bool
}

// Compile checks sel and compiles it. Names compare case-insensitively, with
// or without the trailing dot. In a matchPattern, `*` matches any run
// (possibly empty) of DNS name characters except '.', and a lone "*" matches
// every name.
func Compile(sel api.FQDNSelector) (*Matcher, error) {
	switch {
	case sel.MatchName == "" && sel.MatchPattern == "":
		return nil, fmt.Errorf("%w: needs matchName or matchPattern", ErrBadSelector)
	case sel.MatchName != "" && sel.MatchPattern != "":
		return nil, fmt.Errorf("%w: matchName %q cannot be combined with matchPattern %q", ErrBadSelector, sel.MatchName, sel.MatchPattern)
	case sel.MatchName != "":
		n := Normalize(sel.MatchName)
		if !validName(n, false) {
			return nil, fmt.Errorf("%w: matchName %q is not a DNS name", ErrBadSelector, sel.MatchName)
		}
		return &Matcher{name: n, str: "matchName:" + n}, nil
	}
	p := Normalize(sel.MatchPattern)
	if !validName(p, true) {
		return nil, fmt.Errorf("%w: matchPattern %q is not a DNS name pattern (DNS characters and '*')", ErrBadSelector, sel.MatchPattern)
	}
	m := &Matcher{str: "matchPattern:" + p}
	if p == "*." {
		m.all = true
		return m, nil
	}
	parts := strings.Split(p, "*")
	m.prefix = parts[0]
	if len(parts) > 1 {
		m.suffix = parts[len(parts)-1]
	}
	m.oneStar = len(parts) == 2
	var b strings.Builder
	b.WriteString("^")
	for i, part := range parts {
		if i > 0 {
			b.WriteString(patternStar)
		}
		b.WriteString(regexp.QuoteMeta(part))
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil { // cannot happen: every part is quoted
		return nil, fmt.Errorf("%w: matchPattern %q: %v", ErrBadSelector, sel.MatchPattern, err)
	}
	m.re = re
	return m, nil
}

// Match reports whether the selector matches name (any case, with or
// without the trailing dot).
func (m *Matcher) Match(name string) bool {
	if m.all {
		return true
	}
	return m.matchNormalized(Normalize(name))
}

// matchNormalized is Match of a name already normalized.
func (m *Matcher) matchNormalized(n string) bool {
	switch {
	case m.all:
		return true
	case m.re == nil:
		return n == m.name
	case len(n) < len(m.prefix)+len(m.suffix) || !strings.HasPrefix(n, m.prefix) || !strings.HasSuffix(n, m.suffix):
		return false
	case m.oneStar:
		for i := len(m.prefix); i < len(n)-len(m.suffix); i++ {
			if !isDNSChar(n[i]) {
				return false
			}
		}
		return true
	}
	return m.re.MatchString(n)
}

// isDNSChar reports whether c is a DNS name character other than '.'
// (lowercase).
func isDNSChar(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// String is "matchName:<name>" or "matchPattern:<pattern>", normalized.
func (m *Matcher) String() string { return m.str }

// Normalize returns name in lowercase (ASCII letters only; other bytes are
// kept as they are) with exactly one trailing dot: "Example.COM" and
// "example.com.." become "example.com.", "" becomes ".". It never fails;
// whether the result is a DNS name is checked where names are accepted.
func Normalize(name string) string {
	end := len(name)
	for end > 0 && name[end-1] == '.' {
		end--
	}
	if end == len(name)-1 && !hasUpper(name) {
		return name
	}
	b := make([]byte, end+1)
	for i := 0; i < end; i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	b[end] = '.'
	return string(b)
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// SelectorKey is a stable key for sel: "fqdn:name:<name>" or
// "fqdn:pattern:<pattern>", normalized. It does not validate sel.
func SelectorKey(sel api.FQDNSelector) string {
	return api.FQDNKey(sel) // the resolver's key too
}

// validName reports whether n, a normalized name, is a DNS name of at most
// maxNameLen bytes: non-empty labels of [-a-z0-9_] (and '*' when pattern)
// separated by dots, the root excluded.
func validName(n string, pattern bool) bool {
	if len(n) < 2 || len(n) > maxNameLen {
		return false
	}
	label := 0
	for i := 0; i < len(n); i++ {
		c := n[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		case isDNSChar(c), pattern && c == '*':
			label++
		default:
			return false
		}
	}
	return true
}
