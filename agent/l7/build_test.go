package l7

import (
	"net/netip"
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
