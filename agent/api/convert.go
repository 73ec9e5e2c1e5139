package api

// The server's side of the contract: the agent's domain values become the
// wire types of agent/api/types here, and nowhere else. Flat types convert
// directly (the compiler checks their fields match); the document models
// (policies, services) go through their JSON, which is the wire format.

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/groups"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/labels"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/policy"
	policyapi "github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/clustermesh/remote"
	"github.com/filament-net/filament/crypto/nodeauth"
	"github.com/filament-net/filament/crypto/wireguard"
)

// EncryptionStatus is the node's transparent encryption as the agent's
// components report it; the server answers with it as
// types.EncryptionStatus.
type EncryptionStatus struct {
	Mode           string
	Strict         bool
	Device         string
	Type           string
	PublicKey      string
	Port           int
	Peers          []wireguard.PeerStatus
	StrictDrops    uint64
	Authentication bool
	Refused        []nodeauth.Refusal
}

// each converts a slice element by element, keeping nil apart from empty
// (JSON null and []).
func each[From, To any](in []From, f func(From) To) []To {
	if in == nil {
		return nil
	}
	out := make([]To, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}

// viaJSON converts a document (policy, service) to its wire type through
// the JSON both share.
func viaJSON[To any](v any) (To, error) {
	var out To
	b, err := json.Marshal(v)
	if err == nil {
		err = json.Unmarshal(b, &out)
	}
	if err != nil {
		return out, fmt.Errorf("answer %T: %w", v, err)
	}
	return out, nil
}

func wireEncryption(st EncryptionStatus) types.EncryptionStatus {
	return types.EncryptionStatus{Mode: st.Mode, Strict: st.Strict, Device: st.Device, Type: st.Type, PublicKey: st.PublicKey,
		Port: st.Port, StrictDrops: st.StrictDrops, Authentication: st.Authentication,
		Peers:   each(st.Peers, func(p wireguard.PeerStatus) types.PeerStatus { return types.PeerStatus(p) }),
		Refused: each(st.Refused, func(r nodeauth.Refusal) types.Refusal { return types.Refusal(r) })}
}

func wireCluster(st remote.Status) types.ClusterStatus { return types.ClusterStatus(st) }

func wireNode(n node.Node) types.Node { return types.Node(n) }

func wireLabel(l labels.Label) types.Label { return types.Label(l) }

func wireEndpoint(ep endpoint.Endpoint) types.Endpoint {
	return types.Endpoint{ID: ep.ID, ContainerID: ep.ContainerID, IfName: ep.IfName, NetNS: ep.NetNS, Network: ep.Network,
		Namespace: ep.Namespace, PodName: ep.PodName, Labels: each(ep.Labels, wireLabel), Identity: uint32(ep.Identity),
		IPv4: ep.IPv4, Gateway: ep.Gateway, PrefixLen: ep.PrefixLen, MAC: ep.MAC, HostIfName: ep.HostIfName,
		HostIfIndex: ep.HostIfIndex, HostMAC: ep.HostMAC, MTU: ep.MTU, State: string(ep.State), Created: ep.Created}
}

func wireIdentity(id identity.Identity) types.IdentityView {
	return types.IdentityView{ID: uint32(id.ID), Labels: id.Labels.Strings(), Reserved: id.ID.IsReserved()}
}

func wireEvent(ev monitor.Event) types.Event {
	return types.Event{Time: ev.Time, Type: ev.Type, Reason: ev.Reason, ReasonCode: ev.ReasonCode, Direction: ev.Direction,
		Endpoint: ev.Endpoint, PeerEP: ev.PeerEP, SrcIdentity: uint32(ev.SrcIdentity), DstIdentity: uint32(ev.DstIdentity),
		SrcLabels: ev.SrcLabels, DstLabels: ev.DstLabels, Src: ev.Src, Dst: ev.Dst, Protocol: ev.Protocol,
		IfIndex: ev.IfIndex, Length: ev.Length, TCPFlags: ev.TCPFlags, IsReply: ev.IsReply,
		Redirected: ev.Redirected, Audit: ev.Audit, Service: ev.Service, L7: (*types.L7)(ev.L7)}
}

func wireTrace(r policy.TraceResult) types.TraceResult {
	out := types.TraceResult{Verdict: r.Verdict, Reason: r.Reason, Enforced: r.Enforced}
	if r.Rule != nil {
		ref := types.RuleRef(*r.Rule)
		out.Rule = &ref
	}
	out.Proxy = r.Proxy
	for _, sd := range r.L7 {
		out.L7 = append(out.L7, types.TraceL7{Side: sd.Side, Rules: each(sd.Rules, wireHTTPRule)})
	}
	return out
}

func wireHTTPRule(r policy.TraceHTTPRule) types.TraceHTTPRule {
	return types.TraceHTTPRule{Ref: r.Ref, Method: r.Method, Path: r.Path, Host: r.Host, Headers: r.Headers,
		HeaderMatches: each(r.HeaderMatches, func(m policyapi.HeaderMatch) types.HTTPHeaderMatch { return types.HTTPHeaderMatch(m) })}
}

func wireGroup(r groups.Result) types.GroupResult {
	return types.GroupResult{Key: r.Key, Group: types.AWSGroup(r.Group), Addrs: r.Addrs, Resolved: r.Resolved,
		Refreshed: r.Refreshed, Error: r.Error, Failures: r.Failures, Since: r.Since}
}

func wireGroups(st groups.Status) types.GroupsStatus {
	return types.GroupsStatus{Enabled: st.Enabled, Leader: st.Leader, IsLeader: st.IsLeader, Interval: st.Interval,
		Groups: each(st.Groups, wireGroup), Refused: st.Refused}
}

// replyAs answers 200 with document v (policies, services) as its wire
// type To.
func replyAs[To any](w http.ResponseWriter, v any) {
	out, err := viaJSON[To](v)
	if err != nil {
		fail(w, err)
		return
	}
	reply(w, http.StatusOK, out)
}
