package lab_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// A cluster mid-upgrade: n1 runs this version, n2 the agent, CLI and CNI
// plugin from before NetworkPolicies had their own key
// (FILAMENT_OLD_BIN_DIR). A NetworkPolicy imported on the newer node is
// enforced on the older one on real TCP (agents of 2026-12-04 stored it
// where older agents ignore it: its default-deny was lifted there, fail
// open); one imported on the older node is the newer node's too. Beside a
// CNP of its name the older agent sees only the CNP (it never could hold
// both), and once the CNP is deleted it enforces the NetworkPolicy again.
func TestMixedVersionNetworkPolicy(t *testing.T) {
	old := labtest.OldBinDir(t)
	l := labtest.UpWith(t, lab.Options{Nodes: 2, Routing: "tunnel", NodeBinDir: map[string]string{"n2": old}})
	a := labtest.Pod(t, l, "n1", "a", "app=a")
	b := labtest.Pod(t, l, "n2", "b", "app=b")
	eventually(t, "a pings b across nodes", func() bool { return pingOK(l, "a", b.IP) })
	for _, port := range []int{7000, 7001, 7002} {
		serve(t, lab.NetNSPath(b.NetNS), port)
	}
	expectPorts := func(what, want string) { t.Helper(); waitPorts(t, lab.NetNSPath(a.NetNS), b.IP, what, want) }
	run := func(node string, args ...string) {
		t.Helper()
		if out, err := labtest.NodeRun(t, l, node, append([]string{"filament"}, args...)...); err != nil {
			t.Fatalf("filament %s on %s: %v %s", strings.Join(args, " "), node, err, out)
		}
	}
	n := 0
	file := func(doc string) string {
		n++
		p := filepath.Join(t.TempDir(), fmt.Sprintf("policy-%d.yaml", n))
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	expectPorts("no policy", "7000 7001 7002")

	run("n1", "policy", "import", file(onlyPort7000NP))
	expectPorts("a NetworkPolicy imported on the newer node", "7000")
	run("n1", "policy", "delete", "default/networkpolicy/only-7001")
	expectPorts("the NetworkPolicy deleted on the newer node", "7000 7001 7002")

	run("n2", "policy", "import", file(onlyPort7000NP))
	expectPorts("a NetworkPolicy imported on the older node", "7000")
	eventually(t, "the newer node has the NetworkPolicy imported on the older one", func() bool {
		_, err := labtest.NodeRun(t, l, "n1", "filament", "policy", "get", "default/networkpolicy/only-7001")
		return err == nil
	})

	run("n1", "policy", "import", file(onlyPort7001))
	expectPorts("the NetworkPolicy beside a CNP of its name (the older node sees the CNP only)", "7001")
	run("n1", "policy", "delete", "default/only-7001")
	expectPorts("the CNP deleted on the newer node", "7000")
	run("n1", "policy", "delete", "default/networkpolicy/only-7001")
	expectPorts("no policy again", "7000 7001 7002")
}
