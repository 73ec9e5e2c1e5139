package routing

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"testing"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/sparse"
)

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// meshFill feeds a router the remote entries of clusters × nodes × eps
// (names as the kvstore's JSON gives them: a fresh pod name each) and
// returns the router's heap (measured with and without it, the fake maps
// kept) and the ipcache entries written.
func meshFill(clusters, nodes, eps int, sparseOn bool) (routerBytes uint64, ipcacheEntries int) {
	f := &fakeMaps{ipc: map[netip.Prefix]fakeValue{}}
	r := &Router{dp: f, mode: Tunnel, self: "n1", nodes: map[string]node.Node{}, down: map[string]bool{}, entries: map[netip.Addr]ipcache.Entry{}}
	if sparseOn {
		r.SetSparse(sparse.NewNeed(1, false), netip.MustParsePrefix("10.1.0.0/24"))
	}
	for c := 2; c < 2+clusters; c++ {
		for n := range nodes {
			name := fmt.Sprintf("c%d/n%d", c, n)
			host := netip.AddrFrom4([4]byte{172, 30, byte(c), byte(n + 1)})
			base := [4]byte{byte(c), byte(n / 64), byte(n%64) * 4, 0} // a /22 per node
			r.NodeChanged(node.Node{Name: name, IPs: []string{host.String()}, PodCIDRs: []string{netip.PrefixFrom(netip.AddrFrom4(base), 22).String()}}, false)
			for e := range eps {
				a := base
				a[2] += byte(e >> 8)
				a[3] = byte(e)
				r.EntryChanged(ipcache.Entry{IP: netip.AddrFrom4(a), Identity: identity.Compose(uint32(c), 256+uint32(e%50)), HostIP: host,
					Node: name, Namespace: "default", Pod: fmt.Sprintf("pod-%d-%d", n, e)}, false)
			}
		}
	}
	with := heap()
	entries := len(f.ipc)
	runtime.KeepAlive(r)
	r = nil
	without := heap()
	runtime.KeepAlive(f)
	return with - without, entries
}

// BenchmarkSparseRemoteIPCache: the router's heap per remote endpoint and
// the BPF ipcache entries for a mesh of remote clusters with no policy
// telling pods apart, sparse against full in the same run.
func BenchmarkSparseRemoteIPCache(b *testing.B) {
	inNetns(b)
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil))) // route errors of the netns without devices
	const clusters, nodes, eps = 8, 100, 1000
	total := float64(clusters * nodes * eps)
	for range b.N {
		sb, se := meshFill(clusters, nodes, eps, true)
		fb, fe := meshFill(clusters, nodes, eps, false)
		b.ReportMetric(float64(sb)/total, "sparse-B/uninstalled-endpoint")
		b.ReportMetric(float64(fb)/total, "full-B/endpoint")
		b.ReportMetric(float64(se), "sparse-ipcache-entries")
		b.ReportMetric(float64(fe), "full-ipcache-entries")
	}
}
