package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/internal/testutil"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// Three pods on a node: the CLI shows their addresses and identities (pods
// with the same labels share one), and they reach each other through the gateway.
func TestPodsGetAddressesIdentitiesAndConnectivity(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	a := labtest.Pod(t, l, "n1", "web-1", "app=web")
	b := labtest.Pod(t, l, "n1", "web-2", "app=web")
	c := labtest.Pod(t, l, "n1", "db-1", "app=db")
	eps := labtest.Endpoints(t, l, "n1")
	if len(eps) != 3 {
		t.Fatalf("want 3 endpoints, got %d", len(eps))
	}
	byPod := map[string]endpoint.Endpoint{}
	for _, ep := range eps {
		byPod[ep.PodName] = ep
	}
	for _, p := range []*lab.Pod{a, b, c} {
		ep, ok := byPod[p.Name]
		if !ok || ep.IPv4.String() != p.IP || ep.State != endpoint.StateReady {
			t.Fatalf("pod %s: endpoint %+v, lab says %s", p.Name, ep, p.IP)
		}
	}
	if byPod["web-1"].Identity != byPod["web-2"].Identity || byPod["web-1"].Identity == byPod["db-1"].Identity {
		t.Fatalf("identities: web-1 %d web-2 %d db-1 %d", byPod["web-1"].Identity, byPod["web-2"].Identity, byPod["db-1"].Identity)
	}
	out, err := labtest.NodeRun(t, l, "n1", "filament", "identity", "get", fmt.Sprint(uint32(byPod["db-1"].Identity)), "-o", "json")
	if err != nil || !strings.Contains(out, "k8s:app=db") || !strings.Contains(out, "k8s:filament.io/cluster=default") {
		t.Fatalf("identity get: %v %s", err, out)
	}
	if err := labtest.PingEventually(t, l, "web-1", c.IP); err != nil {
		t.Fatal(err)
	}
	if err := labtest.PingEventually(t, l, "db-1", b.IP); err != nil {
		t.Fatal(err)
	}
	// The pod's address, route and interface are as the result said.
	cmd, _ := l.PodCommand("web-1", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if o, err := cmd.Output(); err != nil || !strings.Contains(string(o), a.IP+"/32") {
		t.Fatalf("pod address: %v %s", err, o)
	}
	if err := l.DeletePod("web-2"); err != nil {
		t.Fatal(err)
	}
	if eps := labtest.Endpoints(t, l, "n1"); len(eps) != 2 {
		t.Fatalf("after delete: %d endpoints", len(eps))
	}
	// filament-lab status -o json lists what is there.
	st := exec.Command(filepath.Join(labtest.BinDir(t), "filament-lab"), "status", "--name", l.Name, "-o", "json")
	o, err := st.Output()
	var got lab.Lab
	if err != nil || json.Unmarshal(o, &got) != nil || len(got.Pods) != 2 || len(got.Nodes) != 1 || !got.Nodes[0].Running {
		t.Fatalf("lab status: %v %s", err, o)
	}
}

// A restarted agent restores its endpoints and IPAM from the state dir and
// leaves the pods untouched; CNI DEL works after the restart.
func TestAgentRestartRestoresEndpoints(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	labtest.Pod(t, l, "n1", "a", "app=a")
	b := labtest.Pod(t, l, "n1", "b", "app=b")
	before := labtest.Endpoints(t, l, "n1")
	if err := l.StopAgent("n1"); err != nil {
		t.Fatal(err)
	}
	if out, err := labtest.NodeRun(t, l, "n1", "filament", "status"); err == nil || !strings.Contains(out, "not reachable") {
		t.Fatalf("status with the agent down: %v %s", err, out)
	}
	// Pods keep working while the agent is down.
	if err := labtest.PingEventually(t, l, "a", b.IP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.StartAgent(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	after := labtest.Endpoints(t, l, "n1")
	if len(after) != len(before) {
		t.Fatalf("restored %d endpoints, had %d", len(after), len(before))
	}
	for i := range before {
		x, y := before[i], after[i]
		if x.ID != y.ID || x.IPv4 != y.IPv4 || x.Identity != y.Identity || x.HostIfIndex != y.HostIfIndex || x.MAC != y.MAC || y.State != endpoint.StateReady {
			t.Fatalf("endpoint changed across restart:\n%+v\n%+v", x, y)
		}
	}
	if err := labtest.PingEventually(t, l, "a", b.IP); err != nil {
		t.Fatal(err)
	}
	// IPAM was restored: a new pod does not get a taken address.
	c := labtest.Pod(t, l, "n1", "c", "app=c")
	for _, ep := range before {
		if ep.IPv4.String() == c.IP {
			t.Fatalf("new pod got %s, already used by endpoint %d", c.IP, ep.ID)
		}
	}
	if err := l.DeletePod("a"); err != nil {
		t.Fatalf("CNI DEL after restart: %v", err)
	}
	if eps := labtest.Endpoints(t, l, "n1"); len(eps) != 2 {
		t.Fatalf("after DEL: %d endpoints", len(eps))
	}
}

// filament status, endpoint get of an unknown endpoint, and the agent-down case.
func TestCLI(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	out, err := labtest.NodeRun(t, l, "n1", "filament", "status", "-o", "json")
	if err != nil {
		t.Fatalf("status: %v %s", err, out)
	}
	var st struct {
		NodeName string
		Kvstore  struct {
			Embedded, Healthy bool
			Endpoints         []string
		}
	}
	// Lab nodes share the cluster's kvstore (not an embedded per-node etcd).
	if json.Unmarshal([]byte(out), &st) != nil || st.NodeName != "n1" || st.Kvstore.Embedded || !st.Kvstore.Healthy ||
		len(st.Kvstore.Endpoints) != 1 || st.Kvstore.Endpoints[0] != l.Clusters[0].Kvstore {
		t.Fatalf("status json: %s", out)
	}
	for _, format := range []string{"yaml", "table"} {
		if out, err := labtest.NodeRun(t, l, "n1", "filament", "identity", "list", "-o", format); err != nil || !strings.Contains(out, "reserved:world") {
			t.Fatalf("identity list -o %s: %v %s", format, err, out)
		}
	}
}

func TestUnknownEndpointIsAClearError(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	out, err := labtest.NodeRun(t, l, "n1", "filament", "endpoint", "get", "999")
	if err == nil || !strings.Contains(out, "endpoint not found: 999") {
		t.Fatalf("endpoint get 999: %v %q", err, out)
	}
	out, err = labtest.NodeRun(t, l, "n1", "filament", "endpoint", "get", "x")
	if err == nil || !strings.Contains(out, `endpoint ID "x"`) {
		t.Fatalf("endpoint get x: %v %q", err, out)
	}
}

func TestAgentDownIsOneClearLine(t *testing.T) {
	testutil.RequireRoot(t)
	cmd := exec.Command(filepath.Join(labtest.BinDir(t), "filament"), "status", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	out, err := cmd.CombinedOutput()
	if err == nil || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 || !strings.Contains(string(out), "filament-agent is not reachable") {
		t.Fatalf("agent down: %v %q", err, out)
	}
}

// An agent given an invalid pod CIDR refuses to start and names the field.
func TestAgentRejectsInvalidPodCIDR(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(labtest.BinDir(t), "filament-agent"), "--pod-cidr", "10.0.0.0/33",
		"--state-dir", dir, "--api-socket", filepath.Join(dir, "a.sock"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "podCIDR") || !strings.Contains(string(out), "10.0.0.0/33") {
		t.Fatalf("agent with a bad pod CIDR: %v %s", err, out)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a rejected config left state behind: %v", entries)
	}
}

const validPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-web
spec:
  endpointSelector:
    matchLabels:
      app: db
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: web
    toPorts:
    - ports:
      - port: "5432"
        protocol: TCP
`

// Policy import, get and delete through the CLI; a rejected import names the
// field and leaves the stored policies as they were.
func TestPolicyImportAndBadInput(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "import", write("good.yaml", validPolicy))
	if err != nil || !strings.Contains(out, "default/allow-web") {
		t.Fatalf("import: %v %s", err, out)
	}
	list := func() string {
		out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "-o", "json")
		if err != nil {
			t.Fatalf("policy get: %v %s", err, out)
		}
		return out
	}
	stored := list()
	bad := map[string]struct{ body, want string }{
		"malformed":     {"apiVersion: cilium.io/v2\nkind: [", "yaml"},
		"unknown field": {strings.Replace(validPolicy, "ingress:", "ingres:", 1), "ingres"},
		"bad label key": {strings.Replace(validPolicy, "app: web", "\"bad key!\": web", 1), "bad key!"},
		"bad CIDR":      {strings.Replace(validPolicy, "  - fromEndpoints:\n    - matchLabels:\n        app: web\n", "  - fromCIDR:\n    - 10.0.0.0/40\n", 1), "10.0.0.0/40"},
	}
	for name, c := range bad {
		out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "import", write("bad.yaml", c.body+"\n---\n"+strings.Replace(validPolicy, "allow-web", "second", 1)))
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%s: want an error naming %q, got %v %s", name, c.want, err, out)
		}
		if got := list(); got != stored {
			t.Errorf("%s: a rejected import changed the stored policies:\n%s", name, got)
		}
	}
	if out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "default/allow-web", "-o", "json"); err != nil || !strings.Contains(out, "allow-web") {
		t.Fatalf("policy get one: %v %s", err, out)
	}
	if out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "delete", "default/allow-web"); err != nil {
		t.Fatalf("policy delete: %v %s", err, out)
	}
	if out, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "delete", "default/allow-web"); err == nil || !strings.Contains(out, "default/allow-web") {
		t.Fatalf("second delete: %v %s", err, out)
	}
	// Policies survive an agent restart.
	labtest.NodeRun(t, l, "n1", "filament", "policy", "import", write("good.yaml", validPolicy))
	l.StopAgent("n1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.StartAgent(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(list(), "allow-web") {
		t.Fatal("policy lost across restart")
	}
}
