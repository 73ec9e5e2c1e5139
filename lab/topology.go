package lab

// Bringing a lab up and down: underlays, the router, clusters and nodes.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/filament-net/filament/clustermesh"
)

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
	for _, dir := range append([]string{o.BinDir}, slices.Collect(maps.Values(o.NodeBinDir))...) {
		for _, b := range []string{"filament-agent", "filament-cni", "filament"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				return nil, fmt.Errorf("%w: binary %s not found in %s (run make build)", ErrInvalid, b, dir)
			}
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
	l := &Lab{Name: o.Name, BinDir: o.BinDir, AgentArgs: o.AgentArgs, NodeAgentArgs: o.NodeAgentArgs, NodeBinDir: o.NodeBinDir, Routing: o.Routing, PodPrefix: o.PodPrefixLen, ClusterMeshCache: o.ClusterMeshCache, Created: time.Now().UTC().Format(time.RFC3339), dir: labDir(o.Name)}
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
	return runCmd(netnsCommand(l.routerNS(), "sysctl", "-qw", "net.ipv4.ip_forward=1"))
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
		stopNetNSProcesses(x.NetNS)
		if err := run("ip", "netns", "del", x.NetNS); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	for _, h := range l.Hosts {
		stopNetNSProcesses(h.NetNS) // what `host exec` left running
		if err := run("ip", "netns", "del", h.NetNS); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	for _, n := range l.Nodes {
		stopPID(n.PID)
		// What the agent started in its own session (the L7 proxy, which
		// outlives agent restarts) goes with the node.
		stopNetNSProcesses(n.NetNS)
		if err := run("ip", "netns", "del", n.NetNS); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	var nss []string
	for i := range l.Clusters {
		c := &l.Clusters[i]
		stopPID(c.KvstorePID)
		if c.Relay != nil {
			stopPID(c.Relay.PID)
		}
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
