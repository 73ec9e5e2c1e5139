package config

import (
	"fmt"
	"time"

	"github.com/spf13/pflag"
)

// Flag is one command-line flag of the agent: its name, its help and the
// field of Config it sets. Flags is the one table of them: RegisterFlags
// binds them and ApplyFlags copies the ones given explicitly, so each flag
// is written once.
type Flag struct {
	Name, Usage string
	Field       func(c *Config) any // a pointer to the field
}

// Flags of the agent, in the order --help lists them.
var Flags = []Flag{
	{"node-name", "name of this node (default: the host name)", func(c *Config) any { return &c.NodeName }},
	{"cluster-name", "name of the cluster (1-32 of a-z, 0-9, '-')", func(c *Config) any { return &c.ClusterName }},
	{"cluster-id", "cluster ID, 1-255", func(c *Config) any { return &c.ClusterID }},
	{"pod-cidr", "fixed IPv4 CIDR for this node's pods (default: one allocated from --cluster-pool)", func(c *Config) any { return &c.PodCIDR }},
	{"cluster-pool", "cluster-wide range that nodes' pod CIDRs are allocated from", func(c *Config) any { return &c.ClusterPool }},
	{"pod-cidr-size", "prefix length of each node's pod CIDR", func(c *Config) any { return &c.PodCIDRSize }},
	{"node-ip", "this node's underlay IPv4 address (default: the first global IPv4 address)", func(c *Config) any { return &c.NodeIP }},
	{"routing", "routing between nodes: tunnel (VXLAN) or native", func(c *Config) any { return &c.Routing }},
	{"native-forwarding", "native routing without encryption: bpf (the programs forward pod traffic between nodes with the kernel's FIB, skipping the nodes' IP forwarding and netfilter) or kernel (the nodes route it)", func(c *Config) any { return &c.NativeForwarding }},
	{"max-connected-clusters", "identity layout: 255 or 511 clusters (the same across the mesh)", func(c *Config) any { return &c.MaxConnectedClusters }},
	{"memberlist-port", "UDP/TCP port for failure detection among agents (0 disables it)", func(c *Config) any { return &c.MemberlistPort }},
	{"gossip-key-file", "the cluster's gossip key file (a bundle's gossip.key); needed with an external etcd and the memberlist port on", func(c *Config) any { return &c.GossipKeyFile }},
	{"clustermesh-config", "directory of remote cluster configs (one <name>.yaml each, from filament clustermesh connect)", func(c *Config) any { return &c.ClusterMeshConfig }},
	{"clustermesh-ttl", "withdraw a lost remote cluster's entries once it has been unreachable, its heartbeat stale, for this long (0: keep them for ever)", func(c *Config) any { return &c.ClusterMeshTTL }},
	{"clustermesh-pod-ranges", "ranges remote clusters' pod CIDRs may lie in; a remote node with a pod CIDR outside them is refused (0.0.0.0/0: anywhere); CLUSTER=CIDR pins a range to one remote (with pins only, every remote not pinned is refused)", func(c *Config) any { return &c.ClusterMeshPodRanges }},
	{"clustermesh-cluster-ids", "pin remote clusters' IDs, CLUSTER=ID each: a pinned remote must have its ID and no other remote may have it (unpinned, the first remote to claim an ID holds it)", func(c *Config) any { return &c.ClusterMeshClusterIDs }},
	{"clustermesh-cache", "read the remote clusters from this cluster's clustermesh-apiserver cache (one connection, to the local kvstore) instead of connecting to each", func(c *Config) any { return &c.ClusterMeshCache }},
	{"remote-ipcache", "remote clusters' pods in the BPF ipcache: sparse (one entry per remote pod CIDR, a pod's /32 only where policy tells it apart) or full (every pod's /32)", func(c *Config) any { return &c.RemoteIPCache }},
	{"policy-all-clusters", "peer selectors without a cluster label match every cluster of the mesh (default: only the local cluster)", func(c *Config) any { return &c.PolicyAllClusters }},
	{"state-dir", "directory for endpoint, policy and embedded etcd state", func(c *Config) any { return &c.StateDir }},
	{"api-socket", "unix socket of the agent API", func(c *Config) any { return &c.APISocket }},
	{"etcd-endpoints", "external etcd endpoints; none runs an embedded etcd under the state dir", func(c *Config) any { return &c.Etcd.Endpoints }},
	{"etcd-ca", "CA file to verify the external etcd", func(c *Config) any { return &c.Etcd.CAFile }},
	{"etcd-cert", "client certificate for the external etcd", func(c *Config) any { return &c.Etcd.CertFile }},
	{"etcd-key", "client key for the external etcd", func(c *Config) any { return &c.Etcd.KeyFile }},
	{"embedded-etcd-client-url", "client URL of the embedded etcd", func(c *Config) any { return &c.EmbeddedEtcd.ClientURL }},
	{"embedded-etcd-peer-url", "peer URL of the embedded etcd", func(c *Config) any { return &c.EmbeddedEtcd.PeerURL }},
	{"embedded-etcd-unsafe-no-fsync", "skip fsync in the embedded etcd (labs and tests only)", func(c *Config) any { return &c.EmbeddedEtcd.UnsafeNoFsync }},
	{"lease-ttl", "TTL of the node's kvstore lease", func(c *Config) any { return &c.LeaseTTL }},
	{"identity-gc-interval", "interval between garbage collections of unreferenced identities", func(c *Config) any { return &c.IdentityGCInterval }},
	{"mtu", "MTU of pod interfaces (0: the underlay's, less 50 in tunnel mode)", func(c *Config) any { return &c.MTU }},
	{"log-level", "debug, info, warn or error", func(c *Config) any { return &c.LogLevel }},
	{"bpf-root", "bpffs mount for pinned maps and links (<bpf-root>/filament/<node>)", func(c *Config) any { return &c.BPFRoot }},
	{"enforcement-mode", "policy enforcement: default, always or never", func(c *Config) any { return &c.EnforcementMode }},
	{"datapath-attach", "how programs attach to veths: auto (tcx, else tc), tcx or tc", func(c *Config) any { return &c.DatapathAttach }},
	{"flow-events", "forwarded connections the datapath reports as flows: connections (every new one, at every endpoint), enforced (only where policy enforces) or off; drops are always reported", func(c *Config) any { return &c.FlowEvents }},
	{"policy-audit-mode", "let through what policy would drop (no allowing rule, or a deny rule) and report it as a flow of verdict AUDIT, once per connection; other drops still drop (not for production)", func(c *Config) any { return &c.PolicyAuditMode }},
	{"conntrack-gc-interval", "interval between collections of expired conntrack entries", func(c *Config) any { return &c.ConntrackGCInterval }},
	{"hubble", "serve the node's flows over Hubble's API (the hubble CLI's --server unix://<hubble-socket>)", func(c *Config) any { return &c.Hubble }},
	{"hubble-socket", "unix socket of the Hubble API, mode 0660 (default: hubble.sock beside the API socket)", func(c *Config) any { return &c.HubbleSocket }},
	{"hubble-listen", "TCP address to serve the Hubble API on as well, for the relay: mutual TLS with --node-cert (needs --node-cert, --node-key, --node-ca); empty: none", func(c *Config) any { return &c.HubbleListen }},
	{"hubble-tls-client-names", "certificate common names --hubble-listen serves: hubble-relay (the cluster's relay), hubble-remote (the one certificate of connected clusters' relays before 2026-12-06; each connected since has its own, see --hubble-peers)", func(c *Config) any { return &c.HubbleTLSClientNames }},
	{"hubble-peers", "the clustermesh bundle's remote-peers file: a connected cluster's relay (its certificate hubble-remote-<cluster>-<token>, from connect) reads this node's flows while the file lists it (read at each call and every second: a disconnected cluster's open calls end)", func(c *Config) any { return &c.HubblePeers }},
	{"hubble-flows", "flows the node keeps for the Hubble API (a ring: the oldest are overwritten)", func(c *Config) any { return &c.HubbleFlows }},
	{"hubble-export-file", "file the node's flows are written to, one JSON line each (as hubble observe -o json); empty: none", func(c *Config) any { return &c.HubbleExportFile }},
	{"hubble-export-file-max-size-mb", "size (MiB) at which the flow export file rotates", func(c *Config) any { return &c.HubbleExportFileMaxSizeMB }},
	{"hubble-export-file-max-backups", "rotated flow export files kept (the oldest are removed)", func(c *Config) any { return &c.HubbleExportFileMaxBackups }},
	{"hubble-export-allowlist", `flows exported: Hubble FlowFilters in JSON, e.g. '{"verdict":["DROPPED"]}' (several: space-separated, or a JSON array); empty: all`, func(c *Config) any { return &c.HubbleExportAllowlist }},
	{"hubble-export-denylist", "flows not exported: Hubble FlowFilters in JSON, as --hubble-export-allowlist", func(c *Config) any { return &c.HubbleExportDenylist }},
	{"prometheus-listen", "TCP address serving /metrics (it is always on the API socket too)", func(c *Config) any { return &c.PrometheusListen }},
	{"lb-algorithm", "default backend selection of services: random or maglev", func(c *Config) any { return &c.LBAlgorithm }},
	{"maglev-table-size", "Maglev table size per service (a prime, 251-131071)", func(c *Config) any { return &c.MaglevTableSize }},
	{"socket-lb", "translate service addresses at connect time for pods and the node (cgroup socket hooks)", func(c *Config) any { return &c.SocketLB }},
	{"cgroup-root", "cgroup v2 directory the socket load balancer attaches to (default: the cgroup2 mount)", func(c *Config) any { return &c.CgroupRoot }},
	{"proxy-port", "port of the node's L7 proxy (filament-proxy, started by the agent); 0: none, flows with L7 rules are dropped", func(c *Config) any { return &c.ProxyPort }},
	{"proxy-binary", "the filament-proxy executable (default: next to the agent's, else on PATH)", func(c *Config) any { return &c.ProxyBinary }},
	{"tofqdns-min-ttl", "learned DNS names stay allowed at least this long (a lower TTL is raised to it)", func(c *Config) any { return &c.ToFQDNsMinTTL }},
	{"tofqdns-max-ips-per-hostname", "addresses kept per learned DNS name and endpoint (the endpoint's oldest go first)", func(c *Config) any { return &c.ToFQDNsMaxIPsPerName }},
	{"tofqdns-max-entries", "(name, address) entries of the node's DNS name cache (when full, the endpoint with the most loses those expiring soonest)", func(c *Config) any { return &c.ToFQDNsMaxEntries }},
	{"dns-reject-response", "the L7 proxy's answer to a DNS query no rule allows: refused or nxdomain", func(c *Config) any { return &c.DNSRejectResponse }},
	{"encryption", "encrypt pod traffic between nodes: none, wireguard or ipsec", func(c *Config) any { return &c.Encryption }},
	{"encryption-strict", "drop pod traffic to a node that is not an encryption peer yet instead of sending it in clear", func(c *Config) any { return &c.EncryptionStrict }},
	{"encryption-unauthenticated-nodes", "allow encryption without node authentication (every node in the kvstore becomes a peer)", func(c *Config) any { return &c.EncryptionUnauthenticatedNodes }},
	{"ipsec-key-file", "IPsec key file (lines '<spi>[+] <algo> <key> <bits>')", func(c *Config) any { return &c.IPsecKeyFile }},
	{"aws-region", "AWS region for toGroups/fromGroups and EC2 node metadata (default: AWS_REGION or the shared config; none: off)", func(c *Config) any { return &c.AWSRegion }},
	{"aws-endpoint", "EC2 endpoint override (tests, e.g. a moto server)", func(c *Config) any { return &c.AWSEndpoint }},
	{"aws-vpc-ids", "VPCs cloud groups resolve in beside the node's own (from the instance metadata); with neither, groups allow nothing. Whoever may tag an instance or interface in them adds it to the groups naming the tag", func(c *Config) any { return &c.AWSVPCIDs }},
	{"aws-imds-endpoint", "EC2 instance metadata (IMDSv2) endpoint override (tests)", func(c *Config) any { return &c.AWSIMDSEndpoint }},
	{"groups-refresh-interval", "interval between resolutions of cloud groups", func(c *Config) any { return &c.GroupsRefreshInterval }},
	{"kubeconfig", "Kubernetes mode: follow NetworkPolicy and CiliumNetworkPolicy/CiliumClusterwideNetworkPolicy from this cluster (kubeconfig file)", func(c *Config) any { return &c.Kubeconfig }},
	{"k8s-in-cluster", "Kubernetes mode with the pod's ServiceAccount (the agent as a DaemonSet pod) instead of --kubeconfig", func(c *Config) any { return &c.KubernetesInCluster }},
	{"k8s-api-server", "with --k8s-in-cluster: the API server's host:port (default: KUBERNETES_SERVICE_HOST/PORT, the kubernetes Service's cluster IP)", func(c *Config) any { return &c.KubernetesAPIServer }},
	{"remount-proc-sys", "remount /proc/sys read-write at start (an unprivileged container with CAP_SYS_ADMIN, where the runtime mounts it read-only)", func(c *Config) any { return &c.RemountProcSys }},
	{"node-cert", "this node's certificate from the cluster's CA (PEM): sign the node record and accept only authenticated nodes", func(c *Config) any { return &c.NodeCert }},
	{"node-key", "the key of --node-cert (PEM)", func(c *Config) any { return &c.NodeKey }},
	{"node-ca", "the CA that issues this cluster's node certificates (PEM)", func(c *Config) any { return &c.NodeCA }},
	{"node-crl", "the CA's revocation list of node certificates (PEM; read again when it changes; absent: none revoked)", func(c *Config) any { return &c.NodeCRL }},
	{"wireguard-private-run-dir", "mount a private tmpfs on /var/run/wireguard (labs: several agents, each in its own mount namespace, on one machine)", func(c *Config) any { return &c.WireGuardPrivateRunDir }},
}

// RegisterFlags adds every flag to fs, bound to c's fields, with c's
// values as the defaults shown.
func RegisterFlags(fs *pflag.FlagSet, c *Config) {
	for _, f := range Flags {
		switch p := f.Field(c).(type) {
		case *string:
			fs.StringVar(p, f.Name, *p, f.Usage)
		case *int:
			fs.IntVar(p, f.Name, *p, f.Usage)
		case *uint32:
			fs.Uint32Var(p, f.Name, *p, f.Usage)
		case *bool:
			fs.BoolVar(p, f.Name, *p, f.Usage)
		case *[]string:
			fs.StringSliceVar(p, f.Name, *p, f.Usage)
		case *Duration:
			fs.Var((*durationFlag)(p), f.Name, f.Usage)
		default:
			panic(fmt.Sprintf("config flag %s: unsupported field type %T", f.Name, p))
		}
	}
}

// ApplyFlags copies into dst the fields of the flags given explicitly in
// fs, from from (the Config RegisterFlags bound): defaults < file < flags.
func ApplyFlags(fs *pflag.FlagSet, dst, from *Config) {
	for _, f := range Flags {
		if !fs.Changed(f.Name) {
			continue
		}
		switch p := f.Field(dst).(type) {
		case *string:
			*p = *f.Field(from).(*string)
		case *int:
			*p = *f.Field(from).(*int)
		case *uint32:
			*p = *f.Field(from).(*uint32)
		case *bool:
			*p = *f.Field(from).(*bool)
		case *[]string:
			*p = append([]string(nil), *f.Field(from).(*[]string)...)
		case *Duration:
			*p = *f.Field(from).(*Duration)
		}
	}
}

// durationFlag is a Duration as a pflag value ("15s").
type durationFlag Duration

func (d *durationFlag) String() string { return time.Duration(*d).String() }
func (d *durationFlag) Type() string   { return "duration" }
func (d *durationFlag) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = durationFlag(v)
	return nil
}
