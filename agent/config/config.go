// Package config owns the agent's configuration: defaults, the YAML file,
// validation with errors that name the field, and the precedence
// defaults < file < flags.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/filament-net/filament/agent/service/maglev"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/agent/ipam"
	"github.com/filament-net/filament/agent/kvstore"
)

// ErrInvalid is wrapped by every configuration error.
var ErrInvalid = errors.New("invalid configuration")

// Defaults.
const (
	DefaultStateDir    = "/var/lib/filament"
	DefaultAPISocket   = "/var/run/filament/agent.sock"
	DefaultClusterName = "default"
	DefaultClusterID   = 1
	DefaultClusterPool = "10.244.0.0/16"
	DefaultPodCIDRSize = 24
	DefaultEtcdClient  = "http://127.0.0.1:2379"
	DefaultEtcdPeer    = "http://127.0.0.1:2380"
	DefaultLeaseTTL    = 15 * time.Second
	DefaultGCInterval  = 5 * time.Minute
)

// Duration is a time.Duration written as "15s" in YAML and JSON.
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "15s" (or a number of seconds).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err2 := json.Unmarshal(b, &secs); err2 != nil {
			return fmt.Errorf("duration %s: want a string like \"15s\"", b)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %v", s, err)
	}
	*d = Duration(v)
	return nil
}

// Config of one agent.
type Config struct {
	NodeName    string `json:"nodeName"`
	ClusterName string `json:"clusterName"`
	ClusterID   uint32 `json:"clusterID"`
	// PodCIDR fixes this node's pod CIDR; empty allocates one from ClusterPool.
	PodCIDR string `json:"podCIDR,omitempty"`
	// ClusterPool is the cluster-wide range pod CIDRs are allocated from,
	// in blocks of /PodCIDRSize.
	ClusterPool string `json:"clusterPool"`
	PodCIDRSize int    `json:"podCIDRSize"`
	// NodeIP is this node's underlay address (default: the first global
	// IPv4 address of the node).
	NodeIP string `json:"nodeIP,omitempty"`
	// Routing between nodes: tunnel (VXLAN) or native (routes).
	Routing string `json:"routing"`
	// ClusterMeshConfig is a directory of remote cluster configs (one
	// <name>.yaml each, written by filament clustermesh connect); empty: none.
	ClusterMeshConfig string `json:"clusterMeshConfig,omitempty"`
	// ClusterMeshTTL withdraws a lost remote cluster's entries after this
	// long; 0 keeps them (traffic keeps flowing to what was known).
	ClusterMeshTTL Duration `json:"clusterMeshTTL"`
	// PolicyAllClusters makes peer selectors that name no cluster match
	// every cluster of the mesh instead of only the local one.
	PolicyAllClusters bool `json:"policyAllClusters"`
	// MaxConnectedClusters selects the identity layout: 255 (cluster ID in
	// bits 16-23) or 511 (bits 15-23, half the identities per cluster); the
	// same in every cluster of a mesh.
	MaxConnectedClusters int `json:"maxConnectedClusters"`
	// MemberlistPort for failure detection among the cluster's agents (0 disables it).
	MemberlistPort int    `json:"memberlistPort"`
	StateDir       string `json:"stateDir"`
	APISocket      string `json:"apiSocket"`
	// Etcd: external endpoints; none means the agent runs an embedded etcd.
	Etcd kvstore.Config `json:"etcd"`
	// EmbeddedEtcd listen addresses, used when Etcd.Endpoints is empty.
	EmbeddedEtcd EmbeddedEtcd `json:"embeddedEtcd"`
	// LeaseTTL of the node's kvstore lease.
	LeaseTTL Duration `json:"leaseTTL"`
	// IdentityGCInterval between garbage collections of unreferenced identities.
	IdentityGCInterval Duration `json:"identityGCInterval"`
	// MTU of pod interfaces (0: the underlay's, less the tunnel overhead in tunnel mode).
	MTU int `json:"mtu"`
	// LogLevel: debug, info, warn or error.
	LogLevel string `json:"logLevel"`
	// BPFRoot is the bpffs mount under which maps and links are pinned
	// (<BPFRoot>/filament/<nodeName>).
	BPFRoot string `json:"bpfRoot"`
	// EnforcementMode: default (a direction is enforced once a rule selects
	// the endpoint in it), always, or never.
	EnforcementMode string `json:"enforcementMode"`
	// DatapathAttach: auto (tcx, else tc), tcx or tc.
	DatapathAttach string `json:"datapathAttach"`
	// ConntrackGCInterval between collections of expired conntrack entries.
	ConntrackGCInterval Duration `json:"conntrackGCInterval"`
	// PrometheusListen is a TCP address for /metrics ("" = only on the API socket).
	PrometheusListen string `json:"prometheusListen"`
	// LBAlgorithm is the default backend selection of services: random or maglev.
	LBAlgorithm string `json:"lbAlgorithm"`
	// MaglevTableSize is the Maglev table size (a prime, 251-131071).
	MaglevTableSize uint32 `json:"maglevTableSize"`
	// SocketLB attaches the socket-level load balancer (cgroup connect4,
	// sendmsg4, recvmsg4, getpeername4) for pods and the node.
	SocketLB bool `json:"socketLB"`
	// CgroupRoot is the cgroup v2 directory the socket programs attach to
	// ("" = the cgroup2 mount).
	CgroupRoot string `json:"cgroupRoot"`
	// Encryption of pod traffic between nodes: none, wireguard or ipsec.
	Encryption string `json:"encryption"`
	// EncryptionStrict drops pod traffic to a node that is not an
	// encryption peer (yet) instead of sending it in clear.
	EncryptionStrict bool `json:"encryptionStrict"`
	// IPsecKeyFile holds the IPsec keys (encryption: ipsec).
	IPsecKeyFile string `json:"ipsecKeyFile"`
	// NodeCert and NodeKey: this node's certificate from the cluster's CA
	// (PEM); with them the node signs its record and accepts only nodes
	// whose records verify against NodeCA (and remote clusters' CAs).
	NodeCert string `json:"nodeCert"`
	NodeKey  string `json:"nodeKey"`
	NodeCA   string `json:"nodeCA"`
	// AWSRegion turns on AWS groups (toGroups/fromGroups) and EC2 node
	// metadata ("" = from AWS_REGION or the shared config, else off);
	// AWSEndpoint overrides the EC2 endpoint (tests).
	AWSRegion   string `json:"awsRegion"`
	AWSEndpoint string `json:"awsEndpoint"`
	// AWSIMDSEndpoint overrides the instance metadata endpoint (tests).
	AWSIMDSEndpoint string `json:"awsIMDSEndpoint"`
	// GroupsRefreshInterval between resolutions of cloud groups.
	GroupsRefreshInterval Duration `json:"groupsRefreshInterval"`
	// Kubeconfig turns on Kubernetes mode: NetworkPolicy and the Cilium
	// policy CRDs are followed from the API server ("" = off).
	Kubeconfig string `json:"kubeconfig"`
	// WireGuardPrivateRunDir mounts a private tmpfs on /var/run/wireguard
	// for the embedded WireGuard's UAPI socket (labs: several agents, each in
	// its own mount namespace, on one machine).
	WireGuardPrivateRunDir bool `json:"wireguardPrivateRunDir"`
}

// EmbeddedEtcd configures the etcd the agent starts itself.
type EmbeddedEtcd struct {
	ClientURL     string `json:"clientURL"`
	PeerURL       string `json:"peerURL"`
	UnsafeNoFsync bool   `json:"unsafeNoFsync"`
}

// Default returns the configuration of an agent started without flags.
func Default() Config {
	host, _ := os.Hostname()
	host = strings.ToLower(strings.SplitN(host, ".", 2)[0])
	if !dnsLabel.MatchString(host) {
		host = "node"
	}
	return Config{
		NodeName: host, ClusterName: DefaultClusterName, ClusterID: DefaultClusterID,
		ClusterPool: DefaultClusterPool, PodCIDRSize: DefaultPodCIDRSize, Routing: "tunnel", MemberlistPort: 7946, MaxConnectedClusters: 255,
		StateDir: DefaultStateDir, APISocket: DefaultAPISocket,
		EmbeddedEtcd:          EmbeddedEtcd{ClientURL: DefaultEtcdClient, PeerURL: DefaultEtcdPeer},
		LeaseTTL:              Duration(DefaultLeaseTTL),
		IdentityGCInterval:    Duration(DefaultGCInterval),
		MTU:                   0,
		LogLevel:              "info",
		BPFRoot:               "/sys/fs/bpf",
		EnforcementMode:       "default",
		DatapathAttach:        "auto",
		ConntrackGCInterval:   Duration(30 * time.Second),
		LBAlgorithm:           "random",
		MaglevTableSize:       maglev.DefaultSize,
		SocketLB:              true,
		Encryption:            "none",
		GroupsRefreshInterval: Duration(5 * time.Minute),
	}
}

// LoadFile reads a YAML (or JSON) file over c; unknown fields are errors.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: config file: %v", ErrInvalid, err)
	}
	next := *c
	if err := yaml.UnmarshalStrict(b, &next); err != nil {
		return fmt.Errorf("%w: config file %s: %v", ErrInvalid, path, err)
	}
	*c = next
	return nil
}

var (
	dnsLabel    = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	clusterName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$`)
)

// ValidateClusterName checks a cluster name: at most 32 lowercase letters,
// digits and '-', starting and ending with a letter or digit.
func ValidateClusterName(name string) error {
	if !clusterName.MatchString(name) {
		return fmt.Errorf("%w: clusterName %q: must be 1-32 lowercase letters, digits and '-', starting and ending alphanumeric", ErrInvalid, name)
	}
	return nil
}

// Validate checks every field and names the first bad one.
func (c Config) Validate() error {
	if !dnsLabel.MatchString(c.NodeName) {
		return fmt.Errorf("%w: nodeName %q: must be a DNS label (lowercase letters, digits, '-', at most 63)", ErrInvalid, c.NodeName)
	}
	if err := ValidateClusterName(c.ClusterName); err != nil {
		return err
	}
	if c.MaxConnectedClusters != 255 && c.MaxConnectedClusters != 511 {
		return fmt.Errorf("%w: maxConnectedClusters %d: want 255 or 511", ErrInvalid, c.MaxConnectedClusters)
	}
	if c.ClusterID < 1 || int(c.ClusterID) > c.MaxConnectedClusters {
		return fmt.Errorf("%w: clusterID %d: must be 1-%d (maxConnectedClusters)", ErrInvalid, c.ClusterID, c.MaxConnectedClusters)
	}
	if c.PodCIDR != "" {
		if _, err := ipam.New(c.PodCIDR); err != nil {
			return fmt.Errorf("%w: podCIDR: %v", ErrInvalid, err)
		}
	}
	pool, err := netip.ParsePrefix(c.ClusterPool)
	if err != nil || !pool.Addr().Is4() || pool.Masked() != pool {
		return fmt.Errorf("%w: clusterPool %q: want an IPv4 CIDR written with its network address", ErrInvalid, c.ClusterPool)
	}
	if c.PodCIDRSize < pool.Bits() || c.PodCIDRSize < 8 || c.PodCIDRSize > 29 {
		return fmt.Errorf("%w: podCIDRSize %d: must be /8-/29 and inside clusterPool %s", ErrInvalid, c.PodCIDRSize, c.ClusterPool)
	}
	if c.NodeIP != "" {
		if a, err := netip.ParseAddr(c.NodeIP); err != nil || !a.Is4() {
			return fmt.Errorf("%w: nodeIP %q: want an IPv4 address", ErrInvalid, c.NodeIP)
		}
	}
	if c.Routing != "tunnel" && c.Routing != "native" {
		return fmt.Errorf("%w: routing %q: want tunnel or native", ErrInvalid, c.Routing)
	}
	if c.MemberlistPort < 0 || c.MemberlistPort > 65535 {
		return fmt.Errorf("%w: memberlistPort %d: want 0-65535", ErrInvalid, c.MemberlistPort)
	}
	if !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("%w: stateDir %q: must be an absolute path", ErrInvalid, c.StateDir)
	}
	if !filepath.IsAbs(c.APISocket) {
		return fmt.Errorf("%w: apiSocket %q: must be an absolute path", ErrInvalid, c.APISocket)
	}
	for i, ep := range c.Etcd.Endpoints {
		if !strings.HasPrefix(ep, "http://") && !strings.HasPrefix(ep, "https://") {
			return fmt.Errorf("%w: etcd.endpoints[%d] %q: must start with http:// or https://", ErrInvalid, i, ep)
		}
	}
	if c.LeaseTTL < Duration(time.Second) {
		return fmt.Errorf("%w: leaseTTL %s: must be at least 1s", ErrInvalid, time.Duration(c.LeaseTTL))
	}
	if c.MTU != 0 && (c.MTU < 1280 || c.MTU > 65535) {
		return fmt.Errorf("%w: mtu %d: must be 0 (automatic) or 1280-65535", ErrInvalid, c.MTU)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%w: logLevel %q: want debug, info, warn or error", ErrInvalid, c.LogLevel)
	}
	if !filepath.IsAbs(c.BPFRoot) {
		return fmt.Errorf("%w: bpfRoot %q: must be an absolute path", ErrInvalid, c.BPFRoot)
	}
	switch c.EnforcementMode {
	case "default", "always", "never":
	default:
		return fmt.Errorf("%w: enforcementMode %q: want default, always or never", ErrInvalid, c.EnforcementMode)
	}
	switch c.DatapathAttach {
	case "auto", "tcx", "tc":
	default:
		return fmt.Errorf("%w: datapathAttach %q: want auto, tcx or tc", ErrInvalid, c.DatapathAttach)
	}
	switch c.Encryption {
	case "none", "wireguard":
	case "ipsec":
		if c.IPsecKeyFile == "" {
			return fmt.Errorf("%w: ipsecKeyFile: required with encryption ipsec", ErrInvalid)
		}
		if c.Routing != "native" {
			return fmt.Errorf("%w: encryption ipsec needs routing native (the XFRM policies select pod CIDRs), not %q", ErrInvalid, c.Routing)
		}
	default:
		return fmt.Errorf("%w: encryption %q: want none, wireguard or ipsec", ErrInvalid, c.Encryption)
	}
	if c.EncryptionStrict && c.Encryption == "none" {
		return fmt.Errorf("%w: encryptionStrict: needs encryption wireguard or ipsec", ErrInvalid)
	}
	if (c.NodeCert == "") != (c.NodeKey == "") || (c.NodeCert != "" && c.NodeCA == "") {
		return fmt.Errorf("%w: nodeCert, nodeKey and nodeCA go together (node authentication)", ErrInvalid)
	}
	if c.GroupsRefreshInterval < Duration(time.Second) {
		return fmt.Errorf("%w: groupsRefreshInterval %s: must be at least 1s", ErrInvalid, time.Duration(c.GroupsRefreshInterval))
	}
	if c.LBAlgorithm != "random" && c.LBAlgorithm != "maglev" {
		return fmt.Errorf("%w: lbAlgorithm %q: want random or maglev", ErrInvalid, c.LBAlgorithm)
	}
	if err := maglev.ValidSize(c.MaglevTableSize); err != nil {
		return fmt.Errorf("%w: maglevTableSize: %v", ErrInvalid, err)
	}
	if c.ConntrackGCInterval < Duration(time.Second) {
		return fmt.Errorf("%w: conntrackGCInterval %s: must be at least 1s", ErrInvalid, time.Duration(c.ConntrackGCInterval))
	}
	return nil
}
