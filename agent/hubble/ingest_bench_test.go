package hubble

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/filament-net/filament/agent/flow"
	"github.com/filament-net/filament/agent/hubble/export"
	"github.com/filament-net/filament/agent/hubble/flowmetrics"
	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
)

// BenchmarkIngest: monitor events recorded by a Server wired as the agent
// wires it (conversion to a flow, the ring of the default size, the flow
// metrics as OnFlow) while followers read every flow: GetFlows with
// Follow over gRPC on loopback, and the JSON-lines exporter. Flows/s, the
// process's CPU time (user + system, getrusage) per flow and the cores
// used (CPU time ÷ wall time), most with GOMAXPROCS=1: the figure of
// merit is flows/s at no more than one core. The writer is kept within
// half the ring of the slowest reader, so no reader loses a flow and the
// rate is what is both ingested and served. The followers are processes
// of their own (this test binary run again), as hubble CLIs are, so the
// CPU time is the server's; they count flows without decoding them, but
// share the two cores with it. Baseline in the same run: the bare ring
// write, no conversion, no readers.
func BenchmarkIngest(b *testing.B) {
	b.Run("baseline-ring-write/gomaxprocs=1", func(b *testing.B) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
		ring, err := flow.NewRing[*flowpb.Flow](flow.DefaultCapacity)
		if err != nil {
			b.Fatal(err)
		}
		f := Meta{NodeName: "n1"}.Flow(events(time.Now())[0])
		b.ResetTimer()
		start := takeUsage()
		for range b.N {
			ring.Write(f)
		}
		start.report(b, b.N)
	})
	for _, c := range []struct {
		followers int
		export    bool
		procs     int
	}{{0, false, 1}, {1, false, 1}, {4, false, 1}, {4, true, 1}, {4, true, 2}} {
		name := fmt.Sprintf("record+metrics/followers=%d", c.followers)
		if c.export {
			name += "+export"
		}
		name += fmt.Sprintf("/gomaxprocs=%d", c.procs)
		b.Run(name, func(b *testing.B) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(c.procs))
			benchIngest(b, c.followers, c.export)
		})
	}
}

func benchIngest(b *testing.B, followers int, exportFile bool) {
	reg := prometheus.NewRegistry()
	pods := map[uint16]string{1: "web-1", 2: "client-1"}
	s, err := New(Config{
		Meta: Meta{NodeName: "n1", ClusterName: "c1",
			Pod:   func(ep uint16) (string, string) { return "default", pods[ep] },
			PodAt: func(netip.Addr) (string, string) { return "", "" }},
		OnFlow: flowmetrics.New(reg).Observe,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var readers []func() uint64 // flows each reader has received or lost
	if exportFile {
		e, err := export.New(export.Config{Path: filepath.Join(b.TempDir(), "flows.json"), MaxSizeMB: 50, MaxBackups: 1, NodeName: "n1"}, reg)
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() { e.Run(ctx, s.Flows()); close(done) }()
		defer func() { cancel(); <-done }()
		readers = append(readers, func() uint64 {
			return uint64(gathered(b, reg, "filament_flow_export_flows_total") + gathered(b, reg, "filament_flow_export_lost_flows_total"))
		})
	}
	var lost atomic.Uint64
	if followers > 0 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- s.Serve(ctx, ln, nil) }()
		defer func() { cancel(); <-served }()
		for range followers {
			got, stop := startFollower(b, ln.Addr().String(), &lost)
			defer stop()
			readers = append(readers, got.Load)
		}
	}
	evs := events(time.Now())
	// One flow first: every reader has subscribed once it has it.
	s.Record(evs[0])
	waitReaders(b, readers, 1)
	half := uint64(flow.DefaultCapacity / 2)
	b.ResetTimer()
	start := takeUsage()
	for i := range b.N {
		ev := evs[i%len(evs)]
		ev.Src = netip.AddrPortFrom(ev.Src.Addr(), uint16(32768+i%28000))
		ev.Time = ev.Time.Add(time.Duration(i))
		s.Record(ev)
		if i%256 == 255 {
			for written := uint64(i + 2); written-slowest(readers, written) > half; {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	waitReaders(b, readers, uint64(b.N+1))
	start.report(b, b.N)
	b.ReportMetric(float64(lost.Load()), "lost")
}

// followEnv names the address a follower process (this test binary run
// again) follows.
const followEnv = "FILAMENT_BENCH_HUBBLE_FOLLOW"

func init() {
	if addr := os.Getenv(followEnv); addr != "" {
		if err := runFollower(addr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// startFollower runs a follower process of addr; got counts the flows it
// has received or lost, lost the lost ones. stop ends it.
func startFollower(b *testing.B, addr string, lost *atomic.Uint64) (got *atomic.Uint64, stop func()) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), followEnv+"="+addr)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	got = new(atomic.Uint64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var lastLost uint64
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var n, l uint64
			if _, err := fmt.Sscan(sc.Text(), &n, &l); err == nil {
				lost.Add(l - lastLost)
				lastLost = l
				got.Store(n)
			}
		}
	}()
	return got, func() { stdin.Close(); <-done; cmd.Wait() }
}

// runFollower follows addr's flows until stdin closes, without decoding
// them, printing "received lost" (flows received or lost, flows lost)
// every 128 flows and whenever it has caught up.
func runFollower(addr string) error {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	req, err := proto.Marshal(&observer.GetFlowsRequest{Follow: true})
	if err != nil {
		return err
	}
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, observer.Observer_GetFlows_FullMethodName, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		return err
	}
	if err := st.SendMsg(req); err != nil {
		return err
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	msgs := make(chan []byte, 1024)
	go func() {
		defer close(msgs)
		for {
			var msg []byte
			if st.RecvMsg(&msg) != nil {
				return
			}
			msgs <- msg
		}
	}()
	out := bufio.NewWriter(os.Stdout)
	var got, lost, told uint64
	for msg := range msgs {
		if n := lostEvents(msg); n > 0 {
			got, lost = got+n, lost+n
		} else {
			got++
		}
		if got-told >= 128 || len(msgs) == 0 {
			fmt.Fprintln(out, got, lost)
			out.Flush()
			told = got
		}
	}
	return nil
}

// lostEvents is the number of flows a GetFlowsResponse reports lost (0
// when it is a flow).
func lostEvents(msg []byte) uint64 {
	rest, ok := wireField(msg, 3, protowire.BytesType) // lost_events
	if !ok {
		return 0
	}
	inner, n := protowire.ConsumeBytes(rest)
	if n < 0 {
		return 0
	}
	if rest, ok = wireField(inner, 2, protowire.VarintType); !ok { // num_events_lost
		return 0
	}
	v, _ := protowire.ConsumeVarint(rest)
	return v
}

// The benchmark's followers read lost-event counts from the wire
// without decoding.
func TestLostEventsWire(t *testing.T) {
	for _, c := range []struct {
		resp *observer.GetFlowsResponse
		want uint64
	}{
		{&observer.GetFlowsResponse{NodeName: "c1/n1", ResponseTypes: &observer.GetFlowsResponse_LostEvents{
			LostEvents: &flowpb.LostEvent{Source: flowpb.LostEventSource_HUBBLE_RING_BUFFER, NumEventsLost: 300}}}, 300},
		{&observer.GetFlowsResponse{NodeName: "c1/n1", ResponseTypes: &observer.GetFlowsResponse_Flow{
			Flow: Meta{NodeName: "n1"}.Flow(events(time.Unix(1000, 0))[0])}}, 0},
	} {
		msg, err := proto.Marshal(c.resp)
		if err != nil {
			t.Fatal(err)
		}
		if got := lostEvents(msg); got != c.want {
			t.Errorf("lostEvents(%v) = %d, want %d", c.resp, got, c.want)
		}
		if got := lostEvents(msg[:len(msg)-1]); got != 0 && c.want == 0 {
			t.Errorf("a truncated flow message: %d lost", got)
		}
	}
}

// wireField returns what follows the tag of field num (of wire type typ)
// in the encoded message msg.
func wireField(msg []byte, num protowire.Number, typ protowire.Type) ([]byte, bool) {
	for len(msg) > 0 {
		n, t, l := protowire.ConsumeTag(msg)
		if l < 0 {
			return nil, false
		}
		msg = msg[l:]
		if n == num && t == typ {
			return msg, true
		}
		if l = protowire.ConsumeFieldValue(n, t, msg); l < 0 {
			return nil, false
		}
		msg = msg[l:]
	}
	return nil, false
}

// slowest is the least progress of the readers (written when none).
func slowest(readers []func() uint64, written uint64) uint64 {
	least := written
	for _, r := range readers {
		least = min(least, r())
	}
	return least
}

// waitReaders waits until every reader has received or lost n flows.
func waitReaders(b *testing.B, readers []func() uint64, n uint64) {
	deadline := time.Now().Add(time.Minute)
	for slowest(readers, n) < n {
		if time.Now().After(deadline) {
			b.Fatalf("readers did not get %d flows within a minute", n)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// gathered is the value of reg's counter name (without labels).
func gathered(b *testing.B, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// rawCodec passes messages as bytes: requests marshalled beforehand,
// responses not decoded.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*(v.(*[]byte)) = data.Materialize()
	return nil
}

// usage is a point in wall time and in the process's CPU time.
type usage struct {
	wall time.Time
	cpu  time.Duration
}

func takeUsage() usage {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return usage{time.Now(), time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
}

// report reports flows/s, cores used and CPU time per flow since u.
func (u usage) report(b *testing.B, flows int) {
	end := takeUsage()
	wall, cpu := end.wall.Sub(u.wall), end.cpu-u.cpu
	b.ReportMetric(float64(flows)/wall.Seconds(), "flows/s")
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(flows), "cpu-ns/flow")
}
