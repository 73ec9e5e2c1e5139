package fqdn

import (
	"errors"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/policy/api"
)

func TestMatch(t *testing.T) {
	name := func(s string) api.FQDNSelector { return api.FQDNSelector{MatchName: s} }
	pat := func(s string) api.FQDNSelector { return api.FQDNSelector{MatchPattern: s} }
	cases := []struct {
		sel   api.FQDNSelector
		name  string
		match bool
	}{
		{pat("*.example.com"), "a.example.com.", true},
		{pat("*.example.com"), "a.example.com", true},
		{pat("*.example.com"), "A.Example.COM", true},
		{pat("*.example.com"), "example.com", false},
		{pat("*.example.com"), "a.b.example.com", false},
		{pat("*.example.com"), "aexample.com", false},
		{pat("*.example.com"), "a.example.com.evil.org", false},
		{pat("*.example.com"), "a.example.org", false},
		{pat("*.example.com"), "_srv-1.example.com", true},
		{pat("*.example.com"), ".example.com", true}, // the star may be empty (the cache never holds a name with an empty label)
		{pat("*"), "example.com", true},
		{pat("*"), "a.b.c.d.", true},
		{pat("*."), "x", true},
		{pat("sub*.example.com"), "sub.example.com", true},
		{pat("sub*.example.com"), "sub1.example.com", true},
		{pat("sub*.example.com"), "SUB-a_b.example.com.", true},
		{pat("sub*.example.com"), "su.example.com", false},
		{pat("sub*.example.com"), "sub.a.example.com", false},
		{pat("sub*.example.com"), "xsub.example.com", false},
		{pat("*.*.example.com"), "a.b.example.com", true},
		{pat("*.*.example.com"), "a.example.com", false},
		{pat("a*b.example.com"), "ab.example.com", true},
		{pat("a*b.example.com"), "a-x-b.example.com", true},
		{pat("*.example.com"), "a+b.example.com", false}, // '+' is not a DNS character
		{pat("example.com"), "example.com", true},
		{pat("example.com"), "exampleXcom", false}, // the dot is quoted
		{name("example.com"), "example.com", true},
		{name("example.com"), "EXAMPLE.com.", true},
		{name("Example.COM."), "example.com", true},
		{name("example.com"), "a.example.com", false},
		{name("example.com"), "example.co", false},
		{name("example.com"), "example.com..", true}, // Normalize collapses trailing dots
		{name("example.com"), "", false},
	}
	for _, c := range cases {
		m, err := Compile(c.sel)
		if err != nil {
			t.Fatalf("Compile(%+v): %v", c.sel, err)
		}
		if got := m.Match(c.name); got != c.match {
			t.Errorf("%s Match(%q) = %v, want %v", m, c.name, got, c.match)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	cases := []struct {
		sel  api.FQDNSelector
		want string // in the error
	}{
		{api.FQDNSelector{}, "needs matchName or matchPattern"},
		{api.FQDNSelector{MatchName: "a.com", MatchPattern: "*.a.com"}, `matchName "a.com"`},
		{api.FQDNSelector{MatchName: "a b.com"}, `matchName "a b.com"`},
		{api.FQDNSelector{MatchName: "*.a.com"}, `matchName "*.a.com"`},
		{api.FQDNSelector{MatchName: "a..com"}, `matchName "a..com"`},
		{api.FQDNSelector{MatchName: "."}, `matchName "."`},
		{api.FQDNSelector{MatchName: "é.com"}, `matchName "é.com"`},
		{api.FQDNSelector{MatchName: strings.Repeat("a.", 128)}, "matchName"},
		{api.FQDNSelector{MatchPattern: "(a|b).com"}, `matchPattern "(a|b).com"`},
		{api.FQDNSelector{MatchPattern: "a.*.com?"}, `matchPattern "a.*.com?"`},
	}
	for _, c := range cases {
		m, err := Compile(c.sel)
		if err == nil {
			t.Errorf("Compile(%+v) = %s, want an error", c.sel, m)
			continue
		}
		if !errors.Is(err, ErrBadSelector) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Compile(%+v) error %q: want ErrBadSelector naming %q", c.sel, err, c.want)
		}
	}
}

func TestNormalize(t *testing.T) {
	long := strings.Repeat("a", 300)
	for in, want := range map[string]string{
		"":              ".",
		".":             ".",
		"...":           ".",
		"example.com":   "example.com.",
		"Example.COM":   "example.com.",
		"example.com.":  "example.com.",
		"example.com..": "example.com.",
		"ÉXAMPLE.com":   "Éxample.com.", // non-ASCII bytes are kept as they are
		"\xff\x00A":     "\xff\x00a.",
		long:            long + ".",
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSelectorKey(t *testing.T) {
	for sel, want := range map[api.FQDNSelector]string{
		{MatchName: "Example.COM"}:      "fqdn:name:example.com.",
		{MatchName: "example.com."}:     "fqdn:name:example.com.",
		{MatchPattern: "*.Example.com"}: "fqdn:pattern:*.example.com.",
		{MatchPattern: "*"}:             "fqdn:pattern:*.",
	} {
		if got := SelectorKey(sel); got != want {
			t.Errorf("SelectorKey(%+v) = %q, want %q", sel, got, want)
		}
	}
}

// Every name the policy validator accepts (at most 253 characters, 63 per
// label) compiles: a valid policy never leaves a selector unusable.
func TestCompileAcceptsLongestValidName(t *testing.T) {
	label := strings.Repeat("a", 63)
	name := label + "." + label + "." + label + "." + strings.Repeat("b", 61) // 253
	if len(name) != 253 {
		t.Fatalf("test name is %d long", len(name))
	}
	for _, sel := range []api.FQDNSelector{{MatchName: name}, {MatchName: name + "."}, {MatchPattern: "*" + name[1:]}} {
		if _, err := Compile(sel); err != nil {
			t.Errorf("Compile(%+v): %v", sel, err)
		}
	}
}
