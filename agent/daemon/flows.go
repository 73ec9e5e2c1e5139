package daemon

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/agent/hubble/export"
	"github.com/filament-net/filament/agent/hubble/flowmetrics"
	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
)

// flowObservers are what the Hubble step adds beside the ring: the flow
// metrics and the exporter's, served with the agent's (nil until then).
type flowObservers struct{ reg *prometheus.Registry }

// observeFlows registers the flow metrics and returns what counts each
// flow the Hubble server records (its Config.OnFlow).
func (a *Agent) observeFlows() func(*flowpb.Flow) {
	a.flowObs.reg = prometheus.NewRegistry()
	return flowmetrics.New(a.flowObs.reg).Observe
}

// startFlowExport writes s's flows to --hubble-export-file, when set.
func (a *Agent) startFlowExport(ctx context.Context, s *hubble.Server) error {
	if a.cfg.HubbleExportFile == "" {
		return nil
	}
	allow, deny, err := a.cfg.HubbleExportFilters()
	if err != nil {
		return err
	}
	reg := a.flowObs.reg
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	e, err := export.New(export.Config{Path: a.cfg.HubbleExportFile, MaxSizeMB: a.cfg.HubbleExportFileMaxSizeMB,
		MaxBackups: a.cfg.HubbleExportFileMaxBackups, Allow: allow, Deny: deny, NodeName: a.cfg.NodeName}, reg)
	if err != nil {
		return err
	}
	a.goroutine(func() { e.Run(ctx, s.Flows()) })
	slog.Info("hubble flows exported", "file", a.cfg.HubbleExportFile, "maxSizeMB", a.cfg.HubbleExportFileMaxSizeMB,
		"maxBackups", a.cfg.HubbleExportFileMaxBackups)
	return nil
}

// extraMetrics are the metrics served with the agent's: the L7 proxy's
// and the flows'.
func (a *Agent) extraMetrics() prometheus.Gatherer {
	var gs prometheus.Gatherers
	if p := a.proxyMetrics(); p != nil {
		gs = append(gs, p)
	}
	if a.flowObs.reg != nil {
		gs = append(gs, a.flowObs.reg)
	}
	if len(gs) == 0 {
		return nil
	}
	return gs
}
