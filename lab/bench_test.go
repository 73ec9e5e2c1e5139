package lab_test

import (
	"fmt"
	"os/exec"
	"sort"
	"testing"
	"time"

	"github.com/filament-net/filament/lab/labtest"
)

// BenchmarkEndpointCreateDelete times CNI ADD+DEL of 100 endpoints through
// the filament-cni binary (invoked as a runtime does), beside a baseline
// that does only the kernel part a minimal plugin cannot avoid: `ip` creating
// a veth pair into the pod namespace and deleting it, also as processes.
func BenchmarkEndpointCreateDelete(b *testing.B) {
	const endpoints = 100
	l := labtest.Up(b, 1, 24)
	n, _ := l.Node("n1")
	netns := make([]string, endpoints)
	for i := range netns {
		netns[i] = labtest.NetNS(b, fmt.Sprintf("fbench-%s-%d", l.Name, i))
	}
	report := func(b *testing.B, d []time.Duration) {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(d[len(d)*99/100].Microseconds())/1000, "p99-ms")
		b.ReportMetric(0, "ns/op")
	}
	b.Run("filament-cni-add+del", func(b *testing.B) {
		var d []time.Duration
		conf := n.NetConf([]string{"app=bench"})
		for it := 0; it < b.N; it++ {
			for i, ns := range netns {
				cid := fmt.Sprintf("bench-%d-%d", it, i)
				start := time.Now()
				if _, err := l.CNI(n, "ADD", cid, ns, "eth0", "", conf); err != nil {
					b.Fatal(err)
				}
				if _, err := l.CNI(n, "DEL", cid, ns, "eth0", "", conf); err != nil {
					b.Fatal(err)
				}
				d = append(d, time.Since(start))
			}
		}
		report(b, d)
	})
	b.Run("baseline-ip-veth-add+del", func(b *testing.B) {
		var d []time.Duration
		for it := 0; it < b.N; it++ {
			for i, ns := range netns {
				start := time.Now()
				host := fmt.Sprintf("fbh%d", i)
				if out, err := exec.Command("ip", "netns", "exec", n.NetNS, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns).CombinedOutput(); err != nil {
					b.Fatalf("%v %s", err, out)
				}
				if out, err := exec.Command("ip", "netns", "exec", n.NetNS, "ip", "link", "del", host).CombinedOutput(); err != nil {
					b.Fatalf("%v %s", err, out)
				}
				d = append(d, time.Since(start))
			}
		}
		report(b, d)
	})
}
