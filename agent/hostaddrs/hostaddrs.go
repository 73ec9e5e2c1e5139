// Package hostaddrs owns this node's other addresses: those its kernel
// delivers to itself besides its underlay address (a second interface's,
// a loopback address such as a router's, a bridge's such as docker0's).
// The node publishes them in its record (node.Node.LocalAddrs) so that
// the other nodes close the control ports there to their pods too; this
// node closes its own with the FIB (bpf/lib/fib.h). Which addresses count
// (Select) is decided apart from reading them from the kernel (List) and
// following their changes (Follow).
package hostaddrs

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/filament-net/filament/agent/node"
)

// Addr is an address on one of the node's links.
type Addr struct {
	Link string
	IP   netip.Addr
}

// Exclude is what Select leaves out besides what no record may hold
// (node.LocalAddrOK): the node's own underlay addresses (in its record's
// IPs already) and the pod CIDR (the pods' gateway address is in it).
type Exclude struct {
	NodeIPs []netip.Addr
	PodCIDR netip.Prefix
}

// skipLink says whether the addresses on link are not the node's own:
// Filament's devices (filament_*), and kube-proxy's IPVS dummy, which
// holds every ClusterIP and external IP (anyone who makes a Service puts
// addresses there; every node holds the same ones, and each node's own
// FIB check closes them already).
func skipLink(link string) bool {
	return strings.HasPrefix(link, "filament_") || link == "kube-ipvs0"
}

// Select returns the addresses of addrs a node publishes as its other
// addresses: IPv4 unicast, not loopback's 127/8 or link-local, not on
// Filament's or kube-proxy's devices, not excluded; sorted, without
// duplicates, at most node.MaxLocalAddrs (the lowest; dropped says how
// many more there were).
func Select(addrs []Addr, ex Exclude) (out []netip.Addr, dropped int) {
	for _, a := range addrs {
		ip := a.IP.Unmap()
		if skipLink(a.Link) || !node.LocalAddrOK(ip) || slices.Contains(ex.NodeIPs, ip) ||
			(ex.PodCIDR.IsValid() && ex.PodCIDR.Contains(ip)) {
			continue
		}
		out = append(out, ip)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	out = slices.Compact(out)
	if len(out) > node.MaxLocalAddrs {
		dropped = len(out) - node.MaxLocalAddrs
		out = out[:node.MaxLocalAddrs]
	}
	return out, dropped
}

// List reads the IPv4 addresses of every link of the current network
// namespace.
func List() ([]Addr, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var out []Addr
	for _, l := range links {
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return nil, err
		}
		for _, a := range as {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				out = append(out, Addr{Link: l.Attrs().Name, IP: ip})
			}
		}
	}
	return out, nil
}

// Strings formats addresses for a node record.
func Strings(addrs []netip.Addr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

// Follow calls publish with the node's selected addresses when there are
// some now, and each time they change (netlink's address events, and every interval in
// case an event was lost), until ctx ends. A failed read is logged and
// tried again at the next event or interval.
func Follow(ctx context.Context, ex Exclude, interval time.Duration, publish func([]netip.Addr)) {
	events := make(chan netlink.AddrUpdate, 64)
	if err := netlink.AddrSubscribe(events, ctx.Done()); err != nil {
		slog.Warn("node addresses: no netlink address events; read every interval only", "interval", interval, "err", err)
		events = nil
	}
	var last []netip.Addr
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if addrs, err := List(); err != nil {
			slog.Warn("node addresses: read", "err", err)
		} else {
			now, dropped := Select(addrs, ex)
			if !slices.Equal(now, last) {
				if dropped > 0 {
					slog.Warn("node addresses: more than a record holds; the lowest are published", "published", len(now), "left out", dropped)
				}
				publish(now)
				last = now
			}
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-events:
			if !ok {
				events = nil // netlink closes it when ctx ends
				continue
			}
			// Let a burst of changes settle into one read.
			time.Sleep(100 * time.Millisecond)
			events = drain(events)
		case <-tick.C:
		}
	}
}

// drain empties events without blocking; it returns nil once events is
// closed (a closed channel is always ready: reading it again would spin).
func drain(events chan netlink.AddrUpdate) chan netlink.AddrUpdate {
	for {
		select {
		case _, ok := <-events:
			if !ok {
				return nil
			}
		default:
			return events
		}
	}
}
