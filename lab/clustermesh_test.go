package lab_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/remote"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

func meshStatus(t *testing.T, l *lab.Lab, on string) []remote.Status {
	t.Helper()
	out, err := labtest.NodeRun(t, l, on, "filament", "clustermesh", "status", "-o", "json")
	if err != nil {
		t.Fatalf("clustermesh status: %v %s", err, out)
	}
	var st []remote.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("clustermesh status json: %v %s", err, out)
	}
	return st
}

func connect(t *testing.T, l *lab.Lab, on string, peers ...string) {
	t.Helper()
	args := []string{"filament", "clustermesh", "connect"}
	for _, p := range peers {
		c, err := l.Cluster(p)
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "--to", c.Bundle)
	}
	if out, err := labtest.NodeRun(t, l, on, args...); err != nil {
		t.Fatalf("clustermesh connect: %v %s", err, out)
	}
}

const crossClusterPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web, io.cilium.k8s.policy.cluster: c1}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`

// Two clusters connected as a user would: pods talk across clusters when a
// policy names the peer's cluster, and not when it does not; status shows
// the remote's counts; a remote's entries outlive the loss of its apiserver
// and come back without flaps.
func TestClusterMeshTwoClusters(t *testing.T) {
	l := labtest.UpClusters(t, 2, 1, "tunnel")
	web := labtest.Pod(t, l, "c1/n1", "web", "app=web")
	db := labtest.Pod(t, l, "c2/n1", "db", "app=db")
	connect(t, l, "c1/n1", "c2")
	for _, on := range []string{"c1/n1", "c2/n1"} {
		out, err := labtest.NodeRun(t, l, on, "filament", "clustermesh", "status", "--wait", "30s")
		if err != nil {
			t.Fatalf("status --wait on %s: %v %s", on, err, out)
		}
	}
	st := meshStatus(t, l, "c2/n1")
	if len(st) != 1 || st[0].Name != "c1" || st[0].ClusterID != 1 || !st[0].Connected || !st[0].Ready || st[0].Nodes != 1 || st[0].Endpoints != 1 || st[0].Identities < 1 {
		t.Fatalf("status on c2: %+v", st)
	}
	serve(t, lab.NetNSPath(db.NetNS), 5432)
	eventually(t, "web (c1) reaches db (c2) across clusters", func() bool {
		return reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432)
	})
	// A policy whose peer selector names no cluster matches only c2's own pods.
	labtest.ImportPolicy(t, l, "c2/n1", strings.Replace(crossClusterPolicy, ", io.cilium.k8s.policy.cluster: c1", "", 1))
	if reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("a rule without a cluster selector let a remote cluster's pod in")
	}
	// Naming c1 (with the Cilium alias) lets c1's web in.
	labtest.ImportPolicy(t, l, "c2/n1", crossClusterPolicy)
	if !reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("the cluster-label policy does not let c1's web in")
	}
	// The c1 apiserver dies: c2 keeps c1's entries (traffic flows), status
	// says disconnected; back again, it resyncs without removing entries.
	c1, _ := l.Cluster("c1")
	writes := metric(t, l, "c2/n1", "filament_policy_map_writes_total", "")
	if err := l.StopKvstore("c1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "c2 sees c1 disconnected", func() bool {
		s := meshStatus(t, l, "c2/n1")
		return len(s) == 1 && !s[0].Connected && s[0].LastFailure != ""
	})
	if !reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("traffic stopped while c1's apiserver is down")
	}
	if err := l.StartKvstore("c1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "c2 reconnects to c1", func() bool {
		s := meshStatus(t, l, "c2/n1")
		return len(s) == 1 && s[0].Connected && s[0].Ready && s[0].Endpoints == 1
	})
	if !reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) {
		t.Fatal("traffic after c1's apiserver came back")
	}
	// No flap: c1's identity was never withdrawn and re-added, so c2's
	// policy map saw no write across the outage.
	if got := metric(t, l, "c2/n1", "filament_policy_map_writes_total", ""); got != writes {
		t.Fatalf("policy map writes went from %v to %v across the apiserver restart", writes, got)
	}
	// Disconnect: the configs go both ways and c1's entries leave c2.
	if out, err := labtest.NodeRun(t, l, "c2/n1", "filament", "clustermesh", "disconnect", "--from", c1.Bundle); err != nil {
		t.Fatalf("disconnect: %v %s", err, out)
	}
	eventually(t, "c1 gone from c2's status", func() bool { return len(meshStatus(t, l, "c2/n1")) == 0 })
	eventually(t, "c2 no longer reaches... c1's pod is withdrawn", func() bool {
		return !reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432)
	})
}

// A certificate from another CA is refused with the reason in status; a
// remote whose cluster ID is already taken by another remote is refused;
// the CLI refuses to connect clusters that clash.
func TestClusterMeshRefusals(t *testing.T) {
	l := labtest.UpClustersIDs(t, []uint32{1, 2, 2})
	c1, _ := l.Cluster("c1")
	c2, _ := l.Cluster("c2")
	c3, _ := l.Cluster("c3")
	// A config for c2 holding credentials of another CA.
	other := t.TempDir()
	if _, err := clustermesh.Enable(other, "x", 9, nil); err != nil {
		t.Fatal(err)
	}
	good := mustRemote(t, filepath.Join(c2.Bundle, "remote.yaml"))
	bad := mustRemote(t, filepath.Join(other, "remote.yaml"))
	good.Cert, good.Key = bad.Cert, bad.Key
	writeRemote(t, filepath.Join(clustermesh.RemotesDir(c1.Bundle), "c2.yaml"), good)
	eventually(t, "a wrong-CA certificate refused with a reason", func() bool {
		s := meshStatus(t, l, "c1/n1")
		return len(s) == 1 && !s[0].Connected && strings.Contains(s[0].LastFailure, "TLS")
	})
	os.Remove(filepath.Join(clustermesh.RemotesDir(c1.Bundle), "c2.yaml"))
	eventually(t, "removed remote leaves status", func() bool { return len(meshStatus(t, l, "c1/n1")) == 0 })

	// The CLI refuses to connect two clusters with the same ID.
	out, err := labtest.NodeRun(t, l, "c2/n1", "filament", "clustermesh", "connect", "--to", c3.Bundle)
	if err == nil || !strings.Contains(out, "clash") {
		t.Fatalf("connecting c2 and c3 (both ID 2): %v %s", err, out)
	}
	// c1 is told about both: the agent takes one and refuses the other.
	connect(t, l, "c1/n1", "c2", "c3")
	eventually(t, "one of c2 and c3 refused for its duplicate ID", func() bool {
		s := meshStatus(t, l, "c1/n1")
		if len(s) != 2 {
			return false
		}
		connected, refused := 0, 0
		for _, r := range s {
			if r.Connected && r.Ready {
				connected++
			} else if strings.Contains(r.LastFailure, "already used by remote cluster") {
				refused++
			}
		}
		return connected == 1 && refused == 1
	})
}

func mustRemote(t *testing.T, path string) clustermesh.RemoteConfig {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r clustermesh.RemoteConfig
	if err := yaml.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func writeRemote(t *testing.T, path string, r clustermesh.RemoteConfig) {
	t.Helper()
	b, err := yaml.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Three clusters connected pairwise with --mesh; every cluster sees the
// other two.
func TestClusterMeshThreeClusters(t *testing.T) {
	l := labtest.UpClusters(t, 3, 1, "tunnel", "--policy-all-clusters")
	var bundles []string
	for _, c := range l.Clusters {
		bundles = append(bundles, c.Bundle)
	}
	pods := map[string]*lab.Pod{}
	for _, c := range []string{"c1", "c2", "c3"} {
		pods[c] = labtest.Pod(t, l, c+"/n1", "p-"+c, "app=p")
	}
	if out, err := labtest.NodeRun(t, l, "c1/n1", "filament", "clustermesh", "connect", "--mesh", strings.Join(bundles, ",")); err != nil {
		t.Fatalf("connect --mesh: %v %s", err, out)
	}
	for _, c := range []string{"c1", "c2", "c3"} {
		if out, err := labtest.NodeRun(t, l, c+"/n1", "filament", "clustermesh", "status", "--wait", "30s"); err != nil {
			t.Fatalf("status on %s: %v %s", c, err, out)
		}
		if s := meshStatus(t, l, c+"/n1"); len(s) != 2 {
			t.Fatalf("%s sees %d remotes", c, len(s))
		}
	}
	for _, src := range []string{"c1", "c2", "c3"} {
		for _, dst := range []string{"c1", "c2", "c3"} {
			if src == dst {
				continue
			}
			eventually(t, src+" pings "+dst, func() bool { return pingOK(l, "p-"+src, pods[dst].IP) })
		}
	}
}
