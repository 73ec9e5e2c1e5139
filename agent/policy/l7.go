package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy/api"
)

// L7Ref names the L7 (HTTP or DNS) rules of one port rule: toPorts[PortRule] of a
// section of a rule of a policy.
type L7Ref struct {
	Policy   string
	Rule     int
	Section  string
	PortRule int
}

// String is the key MapValue.L7 lists: `policy/rules[i].section.toPorts[j]`.
func (r L7Ref) String() string {
	return fmt.Sprintf("%s/rules[%d].%s.toPorts[%d]", r.Policy, r.Rule, r.Section, r.PortRule)
}

func (r RuleRef) deny() bool { return strings.HasSuffix(strings.SplitN(r.Section, "[", 2)[0], "Deny") }

// L7Policy is the L7 policy of one endpoint, direction, protocol and port
// for one peer identity (0: any peer): a request is allowed when one of
// HTTP matches, a DNS query when one of DNS does, a Kafka request when one
// of Kafka does (a port carries one kind). Refs name where the rules come
// from.
type L7Policy struct {
	Endpoint uint16
	Dir      Direction
	Proto    uint8 // IP protocol: TCP, or UDP for DNS
	Port     uint16
	Identity identity.NumericIdentity
	Refs     []string
	HTTP     []api.PortRuleHTTP
	DNS      []api.PortRuleDNS
	Kafka    []api.PortRuleKafka
}

// L7Policies lists the L7 policies of every endpoint: one per policy map
// entry that sends flows through the proxy, sorted by endpoint, direction,
// port and identity. It is walked again only after a change (finish).
func (r *Resolver) L7Policies() []L7Policy {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.l7 == nil || r.l7Gen != r.gen {
		r.l7, r.l7Gen = r.walkL7(), r.gen
	}
	if len(r.l7) == 0 {
		return nil
	}
	return slices.Clone(r.l7)
}

// walkL7 is L7Policies' walk of every group; the caller holds r.mu.
func (r *Resolver) walkL7() []L7Policy {
	r.l7Walks++
	rules := r.l7Rules()
	var out []L7Policy
	for _, ep := range r.endpoints {
		for gk, g := range ep.groups {
			for l4, v := range g {
				if v.Deny || v.L7 == "" {
					continue
				}
				p := L7Policy{Endpoint: ep.info.ID, Dir: gk.dir, Proto: l4.Proto, Port: l4.Port, Identity: gk.id, Refs: strings.Split(v.L7, "\n")}
				for _, ref := range p.Refs {
					if r := rules[ref]; r != nil {
						p.HTTP = append(p.HTTP, r.HTTP...)
						p.DNS = append(p.DNS, r.DNS...)
						p.Kafka = append(p.Kafka, r.Kafka...)
					}
				}
				out = append(out, p)
			}
		}
	}
	slices.SortFunc(out, func(a, b L7Policy) int {
		switch {
		case a.Endpoint != b.Endpoint:
			return int(a.Endpoint) - int(b.Endpoint)
		case a.Dir != b.Dir:
			return int(a.Dir) - int(b.Dir)
		case a.Port != b.Port:
			return int(a.Port) - int(b.Port)
		case a.Proto != b.Proto:
			return int(a.Proto) - int(b.Proto)
		}
		return int(a.Identity) - int(b.Identity)
	})
	if out == nil {
		out = []L7Policy{}
	}
	return out
}

// l7Rules returns the L7 rules of every compiled policy by L7Ref key; the
// caller holds r.mu.
func (r *Resolver) l7Rules() map[string]*api.L7Rules {
	rules := map[string]*api.L7Rules{}
	for _, cp := range r.compiled {
		for k, v := range cp.l7 {
			rules[k] = v
		}
	}
	return rules
}
