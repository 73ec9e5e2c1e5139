package lab_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// simWriter starts this test binary as a synthetic writer in cluster c's
// kvstore namespace; closing its stdin ends it (after it cleans up).
func startWriter(b *testing.B, l *lab.Lab, c, mode string) (*exec.Cmd, *bufio.Scanner, func()) {
	b.Helper()
	cl, _ := l.Cluster(c)
	cmd := exec.Command("ip", "netns", "exec", l.KvstoreNS(c), os.Args[0])
	cmd.Env = append(os.Environ(), "FILAMENT_SIM_WRITER="+mode, "FILAMENT_SIM_BUNDLE="+cl.Bundle,
		"FILAMENT_SIM_CLUSTER="+cl.Name, "FILAMENT_SIM_ID="+strconv.Itoa(int(cl.ID)), "FILAMENT_SIM_ETCD="+cl.Kvstore)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return cmd, bufio.NewScanner(stdout), func() { stdin.Close(); cmd.Wait() }
}

func mapCount(m *ebpf.Map) int {
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}

func rssKB(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			var kb float64
			fmt.Sscan(strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:")), &kb)
			return kb
		}
	}
	return 0
}

// BenchmarkClusterMesh: two connected clusters. (1) An endpoint written in
// cluster c1's kvstore until it is in a c2 node's BPF ipcache, p50 and p99
// over 200 probes while 5,000 other c1 endpoints churn; (2) the c2 agent's
// resident memory for 10,000 remote endpoints, beside its memory before.
func BenchmarkClusterMesh(b *testing.B) {
	l := labtest.UpClusters(b, 2, 1, "tunnel")
	c1, _ := l.Cluster("c1")
	c2, _ := l.Cluster("c2")
	if _, _, err := clustermesh.Connect(c1.Bundle, c2.Bundle); err != nil {
		b.Fatal(err)
	}
	if out, err := labtest.NodeRun(b, l, "c2/n1", "filament", "clustermesh", "status", "--wait", "60s"); err != nil {
		b.Fatalf("status: %v %s", err, out)
	}
	ipc, err := ebpf.LoadPinnedMap(filepath.Join(labtest.PinDir(l, "c2/n1"), "ipcache"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer ipc.Close()

	b.Run("propagation-under-5000-churn", func(b *testing.B) {
		_, out, stop := startWriter(b, l, "c1", "churn 5000")
		var d []time.Duration
		for len(d) < 200 && out.Scan() {
			var ip string
			var t0 int64
			if _, err := fmt.Sscanf(out.Text(), "probe %s %d", &ip, &t0); err != nil {
				continue
			}
			deadline := time.Now().Add(10 * time.Second)
			for !ipcHas(ipc, ip, 32) {
				if time.Now().After(deadline) {
					b.Fatalf("probe %s not in c2's ipcache after 10s", ip)
				}
				time.Sleep(200 * time.Microsecond)
			}
			d = append(d, time.Since(time.Unix(0, t0)))
		}
		stop()
		if len(d) < 200 {
			b.Fatalf("only %d probes", len(d))
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(d[len(d)*99/100].Microseconds())/1000, "p99-ms")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("agent-memory-10000-remote-endpoints", func(b *testing.B) {
		n, _ := l.Node("c2/n1")
		time.Sleep(2 * time.Second)
		before := rssKB(n.PID)
		base := mapCount(ipc)
		_, out, stop := startWriter(b, l, "c1", "fill 10000")
		for out.Scan() && out.Text() != "done" {
		}
		deadline := time.Now().Add(60 * time.Second)
		for mapCount(ipc) < base+10000 {
			if time.Now().After(deadline) {
				b.Fatalf("c2's ipcache has %d entries, want %d", mapCount(ipc), base+10000)
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(2 * time.Second)
		after := rssKB(n.PID)
		stop()
		b.ReportMetric(before/1024, "MB-before")
		b.ReportMetric(after/1024, "MB-with-10k")
		b.ReportMetric((after-before)/1024, "MB-per-10k")
		b.ReportMetric(0, "ns/op")
	})
}
