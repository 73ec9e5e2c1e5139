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

	"github.com/cilium/ebpf"

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

// serverPolicy lets pods app=client into pods app=server, on port (TCP)
// or any port ("").
func serverPolicy(port string) string {
	doc := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
`
	if port != "" {
		doc += `    toPorts: [{ports: [{port: "` + port + `", protocol: TCP}]}]
`
	}
	return doc
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
	labtest.ImportPolicy(b, l, "n1", serverPolicy("5201"))
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
			sum += iperf(b, c)
		}
		b.ReportMetric(sum/float64(b.N), "Gbit/s")
		b.ReportMetric(0, "ns/op")
	}
	b.Run("filament-programs-with-policy", measure)
	// Detach: drop the pinned tcx links of both endpoints.
	links, _ := filepath.Glob(filepath.Join(labtest.PinDir(l, "n1"), "links", "*"))
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

// iperf3 runs one 3 s TCP stream from client to serverIP and returns Gbit/s.
func iperf(b *testing.B, client *exec.Cmd) float64 {
	return iperfReceived(b, client).BitsPerSecond / 1e9
}

// iperfSum is iperf3's JSON summary of what a server received.
type iperfSum struct {
	BitsPerSecond float64 `json:"bits_per_second"`
	Bytes         float64 `json:"bytes"`
	Seconds       float64 `json:"seconds"`
}

// iperfReceived runs an iperf3 client (-J) and returns what its server
// received.
func iperfReceived(b *testing.B, client *exec.Cmd) iperfSum {
	b.Helper()
	out, err := client.Output()
	if err != nil {
		b.Fatalf("iperf3: %v %s", err, out)
	}
	var r struct {
		End struct {
			SumReceived *iperfSum `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		b.Fatal(err)
	}
	if r.End.SumReceived == nil || r.End.SumReceived.Seconds == 0 {
		b.Fatalf("iperf3 reported nothing received: %s", out)
	}
	return *r.End.SumReceived
}

// BenchmarkCrossNodeThroughput: one TCP stream from a pod on n1 to a pod on
// n2, tunnel and native (forwarded by the programs, and by the nodes' IP
// forwarding: --native-forwarding kernel), and encrypted with WireGuard (the kernel module
// where present, else the embedded userspace implementation), beside, in
// the same run, plain veth throughput between two bare namespaces and the
// kernel alone on the lab's shape of path (kernelPath: no agent, no
// programs), routed and through a kernel VXLAN device: what the topology
// costs whoever forwards.
func BenchmarkCrossNodeThroughput(b *testing.B) {
	// plain: the baseline's Gbit/s, each path's also reported as a share
	// of it (when the baseline ran: not under a -bench naming one path).
	var plain float64
	report := plainShare(&plain, "Gbit/s")
	b.Run("baseline-plain-veth", func(b *testing.B) {
		plainVeth(b)
		plain = bareIperf(b, "fbench-x", "fbench-y", "10.99.9.2")
		report(b, plain)
	})
	for _, mode := range []string{"kernel-routing", "kernel-vxlan"} {
		b.Run(mode, func(b *testing.B) {
			kernelPath(b, mode == "kernel-vxlan")
			report(b, bareIperf(b, "fbench-p1", "fbench-p2", "10.98.2.2"))
		})
	}
	for _, mode := range []string{"tunnel", "native", "native+kernel-forwarding", "tunnel+wireguard"} {
		b.Run(mode, func(b *testing.B) {
			routing, args := mode, []string(nil)
			switch mode {
			case "tunnel+wireguard":
				routing, args = "tunnel", []string{"--encryption", "wireguard", "--encryption-strict"}
			case "native+kernel-forwarding":
				routing, args = "native", []string{"--native-forwarding", "kernel"}
			}
			l, srv := crossNodeIperf(b, "", routing, args...)
			var sum float64
			for i := 0; i < b.N; i++ {
				c, _ := l.PodCommand("client", "iperf3", "-c", srv.IP, "-p", "5201", "-t", "3", "-J")
				sum += iperf(b, c)
			}
			report(b, sum/float64(b.N))
		})
	}
}

// plainShare reports a path's figure in unit and, once the baseline's is
// in *plain (it ran first in the same run), its share of that as
// %plain-veth.
func plainShare(plain *float64, unit string) func(*testing.B, float64) {
	return func(b *testing.B, v float64) {
		b.ReportMetric(v, unit)
		if *plain > 0 {
			b.ReportMetric(100*v / *plain, "%plain-veth")
		}
		b.ReportMetric(0, "ns/op")
	}
}

// plainVeth makes two bare namespaces, fbench-x (10.99.9.1) and fbench-y
// (10.99.9.2), joined by one veth.
func plainVeth(b *testing.B) {
	b.Helper()
	labtest.NetNS(b, "fbench-x")
	labtest.NetNS(b, "fbench-y")
	ipSteps(b, [][]string{
		{"-n", "fbench-x", "link", "add", "v", "type", "veth", "peer", "name", "v", "netns", "fbench-y"},
		{"-n", "fbench-x", "addr", "add", "10.99.9.1/24", "dev", "v"},
		{"-n", "fbench-y", "addr", "add", "10.99.9.2/24", "dev", "v"},
		{"-n", "fbench-x", "link", "set", "v", "up"},
		{"-n", "fbench-y", "link", "set", "v", "up"},
	})
}

// BenchmarkCrossNodePacketRate: small UDP datagrams (64-byte payloads,
// iperf3 -u -b 0, one stream for 3 s) from a pod on n1 to a pod on n2 in
// native routing, forwarded by the programs (the default) and by the
// nodes' IP forwarding (--native-forwarding kernel), beside, in the same
// run, the kernel alone on the lab's routed path (kernelPath) and one
// plain veth: thousands of datagrams received a second. Every datagram is
// a packet of its own, so what a path costs per packet shows here, where
// TCP's 64 KB GSO packets (BenchmarkCrossNodeThroughput) hide it.
func BenchmarkCrossNodePacketRate(b *testing.B) {
	var plain float64
	report := plainShare(&plain, "kpps")
	udp := func(b *testing.B, cmd func() *exec.Cmd) float64 {
		var sum float64
		for i := 0; i < b.N; i++ {
			sum += udpRate(b, cmd())
		}
		return sum / float64(b.N)
	}
	bare := func(b *testing.B, cliNS, srvNS, srvIP string) float64 {
		srv := exec.Command("ip", "netns", "exec", srvNS, "iperf3", "-s", "-p", "5201")
		if err := srv.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { srv.Process.Kill(); srv.Wait() }()
		time.Sleep(300 * time.Millisecond)
		return udp(b, func() *exec.Cmd {
			return exec.Command("ip", "netns", "exec", cliNS, "iperf3", "-c", srvIP, "-p", "5201", "-u", "-l", "64", "-b", "0", "-t", "3", "-J")
		})
	}
	b.Run("baseline-plain-veth", func(b *testing.B) {
		plainVeth(b)
		plain = bare(b, "fbench-x", "fbench-y", "10.99.9.2")
		report(b, plain)
	})
	b.Run("kernel-routing", func(b *testing.B) {
		kernelPath(b, false)
		report(b, bare(b, "fbench-p1", "fbench-p2", "10.98.2.2"))
	})
	for _, mode := range []string{"native", "native+kernel-forwarding"} {
		b.Run(mode, func(b *testing.B) {
			var args []string
			if mode == "native+kernel-forwarding" {
				args = []string{"--native-forwarding", "kernel"}
			}
			l, srv := crossNodeIperf(b, "", "native", args...)
			report(b, udp(b, func() *exec.Cmd {
				c, _ := l.PodCommand("client", "iperf3", "-c", srv.IP, "-p", "5201", "-u", "-l", "64", "-b", "0", "-t", "3", "-J")
				return c
			}))
		})
	}
}

// udpRate runs an iperf3 UDP client of 64-byte datagrams and returns the
// thousands of datagrams a second its server received.
func udpRate(b *testing.B, client *exec.Cmd) float64 {
	b.Helper()
	r := iperfReceived(b, client)
	return r.Bytes / 64 / r.Seconds / 1000
}

// ipSteps runs each step as `ip STEP...`, failing b on the first error.
func ipSteps(b *testing.B, steps [][]string) {
	b.Helper()
	for _, st := range steps {
		if out, err := exec.Command("ip", st...).CombinedOutput(); err != nil {
			b.Fatalf("ip %v: %v %s", st, err, out)
		}
	}
}

// bareIperf runs an iperf3 server in namespace srvNS and b.N 3 s streams
// to it from cliNS, and returns their mean Gbit/s.
func bareIperf(b *testing.B, cliNS, srvNS, srvIP string) float64 {
	b.Helper()
	srv := exec.Command("ip", "netns", "exec", srvNS, "iperf3", "-s", "-p", "5201")
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	time.Sleep(300 * time.Millisecond)
	var sum float64
	for i := 0; i < b.N; i++ {
		sum += iperf(b, exec.Command("ip", "netns", "exec", cliNS, "iperf3", "-c", srvIP, "-p", "5201", "-t", "3", "-J"))
	}
	return sum / float64(b.N)
}

// kernelPath builds the lab's cross-node path with nothing of ours on it:
// two node namespaces with eth0 on a bridge (in fbench-ul, MTU 1500), a
// pod namespace behind each (fbench-pJ, 10.98.J.2/32, gateway 10.98.J.1 on
// the node's veth), forwarding on, and routes to the other node's pod
// either through its underlay address or, with vxlan, through a kernel
// VXLAN device (VNI 42, port 8472, pods at MTU 1450 as the agent sets them).
func kernelPath(b *testing.B, vxlan bool) {
	b.Helper()
	labtest.NetNS(b, "fbench-ul")
	steps := [][]string{
		{"-n", "fbench-ul", "link", "add", "br0", "type", "bridge"},
		{"-n", "fbench-ul", "link", "set", "br0", "up"},
	}
	for j := 1; j <= 2; j++ {
		n, p := fmt.Sprintf("fbench-n%d", j), fmt.Sprintf("fbench-p%d", j)
		labtest.NetNS(b, n)
		labtest.NetNS(b, p)
		port, self, pod, gw := fmt.Sprintf("port%d", j), fmt.Sprintf("172.31.9.%d", j), fmt.Sprintf("10.98.%d.2", j), fmt.Sprintf("10.98.%d.1", j)
		peer, peerPods := fmt.Sprintf("172.31.9.%d", 3-j), fmt.Sprintf("10.98.%d.0/24", 3-j)
		steps = append(steps, [][]string{
			{"-n", "fbench-ul", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", n},
			{"-n", "fbench-ul", "link", "set", port, "master", "br0", "up"},
			{"-n", n, "addr", "add", self + "/24", "dev", "eth0"},
			{"-n", n, "link", "set", "eth0", "up"},
			{"-n", n, "link", "add", "pod", "type", "veth", "peer", "name", "eth0", "netns", p},
			{"-n", n, "addr", "add", gw + "/32", "dev", "pod"},
			{"-n", n, "link", "set", "pod", "up"},
			{"-n", n, "route", "add", pod + "/32", "dev", "pod"},
			{"-n", p, "addr", "add", pod + "/32", "dev", "eth0"},
			{"-n", p, "link", "set", "eth0", "up"},
			{"-n", p, "route", "add", gw + "/32", "dev", "eth0"},
			{"-n", p, "route", "add", "default", "via", gw},
		}...)
		if !vxlan {
			steps = append(steps, []string{"-n", n, "route", "add", peerPods, "via", peer})
			continue
		}
		steps = append(steps, [][]string{
			{"-n", n, "link", "add", "vx", "type", "vxlan", "id", "42", "dstport", "8472", "local", self, "remote", peer, "nolearning"},
			{"-n", n, "link", "set", "vx", "up"},
			{"-n", n, "addr", "add", fmt.Sprintf("10.97.0.%d/32", j), "dev", "vx"},
			{"-n", n, "route", "add", peerPods, "via", fmt.Sprintf("10.97.0.%d", 3-j), "dev", "vx", "onlink"},
			{"-n", p, "link", "set", "eth0", "mtu", "1450"},
			{"-n", n, "link", "set", "pod", "mtu", "1450"},
		}...)
	}
	ipSteps(b, steps)
	for j := 1; j <= 2; j++ {
		if out, err := exec.Command("ip", "netns", "exec", fmt.Sprintf("fbench-n%d", j), "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
			b.Fatalf("ip_forward: %v %s", err, out)
		}
	}
}

// crossNodeIperf brings up two nodes (routing, agent args), a client pod
// on n1 and an iperf3 server pod on n2 (port 5201) under an ingress policy
// that admits the client on port (every port when ""), and waits until a
// small transfer from the client goes through. The server stops at
// cleanup.
func crossNodeIperf(tb testing.TB, port, routing string, args ...string) (*lab.Lab, *lab.Pod) {
	tb.Helper()
	l := labtest.UpRouting(tb, 2, routing, args...)
	labtest.Pod(tb, l, "n1", "client", "app=client")
	srv := labtest.Pod(tb, l, "n2", "server", "app=server")
	labtest.ImportPolicy(tb, l, "n2", serverPolicy(port))
	sc, _ := l.PodCommand("server", "iperf3", "-s", "-p", "5201")
	if err := sc.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sc.Process.Kill(); sc.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		// Each attempt bounded: a SYN sent before the policy or the peer's
		// entry arrived would wait out its retransmissions.
		c, _ := l.PodCommand("client", "timeout", "5", "iperf3", "-c", srv.IP, "-p", "5201", "-n", "64K", "--connect-timeout", "1000")
		out, err := c.CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no transfer from the client to the server in 10 s of attempts: %v %s", err, out)
		}
	}
	return l, srv
}

// BenchmarkIPCachePropagation: from the start of a CNI ADD on n1 until the
// endpoint's entry is in n2's BPF ipcache, over 1,000 endpoints: p50 and
// p99. Baseline: the same for n1's own ipcache (written during the ADD,
// without the kvstore). The entry is checked once the ADD has returned, so
// both include the ADD itself.
func BenchmarkIPCachePropagation(b *testing.B) {
	const count = 1000
	l := labtest.UpRouting(b, 2, "tunnel", "--pod-cidr-size", "21")
	n1, _ := l.Node("n1")
	open := func(node string) *ebpf.Map {
		m, err := ebpf.LoadPinnedMap(filepath.Join(labtest.PinDir(l, node), "ipcache"), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { m.Close() })
		return m
	}
	remote, local := open("n2"), open("n1")
	netns := labtest.NetNS(b, "fbench-prop-"+l.Name)
	conf := n1.NetConf([]string{"app=prop"})
	var remoteD, localD []time.Duration
	for i := 0; i < count; i++ {
		cid := fmt.Sprintf("prop-%d", i)
		// Addresses are handed out round-robin, so the next one is known
		// before the ADD: both maps are polled while it runs.
		ip := labtest.PodAddr(b, l, "n1", 2+i)
		type addResult struct {
			out []byte
			err error
		}
		done := make(chan addResult, 1)
		created := time.Now() // the CNI ADD starts
		go func() {
			out, err := l.CNI(n1, "ADD", cid, netns, "eth0", "", conf)
			done <- addResult{out, err}
		}()
		var gotLocal, gotRemote bool
		for !gotRemote || !gotLocal {
			if !gotLocal && ipcHas(local, ip, 32) {
				gotLocal = true
				localD = append(localD, time.Since(created))
			}
			if !gotRemote && ipcHas(remote, ip, 32) {
				gotRemote = true
				remoteD = append(remoteD, time.Since(created))
			}
			if time.Since(created) > 10*time.Second {
				b.Fatalf("endpoint %s not in both ipcaches after 10s (local %v, remote %v)", ip, gotLocal, gotRemote)
			}
			time.Sleep(100 * time.Microsecond)
		}
		r := <-done
		if r.err != nil {
			b.Fatal(r.err)
		}
		if !strings.Contains(string(r.out), `"`+ip+`/32"`) {
			b.Fatalf("ADD gave %s, expected %s", r.out, ip)
		}
		if _, err := l.CNI(n1, "DEL", cid, netns, "eth0", "", conf); err != nil {
			b.Fatal(err)
		}
	}
	pct := func(d []time.Duration, p int) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[len(d)*p/100].Microseconds()) / 1000
	}
	b.Run("remote-node-ipcache", func(b *testing.B) {
		b.ReportMetric(pct(remoteD, 50), "p50-ms")
		b.ReportMetric(pct(remoteD, 99), "p99-ms")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("baseline-local-ipcache", func(b *testing.B) {
		b.ReportMetric(pct(localD, 50), "p50-ms")
		b.ReportMetric(pct(localD, 99), "p99-ms")
		b.ReportMetric(0, "ns/op")
	})
}
