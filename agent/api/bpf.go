package api

// Views of the node's BPF maps as the kernel holds them: an endpoint's
// policy map entries (`filament bpf policy get`), the ipcache (`filament
// bpf ipcache list`) and each endpoint's enforcement flags (`filament
// endpoint get`).

import (
	"cmp"
	"fmt"
	"net/http"
	"net/netip"
	"slices"

	"github.com/filament-net/filament/agent/api/types"
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
func policyEntryViews(m map[policy.MapKey]bool, ep uint16, labelsOf func(identity.NumericIdentity) []string) []types.BPFPolicyEntry {
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
	out := make([]types.BPFPolicyEntry, len(keys))
	for i, k := range keys {
		e := types.BPFPolicyEntry{Direction: k.Dir.String(), Identity: uint32(k.Identity), Verdict: "allow"}
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
func (s *Server) endpointView(ep endpoint.Endpoint) types.EndpointView {
	v := types.EndpointView{Endpoint: wireEndpoint(ep)}
	if s.BPF != nil && ep.IPv4.IsValid() {
		if in, eg, err := s.BPF.Enforcement(ep.IPv4); err == nil {
			v.PolicyEnforcement = &types.Enforcement{Ingress: in, Egress: eg}
		}
	}
	return v
}

func noDatapath(w http.ResponseWriter) {
	reply(w, http.StatusServiceUnavailable, types.Error{Code: types.CodeUnavailable, Message: "this agent has no datapath to read"})
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
	out := make([]types.BPFIPCacheEntry, 0, len(m))
	for p, id := range m {
		out = append(out, types.BPFIPCacheEntry{Prefix: p, Identity: uint32(id), Labels: s.labelsOf(id)})
	}
	slices.SortFunc(out, func(a, b types.BPFIPCacheEntry) int {
		return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	})
	reply(w, http.StatusOK, out)
}
