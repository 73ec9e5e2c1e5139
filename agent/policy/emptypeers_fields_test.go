package policy

import (
	"encoding/json"
	"testing"

	"github.com/filament-net/filament/agent/policy/api"
)

// toFQDNs, toGroups and toServices present but empty select nothing, as
// every other peer field does: until 2026-12-07 an empty one (a template's
// list that rendered empty) left a ports-only section that allowed every
// peer, the world included, on its ports (found by a review). The empty
// list survives the policy's JSON (how it is stored).
func TestEmptyPeerFieldsSelectNothing(t *testing.T) {
	for _, field := range []string{"toFQDNs", "toGroups", "toServices", "toEndpoints"} {
		var rule api.EgressRule
		if err := json.Unmarshal([]byte(`{"`+field+`":[],"toPorts":[{"ports":[{"port":"443","protocol":"TCP"}]}]}`), &rule); err != nil {
			t.Fatal(err)
		}
		stored, err := json.Marshal(rule)
		if err != nil {
			t.Fatal(err)
		}
		var back api.EgressRule
		if err := json.Unmarshal(stored, &back); err != nil {
			t.Fatal(err)
		}
		for name, rule := range map[string]api.EgressRule{"as written": rule, "as stored " + string(stored): back} {
			pols := []api.Policy{rsPol("p", api.Rule{EndpointSelector: rsSel("app=client"), Egress: []api.EgressRule{rule}})}
			r := rsWorld{endpoints: []EndpointInfo{{ID: 1, Labels: rsLabels(t, "app=client")}}}.build(ModeDefault, pols)
			if allowed, _ := dpVerdict(mustEP(t, r, 1), Egress, 2 /* world */, 6, 443); allowed {
				t.Errorf("%s: [] %s: the endpoint reaches world:443", field, name)
			}
		}
	}
}
