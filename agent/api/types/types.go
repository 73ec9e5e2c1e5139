// Package types is the agent API's contract: the request and response
// bodies of the agent's HTTP/JSON API on its unix socket, as plain structs
// with their JSON tags. It imports only the standard library, so that
// clients (the CLI, the CNI plugin, users' programs) link none of the
// agent's machinery; the server (agent/api) converts the agent's domain
// values to these types, and their JSON is the wire format.
package types

import "time"

// DefaultSocket is where the agent listens unless configured otherwise.
const DefaultSocket = "/var/run/filament/agent.sock"

// SocketEnv overrides the socket path for clients.
const SocketEnv = "FILAMENT_API_SOCKET"

// Error is the body of every non-2xx answer.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"error"`
}

// Error codes of Error.Code.
const (
	CodeNotFound    = "not_found"
	CodeExists      = "exists"
	CodeUnavailable = "unavailable"
	CodeExhausted   = "exhausted"
	CodeInvalid     = "invalid"
	CodeTooLarge    = "too_large"
	CodeInternal    = "internal"
)

// Status is the agent's state in brief (GET /v1/status).
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
	// Kubernetes is set in Kubernetes mode.
	Kubernetes *KubernetesStatus `json:"kubernetes,omitempty"`
	// Proxy is set while the L7 proxy runs.
	Proxy *ProxyStatus `json:"proxy,omitempty"`
}

// ProxyStatus says whether the L7 proxy has the agent's configuration:
// a configuration it refused (past its 64 MiB bound, say) leaves it on the
// last one it took, shown here with the refusal and since when.
type ProxyStatus struct {
	Applied bool `json:"applied"`
	// LastError is the refusal of the current configuration, since
	// ErrorSince (Applied false).
	LastError  string     `json:"lastError,omitempty"`
	ErrorSince *time.Time `json:"errorSince,omitempty"`
}

// KubernetesStatus says which API server the agent follows and which
// resources' first list has not arrived yet (their objects are not applied
// until it does: the API server does not answer, or a CRD is missing).
type KubernetesStatus struct {
	APIServer string   `json:"apiServer"`
	Waiting   []string `json:"waiting,omitempty"`
	// LastError is the informers' last list or watch error (they retry
	// on their own), at LastErrorTime.
	LastError     string     `json:"lastError,omitempty"`
	LastErrorTime *time.Time `json:"lastErrorTime,omitempty"`
}

// DatapathStatus describes the node's eBPF datapath.
type DatapathStatus struct {
	EnforcementMode string `json:"enforcementMode"`
	// PolicyAuditMode: what policy would drop passes and is reported.
	PolicyAuditMode  bool   `json:"policyAuditMode"`
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
