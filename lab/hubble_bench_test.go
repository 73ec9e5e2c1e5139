package lab_test

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
	"github.com/filament-net/filament/lab/lbbench"
)

// BenchmarkRelayLatency: two connected clusters, cluster c1's relay.
// A pod on c2's node tries to connect to a pod there whose policy denies
// it, 200 times (one SYN each, from a source port of the benchmark's
// choosing; the drop is a flow on c2's node); from the attempt until the
// flow arrives at a follower (GetFlows with Follow, a gRPC client in the
// namespace of the relay's node, dialling the relay's loopback address):
// p50 and p99. Baseline in the same run, of the same attempts: a follower
// of c2's node's own Hubble socket (no relay, no mesh). The relay holds
// followed flows up to its sort window (200 ms) to merge the nodes' flows
// in time order, so that window is most of the difference.
func BenchmarkRelayLatency(b *testing.B) {
	const events = 200
	l := labtest.UpClusters(b, 2, 1, "tunnel")
	db := labtest.Pod(b, l, "c2/n1", "db", "app=db")
	intruder := labtest.Pod(b, l, "c2/n1", "intruder", "app=other")
	c1, _ := l.Cluster("c1")
	c2, _ := l.Cluster("c2")
	if _, _, err := clustermesh.Connect(c1.Bundle, c2.Bundle); err != nil {
		b.Fatal(err)
	}
	for _, on := range []string{"c1/n1", "c2/n1"} {
		if out, err := labtest.NodeRun(b, l, on, "filament", "clustermesh", "status", "--wait", "60s"); err != nil {
			b.Fatalf("status --wait on %s: %v %s", on, err, out)
		}
	}
	labtest.ImportPolicy(b, l, "c2/n1", crossClusterPolicy) // db: web of c1 only
	r, err := l.StartRelay("c1")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.StopRelay("c1") })
	n2, _ := l.Node("c2/n1")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := &observer.GetFlowsRequest{Follow: true, Since: timestamppb.Now(), Whitelist: []*flowpb.FlowFilter{{
		SourceIp: []string{intruder.IP}, Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}}
	viaRelay := followFlows(b, ctx, lab.NetNSPath(r.NetNS), "tcp4", r.Listen, req)
	direct := followFlows(b, ctx, lab.NetNSPath(n2.NetNS), "unix", filepath.Join(filepath.Dir(n2.Socket), "hubble.sock"), req)

	from := lab.NetNSPath(intruder.NetNS)
	attempt := func(port int) time.Time {
		var t0 time.Time
		inNS(b, from, func() error {
			d := net.Dialer{Timeout: 100 * time.Millisecond, LocalAddr: &net.TCPAddr{Port: port}}
			t0 = time.Now()
			if c, err := d.Dial("tcp4", net.JoinHostPort(db.IP, "5432")); err == nil {
				c.Close()
				b.Fatal("intruder reached db: no drop")
			}
			return nil
		})
		return t0
	}
	// Until both followers see a drop: the relay has connected to c2's
	// node and sent its backlog (it gathers that for a second).
	deadline := time.Now().Add(60 * time.Second)
	for port := 30000; viaRelay.first() == 0 || direct.first() == 0; port++ {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(r.Log)
			b.Fatalf("no drop followed within 60s: via the relay %v (%v), direct %v (%v); relay log:\n%s",
				viaRelay.first() != 0, viaRelay.err(), direct.first() != 0, direct.err(), log[max(0, len(log)-2000):])
		}
		attempt(port)
		time.Sleep(200 * time.Millisecond)
	}

	sent := map[uint32]time.Time{}
	for it := range b.N {
		for i := range events {
			port := 40000 + it*events + i
			sent[uint32(port)] = attempt(port)
			time.Sleep(50 * time.Millisecond)
		}
	}
	time.Sleep(3 * time.Second) // the last flows
	for _, c := range []struct {
		name string
		f    *flowTimes
	}{{"relay-c1-following-c2-node", viaRelay}, {"baseline-c2-node-socket", direct}} {
		b.Run(c.name, func(b *testing.B) {
			var d []time.Duration
			missing := 0
			for port, t0 := range sent {
				if at, ok := c.f.at(port); ok {
					d = append(d, at.Sub(t0))
				} else {
					missing++
				}
			}
			if len(d) == 0 {
				b.Fatalf("none of %d drops followed", len(sent))
			}
			slices.Sort(d)
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
			b.ReportMetric(ms(d[0]), "min-ms")
			b.ReportMetric(ms(d[len(d)/2]), "p50-ms")
			b.ReportMetric(ms(d[len(d)*99/100]), "p99-ms")
			b.ReportMetric(float64(missing), "missing")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// flowTimes are the times a follower received flows, by TCP source port.
type flowTimes struct {
	mu       sync.Mutex
	byPort   map[uint32]time.Time
	anyPort  uint32
	firstErr error
}

func (f *flowTimes) at(port uint32) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.byPort[port]
	return t, ok
}

// err is why the stream ended (nil while it runs).
func (f *flowTimes) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.firstErr
}

// first is the source port of the first flow received (0: none yet).
func (f *flowTimes) first() uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.anyPort
}

// hubbleConn is a client of the Hubble API at addr (network "tcp4" or
// "unix"), dialled from the namespace at nsPath.
func hubbleConn(b *testing.B, nsPath, network, addr string) *grpc.ClientConn {
	b.Helper()
	conn, err := grpc.NewClient("passthrough:///localhost", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (c net.Conn, err error) {
			err = ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return conn
}

// followFlows follows req on the Hubble API at addr (network "tcp4" or
// "unix"), dialled from the namespace at nsPath, until ctx ends.
func followFlows(b *testing.B, ctx context.Context, nsPath, network, addr string, req *observer.GetFlowsRequest) *flowTimes {
	b.Helper()
	conn := hubbleConn(b, nsPath, network, addr)
	st, err := observer.NewObserverClient(conn).GetFlows(ctx, req)
	if err != nil {
		b.Fatalf("GetFlows from %s: %v", addr, err)
	}
	f := &flowTimes{byPort: map[uint32]time.Time{}}
	go func() {
		for {
			resp, err := st.Recv()
			now := time.Now()
			if err != nil {
				f.mu.Lock()
				f.firstErr = err
				f.mu.Unlock()
				return
			}
			port := resp.GetFlow().GetL4().GetTCP().GetSourcePort()
			if port == 0 || resp.GetFlow().GetNodeName() != "c2/n1" {
				continue
			}
			f.mu.Lock()
			if _, seen := f.byPort[port]; !seen {
				f.byPort[port] = now
			}
			if f.anyPort == 0 {
				f.anyPort = port
			}
			f.mu.Unlock()
		}
	}()
	return f
}

// BenchmarkAgentFlows: flows from real traffic on a lab node. A client pod
// opens short TCP connections to a server pod (4 at a time, 5 s; the
// server's policy admits the client, so each new connection is a policy
// verdict, a flow); flows/s recorded by the agent (its ring's count of
// flows seen, ServerStatus), connections/s, and the agent's CPU time
// (/proc/PID/stat, user + system) as cores and per flow: with the real
// `hubble observe -f -o json` following the node's socket (its output
// read and counted), and in the same run, as the baseline, with no
// follower. The connections are opened by this test process, the servers
// are processes of their own.
func BenchmarkAgentFlows(b *testing.B) {
	hubble := hubbleCLI(b)
	l := labtest.Up(b, 1, 0)
	client := labtest.Pod(b, l, "n1", "client", "app=client")
	srv := labtest.Pod(b, l, "n1", "server", "app=server")
	labtest.ImportPolicy(b, l, "n1", serverPolicy("8080"))
	if err := l.Serve("server", 8080); err != nil {
		b.Fatal(err)
	}
	n1, _ := l.Node("n1")
	sock := filepath.Join(filepath.Dir(n1.Socket), "hubble.sock")
	oc := observer.NewObserverClient(hubbleConn(b, lab.NetNSPath(n1.NetNS), "unix", sock))
	seen := func() uint64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := oc.ServerStatus(ctx, &observer.ServerStatusRequest{})
		if err != nil {
			b.Fatal(err)
		}
		return st.SeenFlows
	}
	target := []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr(srv.IP), 8080)}
	run := func(b *testing.B) (flows float64) {
		s0, cpu0, t0 := seen(), cpuSeconds(b, n1.PID), time.Now()
		res, err := lbbench.MeasureConnects(lab.NetNSPath(client.NetNS), target, 5*time.Second, 4)
		if err != nil {
			b.Fatal(err)
		}
		traffic := time.Since(t0).Seconds()
		time.Sleep(500 * time.Millisecond) // the last events
		wall, cpu := time.Since(t0).Seconds(), cpuSeconds(b, n1.PID)-cpu0
		flows = float64(seen() - s0)
		if flows == 0 {
			b.Fatal("no flows recorded")
		}
		b.ReportMetric(flows/traffic, "flows/s")
		b.ReportMetric(flows/float64(res.Connects), "flows/conn")
		b.ReportMetric(res.Rate, "conn/s")
		b.ReportMetric(float64(res.Errors), "failed-conn")
		b.ReportMetric(cpu/wall, "agent-cores")
		b.ReportMetric(cpu/flows*1e6, "agent-cpu-us/flow")
		b.ReportMetric(0, "ns/op")
		return flows
	}
	b.Run("baseline-no-follower", func(b *testing.B) { run(b) })
	b.Run("hubble-observe-f", func(b *testing.B) {
		cmd, err := l.NodeCommand("n1", hubble, "observe", "-f", "-o", "json", "--server", "unix://"+sock)
		if err != nil {
			b.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		var lines, lost atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				if bytes.Contains(sc.Bytes(), []byte(`"lost_events"`)) {
					lost.Add(1)
				} else {
					lines.Add(1)
				}
			}
		}()
		time.Sleep(time.Second) // connected
		before, hubbleCPU := lines.Load(), cpuSeconds(b, cmd.Process.Pid)
		t0 := time.Now()
		flows := run(b)
		wall, hubbleCPU := time.Since(t0).Seconds(), cpuSeconds(b, cmd.Process.Pid)-hubbleCPU
		received := float64(lines.Load() - before)
		cmd.Process.Kill()
		<-done
		cmd.Wait()
		b.ReportMetric(received/flows, "followed-fraction")
		b.ReportMetric(float64(lost.Load()), "lost-event-records")
		b.ReportMetric(hubbleCPU/wall, "hubble-cli-cores")
	})
}
