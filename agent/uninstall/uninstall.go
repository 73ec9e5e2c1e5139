// Package uninstall removes what the agent leaves on a node once it has
// stopped for good (`filament-agent uninstall`): the CNI plugin and
// conflist, every pinned map, program and link under the bpffs root (a
// link goes when its last pin does: tcx programs on devices, the socket
// load balancer on the cgroup), classic tc filters of Filament's programs,
// the node's devices (filament_host/filament_net, filament_vxlan), the L7
// proxy's rule and table, routes into the cluster pool, and the state and
// API socket directories. Pods' veths go with their pods. Run it on a node
// whose agent is stopped: a running agent puts everything back.
package uninstall

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/cniinstall"
	"github.com/filament-net/filament/agent/endpoint/veth"
	"github.com/filament-net/filament/agent/l7"
	"github.com/filament-net/filament/agent/routing"
)

// ErrInvalid: a path or prefix is unusable; the message names it.
var ErrInvalid = errors.New("invalid uninstall input")

// Config says where the agent's pieces are.
type Config struct {
	// BPFRoot is the agent's --bpf-root; <BPFRoot>/filament goes.
	BPFRoot string
	// StateDir is the agent's --state-dir; it goes.
	StateDir string
	// RunDir holds the API socket (the directory of --api-socket); it goes.
	RunDir string
	// ClusterPool is the agent's --cluster-pool: routes into it go.
	ClusterPool netip.Prefix
	// CNI are the plugin and conflist to remove.
	CNI cniinstall.Files
}

// Devices are the node devices the agent creates.
var Devices = []string{veth.HostDevice, veth.HostPeer, routing.VXLANDevice}

// FilterNames are the names of the classic tc filters the datapath attaches.
var FilterNames = []string{"from_container", "to_container", "from_host", "from_overlay", "from_wireguard", "from_netdev"}

// Removed lists what Run took away, one line each.
type Removed []string

func (c Config) check() error {
	for _, d := range []struct{ field, dir string }{{"bpf root", c.BPFRoot}, {"state dir", c.StateDir}, {"run dir", c.RunDir}} {
		if !filepath.IsAbs(d.dir) || filepath.Clean(d.dir) != d.dir || d.dir == "/" {
			return fmt.Errorf("%w: %s %q: want a clean absolute path other than /", ErrInvalid, d.field, d.dir)
		}
	}
	if !c.ClusterPool.IsValid() || !c.ClusterPool.Addr().Is4() || c.ClusterPool.Bits() == 0 {
		return fmt.Errorf("%w: cluster pool %v: want an IPv4 prefix", ErrInvalid, c.ClusterPool)
	}
	return nil
}

// Run removes everything, going on past failures; the error joins them.
func Run(c Config) (Removed, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	var done Removed
	var errs []error
	note := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		} else {
			done = append(done, what)
		}
	}
	// The runtime stops choosing Filament first.
	plugin, conf := c.CNI.Targets()
	note("CNI "+conf+", "+plugin, cniinstall.Remove(c.CNI))
	links, err := netlink.LinkList()
	if err != nil {
		return done, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(l, parent)
			if err != nil {
				continue // no clsact
			}
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); ok && OurFilter(bf.Name) {
					note(fmt.Sprintf("tc filter %s on %s", bf.Name, l.Attrs().Name), netlink.FilterDel(f))
				}
			}
		}
	}
	for _, l := range links {
		if slices.Contains(Devices, l.Attrs().Name) {
			err := netlink.LinkDel(l)
			if errors.Is(err, unix.ENODEV) {
				continue // went with its peer
			}
			note("device "+l.Attrs().Name, err)
		}
	}
	rules, err := netlink.RuleList(unix.AF_INET)
	if err != nil {
		errs = append(errs, fmt.Errorf("list rules: %w", err))
	}
	for _, r := range rules {
		if r.Table == l7.RouteTable && r.Mark == l7.MarkToProxy {
			r := r
			note(fmt.Sprintf("rule fwmark %#x lookup %d", r.Mark, r.Table), netlink.RuleDel(&r))
		}
	}
	routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		errs = append(errs, fmt.Errorf("list routes: %w", err))
	}
	for _, r := range routes {
		if OurRoute(r, c.ClusterPool) {
			r := r
			note("route "+r.String(), netlink.RouteDel(&r))
		}
	}
	// The proxy outlives the agent (its own session; KillMode=process):
	// stopped before its state dir goes. Until 2026-12-07 it was left
	// running, a root process with a transparent listener on every
	// address (TestRun).
	if stopped, err := l7.StopProxy(filepath.Join(c.StateDir, "proxy")); err != nil || stopped {
		note("L7 proxy", err)
	}
	for _, d := range []string{filepath.Join(c.BPFRoot, "filament"), c.StateDir, c.RunDir} {
		if _, err := os.Lstat(d); errors.Is(err, os.ErrNotExist) {
			continue
		}
		note("directory "+d, removeDir(d))
	}
	return done, errors.Join(errs...)
}

// removeDir removes dir and everything in it; a dir that is a mount point
// (the hostPath volume of a container running the uninstall) is emptied
// and left.
func removeDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, unix.EBUSY) {
		return err
	}
	return nil
}

// OurFilter: a classic tc filter the datapath attached (its name is the
// program's, maybe with a suffix the kernel adds, as "from_netdev:[12]").
func OurFilter(name string) bool {
	base, _, _ := strings.Cut(name, ":")
	return slices.Contains(FilterNames, base)
}

// OurRoute: the L7 proxy's table, or a route whose destination lies in the
// cluster pool (other nodes' pod CIDRs, natively or through the tunnel;
// the pods' own /32s).
func OurRoute(r netlink.Route, pool netip.Prefix) bool {
	if r.Table == l7.RouteTable {
		return true
	}
	if r.Dst == nil || (r.Table != unix.RT_TABLE_MAIN && r.Table != 0) {
		return false
	}
	p, ok := netip.AddrFromSlice(r.Dst.IP)
	if !ok {
		return false
	}
	ones, _ := r.Dst.Mask.Size()
	return p.Is4() && ones >= pool.Bits() && pool.Contains(p)
}
