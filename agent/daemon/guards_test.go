package daemon

import (
	"slices"
	"testing"

	"github.com/filament-net/filament/agent/config"
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
	got := controlPorts(cfg)
	for _, p := range []uint16{2379, 32379, 4244, 7946, 15001} {
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
