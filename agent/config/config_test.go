package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/var/lib/filament" || c.APISocket != "/var/run/filament/agent.sock" || c.ClusterID != 1 || c.ClusterName != "default" || c.ClusterPool != "10.244.0.0/16" || c.Routing != "tunnel" || c.FlowEvents != "connections" || c.PolicyAuditMode ||
		time.Duration(c.ClusterMeshTTL) != 5*time.Minute {
		t.Fatalf("defaults changed: %+v", c)
	}
}

func TestLoadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(p, []byte("nodeName: n7\nclusterName: east\nclusterID: 9\npodCIDR: 10.9.0.0/24\nleaseTTL: 30s\netcd:\n  endpoints: [\"http://10.0.0.1:2379\"]\n"), 0o600)
	c := Default()
	if err := c.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "n7" || c.ClusterID != 9 || time.Duration(c.LeaseTTL) != 30*time.Second || len(c.Etcd.Endpoints) != 1 || c.StateDir != DefaultStateDir {
		t.Fatalf("loaded %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestBadInputNamesField(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "u.yaml")
	os.WriteFile(unknown, []byte("nodeName: a\npodSubnet: 10.0.0.0/24\n"), 0o600)
	c := Default()
	before := c
	err := c.LoadFile(unknown)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "podSubnet") {
		t.Fatalf("unknown field: %v", err)
	}
	if c.NodeName != before.NodeName || c.PodCIDR != before.PodCIDR {
		t.Fatal("a rejected file changed the configuration")
	}
	cases := map[string]func(*Config){
		"nodeName":          func(c *Config) { c.NodeName = "Bad_Name" },
		"clusterName":       func(c *Config) { c.ClusterName = strings.Repeat("a", 33) },
		"clusterID":         func(c *Config) { c.ClusterID = 256 },
		"podCIDR":           func(c *Config) { c.PodCIDR = "10.0.0.0/33" },
		"stateDir":          func(c *Config) { c.StateDir = "relative" },
		"apiSocket":         func(c *Config) { c.APISocket = "x.sock" },
		"etcd.endpoints[0]": func(c *Config) { c.Etcd.Endpoints = []string{"127.0.0.1:2379"} },
		"mtu":               func(c *Config) { c.MTU = 100 },
		"logLevel":          func(c *Config) { c.LogLevel = "loud" },
	}
	for field, mutate := range cases {
		c := Default()
		mutate(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: want an error naming it, got %v", field, err)
		}
	}
}

// The example file shipped in deploy/ loads and validates.
func TestShippedExampleLoads(t *testing.T) {
	c := Default()
	if err := c.LoadFile("../../deploy/systemd/agent.yaml"); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestClusterIDRangeFollowsTheLayout(t *testing.T) {
	c := Default()
	c.ClusterID = 400
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "1-255") {
		t.Fatalf("cluster ID 400 with 255 clusters: %v", err)
	}
	c.MaxConnectedClusters = 511
	if err := c.Validate(); err != nil {
		t.Fatalf("cluster ID 400 with 511 clusters: %v", err)
	}
}

// Every field refuses a bad value with an error naming the field and the
// value, from Validate (which the agent runs before creating anything).
func TestEveryFieldIsValidated(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file.pem")
	if err := os.WriteFile(file, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	cases := []struct {
		name   string
		mutate func(*Config)
		want   []string // substrings of the error: the field, the value
	}{
		{"nodeName", func(c *Config) { c.NodeName = "Bad_Name" }, []string{"nodeName", "Bad_Name"}},
		{"clusterName", func(c *Config) { c.ClusterName = "East" }, []string{"clusterName", "East"}},
		{"clusterID", func(c *Config) { c.ClusterID = 0 }, []string{"clusterID", "0"}},
		{"podCIDR", func(c *Config) { c.PodCIDR = "10.0.0.0/33" }, []string{"podCIDR", "10.0.0.0/33"}},
		{"clusterPool", func(c *Config) { c.ClusterPool = "10.244.0.1/16" }, []string{"clusterPool", "10.244.0.1/16"}},
		{"podCIDRSize", func(c *Config) { c.PodCIDRSize = 30 }, []string{"podCIDRSize", "30"}},
		{"clusterMeshPodRanges", func(c *Config) { c.ClusterMeshPodRanges = []string{"10.0.0.0/8", "10.1.0.1/16"} }, []string{"clusterMeshPodRanges", "10.1.0.1/16"}},
		{"clusterMeshPodRanges empty", func(c *Config) { c.ClusterMeshPodRanges = nil }, []string{"clusterMeshPodRanges", "empty"}},
		{"clusterMeshClusterIDs form", func(c *Config) { c.ClusterMeshClusterIDs = []string{"west:2"} }, []string{"clusterMeshClusterIDs", "west:2"}},
		{"clusterMeshClusterIDs self", func(c *Config) { c.ClusterMeshClusterIDs = []string{"west=1"} }, []string{"clusterMeshClusterIDs", "west=1"}},
		{"clusterMeshClusterIDs range", func(c *Config) { c.ClusterMeshClusterIDs = []string{"west=256"} }, []string{"clusterMeshClusterIDs", "west=256"}},
		{"clusterMeshClusterIDs twice", func(c *Config) { c.ClusterMeshClusterIDs = []string{"west=2", "west=3"} }, []string{"clusterMeshClusterIDs", "west=3"}},
		{"clusterMeshClusterIDs shared", func(c *Config) { c.ClusterMeshClusterIDs = []string{"west=2", "east=2"} }, []string{"clusterMeshClusterIDs", "east=2", "west"}},
		{"clusterMeshPodRanges pin name", func(c *Config) { c.ClusterMeshPodRanges = []string{"West=10.2.0.0/16"} }, []string{"clusterMeshPodRanges", "West=10.2.0.0/16"}},
		{"clusterMeshPodRanges pin self", func(c *Config) { c.ClusterMeshPodRanges = []string{c.ClusterName + "=10.2.0.0/16"} }, []string{"clusterMeshPodRanges", "=10.2.0.0/16"}},
		{"clusterMeshPodRanges pin cidr", func(c *Config) { c.ClusterMeshPodRanges = []string{"west=10.2.0.1/16"} }, []string{"clusterMeshPodRanges", "west=10.2.0.1/16"}},
		{"clusterMeshPodRanges pins overlap", func(c *Config) { c.ClusterMeshPodRanges = []string{"west=10.2.0.0/16", "east=10.2.128.0/24"} }, []string{"clusterMeshPodRanges", "east=10.2.128.0/24", "west"}},
		{"nodeIP", func(c *Config) { c.NodeIP = "fd00::1" }, []string{"nodeIP", "fd00::1"}},
		{"routing", func(c *Config) { c.Routing = "bgp" }, []string{"routing", "bgp"}},
		{"nativeForwarding", func(c *Config) { c.NativeForwarding = "xdp" }, []string{"nativeForwarding", "xdp"}},
		{"nativeForwarding empty", func(c *Config) { c.NativeForwarding = "" }, []string{"nativeForwarding", `""`}},
		{"proxyPort", func(c *Config) { c.ProxyPort = 65535 }, []string{"proxyPort", "65535"}},
		{"proxyBinary", func(c *Config) { c.ProxyBinary = "bin/filament-proxy" }, []string{"proxyBinary", "bin/filament-proxy"}},
		{"clusterMeshConfig", func(c *Config) { c.ClusterMeshConfig = "remotes" }, []string{"clusterMeshConfig", `"remotes"`}},
		{"clusterMeshTTL", func(c *Config) { c.ClusterMeshTTL = Duration(-time.Second) }, []string{"clusterMeshTTL", "-1s"}},
		{"clusterMeshCache", func(c *Config) { c.ClusterMeshCache = true }, []string{"clusterMeshCache", "clusterMeshConfig"}},
		{"maxConnectedClusters", func(c *Config) { c.MaxConnectedClusters = 256 }, []string{"maxConnectedClusters", "256"}},
		{"memberlistPort", func(c *Config) { c.MemberlistPort = 65536 }, []string{"memberlistPort", "65536"}},
		{"stateDir", func(c *Config) { c.StateDir = "var/lib" }, []string{"stateDir", "var/lib"}},
		{"apiSocket", func(c *Config) { c.APISocket = "x.sock" }, []string{"apiSocket", "x.sock"}},
		{"etcd.endpoints no scheme", func(c *Config) { c.Etcd.Endpoints = []string{"127.0.0.1:2379"} }, []string{"etcd.endpoints[0]", "127.0.0.1:2379"}},
		{"etcd.endpoints scheme", func(c *Config) { c.Etcd.Endpoints = []string{"https://a:2379", "unix://x"} }, []string{"etcd.endpoints[1]", "unix://x"}},
		{"etcd.endpoints no host", func(c *Config) { c.Etcd.Endpoints = []string{"http://:2379"} }, []string{"etcd.endpoints[0]", "http://:2379"}},
		{"etcd.endpoints port", func(c *Config) { c.Etcd.Endpoints = []string{"http://a:70000"} }, []string{"etcd.endpoints[0]", "70000"}},
		{"etcd.endpoints no port", func(c *Config) { c.Etcd.Endpoints = []string{"https://a:2379", "http://10.0.0.1"} }, []string{"etcd.endpoints[1]", "http://10.0.0.1", "no port"}},
		{"embeddedEtcd.peerURL no port", func(c *Config) { c.EmbeddedEtcd.PeerURL = "http://127.0.0.1" }, []string{"embeddedEtcd.peerURL", "no port"}},
		{"etcd.dialTimeout", func(c *Config) { c.Etcd.DialTimeout = -time.Second }, []string{"etcd.dialTimeout", "-1s"}},
		{"etcd.password", func(c *Config) { c.Etcd.Password = "secret" }, []string{"etcd.password"}},
		{"etcd.caFile missing", func(c *Config) { c.Etcd.CAFile = missing }, []string{"etcd.caFile", missing}},
		{"etcd.caFile not PEM", func(c *Config) { c.Etcd.CAFile = file }, []string{"etcd", "CA", file}},
		{"etcd.certFile", func(c *Config) { c.Etcd.CertFile, c.Etcd.KeyFile = missing, file }, []string{"etcd.certFile", missing}},
		{"etcd.keyFile", func(c *Config) { c.Etcd.CertFile, c.Etcd.KeyFile = file, dir }, []string{"etcd.keyFile", dir, "directory"}},
		{"embeddedEtcd.clientURL", func(c *Config) { c.EmbeddedEtcd.ClientURL = "127.0.0.1:2379" }, []string{"embeddedEtcd.clientURL", "127.0.0.1:2379"}},
		{"embeddedEtcd.peerURL", func(c *Config) { c.EmbeddedEtcd.PeerURL = "http://127.0.0.1:" }, []string{"embeddedEtcd.peerURL", "http://127.0.0.1:"}},
		{"leaseTTL", func(c *Config) { c.LeaseTTL = Duration(time.Millisecond) }, []string{"leaseTTL", "1ms"}},
		{"identityGCInterval", func(c *Config) { c.IdentityGCInterval = 0 }, []string{"identityGCInterval", "0s"}},
		{"mtu", func(c *Config) { c.MTU = 100 }, []string{"mtu", "100"}},
		{"logLevel", func(c *Config) { c.LogLevel = "loud" }, []string{"logLevel", "loud"}},
		{"bpfRoot", func(c *Config) { c.BPFRoot = "bpf" }, []string{"bpfRoot", "bpf"}},
		{"enforcementMode", func(c *Config) { c.EnforcementMode = "sometimes" }, []string{"enforcementMode", "sometimes"}},
		{"datapathAttach", func(c *Config) { c.DatapathAttach = "xdp" }, []string{"datapathAttach", "xdp"}},
		{"flowEvents", func(c *Config) { c.FlowEvents = "packets" }, []string{"flowEvents", "packets"}},
		{"flowEvents empty", func(c *Config) { c.FlowEvents = "" }, []string{"flowEvents", `""`}},
		{"policyAuditMode with nothing enforced", func(c *Config) { c.PolicyAuditMode, c.EnforcementMode = true, "never" }, []string{"policyAuditMode", "never"}},
		{"conntrackGCInterval", func(c *Config) { c.ConntrackGCInterval = Duration(-time.Minute) }, []string{"conntrackGCInterval", "-1m0s"}},
		{"prometheusListen not an address", func(c *Config) { c.PrometheusListen = "not-an-addr" }, []string{"prometheusListen", "not-an-addr"}},
		{"prometheusListen port", func(c *Config) { c.PrometheusListen = ":99999" }, []string{"prometheusListen", ":99999"}},
		{"prometheusListen port 0", func(c *Config) { c.PrometheusListen = "127.0.0.1:0" }, []string{"prometheusListen", "127.0.0.1:0"}},
		{"prometheusListen host", func(c *Config) { c.PrometheusListen = "no host!:9962" }, []string{"prometheusListen", "no host!:9962"}},
		{"lbAlgorithm", func(c *Config) { c.LBAlgorithm = "round-robin" }, []string{"lbAlgorithm", "round-robin"}},
		{"maglevTableSize", func(c *Config) { c.MaglevTableSize = 1000 }, []string{"maglevTableSize", "1000"}},
		{"cgroupRoot", func(c *Config) { c.CgroupRoot = "sys/fs/cgroup" }, []string{"cgroupRoot", "sys/fs/cgroup"}},
		{"encryption", func(c *Config) { c.Encryption = "tls" }, []string{"encryption", "tls"}},
		{"encryptionStrict", func(c *Config) { c.EncryptionStrict = true }, []string{"encryptionStrict"}},
		{"encryption without node authentication", func(c *Config) { c.Encryption = "wireguard" }, []string{"nodeCert", "encryptionUnauthenticatedNodes"}},
		{"ipsecKeyFile required", func(c *Config) { c.Encryption, c.Routing = "ipsec", "native" }, []string{"ipsecKeyFile", "required"}},
		{"ipsecKeyFile missing", func(c *Config) { c.Encryption, c.Routing, c.IPsecKeyFile = "ipsec", "native", missing }, []string{"ipsecKeyFile", missing}},
		{"ipsecKeyFile unused", func(c *Config) { c.IPsecKeyFile = file }, []string{"ipsecKeyFile", file, "none"}},
		{"nodeCert missing", func(c *Config) { c.NodeCert, c.NodeKey, c.NodeCA = missing, file, file }, []string{"nodeCert", missing}},
		{"nodeKey missing", func(c *Config) { c.NodeCert, c.NodeKey, c.NodeCA = file, missing, file }, []string{"nodeKey", missing}},
		{"nodeCA missing", func(c *Config) { c.NodeCert, c.NodeKey, c.NodeCA = file, file, missing }, []string{"nodeCA", missing}},
		{"nodeCA alone", func(c *Config) { c.NodeCA = file }, []string{"nodeCert, nodeKey and nodeCA"}},
		{"nodeCRL without nodeCA", func(c *Config) { c.NodeCRL = "/etc/filament/crl.pem" }, []string{"nodeCRL", "nodeCA"}},
		{"nodeCRL relative", func(c *Config) { c.NodeCert, c.NodeKey, c.NodeCA, c.NodeCRL = file, file, file, "crl.pem" }, []string{"nodeCRL", "crl.pem", "absolute"}},
		{"awsRegion", func(c *Config) { c.AWSRegion = "US East" }, []string{"awsRegion", "US East"}},
		{"awsEndpoint", func(c *Config) { c.AWSEndpoint = "moto:5000" }, []string{"awsEndpoint", "moto:5000"}},
		{"awsIMDSEndpoint", func(c *Config) { c.AWSIMDSEndpoint = "ftp://169.254.169.254" }, []string{"awsIMDSEndpoint", "ftp://169.254.169.254"}},
		{"awsVPCIDs", func(c *Config) { c.AWSVPCIDs = []string{"vpc-0123", "sg-1"} }, []string{"awsVPCIDs", "sg-1"}},
		{"groupsRefreshInterval", func(c *Config) { c.GroupsRefreshInterval = Duration(time.Millisecond) }, []string{"groupsRefreshInterval", "1ms"}},
		{"tofqdnsMinTTL", func(c *Config) { c.ToFQDNsMinTTL = Duration(-time.Second) }, []string{"tofqdnsMinTTL", "-1s"}},
		{"tofqdnsMaxIPsPerName", func(c *Config) { c.ToFQDNsMaxIPsPerName = 0 }, []string{"tofqdnsMaxIPsPerName", "0"}},
		{"tofqdnsMaxEntries", func(c *Config) { c.ToFQDNsMaxEntries = -5 }, []string{"tofqdnsMaxEntries", "-5"}},
		{"dnsRejectResponse", func(c *Config) { c.DNSRejectResponse = "drop" }, []string{"dnsRejectResponse", "drop"}},
		{"kubeconfig", func(c *Config) { c.Kubeconfig = missing }, []string{"kubeconfig", missing}},
		{"kubeconfig and in-cluster", func(c *Config) { c.Kubeconfig, c.KubernetesInCluster = file, true }, []string{"kubeconfig", "kubernetesInCluster"}},
		{"kubernetesAPIServer without in-cluster", func(c *Config) { c.KubernetesAPIServer = "10.0.0.1:6443" }, []string{"kubernetesAPIServer", "10.0.0.1:6443", "kubernetesInCluster"}},
		{"kubernetesAPIServer without port", func(c *Config) { c.KubernetesInCluster, c.KubernetesAPIServer = true, "10.0.0.1" }, []string{"kubernetesAPIServer", "10.0.0.1"}},
		{"kubernetesAPIServer without host", func(c *Config) { c.KubernetesInCluster, c.KubernetesAPIServer = true, ":6443" }, []string{"kubernetesAPIServer", ":6443"}},
		{"kubernetesAPIServer bad port", func(c *Config) { c.KubernetesInCluster, c.KubernetesAPIServer = true, "api:0" }, []string{"kubernetesAPIServer", "api:0"}},
		{"hubbleListen without TLS", func(c *Config) { c.HubbleListen = ":4244" }, []string{"hubbleListen", ":4244", "mutual TLS"}},
		{"hubbleTLSClientNames empty", func(c *Config) {
			c.HubbleListen, c.NodeCert, c.NodeKey, c.NodeCA, c.HubbleTLSClientNames = ":4244", file, file, file, nil
		}, []string{"hubbleTLSClientNames"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mutate(&c)
			err := c.Validate()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate = %v, want an error wrapping ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// Good values of the fields the checks above refuse are accepted.
func TestGoodValuesPass(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, listen := range []string{":9962", "127.0.0.1:9962", "[::1]:9962", "localhost:9962", "node-1.example.com:80"} {
		c := Default()
		c.PrometheusListen = listen
		if err := c.Validate(); err != nil {
			t.Errorf("prometheusListen %q: %v", listen, err)
		}
	}
	for _, mode := range []string{"connections", "enforced", "off"} {
		c := Default()
		c.FlowEvents = mode
		if err := c.Validate(); err != nil {
			t.Errorf("flowEvents %q: %v", mode, err)
		}
	}
	for _, mode := range []string{"default", "always"} {
		c := Default()
		c.PolicyAuditMode, c.EnforcementMode = true, mode
		if err := c.Validate(); err != nil {
			t.Errorf("policyAuditMode with enforcementMode %q: %v", mode, err)
		}
	}
	c := Default()
	c.Etcd.Endpoints = []string{"https://etcd-1:2379", "http://10.0.0.1:2379", "http://[fd00::1]:2379"}
	c.ClusterMeshConfig, c.CgroupRoot, c.Kubeconfig = "/etc/filament/remotes", "/sys/fs/cgroup", file
	c.AWSRegion, c.AWSEndpoint, c.AWSIMDSEndpoint = "us-gov-west-1", "http://172.30.0.254:5000", "http://169.254.169.254"
	c.AWSVPCIDs = []string{"vpc-0123456789abcdef0"}
	c.Encryption, c.Routing, c.IPsecKeyFile, c.EncryptionStrict = "ipsec", "native", file, true
	c.EncryptionUnauthenticatedNodes = true
	c.ClusterMeshTTL = 0
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// CLUSTER=CIDR entries pin ranges to remotes; the others are for the
// remotes not pinned (none when every entry is a pin).
func TestRemotePodRangesPinned(t *testing.T) {
	c := Default()
	c.ClusterMeshPodRanges = []string{"10.0.0.0/8", "west=10.2.0.0/16", "west=192.168.8.0/24", "north=10.3.0.0/16"}
	ranges, pinned, err := c.RemotePodRanges()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ranges) != "[10.0.0.0/8]" || fmt.Sprint(pinned) != "map[north:[10.3.0.0/16] west:[10.2.0.0/16 192.168.8.0/24]]" {
		t.Fatalf("ranges %v, pinned %v", ranges, pinned)
	}
	c.ClusterMeshPodRanges = []string{"west=10.2.0.0/16"}
	if ranges, pinned, err = c.RemotePodRanges(); err != nil || ranges != nil || len(pinned) != 1 {
		t.Fatalf("pins only: ranges %v, pinned %v, %v", ranges, pinned, err)
	}
}
