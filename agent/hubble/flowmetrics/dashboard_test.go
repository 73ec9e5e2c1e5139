package flowmetrics

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/filament-net/filament/agent/hubble/export"
)

// dashboard is what Grafana needs of a dashboard model.
type dashboard struct {
	Title         string `json:"title"`
	UID           string `json:"uid"`
	SchemaVersion int    `json:"schemaVersion"`
	Panels        []struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		GridPos struct {
			H, W, X, Y int
		} `json:"gridPos"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

var (
	// a metric: an identifier before a selector or a range, or one of ours
	metricRef = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]|\b((?:hubble|filament)_[a-zA-Z0-9_:]+)`)
	byClause  = regexp.MustCompile(`by\s*\(([^)]*)\)`)
)

// The shipped dashboard is a valid Grafana model whose every query names
// metrics (and groups by labels) the flow metrics and the exporter
// register: gathered after observing flows of every kind.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "grafana", "filament-flows.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d.Title == "" || d.UID == "" || len(d.UID) > 40 || d.SchemaVersion < 30 || len(d.Panels) == 0 {
		t.Fatalf("dashboard title %q uid %q schemaVersion %d, %d panels", d.Title, d.UID, d.SchemaVersion, len(d.Panels))
	}

	reg := prometheus.NewRegistry()
	m := New(reg)
	for _, f := range sampleFlows() {
		m.Observe(f)
	}
	if _, err := export.New(export.Config{Path: filepath.Join(t.TempDir(), "flows.json"), MaxSizeMB: 1, MaxBackups: 1}, reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]map[string]bool{} // metric name as queried -> its labels
	for _, mf := range mfs {
		names := []string{mf.GetName()}
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			n := mf.GetName()
			names = []string{n + "_bucket", n + "_sum", n + "_count"}
		}
		for _, n := range names {
			labels[n] = map[string]bool{}
			if strings.HasSuffix(n, "_bucket") {
				labels[n]["le"] = true
			}
			for _, mm := range mf.GetMetric() {
				for _, lp := range mm.GetLabel() {
					labels[n][lp.GetName()] = true
				}
			}
		}
	}

	ids := map[int]bool{}
	for _, p := range d.Panels {
		if p.Title == "" || p.Type == "" || ids[p.ID] {
			t.Errorf("panel %d %q: needs a unique id, a type and a title", p.ID, p.Title)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W < 1 || g.H < 1 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside Grafana's 24 columns", p.Title, g)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no target", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: refId %q missing or repeated", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			var used []string
			for _, mt := range metricRef.FindAllStringSubmatch(tg.Expr, -1) {
				name := mt[1] + mt[2]
				if _, ok := labels[name]; !ok {
					t.Errorf("panel %q: %s is not a metric registered (%s)", p.Title, name, tg.Expr)
					continue
				}
				used = append(used, name)
			}
			if len(used) == 0 {
				t.Errorf("panel %q: query names no metric: %s", p.Title, tg.Expr)
			}
			for _, by := range byClause.FindAllStringSubmatch(tg.Expr, -1) {
				for _, l := range strings.Split(by[1], ",") {
					l = strings.TrimSpace(l)
					found := false
					for _, n := range used {
						found = found || labels[n][l]
					}
					if !found {
						t.Errorf("panel %q: groups by %q, a label of none of %v", p.Title, l, used)
					}
				}
			}
		}
	}
}
