package l7

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/proxy"
)

// DNS rules become a dns port policy per protocol; HTTP and DNS rules on
// one port (from two rules) keep the first kind and leave the other out,
// so the proxy accepts the node's configuration instead of refusing it
// whole.
func TestBuildDNSAndKindConflict(t *testing.T) {
	eps := map[uint16]Endpoint{1: {IP: netip.MustParseAddr("10.244.0.3"), Identity: 65793}}
	dns := []api.PortRuleDNS{{MatchPattern: "*.example.com"}}
	pols := []policy.L7Policy{
		{Endpoint: 1, Dir: policy.Egress, Proto: 17, Port: 53, Identity: 0, Refs: []string{"a"}, DNS: dns},
		{Endpoint: 1, Dir: policy.Egress, Proto: 6, Port: 53, Identity: 0, Refs: []string{"a"}, DNS: dns},
		{Endpoint: 1, Dir: policy.Egress, Proto: 6, Port: 53, Identity: identity.NumericIdentity(65800), Refs: []string{"b"},
			HTTP: []api.PortRuleHTTP{{Method: "GET"}}},
	}
	cfg := Build(pols, eps, nil)
	if len(cfg.Policies) != 2 {
		t.Fatalf("policies %+v, want UDP and TCP 53", cfg.Policies)
	}
	for _, p := range cfg.Policies {
		if p.Kind != proxy.KindDNS || len(p.Rules) != 1 || len(p.Rules[0].DNS) != 1 || len(p.Rules[0].HTTP) != 0 {
			t.Errorf("port policy %+v, want one DNS rule set", p)
		}
	}
	if err := proxy.New(proxy.Options{}).SetConfig(cfg); err != nil {
		t.Fatalf("the proxy refuses the built config: %v", err)
	}
}

// Kafka rules become a kafka port policy the proxy accepts.
func TestBuildKafka(t *testing.T) {
	eps := map[uint16]Endpoint{1: {IP: netip.MustParseAddr("10.244.0.3"), Identity: 65793}}
	pols := []policy.L7Policy{{Endpoint: 1, Dir: policy.Ingress, Proto: 6, Port: 9092, Identity: identity.NumericIdentity(65800), Refs: []string{"k"},
		Kafka: []api.PortRuleKafka{{Role: "produce", Topic: "topic1"}}}}
	cfg := Build(pols, eps, nil)
	if len(cfg.Policies) != 1 || cfg.Policies[0].Kind != proxy.KindKafka || len(cfg.Policies[0].Rules[0].Kafka) != 1 {
		t.Fatalf("policies %+v, want one kafka port policy", cfg.Policies)
	}
	if err := proxy.New(proxy.Options{}).SetConfig(cfg); err != nil {
		t.Fatalf("the proxy refuses the built config: %v", err)
	}
}

// Two kinds merged into one entry (two policies, one peer and port): the
// built config keeps one kind and the proxy accepts it.
func TestBuildMixedKindsInOneEntry(t *testing.T) {
	eps := map[uint16]Endpoint{1: {IP: netip.MustParseAddr("10.244.0.3"), Identity: 65793}}
	pols := []policy.L7Policy{{Endpoint: 1, Dir: policy.Ingress, Proto: 6, Port: 9092, Identity: 0, Refs: []string{"a", "b"},
		HTTP: []api.PortRuleHTTP{{Method: "GET"}}, Kafka: []api.PortRuleKafka{{Role: "produce"}}}}
	cfg := Build(pols, eps, nil)
	if len(cfg.Policies) != 1 || len(cfg.Policies[0].Rules[0].HTTP) != 0 || len(cfg.Policies[0].Rules[0].Kafka) != 1 {
		t.Fatalf("policies %+v, want the kafka rules only", cfg.Policies)
	}
	if err := proxy.New(proxy.Options{}).SetConfig(cfg); err != nil {
		t.Fatalf("the proxy refuses the built config: %v", err)
	}
}

// The builder encodes the ipcache part again only when its generation or
// the endpoints change (the same generation is promised to mean the same
// map), the policies every time; it says changed when the proxy lacks
// what it built.
func TestBuilderReusesIPCachePart(t *testing.T) {
	eps := map[uint16]Endpoint{1: {IP: netip.MustParseAddr("10.244.0.3"), Identity: 65793}}
	var pols []policy.L7Policy
	ipc := map[netip.Prefix]identity.NumericIdentity{netip.MustParsePrefix("10.1.0.1/32"): 70}
	gen := uint64(1)
	c := Config{
		Policies:  func() []policy.L7Policy { return pols },
		Endpoints: func() map[uint16]Endpoint { return maps.Clone(eps) },
		IPCache:   func() (map[netip.Prefix]identity.NumericIdentity, uint64) { return ipc, gen },
	}
	var b builder
	decode := func(body []byte) proxy.Config {
		t.Helper()
		var cfg proxy.Config
		if err := json.Unmarshal(body, &cfg); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	step := func(what string, wantChanged bool, wantIPCache int) proxy.Config {
		t.Helper()
		body, changed := b.build(c)
		if changed != wantChanged {
			t.Fatalf("%s: changed %v, want %v", what, changed, wantChanged)
		}
		cfg := decode(body)
		if len(cfg.IPCache) != wantIPCache {
			t.Fatalf("%s: %d ipcache entries, want %d: %+v", what, len(cfg.IPCache), wantIPCache, cfg.IPCache)
		}
		if changed {
			b.pushed = true
		}
		return cfg
	}
	step("first", true, 2)
	step("nothing changed", false, 2)
	// Same generation, other content: not listed again (by its promise).
	ipc = map[netip.Prefix]identity.NumericIdentity{netip.MustParsePrefix("10.1.0.1/32"): 70, netip.MustParsePrefix("10.1.0.2/32"): 71}
	step("same generation", false, 2)
	gen = 2
	step("new generation", true, 3)
	eps[2] = Endpoint{IP: netip.MustParseAddr("10.244.0.4"), Identity: 65794}
	step("new endpoint", true, 4)
	pols = []policy.L7Policy{{Endpoint: 1, Dir: policy.Ingress, Proto: 6, Port: 80, HTTP: []api.PortRuleHTTP{{Method: "GET"}}}}
	if cfg := step("new policy", true, 4); len(cfg.Policies) != 1 {
		t.Fatalf("policies %+v", cfg.Policies)
	}
	step("nothing changed again", false, 4)
	b.pushed = false // the proxy was started again
	step("proxy restarted", true, 4)
	// Generation 0 (unknown): listed every time.
	gen = 0
	ipc[netip.MustParsePrefix("10.1.0.3/32")] = 72
	step("unknown generation", true, 5)
	delete(ipc, netip.MustParsePrefix("10.1.0.3/32"))
	step("unknown generation, entry gone", true, 4)
}

// An HTTP rule the proxy cannot take (a header value with a control
// character, stored before the API refused it) is left out, failing
// closed for its peer, and the proxy takes the rest of the node's
// configuration: before, the proxy refused it whole and every
// namespace's L7 and DNS rules on the node stayed as they were.
func TestBuildLeavesOutRulesTheProxyRefuses(t *testing.T) {
	eps := map[uint16]Endpoint{
		1: {IP: netip.MustParseAddr("10.244.0.3"), Identity: 65793},
		2: {IP: netip.MustParseAddr("10.244.0.4"), Identity: 65794},
	}
	pols := []policy.L7Policy{
		{Endpoint: 1, Dir: policy.Ingress, Proto: 6, Port: 80, Identity: 0, Refs: []string{"tenant/bad"},
			HTTP: []api.PortRuleHTTP{{HeaderMatches: []api.HeaderMatch{{Name: "X-A", Value: "a\x01b"}}}}},
		{Endpoint: 2, Dir: policy.Ingress, Proto: 6, Port: 80, Identity: 0, Refs: []string{"other/good"},
			HTTP: []api.PortRuleHTTP{{Method: "GET"}}},
	}
	cfg := Build(pols, eps, nil)
	if err := proxy.New(proxy.Options{}).SetConfig(cfg); err != nil {
		t.Fatalf("the proxy refuses the built config: %v", err)
	}
	for _, p := range cfg.Policies {
		switch {
		case p.Endpoint == eps[1].IP && len(p.Rules) != 0:
			t.Errorf("the bad rule's port keeps peer rules %+v; want none (nothing through)", p.Rules)
		case p.Endpoint == eps[2].IP && (len(p.Rules) != 1 || len(p.Rules[0].HTTP) != 1):
			t.Errorf("the good rule's port: %+v", p.Rules)
		}
	}
}

// One set of rules over many identities is one peer rule listing them,
// not a copy per identity: found 2026-12-06 by reading Policies, one
// tenant's large rules.http over many identities (toEntities: cluster, or
// toFQDNs) took the configuration past the proxy's 64 MiB, which the
// proxy refused whole, and every tenant's L7 policy on the node froze at
// its last accepted version. Identities with other rules, and the any
// peer, keep rules of their own.
func TestPoliciesShareRulesAcrossIdentities(t *testing.T) {
	eps := map[uint16]Endpoint{1: {IP: netip.MustParseAddr("10.244.0.3"), Identity: 65793}}
	big := make([]api.PortRuleHTTP, 2000)
	for i := range big {
		big[i] = api.PortRuleHTTP{Method: "GET", Path: fmt.Sprintf("/p%d/.*", i)}
	}
	var pols []policy.L7Policy
	pols = append(pols, policy.L7Policy{Endpoint: 1, Dir: policy.Ingress, Proto: 6, Port: 80, Refs: []string{"t/any"}, HTTP: big[:1]})
	for id := 0; id < 500; id++ {
		pols = append(pols, policy.L7Policy{Endpoint: 1, Dir: policy.Ingress, Proto: 6, Port: 80, Identity: identity.NumericIdentity(70000 + id), Refs: []string{"t/big"}, HTTP: big})
	}
	pols = append(pols, policy.L7Policy{Endpoint: 1, Dir: policy.Ingress, Proto: 6, Port: 80, Identity: 90000, Refs: []string{"t/big", "t/other"}, HTTP: big[:2]})
	ps := Policies(pols, eps)
	if len(ps) != 1 || len(ps[0].Rules) != 3 {
		t.Fatalf("port policies %d, peer rules %d; want 1 and 3 (the any peer, the 500 sharing, the other)", len(ps), len(ps[0].Rules))
	}
	r := ps[0].Rules
	if r[0].Remotes != nil || len(r[1].Remotes) != 500 || len(r[1].HTTP) != len(big) || !slices.Equal(r[2].Remotes, []uint32{90000}) || len(r[2].HTTP) != 2 {
		t.Errorf("peer rules: any %v; shared %d remotes, %d rules; other %v, %d rules", r[0].Remotes, len(r[1].Remotes), len(r[1].HTTP), r[2].Remotes, len(r[2].HTTP))
	}
	cfg := Build(pols, eps, nil)
	if err := proxy.New(proxy.Options{}).SetConfig(cfg); err != nil {
		t.Fatalf("the proxy refuses the built config: %v", err)
	}
	if b, _ := json.Marshal(cfg); len(b) > 1<<20 {
		t.Errorf("the configuration is %d bytes for one set of rules", len(b))
	}
}
