package daemon

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/agent/hubble/export"
)

// startFlowExport writes s's flows to --hubble-export-file, when set.
func (a *Agent) startFlowExport(ctx context.Context, s *hubble.Server, reg prometheus.Registerer) error {
	if a.cfg.HubbleExportFile == "" {
		return nil
	}
	allow, deny, err := a.cfg.HubbleExportFilters()
	if err != nil {
		return err
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
	if a.flowMetrics != nil {
		gs = append(gs, a.flowMetrics)
	}
	if len(gs) == 0 {
		return nil
	}
	return gs
}
