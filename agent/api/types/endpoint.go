package types

import (
	"net/netip"
	"time"
)

// EndpointRequest asks for a new endpoint (POST /v1/endpoints).
type EndpointRequest struct {
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifName"`
	NetNS       string   `json:"netns"`
	Network     string   `json:"network,omitempty"` // the CNI network name; the agent's default when empty
	Namespace   string   `json:"namespace,omitempty"`
	PodName     string   `json:"podName,omitempty"`
	Labels      []string `json:"labels,omitempty"` // source:key=value
}

// Endpoint states.
const (
	EndpointReady        = "ready"
	EndpointDisconnected = "disconnected"
)

// Endpoint is one pod interface on the node.
type Endpoint struct {
	ID          uint16     `json:"id"`
	ContainerID string     `json:"containerID"`
	IfName      string     `json:"ifName"`
	NetNS       string     `json:"netns"`
	Network     string     `json:"network"` // the CNI network name it was created for
	Namespace   string     `json:"namespace,omitempty"`
	PodName     string     `json:"podName,omitempty"`
	Labels      []Label    `json:"labels"`
	Identity    uint32     `json:"identity"`
	IPv4        netip.Addr `json:"ipv4"`
	Gateway     netip.Addr `json:"gateway"`
	PrefixLen   int        `json:"prefixLen"`
	MAC         string     `json:"mac"`
	HostIfName  string     `json:"hostIfName"`
	HostIfIndex int        `json:"hostIfIndex"`
	HostMAC     string     `json:"hostMAC"`
	MTU         int        `json:"mtu"`
	State       string     `json:"state"` // EndpointReady or EndpointDisconnected
	Created     time.Time  `json:"created"`
}

// LabelStrings are the endpoint's labels as strings (for display).
func (ep Endpoint) LabelStrings() []string {
	out := make([]string, len(ep.Labels))
	for i, l := range ep.Labels {
		out[i] = l.String()
	}
	return out
}

// Label is one label of an endpoint: source:key=value.
type Label struct {
	Source string `json:"source"`
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
}

// String is source:key=value (source:key without a value).
func (l Label) String() string {
	s := l.Source + ":" + l.Key
	if l.Value != "" {
		s += "=" + l.Value
	}
	return s
}

// Enforcement says whether an endpoint's policy is enforced in each
// direction (else that direction allows everything but deny rules).
type Enforcement struct {
	Ingress bool `json:"ingress"`
	Egress  bool `json:"egress"`
}

// EndpointView is an endpoint with its enforcement as the datapath's
// endpoints map holds it (absent without a datapath or before the
// endpoint is in the map) (GET /v1/endpoints/{id}).
type EndpointView struct {
	Endpoint
	PolicyEnforcement *Enforcement `json:"policyEnforcement,omitempty"`
}

// IdentityView is an identity with its labels as strings and whether it is
// one of the reserved identities.
type IdentityView struct {
	ID       uint32   `json:"id"`
	Labels   []string `json:"labels"`
	Reserved bool     `json:"reserved,omitempty"`
}

// BPFPolicyEntry is one entry of an endpoint's policy map.
type BPFPolicyEntry struct {
	Direction string   `json:"direction"` // ingress or egress
	Identity  uint32   `json:"identity"`  // the peer; 0: any peer
	Labels    []string `json:"labels,omitempty"`
	Protocol  string   `json:"protocol"` // ANY, TCP, UDP, SCTP, ICMP or proto-N
	PortLow   uint16   `json:"portLow"`  // ports (ICMP: types) PortLow to PortHigh
	PortHigh  uint16   `json:"portHigh"`
	Verdict   string   `json:"verdict"` // allow or deny
}

// BPFIPCacheEntry is one entry of the ipcache: a prefix and its identity.
type BPFIPCacheEntry struct {
	Prefix   netip.Prefix `json:"prefix"`
	Identity uint32       `json:"identity"`
	Labels   []string     `json:"labels,omitempty"`
}

// Event is one drop, policy verdict or service translation reported by
// the datapath, or an L7 record (GET /v1/monitor streams them as JSON
// lines).
type Event struct {
	Time        time.Time      `json:"time"`
	Type        string         `json:"type"` // "drop", "policy-verdict", "translated" or "l7"
	Reason      string         `json:"reason"`
	ReasonCode  uint8          `json:"reasonCode"`
	Direction   string         `json:"direction"` // of the deciding endpoint: "ingress" or "egress"
	Endpoint    uint16         `json:"endpoint"`  // the endpoint whose policy decided, else whose interface the packet used (0: none)
	PeerEP      uint16         `json:"peerEndpoint,omitempty"`
	SrcIdentity uint32         `json:"srcIdentity"`
	DstIdentity uint32         `json:"dstIdentity"`
	SrcLabels   []string       `json:"srcLabels,omitempty"`
	DstLabels   []string       `json:"dstLabels,omitempty"`
	Src         netip.AddrPort `json:"src"`
	Dst         netip.AddrPort `json:"dst"`
	Protocol    string         `json:"protocol"`
	IfIndex     uint32         `json:"ifindex"`
	Length      uint32         `json:"length"`
	TCPFlags    uint8          `json:"tcpFlags,omitempty"`   // FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20, ECE 0x40, CWR 0x80
	IsReply     bool           `json:"isReply,omitempty"`    // the packet is in its connection's reply direction
	Redirected  bool           `json:"redirected,omitempty"` // a policy verdict sending the connection to the L7 proxy
	Audit       bool           `json:"audit,omitempty"`      // a policy verdict of audit mode: policy would have dropped the connection (Reason), it passed
	Service     netip.AddrPort `json:"service,omitzero"`     // "translated": the frontend asked for (Dst: the backend)
	// L7 is set on "l7" events: one request through the node's proxy.
	L7 *L7 `json:"l7,omitempty"`
}

// L7 is what the proxy saw of one request and what it decided.
type L7 struct {
	Protocol string        `json:"protocol"` // HTTP/1.1, HTTP/2, gRPC, DNS/UDP or DNS/TCP
	Method   string        `json:"method"`
	Host     string        `json:"host"`
	Path     string        `json:"path"`
	Status   int           `json:"status"`
	Latency  time.Duration `json:"latency"` // ns
	Verdict  string        `json:"verdict"` // forwarded or denied
	Notes    []string      `json:"notes,omitempty"`
	// DNS (Protocol DNS/UDP or DNS/TCP): Host is the name asked, Method
	// the query type, Status the rcode.
	DNSRcode   string       `json:"dnsRcode,omitempty"`
	DNSAnswers []netip.Addr `json:"dnsAnswers,omitempty"`
	DNSTTL     uint32       `json:"dnsTTL,omitempty"`
}
