package proxy

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/filament-net/filament/agent/fqdn"
	"github.com/filament-net/filament/agent/policy/api"
)

// Directions of a PortPolicy.
const (
	Ingress = "ingress"
	Egress  = "egress"
)

// WorldIdentity is the identity of an address the IPCache does not know.
const WorldIdentity uint32 = 2

// maxIdentity bounds identities: 24 bits of cluster and number, and the
// local-scope flag (bit 24) of CIDR identities.
const maxIdentity = 1<<25 - 1

// Config is the proxy's whole configuration; SetConfig replaces the
// previous one entirely.
type Config struct {
	// Revision is the sender's number for this config (reported back).
	Revision uint64         `json:"revision"`
	Policies []PortPolicy   `json:"policies"`
	IPCache  []IPCacheEntry `json:"ipcache"`
	// FQDNs are the toFQDNs selectors in force: allowed DNS answers for
	// names they match are reported to the agent and held until it has
	// applied them; others go straight back.
	FQDNs []DNSRule `json:"fqdns,omitempty"`
}

// PortPolicy is the L7 policy of one local endpoint, direction and port.
type PortPolicy struct {
	Endpoint  netip.Addr  `json:"endpoint"`  // a local pod's address
	Direction string      `json:"direction"` // "ingress" or "egress"
	Port      uint16      `json:"port"`
	Protocol  string      `json:"protocol"`       // "TCP", or "UDP" for DNS
	Kind      string      `json:"kind,omitempty"` // "http" (the default), "dns" or "kafka"
	Rules     []PeerRules `json:"rules"`
}

// Kinds of a PortPolicy.
const (
	KindHTTP  = "http"
	KindDNS   = "dns"
	KindKafka = "kafka"
)

// PeerRules are the HTTP, DNS or Kafka rules that apply to some peers.
// Remotes are the peers' identities (empty: any peer); HTTP (DNS, Kafka)
// empty lets every request (query) of those peers through (a peer allowed
// at L4 on an L7 port).
type PeerRules struct {
	Remotes []uint32    `json:"remotes,omitempty"`
	HTTP    []HTTPRule  `json:"http"`
	DNS     []DNSRule   `json:"dns,omitempty"`
	Kafka   []KafkaRule `json:"kafka,omitempty"`
}

// KafkaRule allows Kafka requests, as CiliumNetworkPolicy's rules.kafka: by
// Role ("produce" or "consume") or by APIKey (a Kafka API key name in lower
// case as in the policy: "produce", "fetch", "metadata", "apiversions",
// ...), optionally only APIVersion (decimal), ClientID and Topic. Empty
// fields match anything.
type KafkaRule struct {
	Role       string `json:"role,omitempty"`
	APIKey     string `json:"apiKey,omitempty"`
	APIVersion string `json:"apiVersion,omitempty"`
	ClientID   string `json:"clientID,omitempty"`
	Topic      string `json:"topic,omitempty"`
}

// DNSRule allows the lookups of one name (MatchName) or of the names a
// pattern matches (MatchPattern: `*` is any run of DNS name characters but
// '.', a lone `*` every name), case-insensitively, as in Cilium.
type DNSRule struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

// IPCacheEntry maps a prefix to an identity; the longest prefix wins.
type IPCacheEntry struct {
	Prefix   netip.Prefix `json:"prefix"`
	Identity uint32       `json:"identity"`
}

// policyKey names the PortPolicy that applies to one side of a connection.
type policyKey struct {
	endpoint  netip.Addr
	direction string
	port      uint16
	protocol  string
}

type peerRules struct {
	remotes map[uint32]bool // nil: any
	rules   []*rule         // empty: all requests
	dns     []*fqdn.Matcher // the same for DNS queries
	kafka   []kafkaRule     // the same for Kafka requests
}

// compiled is a validated Config, ready for lookups; it is never changed
// once built.
type compiled struct {
	cfg      Config
	policies map[policyKey][]peerRules
	kinds    map[policyKey]string
	fqdns    []*fqdn.Matcher
	lengths  []int                           // prefix lengths present, longest first
	ipcache  map[int]map[netip.Prefix]uint32 // by prefix length
}

// compile validates cfg; an error names the first bad field.
func compile(cfg Config) (*compiled, error) {
	c := &compiled{cfg: cfg, policies: map[policyKey][]peerRules{}, kinds: map[policyKey]string{}, ipcache: map[int]map[netip.Prefix]uint32{}}
	for i, p := range cfg.Policies {
		field := fmt.Sprintf("policies[%d]", i)
		if !p.Endpoint.IsValid() {
			return nil, fmt.Errorf("%w: %s.endpoint: missing", ErrInvalid, field)
		}
		if p.Direction != Ingress && p.Direction != Egress {
			return nil, fmt.Errorf("%w: %s.direction %q: want ingress or egress", ErrInvalid, field, p.Direction)
		}
		if p.Port == 0 {
			return nil, fmt.Errorf("%w: %s.port: missing", ErrInvalid, field)
		}
		kind := cmp.Or(p.Kind, KindHTTP)
		switch {
		case kind != KindHTTP && kind != KindDNS && kind != KindKafka:
			return nil, fmt.Errorf("%w: %s.kind %q: want http, dns or kafka", ErrInvalid, field, p.Kind)
		case p.Protocol != "TCP" && p.Protocol != "UDP":
			return nil, fmt.Errorf("%w: %s.protocol %q: want TCP or UDP", ErrInvalid, field, p.Protocol)
		case p.Protocol == "UDP" && kind != KindDNS:
			return nil, fmt.Errorf("%w: %s.protocol %q: only DNS is proxied over UDP", ErrInvalid, field, p.Protocol)
		}
		key := policyKey{p.Endpoint.Unmap(), p.Direction, p.Port, p.Protocol}
		if k, ok := c.kinds[key]; ok && k != kind {
			return nil, fmt.Errorf("%w: %s.kind %q: the port's other policy is %s", ErrInvalid, field, kind, k)
		}
		c.kinds[key] = kind
		for j, pr := range p.Rules {
			field := fmt.Sprintf("%s.rules[%d]", field, j)
			var out peerRules
			for k, id := range pr.Remotes {
				if id == 0 || id > maxIdentity {
					return nil, fmt.Errorf("%w: %s.remotes[%d] %d: not an identity", ErrInvalid, field, k, id)
				}
				if out.remotes == nil {
					out.remotes = map[uint32]bool{}
				}
				out.remotes[id] = true
			}
			if err := checkRuleKinds(field, kind, pr); err != nil {
				return nil, err
			}
			for k, hr := range pr.HTTP {
				r, err := compileRule(fmt.Sprintf("%s.http[%d]", field, k), hr)
				if err != nil {
					return nil, err
				}
				out.rules = append(out.rules, r)
			}
			for k, dr := range pr.DNS {
				m, err := fqdn.Compile(api.FQDNSelector(dr))
				if err != nil {
					return nil, fmt.Errorf("%w: %s.dns[%d]: %w", ErrInvalid, field, k, err)
				}
				out.dns = append(out.dns, m)
			}
			for k, kr := range pr.Kafka {
				r, err := compileKafkaRule(fmt.Sprintf("%s.kafka[%d]", field, k), kr)
				if err != nil {
					return nil, err
				}
				out.kafka = append(out.kafka, r)
			}
			// Policies on the same endpoint, direction and port are OR'd.
			c.policies[key] = append(c.policies[key], out)
		}
		if _, ok := c.policies[key]; !ok {
			c.policies[key] = nil // an L7 port nobody may use
		}
	}
	for i, r := range cfg.FQDNs {
		m, err := fqdn.Compile(api.FQDNSelector(r))
		if err != nil {
			return nil, fmt.Errorf("%w: fqdns[%d]: %w", ErrInvalid, i, err)
		}
		c.fqdns = append(c.fqdns, m)
	}
	for i, e := range cfg.IPCache {
		field := fmt.Sprintf("ipcache[%d]", i)
		if !e.Prefix.IsValid() {
			return nil, fmt.Errorf("%w: %s.prefix: missing", ErrInvalid, field)
		}
		if e.Prefix.Masked() != e.Prefix {
			return nil, fmt.Errorf("%w: %s.prefix %s: host bits set", ErrInvalid, field, e.Prefix)
		}
		if e.Identity == 0 || e.Identity > maxIdentity {
			return nil, fmt.Errorf("%w: %s.identity %d: not an identity", ErrInvalid, field, e.Identity)
		}
		p := unmapPrefix(e.Prefix)
		bits := p.Bits()
		if p.Addr().Is6() {
			bits += 1000 // keep the families apart
		}
		m := c.ipcache[bits]
		if m == nil {
			m = map[netip.Prefix]uint32{}
			c.ipcache[bits] = m
			c.lengths = append(c.lengths, bits)
		}
		if _, dup := m[p]; dup {
			return nil, fmt.Errorf("%w: %s.prefix %s: listed twice", ErrInvalid, field, e.Prefix)
		}
		m[p] = e.Identity
	}
	slices.SortFunc(c.lengths, func(a, b int) int { return cmp.Compare(b, a) })
	return c, nil
}

// checkRuleKinds tells whether the rules of pr are all of the port's kind.
func checkRuleKinds(field, kind string, pr PeerRules) error {
	for _, c := range []struct {
		kind, name string
		n          int
	}{{KindHTTP, "http", len(pr.HTTP)}, {KindDNS, "dns", len(pr.DNS)}, {KindKafka, "kafka", len(pr.Kafka)}} {
		if c.n > 0 && kind != c.kind {
			return fmt.Errorf("%w: %s.%s: %s port has no %s rules", ErrInvalid, field, c.name, article(kindName(kind)), kindName(c.kind))
		}
	}
	return nil
}

func article(name string) string {
	if name == "HTTP" {
		return "an " + name
	}
	return "a " + name
}

func kindName(kind string) string {
	if kind == KindKafka {
		return "Kafka"
	}
	return strings.ToUpper(kind)
}

func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

// identity returns the identity of addr: its longest IPCache prefix's, or
// world.
func (c *compiled) identity(addr netip.Addr) uint32 {
	addr = addr.Unmap()
	for _, bits := range c.lengths {
		b := bits
		if addr.Is6() {
			if bits < 1000 {
				continue
			}
			b -= 1000
		} else if bits >= 1000 {
			continue
		}
		p, err := addr.Prefix(b)
		if err != nil {
			continue
		}
		if id, ok := c.ipcache[bits][p]; ok {
			return id
		}
	}
	return WorldIdentity
}

// side is one policy that applies to a connection.
type side struct {
	direction string
	endpoint  netip.Addr
	remote    uint32 // the other side's identity
	kind      string // KindHTTP, KindDNS or KindKafka
	peers     []peerRules
}

// sides returns the policies that apply to a TCP connection from src to
// dst: the source endpoint's egress policy first, then the destination's
// ingress policy.
func (c *compiled) sides(src, dst netip.AddrPort, srcID uint32) []side {
	return c.sidesOf(src, dst, srcID, "TCP")
}

// sidesOf is sides for protocol ("TCP" or "UDP").
func (c *compiled) sidesOf(src, dst netip.AddrPort, srcID uint32, protocol string) []side {
	var out []side
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	if k := (policyKey{s, Egress, dst.Port(), protocol}); c.kinds[k] != "" {
		out = append(out, side{Egress, s, c.identity(d), c.kinds[k], c.policies[k]})
	}
	if k := (policyKey{d, Ingress, dst.Port(), protocol}); c.kinds[k] != "" {
		out = append(out, side{Ingress, d, srcID, c.kinds[k], c.policies[k]})
	}
	return out
}

// hasPolicy tells whether a port policy applies to a TCP connection from
// src to dst (sidesOf's keys). A NodePort connection steered here
// untranslated (to a node's address, from outside the cluster) never
// has one until its backend takes dst's place.
func (c *compiled) hasPolicy(src, dst netip.AddrPort) bool {
	if c == nil {
		return false
	}
	return c.kinds[policyKey{src.Addr().Unmap(), Egress, dst.Port(), "TCP"}] != "" ||
		c.kinds[policyKey{dst.Addr().Unmap(), Ingress, dst.Port(), "TCP"}] != ""
}

// wantsName tells whether a toFQDNs selector matches name (its answers'
// addresses are learned).
func (c *compiled) wantsName(name string) bool {
	for _, m := range c.fqdns {
		if m.Match(name) {
			return true
		}
	}
	return false
}

// portPolicies are the config's port policies for a TCP connection from
// src to dst (the source's egress, the destination's ingress), each as
// JSON, to compare two configs.
func (c *compiled) portPolicies(src, dst netip.AddrPort) []string {
	var out []string
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	for _, pp := range c.cfg.Policies {
		if pp.Port == dst.Port() && pp.Protocol == "TCP" &&
			(pp.Direction == Egress && pp.Endpoint.Unmap() == s || pp.Direction == Ingress && pp.Endpoint.Unmap() == d) {
			b, _ := json.Marshal(pp)
			out = append(out, string(b))
		}
	}
	return out
}

// allowDNS tells whether the side lets a query for name through.
func (sd side) allowDNS(name string) bool {
	for _, p := range sd.peers {
		if p.remotes != nil && !p.remotes[sd.remote] {
			continue
		}
		if len(p.dns) == 0 {
			return true
		}
		for _, m := range p.dns {
			if m.Match(name) {
				return true
			}
		}
	}
	return false
}

// allow finds the first rule of the side that lets req through, and the
// header actions it asks for.
func (sd side) allow(req *http.Request) (ok bool, acts []HeaderMatch) {
	if sd.kind != KindHTTP {
		return false, nil // a DNS port carries no HTTP
	}
	for _, p := range sd.peers {
		if p.remotes != nil && !p.remotes[sd.remote] {
			continue
		}
		if len(p.rules) == 0 {
			return true, nil
		}
		for _, r := range p.rules {
			if ok, acts := r.match(req); ok {
				return true, acts
			}
		}
	}
	return false, nil
}
