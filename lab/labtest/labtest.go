// Package labtest owns what end-to-end tests share on top of filament-lab:
// the project's binaries, a lab per test that is removed (and checked to be
// gone) at cleanup, and running commands on its nodes and pods.
package labtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
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

// OldBinDir returns $FILAMENT_OLD_BIN_DIR, the agent, CLI and CNI plugin of
// an older version (make old-bin builds them; make test sets it), for a
// node of a cluster mid-upgrade (lab.Options.NodeBinDir); t is skipped,
// naming what is missing, without them.
func OldBinDir(t testing.TB) string {
	t.Helper()
	d := os.Getenv("FILAMENT_OLD_BIN_DIR")
	if d == "" {
		t.Skip("skipped: FILAMENT_OLD_BIN_DIR unset: needs binaries of an older version (make old-bin builds them; make test sets it)")
	}
	if _, err := os.Stat(filepath.Join(d, "filament-agent")); err != nil {
		t.Skipf("skipped: no older filament-agent in FILAMENT_OLD_BIN_DIR=%s (make old-bin builds it from this repository's history: %v)", d, err)
	}
	return d
}

// BinDir returns the directory with the project's binaries: $FILAMENT_BIN_DIR
// (make test builds them there) or a fresh build of ./cmd/...
func BinDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("FILAMENT_BIN_DIR"); d != "" {
		return d
	}
	buildOnce.Do(func() {
		gomod, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOMOD: %v", err)
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(gomod)))
		if builtDir, buildErr = os.MkdirTemp("", "filament-bin-"); buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", builtDir+"/", "./cmd/filament-agent", "./cmd/filament", "./cmd/filament-cni", "./cmd/filament-lab", "./cmd/filament-clustermesh-apiserver", "./cmd/filament-proxy")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtDir
}

// Up starts a lab of nodes for t (pod CIDRs /prefixLen; 0 means /24) and
// removes it at cleanup, failing t if namespaces or files are left behind.
func Up(t testing.TB, nodes, prefixLen int, agentArgs ...string) *lab.Lab {
	t.Helper()
	return up(t, lab.Options{Nodes: nodes, PodPrefixLen: prefixLen, AgentArgs: agentArgs})
}

// UpClusters starts a lab of clusters of nodes each (a mesh candidate).
func UpClusters(t testing.TB, clusters, nodes int, routing string, agentArgs ...string) *lab.Lab {
	t.Helper()
	return up(t, lab.Options{Clusters: clusters, Nodes: nodes, Routing: routing, AgentArgs: agentArgs})
}

// UpClustersIDs starts one single-node cluster per ID (tunnel routing).
func UpClustersIDs(t testing.TB, ids []uint32) *lab.Lab {
	t.Helper()
	return up(t, lab.Options{Clusters: len(ids), ClusterIDs: ids, Nodes: 1, Routing: "tunnel"})
}

// UpRouting starts a lab of nodes with routing mode ("tunnel" or "native").
func UpRouting(t testing.TB, nodes int, routing string, agentArgs ...string) *lab.Lab {
	t.Helper()
	return up(t, lab.Options{Nodes: nodes, Routing: routing, AgentArgs: agentArgs})
}

// UpWith starts a lab with options o (name and binaries filled in).
func UpWith(t testing.TB, o lab.Options) *lab.Lab {
	t.Helper()
	return up(t, o)
}

func up(t testing.TB, o lab.Options) *lab.Lab {
	t.Helper()
	if testing.Short() {
		// make test-unit run as root would otherwise start every lab and
		// pass go test's default 10-minute timeout, which leaves the lab
		// of the test it stops in behind.
		t.Skip("skipped: -short (make test-unit); the lab's end-to-end tests run in make test")
	}
	testutil.RequireRoot(t)
	name := fmt.Sprintf("t%x", rand.Uint32())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o.Name, o.BinDir = name, BinDir(t)
	l, err := lab.Up(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	downAtCleanup(t, name)
	logsOnFailure(t, l)
	return l
}

// logsOnFailure prints the end of every agent's log when t has failed, so
// a failure seen only in CI can be read (it runs before the lab is down).
func logsOnFailure(t testing.TB, l *lab.Lab) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range l.Nodes {
			b, _ := os.ReadFile(n.LogFile)
			ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			if len(ls) > 40 {
				ls = ls[len(ls)-40:]
			}
			t.Logf("agent log of %s (%s), last %d lines:\n%s", n.Name, n.LogFile, len(ls), strings.Join(ls, "\n"))
		}
		t.Logf("%s", Describe(t, l))
	})
}

// Describe is what a failure report shows of each node of l: its routes,
// and what its agent says of encryption peers (handshakes, bytes), its
// ipcache and its last flows (drops and their reasons).
func Describe(t testing.TB, l *lab.Lab) string {
	var b strings.Builder
	for _, n := range l.Nodes {
		fmt.Fprintf(&b, "state of %s:\n%s", n.Name, nodeState(t, l, n))
		if data, err := os.ReadFile(n.LogFile); err == nil {
			ls := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
			fmt.Fprintf(&b, "agent log of %s, last lines:\n%s\n", n.Name, strings.Join(ls[max(0, len(ls)-15):], "\n"))
		}
	}
	return b.String()
}

func nodeState(t testing.TB, l *lab.Lab, n lab.Node) string {
	var b strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.NetNS, "ip", "route").CombinedOutput()
	cancel()
	fmt.Fprintf(&b, "$ ip route (%v)\n%s", err, out)
	for _, argv := range [][]string{{"filament", "encrypt", "status"}, {"filament", "bpf", "ipcache", "list"}, {"filament", "observe", "--last", "20"}} {
		out, err := NodeRun(t, l, n.Name, argv...)
		fmt.Fprintf(&b, "$ %s (%v)\n%s", strings.Join(argv, " "), err, out)
	}
	return b.String()
}

// downAtCleanup removes lab name when t ends, failing t if namespaces or
// files are left behind.
func downAtCleanup(t testing.TB, name string) {
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
}

// UpCLI starts a lab as a user would, `filament-lab up --name <random>
// args...` with the project's binaries, removes it at cleanup like Up, and
// returns its recorded state.
func UpCLI(t testing.TB, args ...string) *lab.Lab {
	t.Helper()
	testutil.RequireRoot(t)
	name := fmt.Sprintf("t%x", rand.Uint32())
	if out, err := LabCLI(t, append([]string{"up", "--name", name}, args...)...); err != nil {
		lab.Down(name)
		t.Fatalf("filament-lab up: %v: %s", err, out)
	}
	downAtCleanup(t, name)
	l, err := lab.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// LabCLI runs the project's filament-lab with args and returns its
// combined output.
func LabCLI(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(filepath.Join(BinDir(t), "filament-lab"), args...).CombinedOutput()
	return string(out), err
}

// NodeRun runs argv in a node's namespace against its agent; the output is
// stdout, or stdout and stderr when the command fails.
func NodeRun(t testing.TB, l *lab.Lab, node string, argv ...string) (string, error) {
	t.Helper()
	cmd, err := l.NodeCommand(node, argv...)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// Endpoints lists a node's endpoints through `filament endpoint list -o json`.
func Endpoints(t testing.TB, l *lab.Lab, node string) []endpoint.Endpoint {
	t.Helper()
	out, err := NodeRun(t, l, node, "filament", "endpoint", "list", "-o", "json")
	if err != nil {
		t.Fatalf("endpoint list: %v: %s", err, out)
	}
	var eps []endpoint.Endpoint
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		t.Fatalf("endpoint list json: %v: %s", err, out)
	}
	return eps
}

// Ping sends one ICMP echo from a pod to ip.
func Ping(t testing.TB, l *lab.Lab, pod, ip string) error {
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

// PingEventually is Ping for an assertion that traffic passes: one echo
// a try (1 s wait), retried for up to 10 s, so that no single lost or late
// packet on a busy machine decides. It returns the last failure.
func PingEventually(t testing.TB, l *lab.Lab, pod, ip string) error {
	t.Helper()
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		cmd, cerr := l.PodCommand(pod, "ping", "-c", "1", "-W", "1", ip)
		if cerr != nil {
			t.Fatal(cerr)
		}
		out, rerr := cmd.CombinedOutput()
		if rerr == nil {
			return nil
		}
		err = fmt.Errorf("ping %s from %s (retried for 10s): %v: %s", ip, pod, rerr, out)
		if time.Now().After(deadline) {
			return err
		}
	}
}

// Pod adds a pod or fails t.
func Pod(t testing.TB, l *lab.Lab, node, name string, labels ...string) *lab.Pod {
	t.Helper()
	p, err := l.AddPod(node, name, labels)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// NetNS creates a bare network namespace for t (as a runtime would before
// CNI ADD) and deletes it at cleanup; it returns the namespace's path.
func NetNS(t testing.TB, name string) string {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return lab.NetNSPath(name)
}

// ImportPolicy writes doc to a file, imports it for the cluster on node with
// `filament policy import` and waits until every running node of that
// cluster has it, failing t on error.
func ImportPolicy(t testing.TB, l *lab.Lab, node, doc string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := NodeRun(t, l, node, "filament", "policy", "import", "-o", "json", p)
	if err != nil {
		t.Fatalf("policy import: %v %s", err, out)
	}
	// Policies are the cluster's: wait until every node of node's
	// cluster has them (the importing node does when the import returns).
	var res struct{ Policies []string }
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("policy import -o json: %v %s", err, out)
	}
	on, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, n := range l.Nodes {
		if n.Cluster != on.Cluster || !n.Running {
			continue
		}
		for _, key := range res.Policies {
			for {
				out, err := NodeRun(t, l, n.Name, "filament", "policy", "get", key)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("policy %s imported on %s: not on %s within 15s: %v %s", key, node, n.Name, err, out)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}

// PodAddr returns the i-th address of a node's pod CIDR (1 = the gateway,
// 2 = the first pod address).
func PodAddr(t testing.TB, l *lab.Lab, node string, i int) string {
	t.Helper()
	n, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	p, err := netip.ParsePrefix(n.PodCIDR)
	if err != nil {
		t.Fatalf("node %s pod CIDR %q: %v", node, n.PodCIDR, err)
	}
	a := p.Addr()
	for ; i > 0; i-- {
		a = a.Next()
	}
	return a.String()
}

// UnderlayHost joins a bare namespace with address ip to the lab's underlay
// (as a host that is not a node) and returns its path; removed at cleanup.
func UnderlayHost(t testing.TB, l *lab.Lab, name, ip string) string {
	t.Helper()
	netns := "flab-" + l.Name + "-h-" + name
	path := NetNS(t, netns)
	if err := l.JoinUnderlay(l.Clusters[0].Name, netns, "h-"+name, ip); err != nil {
		t.Fatal(err)
	}
	return path
}

// PinDir is where a lab node's agent pins its maps and links.
func PinDir(l *lab.Lab, node string) string {
	n, err := l.Node(node)
	if err != nil {
		return ""
	}
	return filepath.Join(lab.Root, l.Name, "bpffs", "filament", n.Cluster, node[strings.LastIndex(node, "/")+1:])
}

// Host adds an outside host with address ip on the lab's first cluster (see
// lab.AddHost) or fails t; it goes with the lab at cleanup.
func Host(t testing.TB, l *lab.Lab, name, ip string) *lab.Host {
	t.Helper()
	h, err := l.AddHost(name, ip, "")
	if err != nil {
		t.Fatal(err)
	}
	return h
}
