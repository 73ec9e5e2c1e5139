package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/internal/testutil"
	"github.com/filament-net/filament/lab"
)

var (
	buildOnce sync.Once
	builtDir  string
	buildErr  error
)

// binDir returns the directory with the project's binaries: $FILAMENT_BIN_DIR
// (make test builds them there) or a fresh build.
func binDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("FILAMENT_BIN_DIR"); d != "" {
		return d
	}
	buildOnce.Do(func() {
		builtDir, buildErr = os.MkdirTemp("", "filament-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", builtDir+"/", "../cmd/filament-agent", "../cmd/filament", "../cmd/filament-cni", "../cmd/filament-lab").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtDir
}

// up starts a lab for t and removes it at cleanup, checking nothing is left.
func up(t testing.TB, nodes, prefixLen int) *lab.Lab {
	t.Helper()
	testutil.RequireRoot(t)
	name := fmt.Sprintf("t%x", rand.Uint32())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, lab.Options{Name: name, Nodes: nodes, BinDir: binDir(t), PodPrefixLen: prefixLen})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Down(name); err != nil {
			t.Errorf("lab down: %v", err)
		}
		out, _ := exec.Command("ip", "netns", "list").Output()
		if strings.Contains(string(out), "flab-"+name+"-") {
			t.Errorf("lab down left namespaces behind:\n%s", out)
		}
		if _, err := os.Stat(filepath.Join(lab.Root, name)); err == nil {
			t.Errorf("lab down left %s behind", filepath.Join(lab.Root, name))
		}
	})
	return l
}

func nodeRun(t testing.TB, l *lab.Lab, node string, argv ...string) (string, error) {
	t.Helper()
	cmd, err := l.NodeCommand(node, argv...)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

func endpoints(t testing.TB, l *lab.Lab, node string) []endpoint.Endpoint {
	t.Helper()
	out, err := nodeRun(t, l, node, "filament", "endpoint", "list", "-o", "json")
	if err != nil {
		t.Fatalf("endpoint list: %v: %s", err, out)
	}
	var eps []endpoint.Endpoint
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		t.Fatalf("endpoint list json: %v: %s", err, out)
	}
	return eps
}

func ping(t testing.TB, l *lab.Lab, pod, ip string) error {
	t.Helper()
	cmd, err := l.PodCommand(pod, "ping", "-c", "1", "-W", "2", ip)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", ip, pod, err, out)
	}
	return nil
}

func mustPod(t testing.TB, l *lab.Lab, node, name string, labels ...string) *lab.Pod {
	t.Helper()
	p, err := l.AddPod(node, name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Three pods on a node: the CLI shows their addresses and identities (pods
// with the same labels share one), and they reach each other through the gateway.
func TestPodsGetAddressesIdentitiesAndConnectivity(t *testing.T) {
	l := up(t, 1, 24)
	a := mustPod(t, l, "n1", "web-1", "app=web")
	b := mustPod(t, l, "n1", "web-2", "app=web")
	c := mustPod(t, l, "n1", "db-1", "app=db")
	eps := endpoints(t, l, "n1")
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
	out, err := nodeRun(t, l, "n1", "filament", "identity", "get", fmt.Sprint(uint32(byPod["db-1"].Identity)), "-o", "json")
	if err != nil || !strings.Contains(out, "k8s:app=db") || !strings.Contains(out, "k8s:filament.io/cluster=default") {
		t.Fatalf("identity get: %v %s", err, out)
	}
	if err := ping(t, l, "web-1", c.IP); err != nil {
		t.Fatal(err)
	}
	if err := ping(t, l, "db-1", b.IP); err != nil {
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
	if eps := endpoints(t, l, "n1"); len(eps) != 2 {
		t.Fatalf("after delete: %d endpoints", len(eps))
	}
	// filament-lab status -o json lists what is there.
	st := exec.Command(filepath.Join(binDir(t), "filament-lab"), "status", "--name", l.Name, "-o", "json")
	o, err := st.Output()
	var got lab.Lab
	if err != nil || json.Unmarshal(o, &got) != nil || len(got.Pods) != 2 || len(got.Nodes) != 1 || !got.Nodes[0].Running {
		t.Fatalf("lab status: %v %s", err, o)
	}
}

// A restarted agent restores its endpoints and IPAM from the state dir and
// leaves the pods untouched; CNI DEL works after the restart.
func TestAgentRestartRestoresEndpoints(t *testing.T) {
	l := up(t, 1, 24)
	mustPod(t, l, "n1", "a", "app=a")
	b := mustPod(t, l, "n1", "b", "app=b")
	before := endpoints(t, l, "n1")
	if err := l.StopAgent("n1"); err != nil {
		t.Fatal(err)
	}
	if out, err := nodeRun(t, l, "n1", "filament", "status"); err == nil || !strings.Contains(out, "not reachable") {
		t.Fatalf("status with the agent down: %v %s", err, out)
	}
	// Pods keep working while the agent is down.
	if err := ping(t, l, "a", b.IP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.StartAgent(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	after := endpoints(t, l, "n1")
	if len(after) != len(before) {
		t.Fatalf("restored %d endpoints, had %d", len(after), len(before))
	}
	for i := range before {
		x, y := before[i], after[i]
		if x.ID != y.ID || x.IPv4 != y.IPv4 || x.Identity != y.Identity || x.HostIfIndex != y.HostIfIndex || x.MAC != y.MAC || y.State != endpoint.StateReady {
			t.Fatalf("endpoint changed across restart:\n%+v\n%+v", x, y)
		}
	}
	if err := ping(t, l, "a", b.IP); err != nil {
		t.Fatal(err)
	}
	// IPAM was restored: a new pod does not get a taken address.
	c := mustPod(t, l, "n1", "c", "app=c")
	for _, ep := range before {
		if ep.IPv4.String() == c.IP {
			t.Fatalf("new pod got %s, already used by endpoint %d", c.IP, ep.ID)
		}
	}
	if err := l.DeletePod("a"); err != nil {
		t.Fatalf("CNI DEL after restart: %v", err)
	}
	if eps := endpoints(t, l, "n1"); len(eps) != 2 {
		t.Fatalf("after DEL: %d endpoints", len(eps))
	}
}

// filament status, endpoint get of an unknown endpoint, and the agent-down case.
func TestCLI(t *testing.T) {
	l := up(t, 1, 24)
	out, err := nodeRun(t, l, "n1", "filament", "status", "-o", "json")
	if err != nil {
		t.Fatalf("status: %v %s", err, out)
	}
	var st struct {
		NodeName string
		Kvstore  struct{ Embedded, Healthy bool }
	}
	if json.Unmarshal([]byte(out), &st) != nil || st.NodeName != "n1" || !st.Kvstore.Embedded || !st.Kvstore.Healthy {
		t.Fatalf("status json: %s", out)
	}
	for _, format := range []string{"yaml", "table"} {
		if out, err := nodeRun(t, l, "n1", "filament", "identity", "list", "-o", format); err != nil || !strings.Contains(out, "reserved:world") {
			t.Fatalf("identity list -o %s: %v %s", format, err, out)
		}
	}
}

func TestUnknownEndpointIsAClearError(t *testing.T) {
	l := up(t, 1, 24)
	out, err := nodeRun(t, l, "n1", "filament", "endpoint", "get", "999")
	if err == nil || !strings.Contains(out, "endpoint not found: 999") {
		t.Fatalf("endpoint get 999: %v %q", err, out)
	}
	out, err = nodeRun(t, l, "n1", "filament", "endpoint", "get", "x")
	if err == nil || !strings.Contains(out, `endpoint ID "x"`) {
		t.Fatalf("endpoint get x: %v %q", err, out)
	}
}

func TestAgentDownIsOneClearLine(t *testing.T) {
	testutil.RequireRoot(t)
	cmd := exec.Command(filepath.Join(binDir(t), "filament"), "status", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	out, err := cmd.CombinedOutput()
	if err == nil || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 || !strings.Contains(string(out), "filament-agent is not reachable") {
		t.Fatalf("agent down: %v %q", err, out)
	}
}

// An agent given an invalid pod CIDR refuses to start and names the field.
func TestAgentRejectsInvalidPodCIDR(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(binDir(t), "filament-agent"), "--pod-cidr", "10.0.0.0/33",
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
	l := up(t, 1, 24)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	out, err := nodeRun(t, l, "n1", "filament", "policy", "import", write("good.yaml", validPolicy))
	if err != nil || !strings.Contains(out, "default/allow-web") {
		t.Fatalf("import: %v %s", err, out)
	}
	list := func() string {
		out, err := nodeRun(t, l, "n1", "filament", "policy", "get", "-o", "json")
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
		"bad CIDR": {strings.Replace(validPolicy, "  - fromEndpoints:\n    - matchLabels:\n        app: web\n", "  - fromCIDR:\n    - 10.0.0.0/40\n", 1), "10.0.0.0/40"},
	}
	for name, c := range bad {
		out, err := nodeRun(t, l, "n1", "filament", "policy", "import", write("bad.yaml", c.body+"\n---\n"+strings.Replace(validPolicy, "allow-web", "second", 1)))
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%s: want an error naming %q, got %v %s", name, c.want, err, out)
		}
		if got := list(); got != stored {
			t.Errorf("%s: a rejected import changed the stored policies:\n%s", name, got)
		}
	}
	if out, err := nodeRun(t, l, "n1", "filament", "policy", "get", "default/allow-web", "-o", "json"); err != nil || !strings.Contains(out, "allow-web") {
		t.Fatalf("policy get one: %v %s", err, out)
	}
	if out, err := nodeRun(t, l, "n1", "filament", "policy", "delete", "default/allow-web"); err != nil {
		t.Fatalf("policy delete: %v %s", err, out)
	}
	if out, err := nodeRun(t, l, "n1", "filament", "policy", "delete", "default/allow-web"); err == nil || !strings.Contains(out, "default/allow-web") {
		t.Fatalf("second delete: %v %s", err, out)
	}
	// Policies survive an agent restart.
	nodeRun(t, l, "n1", "filament", "policy", "import", write("good.yaml", validPolicy))
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
