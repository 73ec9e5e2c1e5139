package daemon

import (
	"context"
	"log/slog"

	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/internal/version"
)

// startHubble keeps the node's flows (every monitor event, in the flow
// ring) and serves Hubble's API on --hubble-listen.
func (a *Agent) startHubble(ctx context.Context) error {
	if a.cfg.HubbleListen == "" {
		return nil
	}
	s, err := hubble.New(hubble.Config{
		Meta:     hubble.Meta{NodeName: a.cfg.NodeName, ClusterName: a.cfg.ClusterName, Pod: a.podOf},
		Capacity: a.cfg.HubbleFlows, Address: a.cfg.HubbleListen, Version: version.Version,
	})
	if err != nil {
		return err
	}
	ln, err := hubble.Listen(a.cfg.HubbleListen)
	if err != nil {
		return err
	}
	events, stop := a.hub.Subscribe(monitor.Filter{})
	a.onStop("hubble flows", stop)
	a.goroutine(func() { s.Follow(events) })
	a.goroutine(func() {
		if err := s.Serve(ctx, ln); err != nil {
			slog.Error("hubble API stopped", "err", err)
		}
	})
	slog.Info("hubble API serving", "address", ln.Addr().String(), "flows", a.cfg.HubbleFlows)
	return nil
}

// podOf is a local endpoint's namespace and pod name ("" when unknown).
func (a *Agent) podOf(id uint16) (namespace, pod string) {
	ep, err := a.eps.Get(id)
	if err != nil {
		return "", ""
	}
	return ep.Namespace, ep.PodName
}
