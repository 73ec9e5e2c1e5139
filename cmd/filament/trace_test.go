package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/policy"
	policyapi "github.com/filament-net/filament/agent/policy/api"
)

// runTrace runs `filament policy trace args` against an agent whose
// resolver answers res (the seeds' example on ingress when L7).
func runTrace(t *testing.T, res policy.TraceResult, args ...string) (string, error) {
	t.Helper()
	s := &api.Server{Endpoints: oneEndpoint{}, Trace: func(labels.Labels, labels.Labels, uint8, uint16) policy.TraceResult { return res }}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	if err := s.Serve(sock); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	var out bytes.Buffer
	root := newRoot(&out)
	root.SetArgs(append([]string{"--socket", sock, "policy", "trace", "--src", "app=web", "--dst", "app=db", "--dport", "80"}, args...))
	err := root.Execute()
	return out.String(), err
}

var seedsL7 = policy.TraceResult{Verdict: policy.VerdictAllowed, Reason: "egress of src: not enforced; ingress of dst: allowed by default/l7 rule 0 ingress[0]",
	Rule: &policy.RuleRef{Policy: "default/l7", Section: "ingress[0]"}, Enforced: true, Proxy: true,
	L7: []policy.TraceL7{{Side: "ingress of dst", Rules: []policy.TraceHTTPRule{
		{Ref: "default/l7/rules[0].ingress[0].toPorts[0]", PortRuleHTTP: policyapi.PortRuleHTTP{Method: "GET", Path: "/public/.*"}},
		{Ref: "default/l7/rules[0].ingress[0].toPorts[0]", PortRuleHTTP: policyapi.PortRuleHTTP{Path: "/healthz", Headers: []string{"X-Probe"},
			HeaderMatches: []policyapi.HeaderMatch{{Name: "X-Team", Value: "ops", Mismatch: "LOG"}}}},
	}}}}

// fields is a table's output with runs of blanks squeezed.
func fields(s string) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return strings.Join(lines, "\n")
}

// The table shows the proxy, each L7 side's rules and, with --http-*, the
// request's verdict; -o json carries them as the wire types.
func TestTraceL7Output(t *testing.T) {
	out, err := runTrace(t, seedsL7, "--http-method", "POST", "--http-path", "/public/a", "--http-host", "db")
	want := `Verdict: allowed
Reason: egress of src: not enforced; ingress of dst: allowed by default/l7 rule 0 ingress[0]
Rule: default/l7 rule 0 ingress[0]
L7 proxy: yes: requests go through the node's L7 proxy
HTTP rules, ingress of dst: method=GET path=/public/.* default/l7/rules[0].ingress[0].toPorts[0]
path=/healthz header="X-Probe" headerMatch="X-Team: ops"/LOG default/l7/rules[0].ingress[0].toPorts[0]
Request: POST /public/a (host db)
Request verdict: denied (403 from the proxy; a gRPC call: PERMISSION_DENIED): ingress of dst: no HTTP rule matches`
	if err != nil || fields(out) != want {
		t.Fatalf("table: %v\n%s\nwant\n%s", err, fields(out), want)
	}

	out, err = runTrace(t, seedsL7, "--http-path", "/healthz", "--http-header", "X-Probe: 1")
	if err != nil || !strings.Contains(fields(out), "Request verdict: allowed: ingress of dst: matches default/l7/rules[0].ingress[0].toPorts[0].rules.http[1]") ||
		!strings.Contains(fields(out), "Header action, ingress of dst: headerMatches LOG: X-Team ops") {
		t.Fatalf("allowed: %v\n%s", err, out)
	}

	out, err = runTrace(t, seedsL7, "--http-method", "GET", "--http-path", "/public/a", "-o", "json")
	for _, s := range []string{`"proxy": true`, `"l7": [`, `"ref": "default/l7/rules[0].ingress[0].toPorts[0]"`, `"http": {`, `"verdict": "allowed"`} {
		if err != nil || !strings.Contains(out, s) {
			t.Fatalf("json lacks %s: %v\n%s", s, err, out)
		}
	}

	// A bad parameter: the agent's error names it.
	if _, err := runTrace(t, seedsL7, "--http-path", "public"); err == nil || !strings.Contains(err.Error(), "httpPath") {
		t.Fatalf("bad path: %v", err)
	}

	// An allowed flow without HTTP rules says it does not go through the proxy.
	out, err = runTrace(t, policy.TraceResult{Verdict: policy.VerdictAllowed, Reason: "not enforced"})
	if err != nil || !strings.Contains(fields(out), "L7 proxy: no (no HTTP rules apply)") || strings.Contains(out, "Request") {
		t.Fatalf("no proxy: %v\n%s", err, out)
	}
}
