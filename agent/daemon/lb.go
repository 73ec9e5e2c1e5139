package daemon

import (
	"context"
	"log/slog"
	"net/netip"
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

func (h hooks) EndpointUp(ctx context.Context, ep endpoint.Endpoint) error {
	if err := h.engine.EndpointUp(ctx, ep); err != nil {
		return err
	}
	if err := h.lb.EndpointUp(ctx, ep); err != nil {
		h.engine.EndpointDown(ep)
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
