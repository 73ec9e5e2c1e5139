// Package veth owns the kernel side of endpoints: the veth pair between the
// node's namespace and a pod's, the pod's address, gateway route and
// sysctls, and the node's gateway device and forwarding. It implements
// endpoint.Plumber with vishvananda/netlink.
package veth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/endpoint"
)

// HostDevice is the node-side device that holds the pods' gateway address.
// It is one end of a veth pair (the other is HostPeer), as kernels without
// the dummy driver are common.
const (
	HostDevice = "filament_host"
	HostPeer   = "filament_net"
)

// Plumber configures endpoints in the current (node) network namespace.
type Plumber struct{}

// New returns a Plumber.
func New() *Plumber { return &Plumber{} }

func writeSysctl(name, value string) error {
	p := filepath.Join("/proc/sys", filepath.FromSlash(name))
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// EnsureNode prepares the node namespace: forwarding on, and the gateway
// address of the pod CIDR on HostDevice so that pods' ARP for
// their gateway is answered and their traffic is routed.
func EnsureNode(gateway netip.Addr) error {
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	link, err := netlink.LinkByName(HostDevice)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("%s: %w", HostDevice, err)
		}
		pair := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: HostDevice}, PeerName: HostPeer}
		if err := netlink.LinkAdd(pair); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create %s: %w", HostDevice, err)
		}
		if link, err = netlink.LinkByName(HostDevice); err != nil {
			return fmt.Errorf("%s: %w", HostDevice, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gateway.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("gateway address %s on %s: %w", gateway, HostDevice, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s up: %w", HostDevice, err)
	}
	if peer, err := netlink.LinkByName(HostPeer); err == nil {
		netlink.LinkSetUp(peer)
	}
	return nil
}

// Setup implements endpoint.Plumber.
func (p *Plumber) Setup(ctx context.Context, r endpoint.PlumbRequest) (res endpoint.PlumbResult, err error) {
	podNS, err := ns.GetNS(r.NetNS)
	if err != nil {
		return res, fmt.Errorf("%w: netns %q: %v", endpoint.ErrInvalid, r.NetNS, err)
	}
	defer podNS.Close()
	peerTmp := "tmp" + r.HostIfName[3:]
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: r.HostIfName, MTU: r.MTU},
		PeerName:      peerTmp,
		PeerNamespace: netlink.NsFd(int(podNS.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return res, fmt.Errorf("create veth %s: %w", r.HostIfName, err)
	}
	defer func() {
		if err != nil {
			p.Teardown(r.HostIfName)
		}
	}()
	host, err := netlink.LinkByName(r.HostIfName)
	if err != nil {
		return res, fmt.Errorf("veth %s: %w", r.HostIfName, err)
	}
	res.HostIfIndex = host.Attrs().Index
	res.HostMAC = host.Attrs().HardwareAddr.String()
	for _, s := range [][2]string{
		{"net/ipv4/conf/" + r.HostIfName + "/rp_filter", "0"},
		{"net/ipv4/conf/" + r.HostIfName + "/forwarding", "1"},
		// IPv4 only: no link-local IPv6 chatter from the node into pods.
		{"net/ipv6/conf/" + r.HostIfName + "/disable_ipv6", "1"},
	} {
		if err := writeSysctl(s[0], s[1]); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, err
		}
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return res, fmt.Errorf("veth %s up: %w", r.HostIfName, err)
	}
	err = podNS.Do(func(ns.NetNS) error {
		mac, err := configurePod(peerTmp, r)
		res.MAC = mac
		return err
	})
	if err != nil {
		return res, err
	}
	if err := netlink.RouteReplace(podRoute(res.HostIfIndex, r.IPv4)); err != nil {
		return res, fmt.Errorf("route to %s via %s: %w", r.IPv4, r.HostIfName, err)
	}
	return res, nil
}

// configurePod runs inside the pod namespace.
func configurePod(tmpName string, r endpoint.PlumbRequest) (string, error) {
	link, err := netlink.LinkByName(tmpName)
	if err != nil {
		return "", fmt.Errorf("pod side %s: %w", tmpName, err)
	}
	if _, err := netlink.LinkByName(r.IfName); err == nil {
		return "", fmt.Errorf("%w: ifName %q already exists in netns %s", endpoint.ErrInvalid, r.IfName, r.NetNS)
	}
	if err := netlink.LinkSetName(link, r.IfName); err != nil {
		return "", fmt.Errorf("rename %s to %s: %w", tmpName, r.IfName, err)
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.LinkSetUp(lo)
	}
	// IPv4 only for now: keep IPv6 from autoconfiguring on the pod side.
	writeSysctl("net/ipv6/conf/"+r.IfName+"/disable_ipv6", "1")
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: r.IPv4.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return "", fmt.Errorf("address %s on %s: %w", r.IPv4, r.IfName, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return "", fmt.Errorf("%s up: %w", r.IfName, err)
	}
	gw := r.Gateway.AsSlice()
	if err := netlink.RouteAdd(&netlink.Route{
		LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)},
	}); err != nil {
		return "", fmt.Errorf("route to gateway %s: %w", r.Gateway, err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
		return "", fmt.Errorf("default route via %s: %w", r.Gateway, err)
	}
	return link.Attrs().HardwareAddr.String(), nil
}

// Teardown implements endpoint.Plumber: deleting the host side removes the pair.
func (p *Plumber) Teardown(hostIfName string) error {
	link, err := netlink.LinkByName(hostIfName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s: %w", hostIfName, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete %s: %w", hostIfName, err)
	}
	return nil
}

// Present implements endpoint.Plumber.
func (p *Plumber) Present(hostIfName string) bool {
	_, err := netlink.LinkByName(hostIfName)
	return err == nil
}

// SetUp implements endpoint.Plumber. A device set down loses its routes,
// so setting it up writes the route to the pod again (until 2026-12-07 a
// held endpoint set up again had none: the node and its host-network
// clients could not reach the pod, TestSetUpRestoresTheRoute).
func (p *Plumber) SetUp(hostIfName string, ip netip.Addr, up bool) error {
	link, err := netlink.LinkByName(hostIfName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return fmt.Errorf("%w: %s", endpoint.ErrNoDevice, hostIfName)
		}
		return fmt.Errorf("find %s: %w", hostIfName, err)
	}
	if !up {
		if err := netlink.LinkSetDown(link); err != nil {
			return fmt.Errorf("set %s down: %w", hostIfName, err)
		}
		return nil
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", hostIfName, err)
	}
	if err := netlink.RouteReplace(podRoute(link.Attrs().Index, ip)); err != nil {
		return fmt.Errorf("route to %s via %s: %w", ip, hostIfName, err)
	}
	return nil
}

// podRoute is the node's route to a pod's address through its host-side
// device.
func podRoute(ifIndex int, ip netip.Addr) *netlink.Route {
	return &netlink.Route{LinkIndex: ifIndex, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}}
}

// ErrMismatch: CNI CHECK found an endpoint's devices, address or routes
// not as they were created.
var ErrMismatch = errors.New("endpoint not as configured")

// Check verifies an endpoint as CNI CHECK does: in the pod namespace at
// netnsPath its interface is up with its address, a link route to the
// gateway and a default route through it; in the node (current)
// namespace its host-side veth is up and carries the /32 route to the pod.
// Every problem found is named; each wraps ErrMismatch.
func Check(netnsPath string, ep endpoint.Endpoint) error {
	var problems []error
	miss := func(format string, args ...any) {
		problems = append(problems, fmt.Errorf("%w: "+format, append([]any{ErrMismatch}, args...)...))
	}
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := netlink.LinkByName(ep.IfName)
		if err != nil {
			miss("interface %s in %s: %v", ep.IfName, netnsPath, err)
			return nil
		}
		where := fmt.Sprintf("on %s in %s", ep.IfName, netnsPath)
		if link.Attrs().Flags&net.FlagUp == 0 {
			miss("interface %s in %s is down", ep.IfName, netnsPath)
		}
		if !hasAddr(link, ep.IPv4) {
			miss("address %s missing %s", ep.IPv4, where)
		}
		routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("routes %s: %w", where, err)
		}
		if !hasRoute(routes, netip.PrefixFrom(ep.Gateway, 32), netip.Addr{}) {
			miss("route to gateway %s/32 missing %s", ep.Gateway, where)
		}
		if !hasRoute(routes, netip.Prefix{}, ep.Gateway) {
			miss("default route via %s missing %s", ep.Gateway, where)
		}
		return nil
	})
	if err != nil {
		return err
	}
	host, err := netlink.LinkByName(ep.HostIfName)
	if err != nil {
		miss("host-side veth %s of endpoint %d: %v", ep.HostIfName, ep.ID, err)
		return errors.Join(problems...)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		miss("host-side veth %s of endpoint %d is down", ep.HostIfName, ep.ID)
	}
	routes, err := netlink.RouteList(host, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("routes on %s: %w", ep.HostIfName, err)
	}
	if !hasRoute(routes, netip.PrefixFrom(ep.IPv4, 32), netip.Addr{}) {
		miss("node route to %s/32 via %s missing", ep.IPv4, ep.HostIfName)
	}
	return errors.Join(problems...)
}

func hasAddr(link netlink.Link, ip netip.Addr) bool {
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			return true
		}
	}
	return false
}

// hasRoute reports whether routes hold one to dst (the zero prefix: the
// default route) with gateway gw (the zero address: none).
func hasRoute(routes []netlink.Route, dst netip.Prefix, gw netip.Addr) bool {
	for _, r := range routes {
		var d netip.Prefix
		if r.Dst != nil {
			a, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			d = netip.PrefixFrom(a.Unmap(), ones)
		}
		isDefault := r.Dst == nil || d.Bits() == 0
		if (dst.IsValid() && d != dst) || (!dst.IsValid() && !isDefault) {
			continue
		}
		g, _ := netip.AddrFromSlice(r.Gw)
		if g.Unmap() == gw {
			return true
		}
	}
	return false
}
