package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/endpoint"
)

// startLB attaches the load balancer's programs: NodePort translation on
// the underlay device and, with socketLB, the socket programs on the cgroup
// v2 root, for the node's own namespace to begin with.
func startLB(dp *datapath.Datapath, cfg config.Config, underlay netlink.Link) (*lbNetNS, error) {
	if underlay != nil {
		if _, err := dp.AttachNetdev(underlay.Attrs().Name, underlay.Attrs().Index); err != nil {
			return nil, err
		}
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if msg := snatOverlap(string(b)); msg != "" {
			slog.Warn(msg)
		}
	}
	h := &lbNetNS{dp: dp, cookies: map[uint16]uint64{}}
	if !cfg.SocketLB {
		slog.Info("socket-level load balancing is off (--socket-lb=false): only NodePort traffic is translated")
		return h, nil
	}
	root, err := datapath.EnsureCgroup2(cfg.CgroupRoot)
	if err != nil {
		return nil, err
	}
	if err := dp.AttachSocketLB(root); err != nil {
		return nil, err
	}
	cookie, err := datapath.NetNSCookie()
	if err != nil {
		return nil, err
	}
	if err := dp.RegisterNetNS(cookie, netip.Addr{}); err != nil {
		return nil, err
	}
	h.enabled = true
	return h, nil
}

// NodePort flows to remote backends are translated from this node with a
// source port of snatPortMin-65535 (bpf/lib/lb.h LB_SNAT_PORT_MIN), which
// the node's own connections must not take.
const snatPortMin = 61000

// snatOverlap reads ip_local_port_range ("lo\thi") and says, in one line,
// when the node's own connections may take a port of the NodePort SNAT
// range ("" when they cannot, or the value is unreadable).
func snatOverlap(portRange string) string {
	var lo, hi int
	if _, err := fmt.Sscan(portRange, &lo, &hi); err != nil || hi < snatPortMin {
		return ""
	}
	return fmt.Sprintf("net.ipv4.ip_local_port_range %d-%d reaches the NodePort SNAT ports %d-65535: a connection of this node to a remote pod may take a translated flow's tuple; keep it below %d", lo, hi, snatPortMin, snatPortMin)
}

// lbNetNS registers each endpoint's network namespace with the socket
// load balancer.
type lbNetNS struct {
	dp      *datapath.Datapath
	enabled bool
	mu      sync.Mutex
	cookies map[uint16]uint64
}

func (h *lbNetNS) EndpointUp(_ context.Context, ep endpoint.Endpoint) error {
	if !h.enabled {
		return nil
	}
	var cookie uint64
	err := ns.WithNetNSPath(ep.NetNS, func(ns.NetNS) error {
		c, err := datapath.NetNSCookie()
		cookie = c
		return err
	})
	if err != nil {
		return err
	}
	if err := h.dp.RegisterNetNS(cookie, ep.IPv4); err != nil {
		return err
	}
	h.mu.Lock()
	h.cookies[ep.ID] = cookie
	h.mu.Unlock()
	return nil
}

func (h *lbNetNS) EndpointDown(ep endpoint.Endpoint) {
	h.mu.Lock()
	c, ok := h.cookies[ep.ID]
	delete(h.cookies, ep.ID)
	h.mu.Unlock()
	if ok {
		h.dp.UnregisterNetNS(c)
	}
}

// hooks runs the policy engine's endpoint hooks, then the load balancer's.
type hooks struct {
	engine  endpoint.Hooks
	lb      *lbNetNS
	changed func()          // the endpoints changed (the L7 proxy's config follows)
	gone    func(id uint16) // an endpoint was deleted
}

// EndpointUp leaves what it set up in place when a step fails: the
// caller takes the endpoint down (a create after its veth is gone from the
// pod's reach, a restore after setting the device down). Until 2026-12-07
// a failed load-balancer step took the engine's programs off here, with
// the pod's device still up (TestHooksLeaveTheEngineUpOnFailure).
func (h hooks) EndpointUp(ctx context.Context, ep endpoint.Endpoint) error {
	if err := h.engine.EndpointUp(ctx, ep); err != nil {
		return err
	}
	if err := h.lb.EndpointUp(ctx, ep); err != nil {
		return err
	}
	h.changed()
	return nil
}

func (h hooks) EndpointDown(ep endpoint.Endpoint) {
	h.lb.EndpointDown(ep)
	h.engine.EndpointDown(ep)
	h.gone(ep.ID)
	h.changed()
}
