// Package export writes the node's flows to a file, one JSON object a
// line (a GetFlowsResponse in protojson with Hubble's field names, what
// `hubble observe -o json` prints), so that flows outlive the ring that
// overwrites them. The file rotates by size and keeps a bounded number of
// backups (lumberjack). Allow and deny lists, in Hubble's FlowFilter JSON
// form, choose the flows written.
//
// The exporter reads the flow ring as any other reader: the datapath and
// the ring's writer never wait for the disk; a slow disk makes the
// exporter fall behind and lose flows, which it counts, logs and writes to
// the file as a lost-events record.
package export

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/filament-net/filament/agent/flow"
	"github.com/filament-net/filament/agent/hubble/filter"
	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
)

// ErrConfig: the exporter's configuration is unusable.
var ErrConfig = errors.New("flow export")

// Config configures an Exporter.
type Config struct {
	// Path is the file written (absolute); its backups are beside it.
	Path string
	// MaxSizeMB is the size (MiB) at which the file rotates.
	MaxSizeMB int
	// MaxBackups is how many rotated files are kept (the oldest go).
	MaxBackups int
	// Allow and Deny choose the flows written, with GetFlows' semantics.
	Allow, Deny []*flowpb.FlowFilter
	// NodeName is the node_name of the lost-events records.
	NodeName string
}

// Exporter writes the flows of a ring to the file.
type Exporter struct {
	c    Config
	pass filter.Set
	file *lumberjack.Logger

	written, lost, errs prometheus.Counter
	failing             bool      // the last write failed (logged once until one succeeds)
	lostLogged          time.Time // when losses were last logged
	lostSince           uint64    // losses not logged yet
}

// maxBatch bounds the lines written at once: a write holds whole lines,
// so rotation never splits one, and stays well under the smallest file.
const maxBatch = 256 << 10

// lostLogEvery bounds the log lines about losses under sustained load.
const lostLogEvery = 10 * time.Second

var marshal = protojson.MarshalOptions{UseProtoNames: true}

// New checks c, opens the file (creating its directory) and registers the
// exporter's metrics with reg.
func New(c Config, reg prometheus.Registerer) (*Exporter, error) {
	if !filepath.IsAbs(c.Path) {
		return nil, fmt.Errorf("%w: file %q: must be an absolute path", ErrConfig, c.Path)
	}
	if c.MaxSizeMB < 1 || c.MaxBackups < 1 {
		return nil, fmt.Errorf("%w: max size %d MB, max backups %d: both must be at least 1", ErrConfig, c.MaxSizeMB, c.MaxBackups)
	}
	set, err := filter.Compile(c.Allow, c.Deny)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := os.MkdirAll(filepath.Dir(c.Path), 0o750); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	e := &Exporter{c: c, pass: set, file: &lumberjack.Logger{Filename: c.Path, MaxSize: c.MaxSizeMB, MaxBackups: c.MaxBackups}}
	if _, err := e.file.Write(nil); err != nil { // opens it now: a path that cannot be written fails the start
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "filament", Subsystem: "flow_export", Name: name, Help: help})
		reg.MustRegister(c)
		return c
	}
	e.written = counter("flows_total", "Flows written to the export file.")
	e.lost = counter("lost_flows_total", "Flows the exporter lost: overwritten in the ring before it read them.")
	e.errs = counter("errors_total", "Failed writes to the export file (their flows are lost).")
	return e, nil
}

// Run writes the flows of ring, from the oldest held, until ctx ends;
// then it closes the file.
func (e *Exporter) Run(ctx context.Context, ring *flow.Ring[*flowpb.Flow]) {
	e.run(ctx, ring.Reader(0, false))
}

func (e *Exporter) run(ctx context.Context, rd *flow.Reader[*flowpb.Flow]) {
	defer e.file.Close()
	var batch bytes.Buffer
	for {
		// Everything written meanwhile, then one write, then wait.
		for batch.Len() < maxBatch {
			f, lost, ok := rd.Next()
			e.add(&batch, f, lost, ok)
			if !ok {
				break
			}
		}
		e.flush(&batch)
		f, lost, err := rd.Wait(ctx)
		if err != nil {
			return
		}
		e.add(&batch, f, lost, true)
	}
}

// add appends f (when ok and it passes the filters) to batch, after a
// lost-events record when flows were lost before it.
func (e *Exporter) add(batch *bytes.Buffer, f *flowpb.Flow, lost uint64, ok bool) {
	if lost > 0 {
		e.lose(lost)
		e.line(batch, &observer.GetFlowsResponse{ResponseTypes: &observer.GetFlowsResponse_LostEvents{LostEvents: &flowpb.LostEvent{
			Source: flowpb.LostEventSource_HUBBLE_RING_BUFFER, NumEventsLost: lost}}, NodeName: e.c.NodeName, Time: timestamppb.Now()})
	}
	if ok && e.pass.Pass(f) {
		e.line(batch, &observer.GetFlowsResponse{ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: f}, NodeName: f.GetNodeName(), Time: f.GetTime()})
		e.written.Inc()
	}
}

func (e *Exporter) line(batch *bytes.Buffer, r *observer.GetFlowsResponse) {
	b, err := marshal.Marshal(r)
	if err != nil { // not for a message of this package's making
		slog.Error("flow export: encode", "err", err)
		return
	}
	batch.Write(b)
	batch.WriteByte('\n')
}

func (e *Exporter) flush(batch *bytes.Buffer) {
	if batch.Len() == 0 {
		return
	}
	defer batch.Reset()
	if _, err := e.file.Write(batch.Bytes()); err != nil {
		e.errs.Inc()
		if !e.failing {
			slog.Error("flow export: write failed (flows are lost until a write succeeds)", "file", e.c.Path, "err", err)
		}
		e.failing = true
		return
	}
	if e.failing {
		slog.Info("flow export: writing again", "file", e.c.Path)
	}
	e.failing = false
}

// lose counts flows lost and logs them, at most every lostLogEvery.
func (e *Exporter) lose(n uint64) {
	e.lost.Add(float64(n))
	e.lostSince += n
	if time.Since(e.lostLogged) >= lostLogEvery {
		slog.Warn("flow export: fell behind the flow ring, flows lost", "lost", e.lostSince, "file", e.c.Path)
		e.lostLogged, e.lostSince = time.Now(), 0
	}
}
