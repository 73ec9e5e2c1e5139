package lab_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/crypto/nodeauth"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

const relayDenyAll = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: nobody}}]
`

// The relay of c1 reads both clusters: the real hubble CLI against it
// sees the drops of c1's node and of c2's node (node names cluster/node),
// lists both nodes connected, and filters as on a node. The nodes' Hubble
// API is mutual TLS: the relay's certificate is served, another
// certificate of the same CA (the agents' etcd one) and no certificate are
// refused.
func TestHubbleRelay(t *testing.T) {
	hubble := hubbleCLI(t)
	l := labtest.UpClusters(t, 2, 1, "tunnel")
	web := labtest.Pod(t, l, "c1/n1", "web", "app=web")
	intruder := labtest.Pod(t, l, "c1/n1", "intruder", "app=other")
	db := labtest.Pod(t, l, "c2/n1", "db", "app=db")
	connectAndWait(t, l, "c1/n1", "c2", "c1/n1", "c2/n1")
	serve(t, lab.NetNSPath(db.NetNS), 5432)
	serve(t, lab.NetNSPath(web.NetNS), 80)
	labtest.ImportPolicy(t, l, "c2/n1", crossClusterPolicy) // db: web of c1 only
	labtest.ImportPolicy(t, l, "c1/n1", relayDenyAll)       // web: nobody
	eventually(t, "web (c1) reaches db (c2)", func() bool { return reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) })
	if reach(t, lab.NetNSPath(intruder.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("intruder reached db")
	}
	if reach(t, lab.NetNSPath(intruder.NetNS), "tcp", web.IP, 80) {
		t.Fatal("intruder reached web")
	}

	r := startRelay(t, l, "c1")
	relay := func(args ...string) (string, error) {
		return labtest.NodeRun(t, l, r.Node, append(append([]string{hubble}, args...), "--server", r.Listen)...)
	}
	var drops []map[string]any
	eventually(t, "hubble observe through the relay shows the drops of both clusters' nodes", func() bool {
		out, err := relay("observe", "-o", "json", "--last", "1000", "--verdict", "DROPPED", "--from-pod", "default/intruder")
		if err != nil {
			t.Logf("hubble observe via relay: %v %s", err, out)
			return false
		}
		drops = parseFlows(t, out)
		nodes := map[any]bool{}
		for _, f := range drops {
			nodes[field(f, "node_name")] = true
		}
		if !nodes["c1/n1"] || !nodes["c2/n1"] {
			cmd, _ := l.NodeCommand(r.Node, hubble, "observe", "--server", r.Listen, "--last", "3")
			o, err := cmd.CombinedOutput()
			t.Logf("via the relay, flows of nodes %v; observe --last 3: %v %.1500s", nodes, err, o)
			return false
		}
		return true
	})
	for _, f := range drops {
		dst := field(f, "destination", "pod_name")
		switch field(f, "node_name") {
		case "c1/n1":
			if dst != "web" {
				t.Errorf("c1/n1's drop is not intruder → web: %v", f)
			}
		case "c2/n1":
			if dst != "db" || field(f, "source", "cluster_name") != "c1" {
				t.Errorf("c2/n1's drop is not c1's intruder → db: %v", f)
			}
		default:
			t.Errorf("a flow of node %v", field(f, "node_name"))
		}
		if field(f, "source", "pod_name") != "intruder" || field(f, "verdict") != "DROPPED" {
			t.Errorf("a flow the filters exclude: %v", f)
		}
	}
	// Filters reach the nodes: --node-name picks one cluster's node.
	out, err := relay("observe", "-o", "json", "--last", "1000", "--verdict", "DROPPED", "--node-name", "c2/n1")
	if err != nil {
		t.Fatalf("observe --node-name c2/n1: %v %s", err, out)
	}
	if fs := parseFlows(t, out); len(fs) == 0 {
		t.Error("--node-name c2/n1: no flow")
	} else {
		for _, f := range fs {
			if field(f, "node_name") != "c2/n1" {
				t.Errorf("--node-name c2/n1: a flow of %v", field(f, "node_name"))
			}
		}
	}
	out, err = relay("list", "nodes", "-o", "json")
	if err != nil || !strings.Contains(out, `"c1/n1"`) || !strings.Contains(out, `"c2/n1"`) || strings.Count(out, "NODE_CONNECTED") != 2 {
		t.Errorf("hubble list nodes via the relay (want c1/n1 and c2/n1 connected): %v %s", err, out)
	}
	out, err = relay("status")
	if err != nil || !strings.Contains(out, "Connected Nodes: 2/2") {
		t.Errorf("hubble status via the relay: %v %s", err, out)
	}

	// The node's TLS API: the relay's certificate in, others out.
	c1, _ := l.Cluster("c1")
	n1, _ := l.Node("c1/n1")
	direct := func(cert string) (string, error) {
		args := []string{hubble, "observe", "--last", "1", "--server", net.JoinHostPort(n1.IP, fmt.Sprint(lab.HubblePort)),
			"--tls", "--tls-ca-cert-files", filepath.Join(c1.Bundle, "ca.pem"), "--tls-server-name", nodeauth.ServerName("c1", "n1"),
			"--timeout", "5s"}
		if cert != "" {
			args = append(args, "--tls-client-cert-file", filepath.Join(c1.Bundle, cert+".pem"), "--tls-client-key-file", filepath.Join(c1.Bundle, cert+"-key.pem"))
		}
		return labtest.NodeRun(t, l, "c1/n1", args...)
	}
	if out, err := direct(clustermesh.HubbleRelay); err != nil {
		t.Errorf("the relay's certificate refused by the node: %v %s", err, out)
	}
	for _, cert := range []string{clustermesh.UserAgent, clustermesh.UserRemote, ""} { // the agents' etcd one, the remote readers', none
		if out, err := direct(cert); err == nil {
			t.Errorf("the node served flows to a client with certificate %q: %s", cert, out)
		}
	}
}

// connectAndWait connects node on's cluster to peer and waits until the
// mesh status of each node of wait is ready.
func connectAndWait(t *testing.T, l *lab.Lab, on, peer string, wait ...string) {
	t.Helper()
	connect(t, l, on, peer)
	for _, n := range wait {
		if out, err := labtest.NodeRun(t, l, n, "filament", "clustermesh", "status", "--wait", "30s"); err != nil {
			t.Fatalf("status --wait on %s: %v %s", n, err, out)
		}
	}
}

// startRelay starts the cluster's relay, stopped at cleanup (its log
// shown when t failed).
func startRelay(t *testing.T, l *lab.Lab, cluster string) *lab.Relay {
	t.Helper()
	r, err := l.StartRelay(cluster)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(r.Log); err == nil {
				t.Logf("relay log:\n%s", b)
			}
		}
		l.StopRelay(cluster)
	})
	return r
}
