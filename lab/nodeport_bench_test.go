package lab_test

import (
	"os/exec"
	"testing"
	"time"

	"github.com/filament-net/filament/lab/labtest"
)

// BenchmarkNodePortThroughput: iperf3, one TCP stream for 3 s, between a
// host on the underlay that is not a node and a NodePort on n1 whose only
// backend is a pod on n2 (n1 translates both ways: DNAT and SNAT to n2
// through the tunnel, native routing or WireGuard), uploading to the
// backend and downloading from it (-R), and downloading through n2's
// NodePort (a local backend: DNAT only), beside, in the same lab and run,
// pod-to-pod from a pod on n1 to the backend (BenchmarkCrossNodeThroughput's
// path): the baseline, each NodePort figure also given as its share. Until
// 2026-12-05 downloads stalled after about 500 KB in every mode, local
// backend or not (lb_out dropped replies longer than the MTU: merged by
// GRO, or sent as one GSO packet by a local backend).
func BenchmarkNodePortThroughput(b *testing.B) {
	for _, mode := range []string{"tunnel", "native", "tunnel+wireguard"} {
		b.Run(mode, func(b *testing.B) {
			routing, args := mode, []string(nil)
			if mode == "tunnel+wireguard" {
				routing, args = "tunnel", []string{"--encryption", "wireguard", "--encryption-strict"}
			}
			l, srv := crossNodeIperf(b, "", routing, args...)
			labtest.ImportPolicy(b, l, "n2", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-world}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEntities: [world]
`)
			labtest.MustUpsertService(b, l, "n1", remoteNodePort("iperf", "10.96.0.30", "TCP", 5201, 5201, 30201, srv.IP))
			out := labtest.UnderlayHost(b, l, "out", "172.30.0.50")
			// n1's NodePort (the backend on n2) and n2's (a local backend).
			outside := func(node string, extra ...string) *exec.Cmd {
				n, err := l.Node(node)
				if err != nil {
					b.Fatal(err)
				}
				argv := append([]string{"nsenter", "--net=" + out, "iperf3", "-c", n.IP, "-p", "30201"}, extra...)
				return exec.Command(argv[0], argv[1:]...)
			}
			for _, node := range []string{"n1", "n2"} {
				for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
					if o, err := outside(node, "-n", "64K", "--connect-timeout", "1000").CombinedOutput(); err == nil {
						break
					} else if time.Now().After(deadline) {
						b.Fatalf("no transfer through %s's NodePort in 30 s of attempts: %v %s", node, err, o)
					}
				}
			}
			var pod, up, down, localDown float64
			for i := 0; i < b.N; i++ {
				c, _ := l.PodCommand("client", "iperf3", "-c", srv.IP, "-p", "5201", "-t", "3", "-J")
				pod += iperf(b, c)
				up += iperf(b, outside("n1", "-t", "3", "-J"))
				down += iperf(b, outside("n1", "-t", "3", "-J", "-R"))
				localDown += iperf(b, outside("n2", "-t", "3", "-J", "-R"))
			}
			n := float64(b.N)
			b.ReportMetric(pod/n, "pod-Gbit/s")
			b.ReportMetric(up/n, "nodeport-up-Gbit/s")
			b.ReportMetric(down/n, "nodeport-down-Gbit/s")
			b.ReportMetric(localDown/n, "local-down-Gbit/s")
			b.ReportMetric(100*up/pod, "%pod-up")
			b.ReportMetric(100*down/pod, "%pod-down")
			b.ReportMetric(0, "ns/op")
		})
	}
}
