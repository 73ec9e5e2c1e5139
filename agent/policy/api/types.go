// Package api is the policy document model, the first of the two layers
// of policy (the engine, agent/policy, is the second): the types of network
// policy as users write it, and what can be said of a document alone.
// CiliumNetworkPolicy-compatible and Kubernetes NetworkPolicy documents are
// parsed strictly, validated with errors that name the field, normalised,
// copied (DeepCopy) and scoped to a cluster; GroupKey and NodeSelectorKey
// name the groups and node selectors a document refers to. The package
// knows nothing of identities, endpoints, storage or the datapath, and the
// L7 rules of toPorts belong here too.
//
// Every document becomes a Policy holding Rules in one internal form whose
// field names and JSON tags are Cilium's. Rules are normalised on the way in,
// so that later enforcement needs no knowledge of where a rule came from:
//
//   - in a namespaced policy the endpointSelector, and every fromEndpoints,
//     toEndpoints, fromRequires and toRequires selector that does not name a
//     namespace or a reserved label itself, is restricted to the policy's
//     namespace with the label `k8s:io.kubernetes.pod.namespace`;
//   - an empty port protocol becomes ANY, an empty port "0" (all ports), an
//     empty ICMP family IPv4, and an empty toServices namespace the policy's.
package api

import (
	"encoding/json"
	"strconv"
)

// Policy document kinds.
const (
	KindCiliumNetworkPolicy            = "CiliumNetworkPolicy"
	KindCiliumClusterwideNetworkPolicy = "CiliumClusterwideNetworkPolicy"
	KindNetworkPolicy                  = "NetworkPolicy"
)

// DefaultNamespace is the namespace of a namespaced policy that names none.
const DefaultNamespace = "default"

// Policy is one policy document in the internal form.
type Policy struct {
	Kind        string            `json:"kind"`
	Namespace   string            `json:"namespace,omitempty"`
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Rules       []Rule            `json:"rules"`
	// Source is the document as the user wrote it (or, for an item of a
	// list, the item re-marshalled as YAML).
	Source string `json:"source,omitempty"`
}

// Key identifies a policy in a Repository and the kvstore (KeyOf its kind,
// namespace and name).
func (p Policy) Key() string { return KeyOf(p.Kind, p.Namespace, p.Name) }

// KeyOf is the key of a policy: `namespace/name` for a
// CiliumNetworkPolicy, `namespace/networkpolicy/name` for a NetworkPolicy
// and the bare `name` for a CiliumClusterwideNetworkPolicy. Names and
// namespaces never contain '/', so no two kinds share a key: a
// NetworkPolicy and a CiliumNetworkPolicy of the same namespace and name
// (a chart making both for one release) are two policies. Until
// 2026-12-04 a NetworkPolicy's key was `namespace/name` (LegacyKey).
func KeyOf(kind, namespace, name string) string {
	switch {
	case namespace == "":
		return name
	case kind == KindNetworkPolicy:
		return namespace + "/networkpolicy/" + name
	}
	return namespace + "/" + name
}

// LegacyKey is p's key as agents before 2026-12-04 stored it: a
// NetworkPolicy's was `namespace/name`, as a CiliumNetworkPolicy's is.
// Their repositories and kvstore keys are read through it.
func (p Policy) LegacyKey() string {
	if p.Namespace == "" {
		return p.Name
	}
	return p.Namespace + "/" + p.Name
}

// Clusterwide reports whether the policy applies outside one namespace.
func (p Policy) Clusterwide() bool { return p.Kind == KindCiliumClusterwideNetworkPolicy }

// Rule selects endpoints (or, clusterwide, nodes) and lists the traffic they
// may send and receive. Allow rules of one direction are a union; deny rules
// win over allow rules.
type Rule struct {
	EndpointSelector  *EndpointSelector `json:"endpointSelector,omitempty"`
	NodeSelector      *EndpointSelector `json:"nodeSelector,omitempty"`
	Ingress           []IngressRule     `json:"ingress,omitempty"`
	IngressDeny       []IngressRule     `json:"ingressDeny,omitempty"`
	Egress            []EgressRule      `json:"egress,omitempty"`
	EgressDeny        []EgressRule      `json:"egressDeny,omitempty"`
	EnableDefaultDeny DefaultDenyConfig `json:"enableDefaultDeny,omitzero"`
	Labels            []string          `json:"labels,omitempty"`
	Description       string            `json:"description,omitempty"`
}

// DefaultDenyConfig overrides whether a rule puts the endpoints it selects
// into default deny for a direction.
type DefaultDenyConfig struct {
	Ingress *bool `json:"ingress,omitempty"`
	Egress  *bool `json:"egress,omitempty"`
}

// IngressDefaultDeny reports whether ingress traffic to the selected
// endpoints that no rule allows is dropped: as configured, or else whenever
// the rule has ingress or ingressDeny rules. A true result with no ingress
// rules selects the endpoints with zero allowed peers.
func (r *Rule) IngressDefaultDeny() bool {
	if r.EnableDefaultDeny.Ingress != nil {
		return *r.EnableDefaultDeny.Ingress
	}
	return len(r.Ingress) > 0 || len(r.IngressDeny) > 0
}

// EgressDefaultDeny is IngressDefaultDeny for egress.
func (r *Rule) EgressDefaultDeny() bool {
	if r.EnableDefaultDeny.Egress != nil {
		return *r.EnableDefaultDeny.Egress
	}
	return len(r.Egress) > 0 || len(r.EgressDeny) > 0
}

// IngressRule matches traffic from the union of its peers (fromEndpoints,
// fromCIDR, fromCIDRSet, fromEntities, fromGroups), each further required to
// match every fromRequires selector, to the union of its toPorts and icmps.
// A rule with ports but no peers applies to every peer; a rule with neither
// peers nor ports ({}) matches nothing. As in CiliumNetworkPolicy, a peer
// field present but empty (fromEndpoints: [], and likewise fromCIDR,
// fromCIDRSet, fromEntities, fromNodes) selects nothing, while [{}] selects
// every endpoint: these fields are kept non-nil when empty (omitzero, not
// omitempty, so JSON keeps the difference). In ingressDeny, toPorts carry
// no L7 rules.
type IngressRule struct {
	FromEndpoints []EndpointSelector `json:"fromEndpoints,omitzero"`
	FromRequires  []EndpointSelector `json:"fromRequires,omitempty"`
	FromCIDR      []string           `json:"fromCIDR,omitzero"`
	FromCIDRSet   []CIDRRule         `json:"fromCIDRSet,omitzero"`
	FromEntities  []Entity           `json:"fromEntities,omitzero"`
	FromGroups    []Groups           `json:"fromGroups,omitzero"`
	// FromNodes selects nodes by their labels (e.g. EC2 zone, instance
	// type): traffic from their addresses.
	FromNodes []EndpointSelector `json:"fromNodes,omitzero"`
	ToPorts   []PortRule         `json:"toPorts,omitempty"`
	ICMPs     []ICMPRule         `json:"icmps,omitempty"`
}

// EgressRule is IngressRule for egress, with services and DNS names as
// further peers. In egressDeny, toFQDNs and L7 rules are not allowed.
type EgressRule struct {
	ToEndpoints []EndpointSelector `json:"toEndpoints,omitzero"`
	ToRequires  []EndpointSelector `json:"toRequires,omitempty"`
	ToCIDR      []string           `json:"toCIDR,omitzero"`
	ToCIDRSet   []CIDRRule         `json:"toCIDRSet,omitzero"`
	ToEntities  []Entity           `json:"toEntities,omitzero"`
	ToGroups    []Groups           `json:"toGroups,omitzero"`
	// ToNodes selects nodes by their labels: traffic to their addresses.
	ToNodes    []EndpointSelector `json:"toNodes,omitzero"`
	ToServices []Service          `json:"toServices,omitzero"`
	ToFQDNs    []FQDNSelector     `json:"toFQDNs,omitzero"`
	ToPorts    []PortRule         `json:"toPorts,omitempty"`
	ICMPs      []ICMPRule         `json:"icmps,omitempty"`
}

// EndpointSelector selects endpoints by label, like a Kubernetes label
// selector: every matchLabels entry and every matchExpressions requirement
// must hold, and an empty selector selects everything. A key may carry a
// label source (`k8s:app`); a key without one matches any source.
type EndpointSelector struct {
	MatchLabels      map[string]string     `json:"matchLabels,omitempty"`
	MatchExpressions []SelectorRequirement `json:"matchExpressions,omitempty"`
}

// SelectorRequirement is one matchExpressions entry.
type SelectorRequirement struct {
	Key      string   `json:"key"`
	Operator Operator `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// Operator is a matchExpressions operator.
type Operator string

// Selector operators.
const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// CIDRRule is a prefix minus the prefixes in Except, each inside CIDR.
type CIDRRule struct {
	CIDR   string   `json:"cidr"`
	Except []string `json:"except,omitempty"`
}

// Entity names a class of peers Filament knows without labels.
type Entity string

// Entities.
const (
	EntityWorld         Entity = "world"
	EntityCluster       Entity = "cluster"
	EntityHost          Entity = "host"
	EntityRemoteNode    Entity = "remote-node"
	EntityKubeAPIServer Entity = "kube-apiserver"
	EntityHealth        Entity = "health"
	EntityInit          Entity = "init"
	EntityUnmanaged     Entity = "unmanaged"
	EntityAll           Entity = "all"
)

// Groups selects peers from a cloud provider's groups.
type Groups struct {
	AWS *AWSGroup `json:"aws,omitempty"`
}

// AWSGroup selects AWS security groups by id, name or tag.
type AWSGroup struct {
	Labels              map[string]string `json:"labels,omitempty"`
	SecurityGroupsIDs   []string          `json:"securityGroupsIds,omitempty"`
	SecurityGroupsNames []string          `json:"securityGroupsNames,omitempty"`
	Region              string            `json:"region,omitempty"`
}

// Service selects the backends of Kubernetes services, by name or by
// selector on the services' labels; exactly one is set.
type Service struct {
	K8sService         *K8sServiceNamespace         `json:"k8sService,omitempty"`
	K8sServiceSelector *K8sServiceSelectorNamespace `json:"k8sServiceSelector,omitempty"`
}

// K8sServiceNamespace names one service.
type K8sServiceNamespace struct {
	ServiceName string `json:"serviceName"`
	Namespace   string `json:"namespace,omitempty"`
}

// K8sServiceSelectorNamespace selects services by label.
type K8sServiceSelectorNamespace struct {
	Selector  EndpointSelector `json:"selector"`
	Namespace string           `json:"namespace,omitempty"`
}

// FQDNSelector matches a DNS name exactly (matchName) or by a pattern in
// which `*` stands for any run of DNS characters (matchPattern).
type FQDNSelector struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

// PortRule lists ports and, for allow rules, the L7 rules applied on them.
type PortRule struct {
	Ports       []PortProtocol `json:"ports,omitempty"`
	Rules       *L7Rules       `json:"rules,omitempty"`
	ServerNames []string       `json:"serverNames,omitempty"`
}

// PortProtocol is a port, or a port range up to EndPort, of a protocol.
// Port is a number, "0" for all ports of Protocol, or a named container port.
type PortProtocol struct {
	Port     string   `json:"port,omitempty"`
	EndPort  int32    `json:"endPort,omitempty"`
	Protocol Protocol `json:"protocol,omitempty"`
}

// Protocol is an L4 protocol of a PortProtocol.
type Protocol string

// Protocols.
const (
	ProtoTCP    Protocol = "TCP"
	ProtoUDP    Protocol = "UDP"
	ProtoSCTP   Protocol = "SCTP"
	ProtoICMP   Protocol = "ICMP"
	ProtoICMPv6 Protocol = "ICMPv6"
	ProtoAny    Protocol = "ANY"
)

// L7Rules are the application-level rules of a PortRule; at most one
// protocol's list is set.
type L7Rules struct {
	HTTP  []PortRuleHTTP  `json:"http,omitempty"`
	Kafka []PortRuleKafka `json:"kafka,omitempty"`
	DNS   []PortRuleDNS   `json:"dns,omitempty"`
}

// PortRuleHTTP allows HTTP requests; Method, Path and Host are regular
// expressions (RE2) matched against the whole field, Headers are `Name`
// (present) or `Name: value` (equal), and HeaderMatches require a header
// value or, with Mismatch, act on a request whose value differs.
type PortRuleHTTP struct {
	Method        string        `json:"method,omitempty"`
	Path          string        `json:"path,omitempty"`
	Host          string        `json:"host,omitempty"`
	Headers       []string      `json:"headers,omitempty"`
	HeaderMatches []HeaderMatch `json:"headerMatches,omitempty"`
}

// HeaderMatch requires header Name to equal Value. Mismatch says what a
// request whose header differs gets instead of not matching: LOG (matches,
// noted in its L7 event), ADD (the header is added with Value), DELETE (the
// header is removed) or REPLACE (the header is set to Value).
type HeaderMatch struct {
	Mismatch string `json:"mismatch,omitempty"`
	Name     string `json:"name"`
	Value    string `json:"value,omitempty"`
}

// Header mismatch actions.
var HeaderMismatchActions = []string{"LOG", "ADD", "DELETE", "REPLACE"}

// PortRuleKafka allows Kafka requests, by role (produce or consume) or by
// API key, optionally restricted to an API version, client and topic.
type PortRuleKafka struct {
	Role       string `json:"role,omitempty"`
	APIKey     string `json:"apiKey,omitempty"`
	APIVersion string `json:"apiVersion,omitempty"`
	ClientID   string `json:"clientID,omitempty"`
	Topic      string `json:"topic,omitempty"`
}

// PortRuleDNS allows DNS lookups of matching names.
type PortRuleDNS FQDNSelector

// ICMPRule allows ICMP messages of the listed types.
type ICMPRule struct {
	Fields []ICMPField `json:"fields,omitempty"`
}

// ICMP families.
const (
	ICMPFamilyIPv4 = "IPv4"
	ICMPFamilyIPv6 = "IPv6"
)

// ICMPField is one ICMP type of a family, as a number or a name (see
// TypeNumber).
type ICMPField struct {
	Family string       `json:"family,omitempty"`
	Type   *IntOrString `json:"type"`
}

// IntOrString is a JSON value that is an integer or a string, as Kubernetes
// ports and Cilium ICMP types are.
type IntOrString struct {
	IsString bool
	Int      int32
	Str      string
}

// String returns the string, or the integer in decimal.
func (v IntOrString) String() string {
	if v.IsString {
		return v.Str
	}
	return strconv.Itoa(int(v.Int))
}

// MarshalJSON writes a JSON string or number.
func (v IntOrString) MarshalJSON() ([]byte, error) {
	if v.IsString {
		return json.Marshal(v.Str)
	}
	return json.Marshal(v.Int)
}

// UnmarshalJSON reads a JSON string or a 32-bit integer.
func (v *IntOrString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		*v = IntOrString{IsString: true}
		return json.Unmarshal(b, &v.Str)
	}
	*v = IntOrString{}
	return json.Unmarshal(b, &v.Int)
}
