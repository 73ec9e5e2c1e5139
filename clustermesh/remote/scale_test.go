package remote_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/clustermesh/apiserver/apiservertest"
	"github.com/filament-net/filament/clustermesh/remote"
)

// ipcacheMax is the capacity of the BPF ipcache (bpf/datapath.c).
const ipcacheMax = 512 * 1024

// simCluster is a synthetic cluster: its own TLS apiserver (real embedded
// etcd) filled with nodes and endpoints as its agents would write them.
type simCluster struct {
	*apiservertest.Server
}

// fill writes nodes × eps endpoints (and one identity per node) in
// transactions of 128 puts, as many agents would.
func (c simCluster) fill(ctx context.Context, nodes, eps int) error {
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := c.Agent.Txn(ctx, nil, ops)
		ops = ops[:0]
		return err
	}
	add := func(op clientv3.Op) error {
		ops = append(ops, op)
		if len(ops) == 128 {
			return flush()
		}
		return nil
	}
	for n := 0; n < nodes; n++ {
		name := fmt.Sprintf("n%d", n)
		nb, _ := json.Marshal(node.Node{Name: name, Cluster: c.Name, ClusterID: c.ID,
			IPs: []string{fmt.Sprintf("172.31.%d.%d", n/250, n%250+1)}, PodCIDRs: []string{fmt.Sprintf("10.%d.%d.0/22", c.ID, n*4%256)}, Routing: "tunnel"})
		if err := add(clientv3.OpPut(node.NodesPrefix+c.Name+"/"+name, string(nb))); err != nil {
			return err
		}
		id := identity.Compose(c.ID, uint32(300+n))
		if err := add(clientv3.OpPut(fmt.Sprintf("%s%d", identity.IDPrefix, id), fmt.Sprintf("k8s:app=a%d;k8s:filament.io/cluster=%s", n, c.Name))); err != nil {
			return err
		}
		for e := 0; e < eps; e++ {
			i := n*eps + e
			ip := netip.AddrFrom4([4]byte{10, byte(c.ID), byte(i >> 8), byte(i)})
			if eps*nodes > 65536 {
				ip = netip.AddrFrom4([4]byte{byte(10 + i>>16), byte(c.ID), byte(i >> 8), byte(i)})
			}
			eb, _ := json.Marshal(ipcache.Entry{IP: ip, Identity: id, HostIP: netip.MustParseAddr("172.31.0.1"), Node: name, Namespace: "default", Pod: fmt.Sprintf("p%d", i)})
			if err := add(clientv3.OpPut(ipcache.Prefix+c.Name+"/"+ip.String(), string(eb))); err != nil {
				return err
			}
		}
	}
	return flush()
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkMeshScale is the simulation mode: no datapath, synthetic
// clusters with real TLS apiservers (embedded etcd) filled as their agents
// would, and one agent's remote-cluster watchers following all of them.
// Each step reports the write rate into the apiservers, the watchers'
// initial sync rate and heap per remote endpoint, the etcd database size
// per endpoint, and prints what the target of 255 clusters x 100 nodes x
// 1,000 endpoints would need at those rates.
func BenchmarkMeshScale(b *testing.B) {
	steps := []struct{ clusters, nodes, eps int }{{2, 100, 100}, {4, 100, 250}, {8, 100, 1000}}
	for _, st := range steps {
		b.Run(fmt.Sprintf("%dclusters-x-%dnodes-x-%deps", st.clusters, st.nodes, st.eps), func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var sims []simCluster
			for i := 0; i < st.clusters; i++ {
				sims = append(sims, simCluster{apiservertest.Start(b, fmt.Sprintf("sim%d", i+2), uint32(i+2))})
			}
			total := st.clusters * st.nodes * st.eps
			start := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, len(sims))
			for _, s := range sims {
				wg.Add(1)
				go func() { defer wg.Done(); errs <- s.fill(ctx, st.nodes, st.eps) }()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
			writeRate := float64(total) / time.Since(start).Seconds()
			var dbBytes int64
			for _, s := range sims {
				sr, err := s.Agent.Raw().Status(ctx, s.Endpoint)
				if err != nil {
					b.Fatal(err)
				}
				dbBytes += sr.DbSizeInUse
			}

			// One agent's watchers follow every synthetic cluster.
			before := heap()
			var entries atomic.Int64
			dir := b.TempDir()
			m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
				Node:     func(node.Node, bool) {},
				Identity: func(identity.Identity, bool) {},
				Entry: func(_ ipcache.Entry, deleted bool) {
					if !deleted {
						entries.Add(1)
					}
				},
			})
			syncStart := time.Now()
			for _, s := range sims {
				s.WriteRemoteConfig(b, dir)
			}
			mctx, mcancel := context.WithCancel(ctx)
			go m.Run(mctx)
			deadline := time.Now().Add(5 * time.Minute)
			for entries.Load() < int64(total) {
				if time.Now().After(deadline) {
					b.Fatalf("watchers synced %d of %d entries in 5 minutes", entries.Load(), total)
				}
				time.Sleep(20 * time.Millisecond)
			}
			syncRate := float64(total) / time.Since(syncStart).Seconds()
			perEntry := float64(heap()-before) / float64(total)
			mcancel()

			b.ReportMetric(writeRate, "writes/s")
			b.ReportMetric(syncRate, "synced/s")
			b.ReportMetric(perEntry, "heap-B/endpoint")
			b.ReportMetric(float64(dbBytes)/float64(total), "etcd-B/endpoint")
			b.ReportMetric(0, "ns/op")
			const target = 255 * 100 * 1000
			perCluster := 100 * 1000
			fmt.Printf("    toward 255x100x1000 (%d endpoints): one agent's watchers need ~%.1f GiB of heap and ~%.0f s to sync "+
				"(at %.0f endpoints/s); each apiserver holds ~%.0f MiB for its 100,000 endpoints (etcd quota 2 GiB) and "+
				"takes ~%.0f s to be filled at this write rate\n",
				target, perEntry*target/(1<<30), target/syncRate, syncRate,
				float64(dbBytes)/float64(total)*float64(perCluster)/(1<<20), float64(perCluster)/(writeRate/float64(st.clusters)))
			fmt.Printf("    first limit: the datapath, not the watchers: the BPF ipcache holds %d entries, so a node can take the endpoints "+
				"of about %d full clusters (100x1000) before ipcache writes fail\n", ipcacheMax, ipcacheMax/perCluster)
		})
	}
}
