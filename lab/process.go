package lab

// The lab's processes: each cluster's kvstore and each node's agent.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/crypto/ca"
	"github.com/filament-net/filament/crypto/nodeauth"
)

// runKvstore starts the cluster's apiserver and waits until it serves.
func (l *Lab) runKvstore(c *Cluster) error {
	dir := filepath.Join(l.dir, c.Name)
	kvIP := underlayIP(c, 254)
	logf, err := os.OpenFile(filepath.Join(dir, "kvstore.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	c.Kvstore = "https://" + kvIP + ":2379"
	args := []string{filepath.Join(l.BinDir, "filament-clustermesh-apiserver"), "--bundle", c.Bundle, "--data-dir", filepath.Join(dir, "kvstore"), "--listen-client-url", c.Kvstore,
		"--listen-peer-url", "http://127.0.0.1:2380", "--unsafe-no-fsync"}
	if l.ClusterMeshCache {
		args = append(args, "--clustermesh-cache", clustermesh.RemotesDir(c.Bundle))
	}
	cmd := netnsCommand(l.kvstoreNS(c), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the kvstore of cluster %s: %w", c.Name, err)
	}
	c.KvstorePID = cmd.Process.Pid
	go cmd.Wait()
	// Wait until it accepts connections, dialling from inside its namespace
	// (the underlay is not reachable from the host).
	logPath := filepath.Join(dir, "kvstore.log")
	if err := waitServing(l.kvstoreNS(c), kvIP+":2379", logPath, "serving", 30*time.Second, func() bool { return true }); err != nil {
		return fmt.Errorf("kvstore of cluster %s not ready: %w", c.Name, err)
	}
	return nil
}

// waitServing waits until a process of namespace netns accepts TCP
// connections on addr and its log says marker, for at most limit and
// while alive says it runs; the error holds the log's end.
func waitServing(netns, addr, logPath, marker string, limit time.Duration, alive func() bool) error {
	deadline := time.Now().Add(limit)
	for {
		err := ns.WithNetNSPath(NetNSPath(netns), func(ns.NetNS) error {
			conn, err := net.DialTimeout("tcp4", addr, time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
		if err == nil && strings.Contains(tail(logPath, 20), marker) {
			return nil
		}
		if !alive() || time.Now().After(deadline) {
			return fmt.Errorf("not serving %s within %s: %v; log:\n%s", addr, limit, err, tail(logPath, 10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// binDir is where node's binaries are.
func (l *Lab) binDir(node string) string {
	if d, ok := l.NodeBinDir[node]; ok {
		return d
	}
	return l.BinDir
}

func (l *Lab) agentArgs(node string) []string {
	if a, ok := l.NodeAgentArgs[node]; ok {
		return a
	}
	return l.AgentArgs
}

func (l *Lab) startAgent(ctx context.Context, n *Node) error {
	logf, err := os.OpenFile(n.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	prefix := l.PodPrefix
	if prefix == 0 {
		prefix = 24
	}
	c, err := l.Cluster(n.Cluster)
	if err != nil {
		return err
	}
	nodeName := n.Name[strings.LastIndex(n.Name, "/")+1:]
	// The admin's part of a join: a node certificate from the cluster's CA.
	nodeDir := filepath.Dir(n.StateDir)
	if _, err := os.Stat(filepath.Join(nodeDir, "node.pem")); err != nil {
		authority, err := ca.Load(c.Bundle)
		if err != nil {
			return err
		}
		pair, err := nodeauth.Issue(authority, c.Name, nodeName)
		if err != nil {
			return err
		}
		if err := ca.WritePair(nodeDir, "node", pair); err != nil {
			return err
		}
	}
	args := append([]string{filepath.Join(l.binDir(n.Name), "filament-agent"),
		"--node-name", nodeName, "--cluster-name", c.Name, "--cluster-id", strconv.Itoa(int(c.ID)),
		"--state-dir", n.StateDir, "--api-socket", n.Socket,
		"--etcd-endpoints", c.Kvstore, "--etcd-ca", filepath.Join(c.Bundle, "ca.pem"),
		"--etcd-cert", filepath.Join(c.Bundle, clustermesh.UserAgent+".pem"), "--etcd-key", filepath.Join(c.Bundle, clustermesh.UserAgent+"-key.pem"),
		"--clustermesh-config", clustermesh.RemotesDir(c.Bundle),
		"--gossip-key-file", clustermesh.GossipKeyFile(c.Bundle),
		"--node-ip", n.IP, "--routing", l.Routing,
		"--cluster-pool", c.Pool, "--pod-cidr-size", strconv.Itoa(prefix),
		"--bpf-root", l.bpffs(),
		// Debug: the embedded WireGuard's own lines (handshakes) are in
		// the agent's log, which a failed test shows.
		"--log-level", "debug",
		// Each agent runs in its own mount namespace (ip netns exec), so
		// it can keep the embedded WireGuard's UAPI socket to itself.
		"--wireguard-private-run-dir",
		"--node-cert", filepath.Join(nodeDir, "node.pem"), "--node-key", filepath.Join(nodeDir, "node-key.pem"),
		"--node-ca", filepath.Join(c.Bundle, "ca.pem"),
		// The Hubble API for the cluster's relay (mutual TLS, node certificate).
		"--hubble-listen", net.JoinHostPort(n.IP, strconv.Itoa(HubblePort))}, l.agentArgs(n.Name)...)
	if l.binDir(n.Name) == l.BinDir {
		// The CA's revocation list (absent until a revocation) and the
		// connected clusters whose relays read this node's flows; an
		// older agent of an upgrade test lacks the flags.
		args = append(args, "--node-crl", clustermesh.NodeCRLFile(c.Bundle), "--hubble-peers", clustermesh.PeersFile(c.Bundle))
	}
	cmd := netnsCommand(n.NetNS, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start agent of %s: %w", n.Name, err)
	}
	n.PID = cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ac := client.New(n.Socket)
	deadline := time.Now().Add(60 * time.Second)
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := ac.Status(sctx)
		cancel()
		if err == nil {
			n.Running = true
			n.PodCIDR = st.PodCIDR
			return nil
		}
		select {
		case werr := <-exited:
			return fmt.Errorf("agent of node %s exited (%v); its log %s ends with:\n%s", n.Name, werr, n.LogFile, tail(n.LogFile, 15))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent of node %s not ready after 60s; log %s:\n%s", n.Name, n.LogFile, tail(n.LogFile, 15))
		}
	}
}

func tail(path string, lines int) string {
	b, _ := os.ReadFile(path)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// agentPID is the pid of the node's running agent, or 0: n.PID when it is
// a live filament-agent in the node's network namespace (not a reused pid).
func agentPID(n *Node) int {
	if n.PID <= 0 || !running(n.PID) {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n.PID))
	if err != nil {
		return 0
	}
	argv0, _, _ := bytes.Cut(cmdline, []byte{0})
	if filepath.Base(string(argv0)) != "filament-agent" {
		return 0
	}
	var agentNS, nodeNS syscall.Stat_t
	if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", n.PID), &agentNS) != nil || syscall.Stat(NetNSPath(n.NetNS), &nodeNS) != nil ||
		agentNS.Ino != nodeNS.Ino || agentNS.Dev != nodeNS.Dev {
		return 0
	}
	return n.PID
}

// Refresh updates each node's Running flag from its agent.
func (l *Lab) Refresh(ctx context.Context) {
	for i := range l.Nodes {
		n := &l.Nodes[i]
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := client.New(n.Socket).Status(sctx)
		cancel()
		n.Running = err == nil
	}
	sort.Slice(l.Pods, func(i, j int) bool { return l.Pods[i].Name < l.Pods[j].Name })
}

// StopAgent stops a node's agent (SIGTERM, then SIGKILL after 10 s) and
// leaves its pods and namespace in place.
func (l *Lab) StopAgent(node string) error {
	n, err := l.Node(node)
	if err != nil {
		return err
	}
	stopPID(n.PID)
	n.Running = false
	return l.save()
}

// StopKvstore stops a cluster's apiserver (its etcd data stays).
func (l *Lab) StopKvstore(cluster string) error {
	c, err := l.Cluster(cluster)
	if err != nil {
		return err
	}
	stopPID(c.KvstorePID)
	c.KvstorePID = 0
	return l.save()
}

// StartKvstore starts a stopped cluster's apiserver again.
func (l *Lab) StartKvstore(cluster string) error {
	c, err := l.Cluster(cluster)
	if err != nil {
		return err
	}
	if err := l.runKvstore(c); err != nil {
		return err
	}
	return l.save()
}

// KillAgent kills a node's agent with SIGKILL, as a crash would.
func (l *Lab) KillAgent(node string) error {
	n, err := l.Node(node)
	if err != nil {
		return err
	}
	syscall.Kill(n.PID, syscall.SIGKILL)
	for i := 0; i < 50 && running(n.PID); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	n.Running = false
	return l.save()
}

// StartAgent starts a stopped node's agent again with the same state dir.
func (l *Lab) StartAgent(ctx context.Context, node string) error {
	n, err := l.Node(node)
	if err != nil {
		return err
	}
	if err := l.startAgent(ctx, n); err != nil {
		return err
	}
	return l.save()
}

// running reports whether pid is a live process: a zombie (an agent this
// process started and has not reaped) counts as gone, and is reaped.
func running(pid int) bool {
	var ws syscall.WaitStatus
	syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) state ...: the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// stopNetNSProcesses stops every process left in network namespace ns.
func stopNetNSProcesses(ns string) {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			stopPID(pid)
		}
	}
}

func stopPID(pid int) {
	if pid <= 0 {
		return
	}
	// The agent runs as a child of `ip netns exec` in its own session.
	syscall.Kill(-pid, syscall.SIGTERM)
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100; i++ {
		if !running(pid) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	syscall.Kill(pid, syscall.SIGKILL)
}
