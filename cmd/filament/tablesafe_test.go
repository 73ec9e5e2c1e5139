package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/policy"
	policyapi "github.com/filament-net/filament/agent/policy/api"
)

// escapeText holds C0 controls a terminal acts on (ESC sequences that
// clear the screen and set the title, BEL, CR) beside hostileText's.
const escapeText = "n1\x1b[2J\x1b[H\x1b]0;owned\x07\r\f\v" + hostileText

// rawTerminal reports the first character of s a terminal would act on,
// C0 controls but the table's own tab and newline included.
func rawTerminal(s string) string {
	for _, r := range s {
		if r < 0x20 && r != '\t' && r != '\n' {
			return string(r)
		}
	}
	return rawControls(s)
}

// Tables escape what a terminal would act on in every field, as -o json
// and -o yaml do: until 2026-12-07 they printed it raw, and a connected
// cluster's service backend node, its endpoints in a connection failure,
// or a tenant's headerMatches value in a trace's header action reached
// the operator's terminal (found by a review).
func TestTablesEscapeTerminalControls(t *testing.T) {
	var buf bytes.Buffer
	c := &cli{out: &buf, output: "table"}
	if err := c.print(nil, func(w io.Writer) {
		fmt.Fprintf(w, "NAME\tNODE\n")
		fmt.Fprintf(w, "api\t%s\n", escapeText)
	}); err != nil {
		t.Fatal(err)
	}
	if r := rawTerminal(buf.String()); r != "" {
		t.Errorf("a table printed %q raw: %q", r, buf.String())
	}
	if lines := strings.Count(buf.String(), "\n"); lines != 2 {
		t.Errorf("%d lines, want the table's 2: %q", lines, buf.String())
	}

	hm := policyapi.HeaderMatch{Name: "X-Team", Value: "ok\u009b2J\u009b1A\u202eforged", Mismatch: "REPLACE"}
	res := policy.TraceResult{Verdict: policy.VerdictAllowed, Reason: "allowed by default/l7", Enforced: true, Proxy: true,
		Rule: &policy.RuleRef{Policy: "default/l7", Section: "ingress[0]"},
		L7: []policy.TraceL7{{Side: "ingress of dst", Rules: []policy.TraceHTTPRule{
			{Ref: "default/l7/rules[0].ingress[0].toPorts[0]", PortRuleHTTP: policyapi.PortRuleHTTP{Path: "/healthz", HeaderMatches: []policyapi.HeaderMatch{hm}}}}}}}
	out, err := runTrace(t, res, "--http-path", "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "Header action") {
		t.Fatalf("no header action in the trace: %q", out)
	}
	if r := rawTerminal(out); r != "" {
		t.Errorf("policy trace printed %q raw from a tenant's policy: %q", r, out)
	}
}

// A value's tab or newline is escaped, not taken as the table's: until
// 2026-12-07 tables escaped controls but kept tabs and newlines wherever
// they came from, so a value forged cells and rows (a remote's backend
// node in an error, a label, a tenant's policy text).
func TestTableValuesCannotForgeCells(t *testing.T) {
	var buf bytes.Buffer
	c := &cli{out: &buf, output: "table"}
	if err := c.print(nil, func(w io.Writer) {
		cellf(w, "NAME\tNODE\tSTATE\n")
		cellf(w, "%s\t%s\t%-6s|\n", "api", "n1\tforged\nevil\trow", "ok")
	}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if lines := strings.Count(out, "\n"); lines != 2 {
		t.Errorf("%d lines, want the table's 2: %q", lines, out)
	}
	if !strings.Contains(out, `n1\x09forged\x0aevil\x09row`) {
		t.Errorf("the value's tab and newline not escaped: %q", out)
	}
	if !strings.Contains(out, "ok    |") {
		t.Errorf("a verb's width not kept: %q", out)
	}
}

// The command's error line escapes what a terminal would act on, its
// lines kept: a refused policy's error quotes the tenant's pattern.
func TestErrorLineEscaped(t *testing.T) {
	var b bytes.Buffer
	reportError(&b, fmt.Errorf("rules.http.path %q: %w", "(", errors.Join(errors.New("missing closing ) in `"+escapeText+"`"), errors.New("second"))))
	out := b.String()
	if c := rawTerminal(out); c != "" {
		t.Errorf("error line carries %q raw: %q", c, out)
	}
	if !strings.HasPrefix(out, "filament: rules.http.path") || strings.Count(out, "\n") != 2 {
		t.Errorf("error line %q: want the message with its two lines", out)
	}
}
