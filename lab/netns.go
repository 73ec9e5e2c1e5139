package lab

// Running commands in the lab's network namespaces.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/filament-net/filament/agent/api/types"
)

// NetNSPath is the bind-mount path of a named network namespace.
func NetNSPath(ns string) string { return filepath.Join("/var/run/netns", ns) }

// netnsCommand runs argv in the named network namespace (ip netns exec):
// the one way the lab enters a namespace by name.
func netnsCommand(ns string, argv ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
}

// run runs a command, its output in the error.
func run(name string, args ...string) error { return runCmd(exec.Command(name, args...)) }

// runCmd runs cmd, its output in the error.
func runCmd(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// NodeCommand returns a command that runs argv in the node's namespace with
// the node's agent socket in $FILAMENT_API_SOCKET and the lab's binaries first in PATH.
// While the agent runs, the command also enters the agent's mount namespace
// (nsenter by its pid), where its WireGuard UAPI socket is (`wg show`), in
// this process's working directory; otherwise it runs under `ip netns exec`.
func (l *Lab) NodeCommand(node string, argv ...string) (*exec.Cmd, error) {
	n, err := l.Node(node)
	if err != nil {
		return nil, err
	}
	var cmd *exec.Cmd
	if pid := agentPID(n); pid > 0 {
		args := []string{"--target", strconv.Itoa(pid), "--net", "--mount"}
		if wd, err := os.Getwd(); err == nil {
			args = append(args, "--wd="+wd)
		}
		cmd = exec.Command("nsenter", append(append(args, "--"), argv...)...)
	} else {
		cmd = netnsCommand(n.NetNS, argv...)
	}
	cmd.Env = append(os.Environ(), types.SocketEnv+"="+n.Socket, "PATH="+l.binDir(n.Name)+":"+os.Getenv("PATH"), "FILAMENT_LAB_DIR="+l.dir)
	if c, err := l.Cluster(n.Cluster); err == nil {
		cmd.Env = append(cmd.Env, "FILAMENT_CLUSTERMESH_BUNDLE="+c.Bundle)
	}
	return cmd, nil
}
