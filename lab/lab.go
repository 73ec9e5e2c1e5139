// Package lab owns filament-lab: a local lab in the spirit of kind where
// nodes and pods are network namespaces on one machine. Each node runs its
// own filament-agent (own state dir, API socket and embedded etcd) inside
// its namespace; pods are namespaces wired by filament-cni exactly as a
// container runtime would invoke it. Everything a lab makes is recorded in
// its state file so that `down` removes all of it.
package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/ipam"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/crypto/ca"
	"github.com/filament-net/filament/crypto/nodeauth"
)

// Root is where labs keep their state (one directory per lab).
const Root = "/var/run/filament-lab"

var (
	// ErrInvalid: a bad name or argument.
	ErrInvalid = errors.New("invalid lab request")
	// ErrNotFound: no such lab, node or pod.
	ErrNotFound = errors.New("not found")
	// ErrExists: the lab or pod already exists.
	ErrExists = errors.New("already exists")
)

var nameRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?$`)

func validName(kind, s string) error {
	if !nameRe.MatchString(s) {
		return fmt.Errorf("%w: %s name %q: 1-16 lowercase letters, digits and '-'", ErrInvalid, kind, s)
	}
	return nil
}

// Node is one lab node.
type Node struct {
	Name     string `json:"name"`    // n<j>, or c<i>/n<j> in a lab of several clusters
	Cluster  string `json:"cluster"` // name of its cluster
	NetNS    string `json:"netns"`
	IP       string `json:"ip"` // underlay address
	PodCIDR  string `json:"podCIDR"`
	StateDir string `json:"stateDir"`
	Socket   string `json:"socket"`
	LogFile  string `json:"logFile"`
	PID      int    `json:"pid"`
	Running  bool   `json:"running"`
}

// Pod is one lab pod.
type Pod struct {
	Name        string   `json:"name"`
	Node        string   `json:"node"`
	NetNS       string   `json:"netns"`
	ContainerID string   `json:"containerID"`
	IP          string   `json:"ip"`
	Labels      []string `json:"labels"`
	// Namespace is the pod's Kubernetes namespace ("default" when empty).
	Namespace string `json:"namespace,omitempty"`
	// Servers are the PIDs of `filament-lab pod serve` servers in the pod.
	Servers []int `json:"servers,omitempty"`
}

// Cluster is one cluster of the lab: an underlay bridge joining its nodes
// and its kvstore (filament-clustermesh-apiserver, serving the cluster's
// clustermesh bundle over mutual TLS).
type Cluster struct {
	Name       string `json:"name"`
	ID         uint32 `json:"id"`
	Index      int    `json:"index"`  // underlay 172.30.<index>.0/24
	Pool       string `json:"pool"`   // pod CIDR pool
	Bundle     string `json:"bundle"` // clustermesh bundle directory
	Kvstore    string `json:"kvstore"`
	KvstorePID int    `json:"kvstorePID"`
}

// External is a host outside the cluster (a namespace joined to a node by a
// veth, routed through the node), to test world and CIDR policy.
type External struct {
	Name  string `json:"name"`
	Node  string `json:"node"`
	NetNS string `json:"netns"`
	IP    string `json:"ip"`
}

// Host is an "outside" host on a cluster's underlay (standing in for an EC2
// instance or a CIDR peer): a namespace owning IP, which every node of the
// cluster routes through the host's underlay address, so that pods reach it
// as world (no masquerade: it sees and answers the pods' addresses).
type Host struct {
	Name       string `json:"name"`
	Cluster    string `json:"cluster"`
	NetNS      string `json:"netns"`
	IP         string `json:"ip"`         // the address it stands for
	UnderlayIP string `json:"underlayIP"` // its address on the cluster's underlay
}

// Lab is the recorded state of one lab.
type Lab struct {
	Name      string   `json:"name"`
	BinDir    string   `json:"binDir"`
	AgentArgs []string `json:"agentArgs,omitempty"`
	// NodeAgentArgs replace AgentArgs for the nodes they name.
	NodeAgentArgs map[string][]string `json:"nodeAgentArgs,omitempty"`
	Routing       string              `json:"routing"`
	PodPrefix     int                 `json:"podPrefixLen"`
	Clusters      []Cluster           `json:"clusters"`
	Created       string              `json:"created"`
	Nodes         []Node              `json:"nodes"`
	Pods          []Pod               `json:"pods"`
	Externals     []External          `json:"externals,omitempty"`
	Hosts         []Host              `json:"hosts,omitempty"`

	dir string
}

// Options of Up.
type Options struct {
	Name   string
	Nodes  int
	BinDir string // where filament-agent, filament-cni and filament live
	// PodPrefixLen of each node's pod CIDR 10.244.<node>.0/<len> (default 24).
	PodPrefixLen int
	// AgentArgs are extra flags for every node's agent.
	AgentArgs []string
	// NodeAgentArgs replace AgentArgs for the nodes they name (a mixed
	// cluster, e.g. one node without encryption).
	NodeAgentArgs map[string][]string
	// Routing between nodes: tunnel (default) or native.
	Routing string
	// Clusters: with more than one, cluster i is c<i> (ID i) with nodes
	// c<i>/n1..n<Nodes>, and a router joins the clusters' underlays.
	Clusters int
	// ClusterIDs overrides the IDs of the clusters (tests of clashes).
	ClusterIDs []uint32
}

func labDir(name string) string { return filepath.Join(Root, name) }

// bpffs is the lab's bpf filesystem; node nI pins under <bpffs>/filament/nI.
func (l *Lab) bpffs() string { return filepath.Join(l.dir, "bpffs") }

// NetNSPath is the bind-mount path of a named network namespace.
func NetNSPath(ns string) string { return filepath.Join("/var/run/netns", ns) }

func (l *Lab) save() error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(l.dir, "lab.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(l.dir, "lab.json"))
}

// Load reads a lab's state.
func Load(name string) (*Lab, error) {
	if err := validName("lab", name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(labDir(name), "lab.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: lab %q (start it with: filament-lab up --name %s)", ErrNotFound, name, name)
		}
		return nil, err
	}
	l := &Lab{dir: labDir(name)}
	if err := json.Unmarshal(b, l); err != nil {
		return nil, fmt.Errorf("lab %q state: %w", name, err)
	}
	return l, nil
}

// lock serialises changes to one lab across processes.
// reload takes the lab's lock and reloads its state (another process may
// have changed it); the caller changes l, saves and unlocks.
func (l *Lab) reload() (unlock func(), err error) {
	unlock, err = lock(l.Name)
	if err != nil {
		return nil, err
	}
	cur, err := Load(l.Name)
	if err != nil {
		unlock()
		return nil, err
	}
	*l = *cur
	return unlock, nil
}

func lock(name string) (func(), error) {
	if err := os.MkdirAll(labDir(name), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(labDir(name), ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Up creates a lab with opts.Nodes nodes, each running its agent.
func Up(ctx context.Context, o Options) (*Lab, error) {
	if err := validName("lab", o.Name); err != nil {
		return nil, err
	}
	if o.Nodes < 1 || o.Nodes > 250 {
		return nil, fmt.Errorf("%w: --nodes %d: want 1-250", ErrInvalid, o.Nodes)
	}
	if o.PodPrefixLen == 0 {
		o.PodPrefixLen = 24
	}
	if o.PodPrefixLen < 24 || o.PodPrefixLen > 29 {
		return nil, fmt.Errorf("%w: pod prefix length %d: want 24-29", ErrInvalid, o.PodPrefixLen)
	}
	for _, b := range []string{"filament-agent", "filament-cni", "filament"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, b)); err != nil {
			return nil, fmt.Errorf("%w: binary %s not found in %s (run make build)", ErrInvalid, b, o.BinDir)
		}
	}
	unlock, err := lock(o.Name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(labDir(o.Name), "lab.json")); err == nil {
		return nil, fmt.Errorf("%w: lab %q is up (filament-lab down --name %s first)", ErrExists, o.Name, o.Name)
	}
	if o.Routing == "" {
		o.Routing = "tunnel"
	}
	if o.Routing != "tunnel" && o.Routing != "native" {
		return nil, fmt.Errorf("%w: --routing %q: want tunnel or native", ErrInvalid, o.Routing)
	}
	l := &Lab{Name: o.Name, BinDir: o.BinDir, AgentArgs: o.AgentArgs, NodeAgentArgs: o.NodeAgentArgs, Routing: o.Routing, PodPrefix: o.PodPrefixLen, Created: time.Now().UTC().Format(time.RFC3339), dir: labDir(o.Name)}
	if err := l.save(); err != nil {
		return nil, err
	}
	// One bpffs per lab, mounted in this (the host's) mount namespace so the
	// agents' pins outlive their processes and their `ip netns exec` mount
	// namespaces.
	if err := os.MkdirAll(l.bpffs(), 0o700); err != nil {
		l.teardown()
		return nil, err
	}
	if err := syscall.Mount("bpf", l.bpffs(), "bpf", 0, "mode=0700"); err != nil {
		l.teardown()
		return nil, fmt.Errorf("mount bpffs on %s: %w", l.bpffs(), err)
	}
	if o.Clusters == 0 {
		o.Clusters = 1
	}
	if o.Clusters < 1 || o.Clusters > 16 {
		return nil, fmt.Errorf("%w: --clusters %d: want 1-16", ErrInvalid, o.Clusters)
	}
	if o.Clusters == 1 {
		l.Clusters = []Cluster{{Name: "default", ID: 1, Index: 0, Pool: "10.244.0.0/16"}}
	} else {
		for i := 1; i <= o.Clusters; i++ {
			id := uint32(i)
			if i <= len(o.ClusterIDs) {
				id = o.ClusterIDs[i-1]
			}
			l.Clusters = append(l.Clusters, Cluster{Name: fmt.Sprintf("c%d", i), ID: id, Index: i, Pool: fmt.Sprintf("10.%d.0.0/16", 100+i)})
		}
	}
	fail := func(err error) (*Lab, error) {
		l.save()
		l.teardown()
		return nil, err
	}
	if o.Clusters > 1 {
		if err := l.startRouter(); err != nil {
			return fail(err)
		}
	}
	for ci := range l.Clusters {
		if err := l.startCluster(ctx, &l.Clusters[ci], o.Clusters > 1); err != nil {
			return fail(err)
		}
		if err := l.save(); err != nil {
			return fail(err)
		}
		for j := 1; j <= o.Nodes; j++ {
			if err := l.startNode(ctx, &l.Clusters[ci], j, o.Clusters > 1); err != nil {
				return fail(err)
			}
			if err := l.save(); err != nil {
				return fail(err)
			}
		}
	}
	return l, nil
}

func underlayIP(c *Cluster, host int) string { return fmt.Sprintf("172.30.%d.%d", c.Index, host) }

func (l *Lab) underlayNS(c *Cluster) string {
	if c.Index == 0 {
		return fmt.Sprintf("flab-%s-ul", l.Name)
	}
	return fmt.Sprintf("flab-%s-%s-ul", l.Name, c.Name)
}

func (l *Lab) kvstoreNS(c *Cluster) string {
	if c.Index == 0 {
		return fmt.Sprintf("flab-%s-kv", l.Name)
	}
	return fmt.Sprintf("flab-%s-%s-kv", l.Name, c.Name)
}

// KvstoreNS is the namespace of a cluster's kvstore.
func (l *Lab) KvstoreNS(cluster string) string {
	c, err := l.Cluster(cluster)
	if err != nil {
		return ""
	}
	return l.kvstoreNS(c)
}

func (l *Lab) routerNS() string { return fmt.Sprintf("flab-%s-rt", l.Name) }

// Cluster returns the named cluster.
func (l *Lab) Cluster(name string) (*Cluster, error) {
	for i := range l.Clusters {
		if l.Clusters[i].Name == name {
			return &l.Clusters[i], nil
		}
	}
	return nil, fmt.Errorf("%w: cluster %q in lab %q", ErrNotFound, name, l.Name)
}

// JoinUnderlay puts a veth between namespace ns (as eth0 with ip/24) and
// the underlay bridge of cluster (as port); in a lab of several clusters
// the router is its default gateway.
func (l *Lab) JoinUnderlay(cluster, ns, port, ip string) error {
	c, err := l.Cluster(cluster)
	if err != nil {
		return err
	}
	steps := [][]string{
		{"-n", l.underlayNS(c), "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", l.underlayNS(c), "link", "set", port, "master", "br0", "up"},
		{"-n", ns, "addr", "add", ip + "/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	}
	if len(l.Clusters) > 1 {
		steps = append(steps, []string{"-n", ns, "route", "add", "default", "via", underlayIP(c, 253)})
	}
	for _, st := range steps {
		if err := run("ip", st...); err != nil {
			return err
		}
	}
	return nil
}

// startRouter creates the namespace that routes between the clusters' underlays.
func (l *Lab) startRouter() error {
	if err := run("ip", "netns", "add", l.routerNS()); err != nil {
		return err
	}
	return run("ip", "netns", "exec", l.routerNS(), "sysctl", "-qw", "net.ipv4.ip_forward=1")
}

// startCluster creates the cluster's bridge and bundle and runs its kvstore.
func (l *Lab) startCluster(ctx context.Context, c *Cluster, routed bool) error {
	for _, st := range [][]string{
		{"netns", "add", l.underlayNS(c)},
		{"-n", l.underlayNS(c), "link", "add", "br0", "type", "bridge"},
		{"-n", l.underlayNS(c), "link", "set", "br0", "up"},
		{"netns", "add", l.kvstoreNS(c)},
	} {
		if err := run("ip", st...); err != nil {
			return err
		}
	}
	if routed {
		for _, st := range [][]string{
			{"-n", l.underlayNS(c), "link", "add", "rt", "type", "veth", "peer", "name", c.Name, "netns", l.routerNS()},
			{"-n", l.underlayNS(c), "link", "set", "rt", "master", "br0", "up"},
			{"-n", l.routerNS(), "addr", "add", underlayIP(c, 253) + "/24", "dev", c.Name},
			{"-n", l.routerNS(), "link", "set", c.Name, "up"},
		} {
			if err := run("ip", st...); err != nil {
				return err
			}
		}
	}
	kvIP := underlayIP(c, 254)
	if err := l.JoinUnderlay(c.Name, l.kvstoreNS(c), "kv", kvIP); err != nil {
		return err
	}
	dir := filepath.Join(l.dir, c.Name)
	c.Bundle = filepath.Join(dir, "clustermesh")
	// The same step as `filament clustermesh enable`.
	if _, err := clustermesh.Enable(c.Bundle, c.Name, c.ID, []net.IP{net.ParseIP(kvIP)}); err != nil {
		return err
	}
	return l.runKvstore(c)
}

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
	cmd := exec.Command("ip", "netns", "exec", l.kvstoreNS(c), filepath.Join(l.BinDir, "filament-clustermesh-apiserver"),
		"--bundle", c.Bundle, "--data-dir", filepath.Join(dir, "kvstore"), "--listen-client-url", c.Kvstore,
		"--listen-peer-url", "http://127.0.0.1:2380", "--unsafe-no-fsync")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the kvstore of cluster %s: %w", c.Name, err)
	}
	c.KvstorePID = cmd.Process.Pid
	go cmd.Wait()
	// Wait until it accepts connections, dialling from inside its namespace
	// (the underlay is not reachable from the host).
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := ns.WithNetNSPath(NetNSPath(l.kvstoreNS(c)), func(ns.NetNS) error {
			conn, err := net.DialTimeout("tcp4", kvIP+":2379", time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
		if err == nil && strings.Contains(tail(filepath.Join(dir, "kvstore.log"), 5), "serving") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kvstore of cluster %s not ready after 30s: %v; log:\n%s", c.Name, err, tail(filepath.Join(dir, "kvstore.log"), 10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (l *Lab) startNode(ctx context.Context, c *Cluster, j int, qualified bool) error {
	n := Node{Name: fmt.Sprintf("n%d", j), Cluster: c.Name, IP: underlayIP(c, j)}
	if qualified {
		n.Name = c.Name + "/" + n.Name
	}
	n.NetNS = fmt.Sprintf("flab-%s-%s", l.Name, strings.ReplaceAll(n.Name, "/", "-"))
	dir := filepath.Join(l.dir, strings.ReplaceAll(n.Name, "/", "-"))
	n.StateDir, n.Socket, n.LogFile = filepath.Join(dir, "state"), filepath.Join(dir, "agent.sock"), filepath.Join(dir, "agent.log")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := run("ip", "netns", "add", n.NetNS); err != nil {
		return err
	}
	l.Nodes = append(l.Nodes, n)
	if err := l.JoinUnderlay(c.Name, n.NetNS, "n"+strconv.Itoa(j), n.IP); err != nil {
		return err
	}
	return l.startAgent(ctx, &l.Nodes[len(l.Nodes)-1])
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
	args := append([]string{"netns", "exec", n.NetNS, filepath.Join(l.BinDir, "filament-agent"),
		"--node-name", nodeName, "--cluster-name", c.Name, "--cluster-id", strconv.Itoa(int(c.ID)),
		"--state-dir", n.StateDir, "--api-socket", n.Socket,
		"--etcd-endpoints", c.Kvstore, "--etcd-ca", filepath.Join(c.Bundle, "ca.pem"),
		"--etcd-cert", filepath.Join(c.Bundle, clustermesh.UserAgent+".pem"), "--etcd-key", filepath.Join(c.Bundle, clustermesh.UserAgent+"-key.pem"),
		"--clustermesh-config", clustermesh.RemotesDir(c.Bundle),
		"--gossip-key-file", clustermesh.GossipKeyFile(c.Bundle),
		"--node-ip", n.IP, "--routing", l.Routing,
		"--cluster-pool", c.Pool, "--pod-cidr-size", strconv.Itoa(prefix),
		"--bpf-root", l.bpffs(),
		// Each agent runs in its own mount namespace (ip netns exec), so
		// it can keep the embedded WireGuard's UAPI socket to itself.
		"--wireguard-private-run-dir",
		"--node-cert", filepath.Join(nodeDir, "node.pem"), "--node-key", filepath.Join(nodeDir, "node-key.pem"),
		"--node-ca", filepath.Join(c.Bundle, "ca.pem")}, l.agentArgs(n.Name)...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start agent of %s: %w", n.Name, err)
	}
	n.PID = cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	client := api.NewClient(n.Socket)
	deadline := time.Now().Add(60 * time.Second)
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := client.Status(sctx)
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

// Node returns the named node.
func (l *Lab) Node(name string) (*Node, error) {
	for i := range l.Nodes {
		if l.Nodes[i].Name == name {
			return &l.Nodes[i], nil
		}
	}
	return nil, fmt.Errorf("%w: node %q in lab %q", ErrNotFound, name, l.Name)
}

// Pod returns the named pod.
func (l *Lab) Pod(name string) (*Pod, error) {
	for i := range l.Pods {
		if l.Pods[i].Name == name {
			return &l.Pods[i], nil
		}
	}
	return nil, fmt.Errorf("%w: pod %q in lab %q", ErrNotFound, name, l.Name)
}

// NetConf is the CNI network configuration the lab hands filament-cni for a node.
func (n *Node) NetConf(labels []string) []byte {
	type kv struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	}
	ls := []kv{}
	for _, s := range labels {
		k, v, _ := strings.Cut(s, "=")
		ls = append(ls, kv{k, v})
	}
	conf := map[string]any{
		"cniVersion": "1.1.0", "name": "filament", "type": "filament", "agentSocket": n.Socket,
		"args": map[string]any{"cni": map[string]any{"labels": ls}},
	}
	b, _ := json.Marshal(conf)
	return b
}

// CNI runs filament-cni in the node's namespace exactly as a container
// runtime does: CNI_* in the environment, the config on stdin. It returns
// stdout (the result or the error JSON) and the error of the run.
func (l *Lab) CNI(n *Node, command, containerID, netns, ifName, cniArgs string, conf []byte) ([]byte, error) {
	cmd := exec.Command("ip", "netns", "exec", n.NetNS, filepath.Join(l.BinDir, "filament-cni"))
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND="+command, "CNI_CONTAINERID="+containerID, "CNI_NETNS="+netns,
		"CNI_IFNAME="+ifName, "CNI_PATH="+l.BinDir, "CNI_ARGS="+cniArgs)
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		var cerr struct {
			Code uint   `json:"code"`
			Msg  string `json:"msg"`
		}
		if json.Unmarshal(stdout.Bytes(), &cerr) == nil && cerr.Msg != "" {
			return stdout.Bytes(), fmt.Errorf("filament-cni %s: %s (CNI error %d)", command, cerr.Msg, cerr.Code)
		}
		return stdout.Bytes(), fmt.Errorf("filament-cni %s: %v: %s", command, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// AddPod creates a pod namespace on node and wires it through filament-cni.
func (l *Lab) AddPod(node, name string, labels []string) (*Pod, error) {
	return l.AddPodInNamespace(node, name, "default", labels)
}

// AddPodInNamespace is AddPod for a pod of a Kubernetes namespace (given
// to CNI as K8S_POD_NAMESPACE).
func (l *Lab) AddPodInNamespace(node, name, namespace string, labels []string) (*Pod, error) {
	if err := validName("pod", name); err != nil {
		return nil, err
	}
	unlock, err := l.reload()
	if err != nil {
		return nil, err
	}
	defer unlock()
	n, err := l.Node(node)
	if err != nil {
		return nil, err
	}
	if _, err := l.Pod(name); err == nil {
		return nil, fmt.Errorf("%w: pod %q in lab %q", ErrExists, name, l.Name)
	}
	if err := validName("namespace", namespace); err != nil {
		return nil, err
	}
	p := Pod{Name: name, Node: node, NetNS: fmt.Sprintf("flab-%s-p-%s", l.Name, name), ContainerID: "flab-" + l.Name + "-" + name, Labels: labels,
		Namespace: namespace}
	if err := run("ip", "netns", "add", p.NetNS); err != nil {
		return nil, err
	}
	out, err := l.CNI(n, "ADD", p.ContainerID, NetNSPath(p.NetNS), "eth0",
		"IgnoreUnknown=1;K8S_POD_NAMESPACE="+namespace+";K8S_POD_NAME="+name, n.NetConf(labels))
	if err != nil {
		run("ip", "netns", "del", p.NetNS)
		return nil, err
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
		return nil, fmt.Errorf("filament-cni ADD: unexpected result %s", out)
	}
	p.IP = strings.SplitN(res.IPs[0].Address, "/", 2)[0]
	l.Pods = append(l.Pods, p)
	return &l.Pods[len(l.Pods)-1], l.save()
}

// AddExternal creates a host outside the cluster with address ip, reachable
// from node's pods through the node (which routes it like a pod, with no
// endpoint and no policy program on its link).
func (l *Lab) AddExternal(node, name, ip string) (*External, error) {
	if err := validName("external", name); err != nil {
		return nil, err
	}
	unlock, err := l.reload()
	if err != nil {
		return nil, err
	}
	defer unlock()
	n, err := l.Node(node)
	if err != nil {
		return nil, err
	}
	pool, err := ipam.New(n.PodCIDR)
	if err != nil {
		return nil, err
	}
	gw := pool.Gateway().String()
	x := External{Name: name, Node: node, NetNS: fmt.Sprintf("flab-%s-x-%s", l.Name, name), IP: ip}
	host := "fx-" + name
	if len(host) > 15 {
		host = host[:15]
	}
	steps := [][]string{
		{"netns", "add", x.NetNS},
		{"-n", n.NetNS, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", x.NetNS},
		{"-n", x.NetNS, "addr", "add", ip + "/32", "dev", "eth0"},
		{"-n", x.NetNS, "link", "set", "lo", "up"},
		{"-n", x.NetNS, "link", "set", "eth0", "up"},
		{"-n", x.NetNS, "route", "add", gw, "dev", "eth0", "scope", "link"},
		{"-n", x.NetNS, "route", "add", "default", "via", gw, "dev", "eth0"},
		{"-n", n.NetNS, "link", "set", host, "up"},
		{"-n", n.NetNS, "route", "add", ip + "/32", "dev", host, "scope", "link"},
	}
	for _, st := range steps {
		if err := run("ip", st...); err != nil {
			run("ip", "netns", "del", x.NetNS)
			run("ip", "-n", n.NetNS, "link", "del", host)
			return nil, err
		}
	}
	l.Externals = append(l.Externals, x)
	return &l.Externals[len(l.Externals)-1], l.save()
}

// ExternalCommand returns a command that runs argv in an external host.
func (l *Lab) ExternalCommand(name string, argv ...string) (*exec.Cmd, error) {
	for _, x := range l.Externals {
		if x.Name == name {
			return exec.Command("ip", append([]string{"netns", "exec", x.NetNS}, argv...)...), nil
		}
	}
	return nil, fmt.Errorf("%w: external %q in lab %q", ErrNotFound, name, l.Name)
}

// Host returns the named outside host.
func (l *Lab) Host(name string) (*Host, error) {
	for i := range l.Hosts {
		if l.Hosts[i].Name == name {
			return &l.Hosts[i], nil
		}
	}
	return nil, fmt.Errorf("%w: host %q in lab %q", ErrNotFound, name, l.Name)
}

// labUnderlays holds every cluster underlay a lab can have (172.30.<index>.0/24).
var labUnderlays = netip.MustParsePrefix("172.30.0.0/16")

// hostPort is the name of a host's port on its cluster's underlay bridge:
// ho<last byte of its underlay address>, unique on the bridge.
func hostPort(underlayIP string) string {
	return "ho" + underlayIP[strings.LastIndexByte(underlayIP, '.')+1:]
}

// hostUnderlayFirst..hostUnderlayLast are the underlay host numbers given to
// outside hosts (.253 is the router, .254 the kvstore).
const hostUnderlayFirst, hostUnderlayLast = 200, 252

// AddHost creates an outside host with address ip on cluster's underlay
// ("" = the lab's first cluster): every node of the cluster routes ip/32
// through the host's underlay address, and the host routes each node's pod
// CIDR back through that node, answering from ip. Pods reach it as world.
// Nodes added to the cluster later do not get the route.
func (l *Lab) AddHost(name, ip, cluster string) (*Host, error) {
	if err := validName("host", name); err != nil {
		return nil, err
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil || !addr.Is4() || addr.IsUnspecified() || addr.IsLoopback() || addr.IsMulticast() || addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return nil, fmt.Errorf("%w: host IP %q: want a unicast IPv4 address", ErrInvalid, ip)
	}
	if labUnderlays.Contains(addr) {
		return nil, fmt.Errorf("%w: host IP %q: inside the lab's underlay range %s", ErrInvalid, ip, labUnderlays)
	}
	unlock, err := l.reload()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if len(l.Clusters) == 0 {
		return nil, fmt.Errorf("%w: lab %q has no cluster", ErrNotFound, l.Name)
	}
	if cluster == "" {
		cluster = l.Clusters[0].Name
	}
	c, err := l.Cluster(cluster)
	if err != nil {
		return nil, err
	}
	for _, oc := range l.Clusters {
		if pool, err := netip.ParsePrefix(oc.Pool); err == nil && pool.Contains(addr) {
			return nil, fmt.Errorf("%w: host IP %q: inside the pod pool %s of cluster %s", ErrInvalid, ip, oc.Pool, oc.Name)
		}
	}
	if _, err := l.Host(name); err == nil {
		return nil, fmt.Errorf("%w: host %q in lab %q", ErrExists, name, l.Name)
	}
	for _, h := range l.Hosts {
		if h.IP == addr.String() {
			return nil, fmt.Errorf("%w: host IP %q: already the address of host %s", ErrExists, ip, h.Name)
		}
	}
	for _, x := range l.Externals {
		if x.IP == addr.String() {
			return nil, fmt.Errorf("%w: host IP %q: already the address of external %s", ErrExists, ip, x.Name)
		}
	}
	used := map[string]bool{}
	var nodes []Node
	for _, n := range l.Nodes {
		if n.Cluster == c.Name {
			used[n.IP] = true
			nodes = append(nodes, n)
		}
	}
	for _, h := range l.Hosts {
		used[h.UnderlayIP] = true
	}
	h := Host{Name: name, Cluster: c.Name, NetNS: fmt.Sprintf("flab-%s-host-%s", l.Name, name), IP: addr.String()}
	port := ""
	for k := hostUnderlayFirst; k <= hostUnderlayLast; k++ {
		if u := underlayIP(c, k); !used[u] {
			h.UnderlayIP, port = u, hostPort(u)
			break
		}
	}
	if h.UnderlayIP == "" {
		return nil, fmt.Errorf("%w: no free underlay address for another host in cluster %s (.%d-.%d are taken)", ErrExists, c.Name, hostUnderlayFirst, hostUnderlayLast)
	}
	if err := run("ip", "netns", "add", h.NetNS); err != nil {
		return nil, err
	}
	var routed []Node
	fail := func(err error) (*Host, error) {
		for _, n := range routed {
			run("ip", "-n", n.NetNS, "route", "del", h.IP+"/32", "via", h.UnderlayIP)
		}
		run("ip", "-n", l.underlayNS(c), "link", "del", port)
		run("ip", "netns", "del", h.NetNS)
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	if err := l.JoinUnderlay(c.Name, h.NetNS, port, h.UnderlayIP); err != nil {
		return fail(err)
	}
	if err := run("ip", "-n", h.NetNS, "addr", "add", h.IP+"/32", "dev", "eth0"); err != nil {
		return fail(err)
	}
	// Replies (and connections it opens) go to the pod's node, from ip
	// rather than from the underlay address.
	for _, n := range nodes {
		if n.PodCIDR == "" {
			continue
		}
		if err := run("ip", "-n", h.NetNS, "route", "add", n.PodCIDR, "via", n.IP, "src", h.IP); err != nil {
			return fail(err)
		}
	}
	for _, n := range nodes {
		if err := run("ip", "-n", n.NetNS, "route", "add", h.IP+"/32", "via", h.UnderlayIP); err != nil {
			return fail(err)
		}
		routed = append(routed, n)
	}
	l.Hosts = append(l.Hosts, h)
	return &l.Hosts[len(l.Hosts)-1], l.save()
}

// DeleteHost removes an outside host: its route on every node of its
// cluster and its namespace.
func (l *Lab) DeleteHost(name string) error {
	unlock, err := l.reload()
	if err != nil {
		return err
	}
	defer unlock()
	h, err := l.Host(name)
	if err != nil {
		return err
	}
	gone := func(err error) bool {
		s := err.Error()
		return strings.Contains(s, "No such process") || strings.Contains(s, "No such file") || strings.Contains(s, "Cannot open network namespace")
	}
	var errs []error
	for _, n := range l.Nodes {
		if n.Cluster != h.Cluster {
			continue
		}
		if err := run("ip", "-n", n.NetNS, "route", "del", h.IP+"/32", "via", h.UnderlayIP); err != nil && !gone(err) {
			errs = append(errs, err)
		}
	}
	// Its underlay port explicitly: a process or socket still in the host's
	// namespace would keep the namespace, and so the veth, alive.
	if c, err := l.Cluster(h.Cluster); err == nil {
		if err := run("ip", "-n", l.underlayNS(c), "link", "del", hostPort(h.UnderlayIP)); err != nil && !gone(err) && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err)
		}
	}
	if err := run("ip", "netns", "del", h.NetNS); err != nil && !gone(err) {
		errs = append(errs, err)
	}
	for i := range l.Hosts {
		if l.Hosts[i].Name == name {
			l.Hosts = append(l.Hosts[:i], l.Hosts[i+1:]...)
			break
		}
	}
	return errors.Join(append(errs, l.save())...)
}

// HostCommand returns a command that runs argv in an outside host's namespace.
func (l *Lab) HostCommand(name string, argv ...string) (*exec.Cmd, error) {
	h, err := l.Host(name)
	if err != nil {
		return nil, err
	}
	return exec.Command("ip", append([]string{"netns", "exec", h.NetNS}, argv...)...), nil
}

// DeletePod removes a pod through CNI DEL and deletes its namespace.
func (l *Lab) DeletePod(name string) error {
	unlock, err := l.reload()
	if err != nil {
		return err
	}
	defer unlock()
	p, err := l.Pod(name)
	if err != nil {
		return err
	}
	if err := l.deletePod(*p); err != nil {
		return err
	}
	for i := range l.Pods {
		if l.Pods[i].Name == name {
			l.Pods = append(l.Pods[:i], l.Pods[i+1:]...)
			break
		}
	}
	return l.save()
}

func (l *Lab) deletePod(p Pod) error {
	for _, pid := range p.Servers {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	n, err := l.Node(p.Node)
	if err == nil {
		if _, err := l.CNI(n, "DEL", p.ContainerID, NetNSPath(p.NetNS), "eth0", "", n.NetConf(nil)); err != nil {
			return err
		}
	}
	return run("ip", "netns", "del", p.NetNS)
}

// Serve starts, inside the pod, a server on port (TCP and UDP) that answers
// with the pod's name: an HTTP response to an HTTP request, the name and a
// newline to anything else. It runs until the pod or the lab is removed.
func (l *Lab) Serve(pod string, port int) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("port %d: want 1-65535", port)
	}
	unlock, err := l.reload()
	if err != nil {
		return err
	}
	defer unlock()
	p, err := l.Pod(pod)
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(l.dir, "serve-"+p.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", p.NetNS, filepath.Join(l.BinDir, "filament-lab"), "serve-name",
		"--port", strconv.Itoa(port), "--reply", p.Name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	// Ready when the port answers inside the pod.
	for i := 0; ; i++ {
		up := ns.WithNetNSPath(NetNSPath(p.NetNS), func(ns.NetNS) error {
			c, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if up == nil {
			break
		}
		if i == 50 || syscall.Kill(cmd.Process.Pid, 0) != nil {
			syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			return fmt.Errorf("server in pod %s on port %d did not start; see %s", p.Name, port, logf.Name())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := range l.Pods {
		if l.Pods[i].Name == p.Name {
			l.Pods[i].Servers = append(l.Pods[i].Servers, cmd.Process.Pid)
		}
	}
	return l.save()
}

// PodCommand returns a command that runs argv inside the pod's namespace.
func (l *Lab) PodCommand(pod string, argv ...string) (*exec.Cmd, error) {
	p, err := l.Pod(pod)
	if err != nil {
		return nil, err
	}
	return exec.Command("ip", append([]string{"netns", "exec", p.NetNS}, argv...)...), nil
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
		cmd = exec.Command("ip", append([]string{"netns", "exec", n.NetNS}, argv...)...)
	}
	cmd.Env = append(os.Environ(), api.SocketEnv+"="+n.Socket, "PATH="+l.BinDir+":"+os.Getenv("PATH"), "FILAMENT_LAB_DIR="+l.dir)
	if c, err := l.Cluster(n.Cluster); err == nil {
		cmd.Env = append(cmd.Env, "FILAMENT_CLUSTERMESH_BUNDLE="+c.Bundle)
	}
	return cmd, nil
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
		_, err := api.NewClient(n.Socket).Status(sctx)
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

// Down removes every pod, agent, namespace and file of the lab.
func Down(name string) error {
	unlock, err := lock(name)
	if err != nil {
		return err
	}
	defer unlock()
	l, err := Load(name)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			os.RemoveAll(labDir(name))
		}
		return err
	}
	return l.teardown()
}

func (l *Lab) teardown() error {
	var errs []error
	for _, p := range l.Pods {
		if err := l.deletePod(p); err != nil {
			// The agent may be gone: remove the namespace anyway.
			if err2 := run("ip", "netns", "del", p.NetNS); err2 != nil && !strings.Contains(err2.Error(), "No such file") {
				errs = append(errs, err2)
			}
		}
	}
	for _, x := range l.Externals {
		if err := run("ip", "netns", "del", x.NetNS); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	for _, h := range l.Hosts {
		if err := run("ip", "netns", "del", h.NetNS); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	for _, n := range l.Nodes {
		stopPID(n.PID)
		if err := run("ip", "netns", "del", n.NetNS); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	var nss []string
	for i := range l.Clusters {
		c := &l.Clusters[i]
		stopPID(c.KvstorePID)
		nss = append(nss, l.kvstoreNS(c), l.underlayNS(c))
	}
	if len(l.Clusters) > 1 {
		nss = append(nss, l.routerNS())
	}
	for _, ns := range nss {
		if err := run("ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	if err := syscall.Unmount(l.bpffs(), syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", l.bpffs(), err))
	}
	if err := os.RemoveAll(l.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
