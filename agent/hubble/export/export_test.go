package export

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/flow"
	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/agent/hubble/filter"
	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/agent/monitor"
)

// flowN is the i-th test flow: a drop (i even) or a forwarded
// connection, to port 1000+i.
func flowN(i int) *flowpb.Flow {
	ev := monitor.Event{Time: time.Unix(1000, 0).Add(time.Duration(i) * time.Millisecond), Type: "policy-verdict", Direction: "ingress",
		Src: netip.MustParseAddrPort("10.0.0.2:40000"), Dst: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.3"), uint16(1000+i)), Protocol: "TCP",
		SrcLabels: []string{"k8s:app=client"}, DstLabels: []string{"k8s:app=web"}}
	if i%2 == 0 {
		ev.Type, ev.ReasonCode = "drop", datapath.ReasonPolicyDenied
	}
	return hubble.Meta{NodeName: "n1"}.Flow(ev)
}

func ringOf(t *testing.T, capacity, n int) *flow.Ring[*flowpb.Flow] {
	t.Helper()
	r, err := flow.NewRing[*flowpb.Flow](capacity)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		r.Write(flowN(i))
	}
	return r
}

func filters(t *testing.T, s string) []*flowpb.FlowFilter {
	t.Helper()
	ff, err := filter.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return ff
}

// run runs e over ring until it has written want flows (failing t after
// a deadline), then stops it.
func run(t *testing.T, e *Exporter, ring *flow.Ring[*flowpb.Flow], want int) {
	t.Helper()
	runReader(t, e, ring.Reader(0, false), want)
}

func runReader(t *testing.T, e *Exporter, rd *flow.Reader[*flowpb.Flow], want int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.run(ctx, rd)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for count(e.written) < float64(want) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if got := count(e.written); got != float64(want) {
		t.Fatalf("written %v flows, want %d", got, want)
	}
}

// lines decodes every line of path.
func lines(t *testing.T, path string) []*observer.GetFlowsResponse {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []*observer.GetFlowsResponse
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		r := &observer.GetFlowsResponse{}
		if err := protojson.Unmarshal(sc.Bytes(), r); err != nil {
			t.Fatalf("%s: line %q: %v", path, sc.Text(), err)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// The allow list keeps the drops, the deny list removes one port of
// them; each line is a GetFlowsResponse with Hubble's field names.
func TestExportFilters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows", "flows.json")
	e, err := New(Config{Path: path, MaxSizeMB: 1, MaxBackups: 1,
		Allow: filters(t, `{"verdict":["DROPPED"]}`), Deny: filters(t, `{"destination_port":["1004"]}`)}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	run(t, e, ringOf(t, 16, 10), 4) // ports 1000, 1002, 1006, 1008
	got := lines(t, path)
	var ports []string
	for _, r := range got {
		f := r.GetFlow()
		if f.GetVerdict() != flowpb.Verdict_DROPPED || r.GetNodeName() != "n1" || !r.GetTime().AsTime().Equal(f.GetTime().AsTime()) {
			t.Errorf("line %v", r)
		}
		ports = append(ports, fmt.Sprint(f.GetL4().GetTCP().GetDestinationPort()))
	}
	if strings.Join(ports, ",") != "1000,1002,1006,1008" {
		t.Errorf("ports exported %v, want 1000,1002,1006,1008", ports)
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"drop_reason_desc":`) || !strings.Contains(string(b), `"flow":`) {
		t.Errorf("not Hubble's field names: %s", b)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("export file %v %v: want it its owner's only", fi, err)
	}
}

// Flows overwritten before the exporter read them are counted and
// recorded in the file as a lost-events line.
func TestExportCountsLost(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.json")
	e, err := New(Config{Path: path, MaxSizeMB: 1, MaxBackups: 1, NodeName: "n1"}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ring := ringOf(t, 4, 0)
	rd := ring.Reader(0, false) // at the first flow, overwritten before it is read
	for i := range 10 {
		ring.Write(flowN(i))
	}
	runReader(t, e, rd, 4)
	if got := count(e.lost); got != 6 {
		t.Errorf("lost %v, want 6", got)
	}
	got := lines(t, path)
	if len(got) != 5 || got[0].GetLostEvents().GetNumEventsLost() != 6 || got[0].GetNodeName() != "n1" ||
		got[1].GetFlow().GetL4().GetTCP().GetDestinationPort() != 1006 {
		t.Errorf("lines %v", got)
	}
}

// Past its size the file rotates; only MaxBackups rotated files stay,
// each under the size, every line whole.
func TestExportRotates(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "flows.json")
	e, err := New(Config{Path: path, MaxSizeMB: 1, MaxBackups: 2}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	size := len(lines0(t, flowN(0)))
	n := 4 * (1 << 20) / size // about 4 MiB of lines
	run(t, e, ringOf(t, n, n), n)
	var files []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		// lumberjack removes old backups in the background.
		files, _ = filepath.Glob(filepath.Join(dir, "flows*.json"))
		if len(files) == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(files) != 3 {
		t.Fatalf("files %v, want the file and 2 backups", files)
	}
	total := 0
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil || fi.Size() > 1<<20 || fi.Size() == 0 {
			t.Errorf("%s: %v %v, want 1-%d bytes", f, fi, err, 1<<20)
		}
		total += len(lines(t, f))
	}
	if total >= n || total < n/4 {
		t.Errorf("%d lines kept of %d: want the last ones only (at most 3 MiB)", total, n)
	}
}

func lines0(t *testing.T, f *flowpb.Flow) []byte {
	t.Helper()
	b, err := marshal.Marshal(&observer.GetFlowsResponse{ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: f}, NodeName: f.NodeName, Time: f.Time})
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestNewRejects(t *testing.T) {
	dir := t.TempDir()
	bad, err := filter.Parse(`{"http_status_code":["abc"]}`)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Config{
		"relative path":   {Path: "flows.json", MaxSizeMB: 1, MaxBackups: 1},
		"no size":         {Path: filepath.Join(dir, "a.json"), MaxSizeMB: 0, MaxBackups: 1},
		"no backups":      {Path: filepath.Join(dir, "a.json"), MaxSizeMB: 1, MaxBackups: 0},
		"bad allow":       {Path: filepath.Join(dir, "a.json"), MaxSizeMB: 1, MaxBackups: 1, Allow: bad},
		"bad deny":        {Path: filepath.Join(dir, "a.json"), MaxSizeMB: 1, MaxBackups: 1, Deny: bad},
		"unwritable path": {Path: filepath.Join(dir, "a.json", "x", "y.json"), MaxSizeMB: 1, MaxBackups: 1},
	} {
		if name == "unwritable path" {
			os.WriteFile(filepath.Join(dir, "a.json"), nil, 0o600) // a file where a directory should be
		}
		if _, err := New(c, prometheus.NewRegistry()); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", name, err)
		}
	}
	if _, err := New(Config{Path: filepath.Join(dir, "b.json"), MaxSizeMB: 1, MaxBackups: 1, Deny: bad}, prometheus.NewRegistry()); !errors.Is(err, filter.ErrInvalid) {
		t.Errorf("a bad filter: %v, want filter.ErrInvalid", err)
	}
}

func count(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
