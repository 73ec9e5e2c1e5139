package lab

// Hosts outside the clusters: externals behind a node and underlay hosts.

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/filament-net/filament/agent/ipam"
)

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
			return netnsCommand(x.NetNS, argv...), nil
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
	return netnsCommand(h.NetNS, argv...), nil
}
