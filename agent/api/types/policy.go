package types

import (
	"encoding/json"
	"net/netip"
	"time"
)

// Policy is one stored policy document in the agent's internal form
// (GET /v1/policies). Rules are carried as JSON, in Cilium's rule form:
// the rule model belongs to the policy package, the contract only
// passes it through.
type Policy struct {
	Kind        string            `json:"kind"`
	Namespace   string            `json:"namespace,omitempty"`
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Rules       []json.RawMessage `json:"rules"`
	// Source is the document as the user wrote it (or, for an item of a
	// list, the item re-marshalled as YAML).
	Source string `json:"source,omitempty"`
}

// KindCiliumClusterwideNetworkPolicy is the kind of a policy that applies
// outside one namespace.
const KindCiliumClusterwideNetworkPolicy = "CiliumClusterwideNetworkPolicy"

// KindNetworkPolicy is the kind of a Kubernetes NetworkPolicy.
const KindNetworkPolicy = "NetworkPolicy"

// Key identifies a policy to get or delete it by: namespace/name for a
// CiliumNetworkPolicy, namespace/networkpolicy/name for a NetworkPolicy
// (so one of each may share a namespace and name), the bare name of a
// CiliumClusterwideNetworkPolicy; as the agent's policy package keys them.
func (p Policy) Key() string {
	switch {
	case p.Namespace == "":
		return p.Name
	case p.Kind == KindNetworkPolicy:
		return p.Namespace + "/networkpolicy/" + p.Name
	}
	return p.Namespace + "/" + p.Name
}

// Clusterwide reports whether the policy applies outside one namespace.
func (p Policy) Clusterwide() bool { return p.Kind == KindCiliumClusterwideNetworkPolicy }

// PolicyView is a stored policy with the entries derived from its groups
// (toGroups/fromGroups): each group's addresses and last refresh (GET
// /v1/policies/{key}).
type PolicyView struct {
	Policy
	// Scope: cluster (every agent enforces it), local (this node only) or
	// kubernetes (from the API server); empty from an agent without a
	// cluster store.
	Scope string `json:"scope,omitempty"`
	// ClusterWide: a CiliumClusterwideNetworkPolicy (no namespace).
	ClusterWide   bool          `json:"clusterWide,omitempty"`
	DerivedGroups []GroupResult `json:"derivedGroups,omitempty"`
}

// PolicyImportResult is the answer to a policy import or delete.
type PolicyImportResult struct {
	Revision uint64   `json:"revision"`
	Policies []string `json:"policies"`
}

// TraceRequest asks how policy treats traffic from Src to Dst (POST
// /v1/policy-trace). Each side is an endpoint ID or a label list.
type TraceRequest struct {
	SrcEndpoint uint16   `json:"srcEndpoint,omitempty"`
	SrcLabels   []string `json:"srcLabels,omitempty"`
	DstEndpoint uint16   `json:"dstEndpoint,omitempty"`
	DstLabels   []string `json:"dstLabels,omitempty"`
	Port        uint16   `json:"port,omitempty"`
	Protocol    string   `json:"protocol,omitempty"` // TCP, UDP, SCTP, ICMP (ICMP: port is the type)
	// An HTTP request on the flow (any of these set; TCP only): the
	// result then says what the node's proxy does with it. Method
	// defaults to GET and path to "/"; headers are "Name: value".
	HTTPMethod  string   `json:"httpMethod,omitempty"`
	HTTPPath    string   `json:"httpPath,omitempty"`
	HTTPHost    string   `json:"httpHost,omitempty"`
	HTTPHeaders []string `json:"httpHeaders,omitempty"`
}

// TraceResult is the verdict of a traced connection.
type TraceResult struct {
	Verdict string `json:"verdict"` // allowed or denied
	// Reason says which side decided and how.
	Reason string `json:"reason"`
	// Rule is the rule that decided; nil for a default verdict.
	Rule *RuleRef `json:"rule,omitempty"`
	// Enforced is whether either side enforces policy in its direction.
	Enforced bool `json:"enforced"`
	// Proxy is whether an allowed flow goes through the node's L7 proxy.
	Proxy bool `json:"proxy,omitempty"`
	// L7 lists, per side whose deciding allow is L7, the HTTP rules the
	// proxy applies to the flow's requests.
	L7 []TraceL7 `json:"l7,omitempty"`
	// HTTP is the verdict for the request of the trace request, if any.
	HTTP *TraceHTTP `json:"http,omitempty"`
}

// TraceL7 is the HTTP policy one side applies to a traced flow: a request
// goes through when one of Rules matches it.
type TraceL7 struct {
	Side  string          `json:"side"` // "egress of src" or "ingress of dst"
	Rules []TraceHTTPRule `json:"rules"`
}

// TraceHTTPRule is one HTTP rule (toPorts[].rules.http) and where it
// comes from.
type TraceHTTPRule struct {
	// Ref names its port rule: policy/rules[i].section.toPorts[j].
	Ref           string            `json:"ref"`
	Method        string            `json:"method,omitempty"`
	Path          string            `json:"path,omitempty"`
	Host          string            `json:"host,omitempty"`
	Headers       []string          `json:"headers,omitempty"`
	HeaderMatches []HTTPHeaderMatch `json:"headerMatches,omitempty"`
}

// HTTPHeaderMatch is a headerMatches entry of an HTTP rule.
type HTTPHeaderMatch struct {
	Mismatch string `json:"mismatch,omitempty"`
	Name     string `json:"name"`
	Value    string `json:"value,omitempty"`
}

// TraceHTTP is what the flow's proxies do with one HTTP request.
type TraceHTTP struct {
	Method  string   `json:"method"`
	Path    string   `json:"path"`
	Host    string   `json:"host,omitempty"`
	Headers []string `json:"headers,omitempty"`
	Verdict string   `json:"verdict"` // allowed or denied
	// Status is the proxy's answer to a denied request: 403 (gRPC:
	// PERMISSION_DENIED); 0 when the flow itself is denied.
	Status int `json:"status,omitempty"`
	// Reason says why, like `ingress of dst: no HTTP rule matches`.
	Reason string `json:"reason"`
	// Sides are the verdicts of each L7 side, in the order the request
	// meets them.
	Sides []TraceHTTPSide `json:"sides,omitempty"`
}

// TraceHTTPSide is one side's proxy verdict for a request.
type TraceHTTPSide struct {
	Side    string `json:"side"`
	Verdict string `json:"verdict"` // allowed or denied
	// Rule is the first rule that matches (nil: none, denied).
	Rule *TraceHTTPRule `json:"rule,omitempty"`
	// Actions are the headerMatches mismatch actions the proxy takes.
	Actions []string `json:"actions,omitempty"`
}

// RuleRef names one section of one rule of a policy.
type RuleRef struct {
	Policy  string `json:"policy"`  // the policy's key
	Rule    int    `json:"rule"`    // index in the policy's rules
	Section string `json:"section"` // e.g. "ingress[0]" or "egressDeny[1]"
}

// GroupsStatus is the cloud groups (toGroups/fromGroups) as the agent sees
// them (GET /v1/groups).
type GroupsStatus struct {
	Enabled  bool          `json:"enabled"`
	Leader   string        `json:"leader,omitempty"`
	IsLeader bool          `json:"isLeader"`
	Interval string        `json:"interval"`
	Groups   []GroupResult `json:"groups"`
	// Refused counts the stored results not applied (not under their
	// own key, or not a group's).
	Refused int `json:"refused,omitempty"`
}

// GroupResult is a group as last resolved by the cluster's leader.
type GroupResult struct {
	Key      string       `json:"key"`
	Group    AWSGroup     `json:"group"`
	Addrs    []netip.Addr `json:"addrs"`
	Resolved bool         `json:"resolved"` // resolved at least once
	// Refreshed is the time of the last successful resolution.
	Refreshed time.Time `json:"refreshed,omitzero"`
	// Error of the last attempt, when it failed (Addrs are the last good set).
	Error    string    `json:"error,omitempty"`
	Failures int       `json:"failures,omitempty"`
	Since    time.Time `json:"errorSince,omitzero"`
}

// AWSGroup selects AWS security groups by id, name or tag.
type AWSGroup struct {
	Labels              map[string]string `json:"labels,omitempty"`
	SecurityGroupsIDs   []string          `json:"securityGroupsIds,omitempty"`
	SecurityGroupsNames []string          `json:"securityGroupsNames,omitempty"`
	Region              string            `json:"region,omitempty"`
}

// FQDNEntry is one (name, address) of the node's DNS name cache and the
// endpoints whose asks of it expire at Expires (GET
// /v1/fqdn/cache): learned from an answer the L7 proxy allowed, it is
// what toFQDNs selectors match.
type FQDNEntry struct {
	Name      string     `json:"name"`
	Addr      netip.Addr `json:"addr"`
	Expires   time.Time  `json:"expires"`
	TTLLeft   int        `json:"ttlLeft"` // seconds; negative: expired, kept while a connection uses it
	Endpoints []uint16   `json:"endpoints"`
}
