// Package api owns the agent's HTTP/JSON API on a unix socket: the wire
// types, the server that maps requests onto the agent's components, and the
// client the CLI, the CNI plugin and the lab use.
package api

import (
	"time"

	"github.com/filament-net/filament/agent/groups"
	policyapi "github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/crypto/nodeauth"
	"github.com/filament-net/filament/crypto/wireguard"

	"github.com/filament-net/filament/agent/identity"
)

// DefaultSocket is where the agent listens unless configured otherwise.
const DefaultSocket = "/var/run/filament/agent.sock"

// SocketEnv overrides the socket path for clients.
const SocketEnv = "FILAMENT_API_SOCKET"

// Status is the agent's state in brief.
type Status struct {
	Version     string         `json:"version"`
	NodeName    string         `json:"nodeName"`
	ClusterName string         `json:"clusterName"`
	ClusterID   uint32         `json:"clusterID"`
	PodCIDR     string         `json:"podCIDR"`
	NodeIP      string         `json:"nodeIP"`
	Routing     string         `json:"routing"`
	Gateway     string         `json:"gateway"`
	StateDir    string         `json:"stateDir"`
	Uptime      Duration       `json:"uptime"`
	Kvstore     KvstoreStatus  `json:"kvstore"`
	Endpoints   int            `json:"endpoints"`
	Identities  int            `json:"identities"`
	Policies    int            `json:"policies"`
	PolicyRev   uint64         `json:"policyRevision"`
	Services    int            `json:"services"`
	IPAM        IPAMStatus     `json:"ipam"`
	Datapath    DatapathStatus `json:"datapath"`
}

// DatapathStatus describes the node's eBPF datapath.
type DatapathStatus struct {
	EnforcementMode  string `json:"enforcementMode"`
	Attach           string `json:"attach"`
	PinDir           string `json:"pinDir"`
	PolicyEntries    int    `json:"policyEntries"`
	ConntrackEntries int    `json:"conntrackEntries"`
}

// KvstoreStatus says which etcd the agent uses and whether it answers.
type KvstoreStatus struct {
	Embedded  bool     `json:"embedded"`
	Endpoints []string `json:"endpoints"`
	Healthy   bool     `json:"healthy"`
	Error     string   `json:"error,omitempty"`
	LeaseID   string   `json:"leaseID"`
}

// IPAMStatus is the pod CIDR's usage.
type IPAMStatus struct {
	Used     int `json:"used"`
	Capacity int `json:"capacity"`
}

// Duration marshals as a Go duration string.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(time.Duration(d).Round(time.Second).String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// IdentityView is an identity with its labels as strings and whether this node uses it.
type IdentityView struct {
	ID       identity.NumericIdentity `json:"id"`
	Labels   []string                 `json:"labels"`
	Reserved bool                     `json:"reserved,omitempty"`
}

// PolicyImportResult is the answer to a policy import or delete.
type PolicyImportResult struct {
	Revision uint64   `json:"revision"`
	Policies []string `json:"policies"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"error"`
}

// EncryptionStatus is the node's transparent encryption.
type EncryptionStatus struct {
	Mode      string                 `json:"mode"` // none, wireguard, ipsec
	Strict    bool                   `json:"strict"`
	Device    string                 `json:"device,omitempty"`
	Type      string                 `json:"type,omitempty"` // kernel or userspace
	PublicKey string                 `json:"publicKey,omitempty"`
	Port      int                    `json:"port,omitempty"`
	Peers     []wireguard.PeerStatus `json:"peers"`
	// StrictDrops counts packets strict mode dropped (no peer yet).
	StrictDrops uint64 `json:"strictDrops"`
	// Authentication: nodes must present a certificate of their cluster's
	// CA and a signed record; Refused are the nodes that did not.
	Authentication bool               `json:"authentication"`
	Refused        []nodeauth.Refusal `json:"refused"`
}

// PolicyView is a stored policy with the entries derived from its groups
// (toGroups/fromGroups): each group's addresses and last refresh.
type PolicyView struct {
	policyapi.Policy
	// Scope: cluster (every agent enforces it), local (this node only) or
	// kubernetes (from the API server); empty from an agent without a
	// cluster store.
	Scope string `json:"scope,omitempty"`
	// ClusterWide: a CiliumClusterwideNetworkPolicy (no namespace).
	ClusterWide   bool            `json:"clusterWide,omitempty"`
	DerivedGroups []groups.Result `json:"derivedGroups,omitempty"`
}
