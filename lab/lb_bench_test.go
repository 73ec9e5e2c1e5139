package lab_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	apiclient "github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
	"github.com/filament-net/filament/lab/lbbench"
)

// benchSizes are the service counts of BenchmarkServiceConnect
// (FILAMENT_BENCH_SERVICES overrides, e.g. "100,1000").
func benchSizes(b *testing.B) []int {
	spec := os.Getenv("FILAMENT_BENCH_SERVICES")
	if spec == "" {
		spec = "100,1000,10000,50000"
	}
	var out []int
	for _, f := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 60000 {
			b.Fatalf("FILAMENT_BENCH_SERVICES: %q is not a count from 1 to 60000", f)
		}
		out = append(out, n)
	}
	return out
}

func vip(base byte, i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, base, byte(i >> 8), byte(i)})
}

// BenchmarkServiceConnect: new-connection rate and p99 connect latency from
// a pod through Filament's socket load balancer, and through an iptables
// ruleset shaped like kube-proxy's (KUBE-SERVICES with one rule per service
// port, statistic-mode backend chains) in the same pod, with the same
// number of services, side by side; a direct connection to a backend is the
// floor. Connections go to 64 services spread over the whole set.
func BenchmarkServiceConnect(b *testing.B) {
	l := labtest.Up(b, 1, 0)
	client := labtest.Pod(b, l, "n1", "client")
	var backends []netip.AddrPort
	for _, name := range []string{"be1", "be2"} {
		p := labtest.Pod(b, l, "n1", name)
		// The servers are processes of their own (filament-lab pod serve),
		// so the measuring process holds only the clients.
		if err := l.Serve(name, 8080); err != nil {
			b.Fatal(err)
		}
		backends = append(backends, netip.AddrPortFrom(netip.MustParseAddr(p.IP), 8080))
	}
	path := lab.NetNSPath(client.NetNS)
	n1, _ := l.Node("n1")
	c := apiclient.New(n1.Socket)
	const d = 3 * time.Second
	have := 0
	for _, n := range benchSizes(b) {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			if n > have {
				start := time.Now()
				addServices(b, c, have, n, backends)
				b.Logf("stored %d services in %s", n-have, time.Since(start).Round(time.Millisecond))
				have = n
			}
			var ours, theirs []netip.AddrPort
			for i := range 64 {
				k := i * n / 64
				ours = append(ours, netip.AddrPortFrom(vip(96, k), 80))
				theirs = append(theirs, netip.AddrPortFrom(vip(97, k), 80))
			}
			direct, err := lbbench.MeasureConnects(path, backends, d, 2)
			if err != nil {
				b.Fatal(err)
			}
			fil, err := lbbench.MeasureConnects(path, ours, d, 2)
			if err != nil {
				b.Fatal(err)
			}
			svcs := make([]lbbench.Service, n)
			for i := range svcs {
				svcs[i] = lbbench.Service{VIP: vip(97, i), Port: 80, Backends: backends}
			}
			start := time.Now()
			if err := lbbench.Install(path, lbbench.KubeProxyRules(svcs), false); err != nil {
				b.Fatal(err)
			}
			b.Logf("iptables-restore of %d services: %s", n, time.Since(start).Round(time.Millisecond))
			ipt, err := lbbench.MeasureConnects(path, theirs, d, 2)
			lbbench.Flush(path, false)
			if err != nil {
				b.Fatal(err)
			}
			if fil.Errors > 0 || ipt.Errors > 0 {
				b.Logf("failed connects (1 s timeout): filament %d of %d (%v), iptables %d of %d (%v)",
					fil.Errors, fil.Connects+fil.Errors, fil.FirstErr, ipt.Errors, ipt.Connects+ipt.Errors, ipt.FirstErr)
			}
			b.ReportMetric(float64(fil.Errors), "filament-failed")
			b.ReportMetric(float64(ipt.Errors), "iptables-failed")
			b.ReportMetric(fil.Rate, "filament-conn/s")
			b.ReportMetric(float64(fil.P99.Microseconds()), "filament-p99-us")
			b.ReportMetric(ipt.Rate, "iptables-conn/s")
			b.ReportMetric(float64(ipt.P99.Microseconds()), "iptables-p99-us")
			b.ReportMetric(direct.Rate, "direct-conn/s")
			b.ReportMetric(fil.Rate/ipt.Rate, "x-iptables")
		})
	}
}

// addServices stores services from..to-1 through the agent API, 8 at a
// time, and waits until the agent has applied them all.
func addServices(b *testing.B, c *apiclient.Client, from, to int, backends []netip.AddrPort) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				// 10,000 a namespace: a namespace's services hold at most
				// service.MaxNamespaceSlots.
				doc := fmt.Sprintf(`{"metadata":{"name":"s%d","namespace":"bench%d"},"spec":{"clusterIP":"%s","ports":[{"port":80,"targetPort":8080}]},"backends":[{"ip":"%s"},{"ip":"%s"}]}`,
					i, i/10000, vip(96, i), backends[0].Addr(), backends[1].Addr())
				if _, err := c.UpsertService(ctx, []byte(doc)); err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		}()
	}
	for i := from; i < to; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	for {
		if st, err := c.Status(ctx); err == nil && st.Services >= to {
			return
		}
		if ctx.Err() != nil {
			b.Fatal("services not applied within 10 minutes")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
