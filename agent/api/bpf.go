package api

// Views of the node's BPF maps as the kernel holds them: an endpoint's
// policy map entries (`filament bpf policy get`), the ipcache (`filament
// bpf ipcache list`) and each endpoint's enforcement flags (`filament
// endpoint get`).

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"

	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/policy"
)

// BPFMaps is what the API reads of the node's datapath maps.
type BPFMaps interface {
	// Enforcement is whether policy is enforced on the endpoint at ip,
	// ingress and egress.
	Enforcement(ip netip.Addr) (ingress, egress bool, err error)
	PolicyEntries() (map[policy.MapKey]bool, error)
	IPCache() (map[netip.Prefix]identity.NumericIdentity, error)
}

// Enforcement says whether an endpoint's policy is enforced in each
// direction (else that direction allows everything but deny rules).
type Enforcement struct {
	Ingress bool `json:"ingress"`
	Egress  bool `json:"egress"`
}

// EndpointView is an endpoint with its enforcement as the datapath's
// endpoints map holds it (absent without a datapath or before the
// endpoint is in the map).
type EndpointView struct {
	endpoint.Endpoint
	PolicyEnforcement *Enforcement `json:"policyEnforcement,omitempty"`
}

// BPFPolicyEntry is one entry of an endpoint's policy map.
type BPFPolicyEntry struct {
	Direction string                   `json:"direction"` // ingress or egress
	Identity  identity.NumericIdentity `json:"identity"`  // the peer; 0: any peer
	Labels    []string                 `json:"labels,omitempty"`
	Protocol  string                   `json:"protocol"` // ANY, TCP, UDP, SCTP, ICMP or proto-N
	PortLow   uint16                   `json:"portLow"`  // ports (ICMP: types) PortLow to PortHigh
	PortHigh  uint16                   `json:"portHigh"`
	Verdict   string                   `json:"verdict"` // allow or deny
}

// BPFIPCacheEntry is one entry of the ipcache: a prefix and its identity.
type BPFIPCacheEntry struct {
	Prefix   netip.Prefix             `json:"prefix"`
	Identity identity.NumericIdentity `json:"identity"`
	Labels   []string                 `json:"labels,omitempty"`
}

// L4Range is the protocol and the block of ports (ICMP: types) that an
// L4 prefix of the policy map covers. The resolver emits prefixes of 0
// (anything), 8 (a protocol) and 9 to 24 bits (a protocol and an aligned
// block of ports).
func L4Range(l policy.L4) (proto string, lo, hi uint16) {
	if l.PrefixLen == 0 {
		return "ANY", 0, 65535
	}
	proto = fmt.Sprintf("proto-%d", l.Proto)
	for name, n := range protoNumbers {
		if n == l.Proto {
			proto = name
		}
	}
	if l.PrefixLen <= 8 {
		return proto, 0, 65535
	}
	return proto, l.Port, uint16(uint32(l.Port) | (1<<(24-uint32(l.PrefixLen)) - 1))
}

// policyEntryViews lists the entries of endpoint ep in m, ingress first,
// then by peer identity, protocol and port.
func policyEntryViews(m map[policy.MapKey]bool, ep uint16, labelsOf func(identity.NumericIdentity) []string) []BPFPolicyEntry {
	keys := make([]policy.MapKey, 0, len(m))
	for k := range m {
		if k.Endpoint == ep {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b policy.MapKey) int {
		return cmp.Or(cmp.Compare(b.Dir, a.Dir), cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.L4.Proto, b.L4.Proto),
			cmp.Compare(a.L4.Port, b.L4.Port), cmp.Compare(a.L4.PrefixLen, b.L4.PrefixLen))
	})
	out := make([]BPFPolicyEntry, len(keys))
	for i, k := range keys {
		e := BPFPolicyEntry{Direction: k.Dir.String(), Identity: k.Identity, Verdict: "allow"}
		if k.Identity != 0 {
			e.Labels = labelsOf(k.Identity)
		}
		e.Protocol, e.PortLow, e.PortHigh = L4Range(k.L4)
		if m[k] {
			e.Verdict = "deny"
		}
		out[i] = e
	}
	return out
}

func (s *Server) bpfRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/endpoints/{id}/bpf-policy", s.bpfPolicy)
	mux.HandleFunc("GET /v1/bpf/ipcache", s.bpfIPCache)
}

// labelsOf names an identity's labels (nil when unknown).
func (s *Server) labelsOf(n identity.NumericIdentity) []string {
	if s.IdentityLabels != nil {
		return s.IdentityLabels(n)
	}
	if s.Identities != nil {
		if id, err := s.Identities.Get(n); err == nil {
			return id.Labels.Strings()
		}
	}
	return nil
}

// endpointView adds the datapath's enforcement flags to ep.
func (s *Server) endpointView(ep endpoint.Endpoint) EndpointView {
	v := EndpointView{Endpoint: ep}
	if s.BPF != nil && ep.IPv4.IsValid() {
		if in, eg, err := s.BPF.Enforcement(ep.IPv4); err == nil {
			v.PolicyEnforcement = &Enforcement{Ingress: in, Egress: eg}
		}
	}
	return v
}

func noDatapath(w http.ResponseWriter) {
	reply(w, http.StatusServiceUnavailable, Error{Code: "unavailable", Message: "this agent has no datapath to read"})
}

func (s *Server) bpfPolicy(w http.ResponseWriter, r *http.Request) {
	id, err := endpointID(r)
	if err != nil {
		fail(w, err)
		return
	}
	if _, err := s.Endpoints.Get(id); err != nil {
		fail(w, err)
		return
	}
	if s.BPF == nil {
		noDatapath(w)
		return
	}
	m, err := s.BPF.PolicyEntries()
	if err != nil {
		fail(w, err)
		return
	}
	reply(w, http.StatusOK, policyEntryViews(m, id, s.labelsOf))
}

func (s *Server) bpfIPCache(w http.ResponseWriter, _ *http.Request) {
	if s.BPF == nil {
		noDatapath(w)
		return
	}
	m, err := s.BPF.IPCache()
	if err != nil {
		fail(w, err)
		return
	}
	out := make([]BPFIPCacheEntry, 0, len(m))
	for p, id := range m {
		out = append(out, BPFIPCacheEntry{Prefix: p, Identity: id, Labels: s.labelsOf(id)})
	}
	slices.SortFunc(out, func(a, b BPFIPCacheEntry) int {
		return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	})
	reply(w, http.StatusOK, out)
}

// BPFPolicy lists endpoint id's policy map entries as the kernel holds them.
func (c *Client) BPFPolicy(ctx context.Context, id uint16) ([]BPFPolicyEntry, error) {
	var out []BPFPolicyEntry
	return out, c.do(ctx, http.MethodGet, "/v1/endpoints/"+strconv.Itoa(int(id))+"/bpf-policy", nil, "", &out)
}

// BPFIPCache lists the node's ipcache as the kernel holds it.
func (c *Client) BPFIPCache(ctx context.Context) ([]BPFIPCacheEntry, error) {
	var out []BPFIPCacheEntry
	return out, c.do(ctx, http.MethodGet, "/v1/bpf/ipcache", nil, "", &out)
}
