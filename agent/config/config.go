// Package config owns the agent's configuration: defaults, the YAML file,
// validation with errors that name the field, and the precedence
// defaults < file < flags.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/agent/ipam"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/service/maglev"
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
	// DefaultClusterMeshTTL: a lost remote cluster's entries are withdrawn
	// after 5 minutes.
	DefaultClusterMeshTTL = 5 * time.Minute
	DefaultGCInterval     = 5 * time.Minute
	// DefaultHubbleFlows is the flow ring's size, Hubble's.
	DefaultHubbleFlows = 4095
	// The flow export file's rotation size and backups, Hubble's.
	DefaultHubbleExportFileMaxSizeMB  = 10
	DefaultHubbleExportFileMaxBackups = 5
	// DefaultProxyPort is the L7 proxy's listener port.
	DefaultProxyPort = 15001
)

// DefaultClusterMeshPodRanges: remote pod CIDRs may lie in the private
// (RFC 1918) and shared (RFC 6598) ranges.
var DefaultClusterMeshPodRanges = []string{"10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16"}

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
	// NativeForwarding: in native routing without encryption, who forwards
	// pod traffic between nodes: bpf (the programs, with the kernel's FIB:
	// the nodes' IP forwarding and its netfilter hooks are skipped) or
	// kernel (the nodes' IP forwarding routes it).
	NativeForwarding string `json:"nativeForwarding"`
	// ClusterMeshConfig is a directory of remote cluster configs (one
	// <name>.yaml each, written by filament clustermesh connect); empty: none.
	ClusterMeshConfig string `json:"clusterMeshConfig,omitempty"`
	// ClusterMeshTTL withdraws a lost remote cluster's entries once it has
	// been unreachable, its heartbeat stale, for this long (default 5m); 0
	// keeps them for ever (traffic keeps flowing to what was known).
	ClusterMeshTTL Duration `json:"clusterMeshTTL"`
	// ClusterMeshPodRanges are where remote clusters' pod CIDRs may lie: a
	// remote node record with a pod CIDR outside all of them is refused
	// (it would be routed to that node). Default: the private and shared
	// ranges (DefaultClusterMeshPodRanges); 0.0.0.0/0 allows any. An
	// entry CLUSTER=CIDR pins a range to a remote: that remote's pod
	// CIDRs must lie in its pinned ranges, and no other remote's may meet
	// them (RemotePodRanges).
	ClusterMeshPodRanges []string `json:"clusterMeshPodRanges"`
	// ClusterMeshClusterIDs pin remotes' cluster IDs (CLUSTER=ID each): a
	// pinned remote must have its ID and no other remote may have it.
	ClusterMeshClusterIDs []string `json:"clusterMeshClusterIDs,omitempty"`
	// ClusterMeshCache reads the remote clusters from the cache of this
	// cluster's filament-clustermesh-apiserver (run with
	// --clustermesh-cache) instead of connecting to each of them.
	ClusterMeshCache bool `json:"clusterMeshCache,omitempty"`
	// RemoteIPCache: full (default) writes every remote pod's /32; sparse
	// (opt-in until Hubble names covered pods) writes one entry per remote cluster
	// node's pod CIDR and a remote pod's /32 only where this node's policy
	// tells its identity apart (agent/sparse).
	RemoteIPCache string `json:"remoteIPCache"`
	// PolicyAllClusters makes peer selectors that name no cluster match
	// every cluster of the mesh instead of only the local one.
	PolicyAllClusters bool `json:"policyAllClusters"`
	// MaxConnectedClusters selects the identity layout: 255 (cluster ID in
	// bits 16-23) or 511 (bits 15-23, half the identities per cluster); the
	// same in every cluster of a mesh.
	MaxConnectedClusters int `json:"maxConnectedClusters"`
	// MemberlistPort for failure detection among the cluster's agents (0 disables it).
	MemberlistPort int `json:"memberlistPort"`
	// GossipKeyFile holds the cluster's gossip keys (the bundle's
	// gossip.key; crypto/gossipkey), re-read every few seconds for
	// rotation. Empty: with the embedded etcd (one node) a key is kept in
	// StateDir; with an external etcd the agent refuses to start.
	GossipKeyFile string `json:"gossipKeyFile,omitempty"`
	StateDir      string `json:"stateDir"`
	APISocket     string `json:"apiSocket"`
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
	// FlowEvents chooses the forwarded connections the datapath reports
	// (as flows): connections (every new connection at every endpoint,
	// one event per connection and endpoint), enforced (only in the
	// directions a policy enforces) or off. Drops are always reported.
	FlowEvents string `json:"flowEvents"`
	// PolicyAuditMode lets through what policy would drop (no rule allows
	// it, or a deny rule matches) and reports it instead, once per
	// connection, as a flow of verdict AUDIT with the drop reason it would
	// have had: to try policies out before they drop anything. Drops that
	// are not policy's (invalid packets, spoofed sources, node control
	// ports) still drop. Not for production: nothing is enforced.
	PolicyAuditMode bool `json:"policyAuditMode"`
	// ConntrackGCInterval between collections of expired conntrack entries.
	ConntrackGCInterval Duration `json:"conntrackGCInterval"`
	// PrometheusListen is a TCP address for /metrics ("" = only on the API socket).
	PrometheusListen string `json:"prometheusListen"`
	// Hubble serves the node's flows over Hubble's API (Observer, Peer).
	Hubble bool `json:"hubble"`
	// HubbleSocket is its unix socket, mode 0660 ("" = hubble.sock beside
	// the API socket).
	HubbleSocket string `json:"hubbleSocket"`
	// HubbleListen is a TCP address to serve it on as well ("" = none),
	// for the relay: mutual TLS with the node's certificate (NodeCert),
	// clients' certificates chaining to the cluster's CA (NodeCA).
	HubbleListen string `json:"hubbleListen"`
	// HubbleTLSClientNames are the certificate common names HubbleListen
	// serves: the cluster's relay (hubble-relay) and connected clusters'
	// relays (hubble-remote, the certificate this cluster gave them at
	// connect).
	HubbleTLSClientNames []string `json:"hubbleTLSClientNames"`
	// HubblePeers is the cluster's clustermesh bundle's list of connected
	// clusters (remote-peers): a connected cluster's relay certificate
	// (hubble-remote-<cluster>-<token>, issued at connect) is served
	// while that cluster is listed with that token ("": none is served).
	HubblePeers string `json:"hubblePeers,omitempty"`
	// HubbleFlows is the size of the node's flow ring.
	HubbleFlows int `json:"hubbleFlows"`
	// HubbleExportFile is a file the node's flows are written to, one JSON
	// line each ("" = none); it rotates at HubbleExportFileMaxSizeMB and
	// keeps HubbleExportFileMaxBackups rotated files.
	HubbleExportFile           string `json:"hubbleExportFile"`
	HubbleExportFileMaxSizeMB  int    `json:"hubbleExportFileMaxSizeMB"`
	HubbleExportFileMaxBackups int    `json:"hubbleExportFileMaxBackups"`
	// HubbleExportAllowlist and HubbleExportDenylist choose the flows
	// exported: Hubble FlowFilters in JSON (see HubbleExportFilters).
	HubbleExportAllowlist string `json:"hubbleExportAllowlist"`
	HubbleExportDenylist  string `json:"hubbleExportDenylist"`
	// LBAlgorithm is the default backend selection of services: random or maglev.
	LBAlgorithm string `json:"lbAlgorithm"`
	// MaglevTableSize is the Maglev table size (a prime, 251-131071).
	MaglevTableSize uint32 `json:"maglevTableSize"`
	// SocketLB attaches the socket-level load balancer (cgroup connect4,
	// sendmsg4, recvmsg4, getpeername4, and their IPv6 twins for
	// dual-stack sockets' v4-mapped addresses) for pods and the node.
	SocketLB bool `json:"socketLB"`
	// CgroupRoot is the cgroup v2 directory the socket programs attach to
	// ("" = the cgroup2 mount).
	CgroupRoot string `json:"cgroupRoot"`
	// ProxyPort is the node's L7 proxy listener (0: no proxy; flows that
	// L7 rules apply to are dropped).
	ProxyPort int `json:"proxyPort"`
	// ProxyBinary is the filament-proxy executable ("" = next to the
	// agent's, else on PATH).
	ProxyBinary string `json:"proxyBinary"`
	// ToFQDNsMinTTL raises the TTL of learned DNS names to at least this.
	ToFQDNsMinTTL Duration `json:"tofqdnsMinTTL"`
	// ToFQDNsMaxIPsPerName bounds the addresses kept per learned name
	// (the oldest go first).
	ToFQDNsMaxIPsPerName int `json:"tofqdnsMaxIPsPerName"`
	// ToFQDNsMaxEntries bounds the (name, address) entries of the node's
	// DNS name cache (those that expire soonest go first).
	ToFQDNsMaxEntries int `json:"tofqdnsMaxEntries"`
	// DNSRejectResponse is the proxy's answer to a DNS query no rule
	// allows: refused or nxdomain.
	DNSRejectResponse string `json:"dnsRejectResponse"`
	// Encryption of pod traffic between nodes: none, wireguard or ipsec.
	Encryption string `json:"encryption"`
	// EncryptionStrict drops pod traffic to a node that is not an
	// encryption peer (yet) instead of sending it in clear.
	EncryptionStrict bool `json:"encryptionStrict"`
	// EncryptionUnauthenticatedNodes lets an agent with encryption on
	// run without node authentication (no nodeCert), making every node in
	// the kvstore an encryption peer. Off: such an agent refuses to start.
	EncryptionUnauthenticatedNodes bool `json:"encryptionUnauthenticatedNodes,omitempty"`
	// IPsecKeyFile holds the IPsec keys (encryption: ipsec).
	IPsecKeyFile string `json:"ipsecKeyFile"`
	// NodeCert and NodeKey: this node's certificate from the cluster's CA
	// (PEM); with them the node signs its record and accepts only nodes
	// whose records verify against NodeCA (and remote clusters' CAs).
	NodeCert string `json:"nodeCert"`
	NodeKey  string `json:"nodeKey"`
	NodeCA   string `json:"nodeCA"`
	// NodeCRL is the CA's revocation list of node certificates (PEM,
	// `filament clustermesh revoke-node-cert`), read again when it
	// changes; absent: nothing revoked yet. Needs NodeCA.
	NodeCRL string `json:"nodeCRL,omitempty"`
	// AWSRegion turns on AWS groups (toGroups/fromGroups) and EC2 node
	// metadata ("" = from AWS_REGION or the shared config, else off);
	// AWSEndpoint overrides the EC2 endpoint (tests).
	AWSRegion   string `json:"awsRegion"`
	AWSEndpoint string `json:"awsEndpoint"`
	// AWSIMDSEndpoint overrides the instance metadata endpoint (tests).
	AWSIMDSEndpoint string `json:"awsIMDSEndpoint"`
	// AWSVPCIDs are the VPCs cloud groups resolve in beside the node's
	// own (from the instance metadata); with neither, groups fail (and
	// allow nothing). Whoever may tag an instance or interface in them
	// with a group's tags (or put it in its security group) adds its
	// addresses to the group.
	AWSVPCIDs []string `json:"awsVPCIDs,omitempty"`
	// GroupsRefreshInterval between resolutions of cloud groups.
	GroupsRefreshInterval Duration `json:"groupsRefreshInterval"`
	// Kubeconfig turns on Kubernetes mode: NetworkPolicy and the Cilium
	// policy CRDs are followed from the API server ("" = off).
	Kubeconfig string `json:"kubeconfig"`
	// KubernetesInCluster turns on Kubernetes mode with the pod's
	// ServiceAccount (token and CA under
	// /var/run/secrets/kubernetes.io/serviceaccount) instead of a
	// kubeconfig: the agent as a DaemonSet pod.
	KubernetesInCluster bool `json:"kubernetesInCluster"`
	// KubernetesAPIServer is the API server's host:port in-cluster ("" =
	// KUBERNETES_SERVICE_HOST/PORT, the kubernetes Service's cluster IP,
	// which nothing may translate before the agent runs).
	KubernetesAPIServer string `json:"kubernetesAPIServer"`
	// RemountProcSys remounts /proc/sys read-write at start: a container
	// runtime mounts it read-only in an unprivileged container, and the
	// agent writes the node's network sysctls.
	RemountProcSys bool `json:"remountProcSys"`
	// WireGuardPrivateRunDir mounts a private tmpfs on /var/run/wireguard
	// for the embedded WireGuard's UAPI socket (labs: several agents, each in
	// its own mount namespace, on one machine).
	WireGuardPrivateRunDir bool `json:"wireguardPrivateRunDir"`
	// WireGuardDeviceCommand runs the embedded WireGuard device in a
	// process of its own (crypto/wireguard Config.DeviceCommand); set by
	// the agent's command, never from a file or flag.
	WireGuardDeviceCommand []string `json:"-"`
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
		ClusterPool: DefaultClusterPool, PodCIDRSize: DefaultPodCIDRSize, Routing: "tunnel", RemoteIPCache: "full", MemberlistPort: 7946, MaxConnectedClusters: 255,
		StateDir: DefaultStateDir, APISocket: DefaultAPISocket,
		HubbleExportFileMaxSizeMB: DefaultHubbleExportFileMaxSizeMB, HubbleExportFileMaxBackups: DefaultHubbleExportFileMaxBackups,
		EmbeddedEtcd:          EmbeddedEtcd{ClientURL: DefaultEtcdClient, PeerURL: DefaultEtcdPeer},
		LeaseTTL:              Duration(DefaultLeaseTTL),
		ClusterMeshTTL:        Duration(DefaultClusterMeshTTL),
		ClusterMeshPodRanges:  slices.Clone(DefaultClusterMeshPodRanges),
		IdentityGCInterval:    Duration(DefaultGCInterval),
		MTU:                   0,
		LogLevel:              "info",
		BPFRoot:               "/sys/fs/bpf",
		EnforcementMode:       "default",
		DatapathAttach:        "auto",
		FlowEvents:            "connections",
		NativeForwarding:      "bpf",
		ConntrackGCInterval:   Duration(30 * time.Second),
		LBAlgorithm:           "random",
		MaglevTableSize:       maglev.DefaultSize,
		SocketLB:              true,
		ProxyPort:             DefaultProxyPort,
		Hubble:                true,
		HubbleFlows:           DefaultHubbleFlows,
		HubbleTLSClientNames:  []string{"hubble-relay", "hubble-remote"},
		ToFQDNsMaxIPsPerName:  1000,
		ToFQDNsMaxEntries:     65536,
		DNSRejectResponse:     "refused",
		Encryption:            "none",
		GroupsRefreshInterval: Duration(5 * time.Minute),
	}
}

// HubbleSocketPath is the Hubble API's unix socket: HubbleSocket, else
// hubble.sock beside the API socket.
func (c Config) HubbleSocketPath() string {
	if c.HubbleSocket != "" {
		return c.HubbleSocket
	}
	return filepath.Join(filepath.Dir(c.APISocket), "hubble.sock")
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

// Validate checks every field and names the first bad one (and its value).
// It runs before the agent creates anything, so it also checks that the
// files the configuration names exist and that the etcd TLS material loads.
func (c Config) Validate() error {
	for _, check := range []func() error{c.validateCluster, c.validateNode, c.validateStore, c.validateDatapath, c.validateSecurity, c.validateIntegrations, c.validateHubbleExport} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

func (c Config) validateCluster() error {
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
	if err := absPath("clusterMeshConfig", c.ClusterMeshConfig, true); err != nil {
		return err
	}
	if c.ClusterMeshCache && c.ClusterMeshConfig == "" {
		return fmt.Errorf("%w: clusterMeshCache: needs clusterMeshConfig (the remotes' names)", ErrInvalid)
	}
	if c.RemoteIPCache != "sparse" && c.RemoteIPCache != "full" {
		return fmt.Errorf("%w: remoteIPCache %q: want sparse or full", ErrInvalid, c.RemoteIPCache)
	}
	if _, _, err := c.RemotePodRanges(); err != nil {
		return err
	}
	if _, err := c.RemoteClusterIDs(); err != nil {
		return err
	}
	return notNegative("clusterMeshTTL", c.ClusterMeshTTL)
}

// RemotePodRanges parses ClusterMeshPodRanges: the ranges of the remote
// clusters not pinned, and the pinned ones' (an entry CLUSTER=CIDR): a
// pinned cluster's pod CIDRs must lie in its own ranges, and no other
// remote's may meet them.
func (c Config) RemotePodRanges() (ranges []netip.Prefix, pinned map[string][]netip.Prefix, err error) {
	if len(c.ClusterMeshPodRanges) == 0 {
		return nil, nil, fmt.Errorf("%w: clusterMeshPodRanges: empty (0.0.0.0/0 allows remote pod CIDRs anywhere)", ErrInvalid)
	}
	owner := map[netip.Prefix]string{}
	for _, s := range c.ClusterMeshPodRanges {
		name, cidr, pin := strings.Cut(s, "=")
		if !pin {
			cidr = s
		} else if !clusterName.MatchString(name) || name == c.ClusterName {
			return nil, nil, fmt.Errorf("%w: clusterMeshPodRanges %q: want CLUSTER=CIDR naming a remote cluster (%q is not one)", ErrInvalid, s, name)
		}
		p, err := netip.ParsePrefix(cidr)
		if err != nil || !p.Addr().Is4() || p.Masked() != p {
			return nil, nil, fmt.Errorf("%w: clusterMeshPodRanges %q: want an IPv4 CIDR written with its network address", ErrInvalid, s)
		}
		if !pin {
			ranges = append(ranges, p)
			continue
		}
		for q, other := range owner {
			if other != name && q.Overlaps(p) {
				return nil, nil, fmt.Errorf("%w: clusterMeshPodRanges %q: overlaps %s, pinned to cluster %s", ErrInvalid, s, q, other)
			}
		}
		owner[p] = name
		if pinned == nil {
			pinned = map[string][]netip.Prefix{}
		}
		pinned[name] = append(pinned[name], p)
	}
	return ranges, pinned, nil
}

// RemoteClusterIDs parses ClusterMeshClusterIDs: remote name → pinned ID.
func (c Config) RemoteClusterIDs() (map[string]uint32, error) {
	var out map[string]uint32
	byID := map[uint32]string{}
	for _, s := range c.ClusterMeshClusterIDs {
		name, v, ok := strings.Cut(s, "=")
		id, err := strconv.ParseUint(v, 10, 32)
		switch {
		case !ok || !clusterName.MatchString(name) || name == c.ClusterName:
			return nil, fmt.Errorf("%w: clusterMeshClusterIDs %q: want CLUSTER=ID naming a remote cluster", ErrInvalid, s)
		case err != nil || id < 1 || id > uint64(c.MaxConnectedClusters) || uint32(id) == c.ClusterID:
			return nil, fmt.Errorf("%w: clusterMeshClusterIDs %q: want an ID 1-%d other than this cluster's (%d)", ErrInvalid, s, c.MaxConnectedClusters, c.ClusterID)
		case out[name] != 0:
			return nil, fmt.Errorf("%w: clusterMeshClusterIDs %q: %s is pinned twice", ErrInvalid, s, name)
		case byID[uint32(id)] != "":
			return nil, fmt.Errorf("%w: clusterMeshClusterIDs %q: ID %d is pinned to %s", ErrInvalid, s, id, byID[uint32(id)])
		}
		if out == nil {
			out = map[string]uint32{}
		}
		out[name], byID[uint32(id)] = uint32(id), name
	}
	return out, nil
}

func (c Config) validateNode() error {
	if c.NodeIP != "" {
		if a, err := netip.ParseAddr(c.NodeIP); err != nil || !a.Is4() {
			return fmt.Errorf("%w: nodeIP %q: want an IPv4 address", ErrInvalid, c.NodeIP)
		}
	}
	if c.Routing != "tunnel" && c.Routing != "native" {
		return fmt.Errorf("%w: routing %q: want tunnel or native", ErrInvalid, c.Routing)
	}
	if c.NativeForwarding != "bpf" && c.NativeForwarding != "kernel" {
		return fmt.Errorf("%w: nativeForwarding %q: want bpf or kernel", ErrInvalid, c.NativeForwarding)
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
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%w: logLevel %q: want debug, info, warn or error", ErrInvalid, c.LogLevel)
	}
	if err := listenAddr("prometheusListen", c.PrometheusListen); err != nil {
		return err
	}
	if err := listenAddr("hubbleListen", c.HubbleListen); err != nil {
		return err
	}
	if c.HubbleListen != "" && c.NodeCert == "" {
		return fmt.Errorf("%w: hubbleListen %q: needs nodeCert, nodeKey and nodeCA (the API is served over mutual TLS only)", ErrInvalid, c.HubbleListen)
	}
	if c.HubblePeers != "" && !filepath.IsAbs(c.HubblePeers) {
		return fmt.Errorf("%w: hubblePeers %q: must be an absolute path", ErrInvalid, c.HubblePeers)
	}
	if c.HubbleListen != "" && len(c.HubbleTLSClientNames) == 0 {
		return fmt.Errorf("%w: hubbleTLSClientNames: empty: no client could use hubbleListen", ErrInvalid)
	}
	if c.HubbleSocket != "" && !filepath.IsAbs(c.HubbleSocket) {
		return fmt.Errorf("%w: hubbleSocket %q: must be an absolute path", ErrInvalid, c.HubbleSocket)
	}
	if c.HubbleFlows < 1 || c.HubbleFlows > 1<<20 {
		return fmt.Errorf("%w: hubbleFlows %d: must be 1-1048576", ErrInvalid, c.HubbleFlows)
	}
	return atLeastASecond("identityGCInterval", c.IdentityGCInterval)
}

func (c Config) validateStore() error {
	for i, ep := range c.Etcd.Endpoints {
		if err := kvstoreURL(fmt.Sprintf("etcd.endpoints[%d]", i), ep); err != nil {
			return err
		}
	}
	if c.Etcd.DialTimeout < 0 {
		return fmt.Errorf("%w: etcd.dialTimeout %s: must not be negative (0: the default)", ErrInvalid, c.Etcd.DialTimeout)
	}
	if c.Etcd.Password != "" && c.Etcd.Username == "" {
		return fmt.Errorf("%w: etcd.password: needs etcd.username", ErrInvalid)
	}
	for _, f := range []struct{ field, path string }{{"etcd.caFile", c.Etcd.CAFile}, {"etcd.certFile", c.Etcd.CertFile}, {"etcd.keyFile", c.Etcd.KeyFile}} {
		if err := existingFile(f.field, f.path); err != nil {
			return err
		}
	}
	if _, err := c.Etcd.TLSConfig(); err != nil {
		return fmt.Errorf("%w: etcd: %v", ErrInvalid, err)
	}
	if err := kvstoreURL("embeddedEtcd.clientURL", c.EmbeddedEtcd.ClientURL); err != nil {
		return err
	}
	if err := kvstoreURL("embeddedEtcd.peerURL", c.EmbeddedEtcd.PeerURL); err != nil {
		return err
	}
	return atLeastASecond("leaseTTL", c.LeaseTTL)
}

func (c Config) validateDatapath() error {
	if c.MTU != 0 && (c.MTU < 1280 || c.MTU > 65535) {
		return fmt.Errorf("%w: mtu %d: must be 0 (automatic) or 1280-65535", ErrInvalid, c.MTU)
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
	switch c.FlowEvents {
	case "connections", "enforced", "off":
	default:
		return fmt.Errorf("%w: flowEvents %q: want connections, enforced or off", ErrInvalid, c.FlowEvents)
	}
	if c.PolicyAuditMode && c.EnforcementMode == "never" {
		return fmt.Errorf("%w: policyAuditMode: enforcementMode never enforces nothing, so there is nothing to audit", ErrInvalid)
	}
	if c.LBAlgorithm != "random" && c.LBAlgorithm != "maglev" {
		return fmt.Errorf("%w: lbAlgorithm %q: want random or maglev", ErrInvalid, c.LBAlgorithm)
	}
	if err := maglev.ValidSize(c.MaglevTableSize); err != nil {
		return fmt.Errorf("%w: maglevTableSize: %v", ErrInvalid, err)
	}
	if err := absPath("cgroupRoot", c.CgroupRoot, true); err != nil {
		return err
	}
	if c.ProxyPort < 0 || c.ProxyPort > 65534 {
		return fmt.Errorf("%w: proxyPort %d: must be 0 (no L7 proxy) or 1-65534", ErrInvalid, c.ProxyPort)
	}
	if err := absPath("proxyBinary", c.ProxyBinary, true); err != nil {
		return err
	}
	return atLeastASecond("conntrackGCInterval", c.ConntrackGCInterval)
}

func (c Config) validateSecurity() error {
	switch c.Encryption {
	case "none", "wireguard":
		if c.IPsecKeyFile != "" {
			return fmt.Errorf("%w: ipsecKeyFile %q: only used with encryption ipsec, not %q", ErrInvalid, c.IPsecKeyFile, c.Encryption)
		}
	case "ipsec":
		if c.IPsecKeyFile == "" {
			return fmt.Errorf("%w: ipsecKeyFile: required with encryption ipsec", ErrInvalid)
		}
		if err := existingFile("ipsecKeyFile", c.IPsecKeyFile); err != nil {
			return err
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
	if (c.NodeCert == "") != (c.NodeKey == "") || (c.NodeCert == "") != (c.NodeCA == "") {
		return fmt.Errorf("%w: nodeCert, nodeKey and nodeCA go together (node authentication)", ErrInvalid)
	}
	if c.Encryption != "none" && c.NodeCert == "" && !c.EncryptionUnauthenticatedNodes {
		return fmt.Errorf("%w: nodeCert: encryption %s without node authentication would make every node in the kvstore a peer; give nodeCert, nodeKey and nodeCA (filament clustermesh issue-node-cert), or set encryptionUnauthenticatedNodes to accept that", ErrInvalid, c.Encryption)
	}
	for _, f := range []struct{ field, path string }{{"nodeCert", c.NodeCert}, {"nodeKey", c.NodeKey}, {"nodeCA", c.NodeCA}} {
		if err := existingFile(f.field, f.path); err != nil {
			return err
		}
	}
	if c.NodeCRL != "" {
		if c.NodeCA == "" {
			return fmt.Errorf("%w: nodeCRL %q: needs nodeCA (node authentication)", ErrInvalid, c.NodeCRL)
		}
		if !filepath.IsAbs(c.NodeCRL) {
			return fmt.Errorf("%w: nodeCRL %q: must be an absolute path", ErrInvalid, c.NodeCRL)
		}
	}
	return nil
}

// awsRegion is the shape of an AWS region name (us-east-1, us-gov-west-1).
var awsRegion = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)

// awsVPCID is the shape of a VPC ID.
var awsVPCID = regexp.MustCompile(`^vpc-[0-9a-f]{1,32}$`)

func (c Config) validateIntegrations() error {
	if c.AWSRegion != "" && !awsRegion.MatchString(c.AWSRegion) {
		return fmt.Errorf("%w: awsRegion %q: want a region name like us-east-1", ErrInvalid, c.AWSRegion)
	}
	if err := optionalHTTPURL("awsEndpoint", c.AWSEndpoint); err != nil {
		return err
	}
	if err := optionalHTTPURL("awsIMDSEndpoint", c.AWSIMDSEndpoint); err != nil {
		return err
	}
	for _, v := range c.AWSVPCIDs {
		if !awsVPCID.MatchString(v) {
			return fmt.Errorf("%w: awsVPCIDs %q: want a VPC ID like vpc-0123456789abcdef0", ErrInvalid, v)
		}
	}
	if err := atLeastASecond("groupsRefreshInterval", c.GroupsRefreshInterval); err != nil {
		return err
	}
	if err := notNegative("tofqdnsMinTTL", c.ToFQDNsMinTTL); err != nil {
		return err
	}
	if c.ToFQDNsMaxIPsPerName < 1 || c.ToFQDNsMaxIPsPerName > 100000 {
		return fmt.Errorf("%w: tofqdnsMaxIPsPerName %d: must be 1-100000", ErrInvalid, c.ToFQDNsMaxIPsPerName)
	}
	if c.ToFQDNsMaxEntries < 1 || c.ToFQDNsMaxEntries > 10000000 {
		return fmt.Errorf("%w: tofqdnsMaxEntries %d: must be 1-10000000", ErrInvalid, c.ToFQDNsMaxEntries)
	}
	if c.DNSRejectResponse != "refused" && c.DNSRejectResponse != "nxdomain" {
		return fmt.Errorf("%w: dnsRejectResponse %q: want refused or nxdomain", ErrInvalid, c.DNSRejectResponse)
	}
	if c.KubernetesInCluster && c.Kubeconfig != "" {
		return fmt.Errorf("%w: kubeconfig %q and kubernetesInCluster: give one of them", ErrInvalid, c.Kubeconfig)
	}
	if c.KubernetesAPIServer != "" {
		if !c.KubernetesInCluster {
			return fmt.Errorf("%w: kubernetesAPIServer %q: only with kubernetesInCluster", ErrInvalid, c.KubernetesAPIServer)
		}
		if host, _, err := net.SplitHostPort(c.KubernetesAPIServer); err != nil || host == "" {
			return fmt.Errorf("%w: kubernetesAPIServer %q: want host:port of the API server", ErrInvalid, c.KubernetesAPIServer)
		}
		if err := listenAddr("kubernetesAPIServer", c.KubernetesAPIServer); err != nil {
			return err
		}
	}
	return existingFile("kubeconfig", c.Kubeconfig)
}

// KubernetesMode: the agent follows a Kubernetes cluster (a kubeconfig or
// in-cluster).
func (c *Config) KubernetesMode() bool { return c.Kubeconfig != "" || c.KubernetesInCluster }

// listenAddr checks an optional TCP listen address: host:port with an
// empty host (every address), an IP address or a host name, and a port
// 1-65535.
func listenAddr(field, addr string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: %s %q: want host:port (e.g. \":9962\" or \"127.0.0.1:9962\"): %v", ErrInvalid, field, addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%w: %s %q: port %q: want 1-65535", ErrInvalid, field, addr, port)
	}
	if _, err := netip.ParseAddr(host); host != "" && err != nil && !hostName(host) {
		return fmt.Errorf("%w: %s %q: host %q: want an IP address or a host name", ErrInvalid, field, addr, host)
	}
	return nil
}

// hostName reports whether s is a DNS name of lowercase or uppercase labels.
func hostName(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !dnsLabel.MatchString(strings.ToLower(l)) {
			return false
		}
	}
	return true
}

// httpURL checks an http:// or https:// URL with a host (and a port in
// range when one is given).
func httpURL(field, s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: %s %q: must start with http:// or https:// and name a host", ErrInvalid, field, s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%w: %s %q: port %q: want 1-65535", ErrInvalid, field, s, p)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return fmt.Errorf("%w: %s %q: empty port", ErrInvalid, field, s)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%w: %s %q: no host", ErrInvalid, field, s)
	}
	return nil
}

// kvstoreURL is httpURL naming its port: the kvstore's ports are control
// ports the datapath keeps pods off on node addresses, and a URL without
// one leaves the port the client dials unknown (and unprotected).
func kvstoreURL(field, s string) error {
	if err := httpURL(field, s); err != nil {
		return err
	}
	if u, _ := url.Parse(s); u.Port() == "" {
		return fmt.Errorf("%w: %s %q: no port: name the kvstore's port (e.g. :2379)", ErrInvalid, field, s)
	}
	return nil
}

func optionalHTTPURL(field, s string) error {
	if s == "" {
		return nil
	}
	return httpURL(field, s)
}

// absPath checks that path is absolute (or empty when optional).
func absPath(field, path string, optional bool) error {
	if path == "" && optional {
		return nil
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%w: %s %q: must be an absolute path", ErrInvalid, field, path)
	}
	return nil
}

// existingFile checks that an optional path names a file that exists and
// is not a directory.
func existingFile(field, path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%w: %s %q: %v", ErrInvalid, field, path, errors.Unwrap(err))
	}
	if fi.IsDir() {
		return fmt.Errorf("%w: %s %q: is a directory, want a file", ErrInvalid, field, path)
	}
	return nil
}

func atLeastASecond(field string, d Duration) error {
	if d < Duration(time.Second) {
		return fmt.Errorf("%w: %s %s: must be at least 1s", ErrInvalid, field, time.Duration(d))
	}
	return nil
}

func notNegative(field string, d Duration) error {
	if d < 0 {
		return fmt.Errorf("%w: %s %s: must not be negative", ErrInvalid, field, time.Duration(d))
	}
	return nil
}
