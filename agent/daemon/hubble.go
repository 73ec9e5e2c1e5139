package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/internal/version"
)

// startHubble keeps the node's flows (every monitor event, in the flow
// ring) and serves Hubble's API on its unix socket (and --hubble-listen).
func (a *Agent) startHubble(ctx context.Context) error {
	if !a.cfg.Hubble {
		return nil
	}
	sock := a.cfg.HubbleSocketPath()
	s, err := hubble.New(hubble.Config{
		Meta:     hubble.Meta{NodeName: a.cfg.NodeName, ClusterName: a.cfg.ClusterName, Pod: a.podOf},
		Capacity: a.cfg.HubbleFlows, Address: "unix://" + sock, Version: version.Version,
		OnFlow: a.observeFlows(),
	})
	if err != nil {
		return err
	}
	if err := a.startFlowExport(ctx, s); err != nil {
		return err
	}
	ln, err := hubble.ListenUnix(sock)
	if err != nil {
		return err
	}
	lns := []net.Listener{ln}
	if a.cfg.HubbleListen != "" {
		tcp, err := net.Listen("tcp", a.cfg.HubbleListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("hubble API on %s: %w", a.cfg.HubbleListen, err)
		}
		lns = append(lns, tcp)
	}
	events, stop := a.hub.Subscribe(monitor.Filter{})
	a.onStop("hubble flows", stop)
	a.goroutine(func() { s.Follow(events) })
	for _, ln := range lns {
		a.goroutine(func() {
			if err := s.Serve(ctx, ln); err != nil {
				slog.Error("hubble API stopped", "address", ln.Addr().String(), "err", err)
			}
		})
		slog.Info("hubble API serving", "address", ln.Addr().String(), "flows", a.cfg.HubbleFlows)
	}
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
