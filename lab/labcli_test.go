package lab_test

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/filament-net/filament/crypto/wireguard"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// agentCmdline is the command line of a node's agent process.
func agentCmdline(t *testing.T, l *lab.Lab, node string) string {
	t.Helper()
	cur, err := lab.Load(l.Name)
	if err != nil {
		t.Fatal(err)
	}
	n, err := cur.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n.PID))
	if err != nil {
		t.Fatalf("agent of %s (pid %d): %v", node, n.PID, err)
	}
	return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
}

// The lab CLI reproduces the README's examples: `up --agent-arg` reaches
// every agent and survives `node stop/start`; `exec NODE -- wg show` sees the
// agent's WireGuard device (its UAPI socket is in the agent's mount
// namespace) and runs in the caller's working directory.
func TestLabCLIAgentArgsAndNodeExec(t *testing.T) {
	l := labtest.UpCLI(t, "--nodes", "2", "--encryption", "wireguard",
		"--agent-arg=--lb-algorithm", "--agent-arg", "maglev", "--agent-arg=--log-level=debug",
		// memberlist off: this test is about the CLI, not gossip.
		"--agent-arg=--memberlist-port=0")
	const want = "--lb-algorithm maglev --log-level=debug"
	for _, n := range []string{"n1", "n2"} {
		if cl := agentCmdline(t, l, n); !strings.Contains(cl, want) {
			t.Fatalf("agent of %s: %q lacks %q", n, cl, want)
		}
	}
	for _, verb := range []string{"stop", "start"} {
		if out, err := labtest.LabCLI(t, "node", verb, "--name", l.Name, "n1"); err != nil {
			t.Fatalf("node %s: %v: %s", verb, err, out)
		}
	}
	if cl := agentCmdline(t, l, "n1"); !strings.Contains(cl, want) {
		t.Fatalf("agent of n1 after node stop/start: %q lacks %q", cl, want)
	}

	n2, _ := l.Node("n2")
	eventually(t, "wg show on n1 lists the device and n2 as a peer", func() bool {
		out, err := labtest.LabCLI(t, "exec", "--name", l.Name, "n1", "--", "wg", "show")
		return err == nil && strings.Contains(out, "interface: "+wireguard.DeviceName) && strings.Contains(out, n2.IP+":")
	})
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := labtest.LabCLI(t, "exec", "--name", l.Name, "n1", "--", "pwd"); err != nil || strings.TrimSpace(out) != wd {
		t.Fatalf("exec pwd: %q %v, want %s", out, err, wd)
	}
}
