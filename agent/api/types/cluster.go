package types

import "time"

// Node is one node's record as the agent sees it (GET /v1/nodes).
type Node struct {
	Name      string   `json:"name"`
	Cluster   string   `json:"cluster"`
	ClusterID uint32   `json:"clusterID"`
	IPs       []string `json:"ips"`
	PodCIDRs  []string `json:"podCIDRs"`
	Routing   string   `json:"routing"`
	Health    string   `json:"health"`
	// Labels describe the node (on EC2: region, zone, instance type, VPC).
	Labels map[string]string `json:"labels,omitempty"`
	// WireGuardKey is the node's WireGuard public key (encryption on).
	WireGuardKey string `json:"wireguardPublicKey,omitempty"`
	// Certificate (PEM) issued by the cluster's CA, and Signature of the
	// record with its key, when nodes authenticate.
	Certificate string `json:"certificate,omitempty"`
	Signature   string `json:"signature,omitempty"`
	// LocalAddrs are the node's other addresses (its control ports are
	// closed to pods there too).
	LocalAddrs []string `json:"localAddrs,omitempty"`
	// Gossip: the node runs failure detection.
	Gossip bool `json:"gossip,omitempty"`
	// Reachable is this agent's view from failure detection.
	Reachable bool `json:"reachable"`
}

// ClusterStatus is one remote cluster the agent follows (GET
// /v1/clustermesh).
type ClusterStatus struct {
	Name       string `json:"name"`
	ClusterID  uint32 `json:"clusterID,omitempty"`
	Configured bool   `json:"configured"`
	// Pending: the config on disk is new, changed or removed since the
	// agent last read the directory (it does every second).
	Pending     bool      `json:"pending,omitempty"`
	Connected   bool      `json:"connected"`
	Ready       bool      `json:"ready"`
	Withdrawn   bool      `json:"withdrawn,omitempty"`
	Nodes       int       `json:"nodes"`
	Endpoints   int       `json:"endpoints"`
	Identities  int       `json:"identities"`
	Services    int       `json:"services"`
	Rejected    int       `json:"rejected"`
	LastFailure string    `json:"lastFailure,omitempty"`
	FailureTime time.Time `json:"lastFailureTime,omitzero"`
	Since       time.Time `json:"connectedSince,omitzero"`
	// Via: "direct" (the remote's apiserver) or "cache" (the local
	// apiserver's cache, whose own view the Cache fields are).
	Via              string `json:"via"`
	CacheConnected   bool   `json:"cacheConnected,omitempty"`
	CacheRejected    int    `json:"cacheRejected,omitempty"`
	CacheLastFailure string `json:"cacheLastFailure,omitempty"`
	// TTL after which a lost cluster's entries are withdrawn ("0s": never).
	TTL string `json:"ttl"`
	// LostSince: health checks have failed since then.
	LostSince time.Time `json:"lostSince,omitzero"`
	// HeartbeatAge: since the remote's last new heartbeat reached this
	// agent (its own clock); empty: none yet.
	HeartbeatAge string `json:"heartbeatAge,omitempty"`
	// CanaryStale: no new heartbeat for the stale bound.
	CanaryStale bool `json:"canaryStale"`
	// TTLLeft: until the entries are withdrawn if nothing changes (empty:
	// the TTL is not running).
	TTLLeft string `json:"ttlLeft,omitempty"`
	// Upserts and Deletes: changes passed on to the agent.
	Upserts int `json:"upserts"`
	Deletes int `json:"deletes"`
}

// EncryptionStatus is the node's transparent encryption (GET
// /v1/encryption).
type EncryptionStatus struct {
	Mode      string       `json:"mode"` // none, wireguard, ipsec
	Strict    bool         `json:"strict"`
	Device    string       `json:"device,omitempty"`
	Type      string       `json:"type,omitempty"` // kernel or userspace
	PublicKey string       `json:"publicKey,omitempty"`
	Port      int          `json:"port,omitempty"`
	Peers     []PeerStatus `json:"peers"`
	// StrictDrops counts packets strict mode dropped (no peer yet).
	StrictDrops uint64 `json:"strictDrops"`
	// Authentication: nodes must present a certificate of their cluster's
	// CA and a signed record; Refused are the nodes that did not.
	Authentication bool      `json:"authentication"`
	Refused        []Refusal `json:"refused"`
}

// PeerStatus is one encryption peer as the device reports it.
type PeerStatus struct {
	Name          string    `json:"name"`
	PublicKey     string    `json:"publicKey"`
	Endpoint      string    `json:"endpoint"`
	AllowedIPs    []string  `json:"allowedIPs"`
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	RxBytes       int64     `json:"rxBytes"`
	TxBytes       int64     `json:"txBytes"`
}

// Refusal is a node that is not accepted, and why.
type Refusal struct {
	Node   string    `json:"node"` // as the agent names it (remote nodes <cluster>/<node>)
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}
