package policy

import (
	"encoding/json"
	"testing"

	"github.com/filament-net/filament/agent/policy/api"
)

// `policy trace -o json` prints camelCase keys like every other listing.
func TestTraceResultJSONKeys(t *testing.T) {
	r := TraceResult{Verdict: VerdictDenied, Reason: "ingress of dst: denied", Enforced: true,
		Rule: &RuleRef{Policy: "default/deny-db", Rule: 1, Section: "ingressDeny[0]"}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"verdict":"denied","reason":"ingress of dst: denied","rule":{"policy":"default/deny-db","rule":1,"section":"ingressDeny[0]"},"enforced":true}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	var back TraceResult
	if err := json.Unmarshal(b, &back); err != nil || back.Rule == nil || *back.Rule != *r.Rule || back.Verdict != r.Verdict || !back.Enforced {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	// A default verdict has no rule: the key is omitted, not null.
	b, _ = json.Marshal(TraceResult{Verdict: VerdictAllowed, Reason: "not enforced"})
	if string(b) != `{"verdict":"allowed","reason":"not enforced","enforced":false}` {
		t.Fatalf("default verdict: %s", b)
	}
}

// The L7 part: camelCase, each rule flat beside its ref.
func TestTraceResultL7JSON(t *testing.T) {
	r := TraceResult{Verdict: VerdictAllowed, Reason: "r", Enforced: true, Proxy: true, L7: []TraceL7{{Side: "ingress of dst",
		Rules: []TraceHTTPRule{{Ref: "default/l7/rules[0].ingress[0].toPorts[0]", PortRuleHTTP: api.PortRuleHTTP{Method: "GET", Path: "/public/.*",
			HeaderMatches: []api.HeaderMatch{{Name: "X-Team", Value: "ops", Mismatch: "LOG"}}}}}}}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"verdict":"allowed","reason":"r","enforced":true,"proxy":true,"l7":[{"side":"ingress of dst","rules":[` +
		`{"ref":"default/l7/rules[0].ingress[0].toPorts[0]","method":"GET","path":"/public/.*","headerMatches":[{"mismatch":"LOG","name":"X-Team","value":"ops"}]}]}]}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
}
