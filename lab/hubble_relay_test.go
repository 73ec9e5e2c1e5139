package lab_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

	// Connected again while the relay runs: c1's relay has a new
	// certificate, and c2's node refuses the one its connection
	// presented; the relay connects anew and reads c2's node again.
	connect(t, l, "c1/n1", "c2")
	eventually(t, "the relay reads c2's node again after another connect", func() bool {
		out, err := relay("observe", "-o", "json", "--last", "1000", "--node-name", "c2/n1")
		return err == nil && len(parseFlows(t, out)) > 0
	})

	// A disconnected cluster's relay reads no more: c1 keeps a copy of
	// the relay certificate c2 gave it (a cluster disconnected because it
	// is not trusted any more keeps what it was given). Until 2026-12-06
	// that certificate was c2's one hubble-remote, served by c2's nodes
	// for its five years; now it is c1's own (hubble-remote-c1-<token>),
	// served while c2's bundle lists c1, and its open streams end.
	rc, err := clustermesh.LoadHubbleRemote(c1.Bundle, "c2")
	if err != nil {
		t.Fatal(err)
	}
	kept := t.TempDir()
	for f, data := range map[string]string{"ca.pem": rc.CA, "relay.pem": rc.Cert, "relay-key.pem": rc.Key} {
		if err := os.WriteFile(filepath.Join(kept, f), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	n2, _ := l.Node("c2/n1")
	keptArgs := func(args ...string) []string {
		return append(append([]string{hubble}, args...), "--server", net.JoinHostPort(n2.IP, fmt.Sprint(lab.HubblePort)),
			"--tls", "--tls-ca-cert-files", filepath.Join(kept, "ca.pem"), "--tls-server-name", nodeauth.ServerName("c2", "n1"),
			"--tls-client-cert-file", filepath.Join(kept, "relay.pem"), "--tls-client-key-file", filepath.Join(kept, "relay-key.pem"))
	}
	if out, err := labtest.NodeRun(t, l, "c1/n1", keptArgs("observe", "--last", "1", "--timeout", "5s")...); err != nil {
		t.Fatalf("c1's relay certificate refused by c2's node while connected: %v %s", err, out)
	}
	follow, err := l.NodeCommand("c1/n1", keptArgs("observe", "--follow")...)
	if err != nil {
		t.Fatal(err)
	}
	var followed syncBuffer
	follow.Stdout, follow.Stderr = &followed, &followed
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() { ended <- follow.Wait() }()
	t.Cleanup(func() { follow.Process.Kill() })
	select {
	case err := <-ended:
		t.Fatalf("hubble observe --follow with c1's relay certificate ended while connected: %v %s", err, followed.String())
	case <-time.After(2 * time.Second):
	}
	if out, err := labtest.NodeRun(t, l, "c2/n1", "filament", "clustermesh", "disconnect", "--from", c1.Bundle); err != nil {
		t.Fatalf("disconnect: %v %s", err, out)
	}
	select {
	case <-ended:
		if !strings.Contains(followed.String(), "PermissionDenied") {
			t.Errorf("the disconnected cluster's hubble observe --follow ended, not refused (want PermissionDenied): %s", followed.String())
		}
	case <-time.After(15 * time.Second):
		t.Errorf("the disconnected cluster's open hubble observe --follow on c2's node still runs 15 s after the disconnect")
	}
	if out, err := labtest.NodeRun(t, l, "c1/n1", keptArgs("observe", "--last", "1", "--timeout", "5s")...); err == nil {
		t.Errorf("c2's node served flows to the disconnected cluster's relay certificate: %s", out)
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
