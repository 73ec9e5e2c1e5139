package daemon

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/agent/routing"
)

// Every listener of the node's control plane is a control port pods may
// not reach on a node address: before, an external kvstore's port (the
// chart runs the clustermesh-apiserver's etcd on the host network, at the
// node's address, without TLS when no bundle is given) and the Hubble
// listener were left out, so any pod could write the cluster's etcd or
// hold Hubble's TLS handshakes.
func TestControlPortsCoverEveryListener(t *testing.T) {
	var cfg config.Config
	cfg.Etcd.Endpoints = []string{"http://10.0.0.5:2379", "https://etcd-1.example:32379"}
	cfg.HubbleListen = "10.0.0.1:4244"
	cfg.MemberlistPort = 7946
	cfg.ProxyPort = 15001
	got, _ := controlPorts(cfg)
	for _, p := range []uint16{2379, 32379, 4244, 7946, 15001} {
		if !slices.Contains(got, p) {
			t.Errorf("port %d not a control port: %v", p, got)
		}
	}
}

// An external kvstore of many ports does not crowd the node's own
// control ports out of the datapath's eight: before, its ports came
// before the overlay's, and a kvstore of six distinct ports left VXLAN
// (pods forging encapsulated traffic, with any identity in its VNI)
// unprotected.
func TestControlPortsKvstoreDoesNotCrowdOut(t *testing.T) {
	var cfg config.Config
	for p := 2379; p < 2385; p++ {
		cfg.Etcd.Endpoints = append(cfg.Etcd.Endpoints, fmt.Sprintf("https://etcd-%d.example:%d", p, p))
	}
	cfg.Routing = routing.Tunnel
	cfg.MemberlistPort, cfg.ProxyPort = 7946, 15001
	cfg.PrometheusListen, cfg.HubbleListen = ":9962", ":4244"
	got, _ := controlPorts(cfg)
	for _, p := range []uint16{routing.VXLANPort, 7946, 15001, 4244, 2379} {
		if !slices.Contains(got, p) {
			t.Errorf("port %d not a control port: %v", p, got)
		}
	}
}

// The Prometheus listener's server bounds every phase of a connection,
// not only the head's read (an idle keep-alive connection was kept for
// good, from any host that reaches the listener).
func TestMetricsServerBounded(t *testing.T) {
	s := metricsServer(":0", nil)
	if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.WriteTimeout <= 0 || s.IdleTimeout <= 0 || s.MaxHeaderBytes <= 0 || s.MaxHeaderBytes > 64<<10 {
		t.Fatalf("unbounded: read head %v, read %v, write %v, idle %v, head bytes %d",
			s.ReadHeaderTimeout, s.ReadTimeout, s.WriteTimeout, s.IdleTimeout, s.MaxHeaderBytes)
	}
}

// A node selector selects the address of each node the router took, and
// no other: before, every address of every record counted, so a node
// publishing another node's pods' addresses among its own (or a refused
// record) had a tenant's toNodes: [{}] give those pods CIDR identities
// on every node.
func TestNodeSelectorOnlyTakenNodesOwnAddress(t *testing.T) {
	nodes := []node.Node{
		{Name: "n1", IPs: []string{"172.30.0.1"}},
		{Name: "n2", IPs: []string{"172.30.0.2", "10.244.1.7"}},
		{Name: "n3", IPs: []string{"10.244.1.9"}}, // a newer record, refused
		{Name: "rogue", IPs: []string{"10.244.1.8"}},
	}
	router := map[string]node.Node{"n2": nodes[1], "n3": {Name: "n3", IPs: []string{"172.30.0.3"}}}
	taken := func(n node.Node) (node.Node, bool) {
		if n.Name == "n1" {
			return n, true
		}
		t, ok := router[n.Name]
		return t, ok
	}
	got := nodeSelectorAddrs(takenRecords(nodes, taken), api.EndpointSelector{})
	want := []netip.Addr{netip.MustParseAddr("172.30.0.1"), netip.MustParseAddr("172.30.0.2"), netip.MustParseAddr("172.30.0.3")}
	if !slices.Equal(got, want) {
		t.Errorf("toNodes: [{}] selects %v, want %v", got, want)
	}
}

// A NodePort may translate to an external kvstore's TLS port on a node's
// address (the chart's clustermesh-apiserver on the host network serves
// remote clusters so), never to the node's other control ports, nor to
// an embedded etcd's or a plain one's, nor to a port the kvstore shares
// with another.
func TestControlPortsKvstoreMarked(t *testing.T) {
	var cfg config.Config
	cfg.Routing = routing.Tunnel
	cfg.MemberlistPort, cfg.ProxyPort = 7946, 15001
	cfg.PrometheusListen, cfg.HubbleListen = ":9962", ":4244"
	cfg.Etcd.Endpoints = []string{"https://10.0.0.5:2379", "https://10.0.0.6:7946"}
	ports, kv := controlPorts(cfg)
	for i, p := range ports {
		if want := p == 2379; (kv&(1<<i) != 0) != want {
			t.Errorf("port %d: marked the kvstore's %v, want %v (%v, %b)", p, kv&(1<<i) != 0, want, ports, kv)
		}
	}
	for _, eps := range [][]string{{"http://10.0.0.5:2379"}, {"https://10.0.0.5:2379", "http://10.0.0.6:2379"}, {"http://10.0.0.6:2379", "https://10.0.0.5:2379"}} {
		cfg.Etcd.Endpoints = eps
		if ports, kv := controlPorts(cfg); kv != 0 {
			t.Errorf("%v: a plain kvstore's port marked: %v, %b", eps, ports, kv)
		}
	}
	cfg.Etcd.Endpoints = nil
	cfg.EmbeddedEtcd.ClientURL, cfg.EmbeddedEtcd.PeerURL = "http://10.0.0.5:2379", "http://10.0.0.5:2380"
	if ports, kv := controlPorts(cfg); kv != 0 {
		t.Errorf("an embedded etcd's ports marked: %v, %b", ports, kv)
	}
}
