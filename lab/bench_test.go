package lab_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/lab"

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

// BenchmarkPodThroughput measures single-stream TCP between two pods on a
// node with iperf3, three ways in one run: through our programs with a
// policy selecting both pods (local delivery by redirect_peer), with the
// programs detached (plain kernel routing between the veths), and with the
// programs detached and 10,000 non-matching iptables rules in FORWARD.
func BenchmarkPodThroughput(b *testing.B) {
	l := labtest.Up(b, 1, 24)
	labtest.Pod(b, l, "n1", "client", "app=client")
	srv := labtest.Pod(b, l, "n1", "server", "app=server")
	labtest.ImportPolicy(b, l, "n1", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "5201", protocol: TCP}]}]
`)
	sc, _ := l.PodCommand("server", "iperf3", "-s", "-p", "5201")
	if err := sc.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { sc.Process.Kill(); sc.Wait() }()
	time.Sleep(300 * time.Millisecond)
	measure := func(b *testing.B) {
		var sum float64
		for i := 0; i < b.N; i++ {
			c, _ := l.PodCommand("client", "iperf3", "-c", srv.IP, "-p", "5201", "-t", "3", "-J")
			out, err := c.Output()
			if err != nil {
				b.Fatalf("iperf3: %v %s", err, out)
			}
			var r struct {
				End struct {
					SumReceived struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal(out, &r); err != nil {
				b.Fatal(err)
			}
			sum += r.End.SumReceived.BitsPerSecond
		}
		b.ReportMetric(sum/float64(b.N)/1e9, "Gbit/s")
		b.ReportMetric(0, "ns/op")
	}
	b.Run("filament-programs-with-policy", measure)
	// Detach: drop the pinned tcx links of both endpoints.
	links, _ := filepath.Glob(filepath.Join(lab.Root, l.Name, "bpffs", "filament", "n1", "links", "*"))
	if len(links) != 4 {
		b.Fatalf("want 4 pinned links, found %v", links)
	}
	for _, p := range links {
		if err := os.Remove(p); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("no-program", measure)
	n, _ := l.Node("n1")
	var rules strings.Builder
	rules.WriteString("*filter\n:FORWARD ACCEPT [0:0]\n")
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&rules, "-A FORWARD -s 198.18.%d.%d/32 -p tcp --dport %d -j DROP\n", i/250, i%250+1, 1000+i%5000)
	}
	rules.WriteString("COMMIT\n")
	cmd := exec.Command("ip", "netns", "exec", n.NetNS, "iptables-legacy-restore")
	cmd.Stdin = strings.NewReader(rules.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("iptables-legacy-restore: %v %s", err, out)
	}
	b.Run("no-program-iptables-10k-rules", measure)
}
