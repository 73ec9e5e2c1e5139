package remote_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/apiserver"
	"github.com/filament-net/filament/clustermesh/remote"
)

// ipcacheMax is the capacity of the BPF ipcache (bpf/datapath.c).
const ipcacheMax = 512 * 1024

// simCluster is a synthetic cluster: its own TLS apiserver (real embedded
// etcd) filled with nodes and endpoints as its agents would write them.
type simCluster struct {
	name   string
	id     uint32
	bundle string
	ep     string
	kv     *kvstore.Client
}

func startSim(b *testing.B, ctx context.Context, id uint32) *simCluster {
	b.Helper()
	c := &simCluster{name: fmt.Sprintf("sim%d", id), id: id, bundle: b.TempDir()}
	if _, err := clustermesh.Enable(c.bundle, c.name, id, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		b.Fatal(err)
	}
	c.ep = fmt.Sprintf("https://127.0.0.1:%d", freePort(&testing.T{}))
	go apiserver.Run(ctx, apiserver.Config{Bundle: c.bundle, DataDir: b.TempDir(), ClientURL: c.ep,
		PeerURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(&testing.T{})), UnsafeNoFsync: true})
	deadline := time.Now().Add(30 * time.Second)
	for {
		kv, err := kvstore.Connect(ctx, kvstore.Config{Endpoints: []string{c.ep}, DialTimeout: time.Second,
			CAFile: c.bundle + "/ca.pem", CertFile: c.bundle + "/agent.pem", KeyFile: c.bundle + "/agent-key.pem"})
		if err == nil {
			if _, err = kv.Get(ctx, clustermesh.ClusterConfigPrefix+c.name); err == nil {
				c.kv = kv
				return c
			}
			kv.Close()
		}
		if time.Now().After(deadline) {
			b.Fatalf("apiserver %s: %v", c.name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fill writes nodes × eps endpoints (and one identity per node) in
// transactions of 128 puts, as many agents would.
func (c *simCluster) fill(ctx context.Context, nodes, eps int) error {
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := c.kv.Txn(ctx, nil, ops)
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
		nb, _ := json.Marshal(node.Node{Name: name, Cluster: c.name, ClusterID: c.id,
			IPs: []string{fmt.Sprintf("172.31.%d.%d", n/250, n%250+1)}, PodCIDRs: []string{fmt.Sprintf("10.%d.%d.0/22", c.id, n*4%256)}, Routing: "tunnel"})
		if err := add(clientv3.OpPut(node.NodesPrefix+c.name+"/"+name, string(nb))); err != nil {
			return err
		}
		id := identity.Compose(c.id, uint32(300+n))
		if err := add(clientv3.OpPut(fmt.Sprintf("%s%d", identity.IDPrefix, id), fmt.Sprintf("k8s:app=a%d;k8s:filament.io/cluster=%s", n, c.name))); err != nil {
			return err
		}
		for e := 0; e < eps; e++ {
			i := n*eps + e
			ip := netip.AddrFrom4([4]byte{10, byte(c.id), byte(i >> 8), byte(i)})
			if eps*nodes > 65536 {
				ip = netip.AddrFrom4([4]byte{byte(10 + i>>16), byte(c.id), byte(i >> 8), byte(i)})
			}
			eb, _ := json.Marshal(ipcache.Entry{IP: ip, Identity: id, HostIP: netip.MustParseAddr("172.31.0.1"), Node: name, Namespace: "default", Pod: fmt.Sprintf("p%d", i)})
			if err := add(clientv3.OpPut(ipcache.Prefix+c.name+"/"+ip.String(), string(eb))); err != nil {
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
			var sims []*simCluster
			for i := 0; i < st.clusters; i++ {
				sims = append(sims, startSim(b, ctx, uint32(i+2)))
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
				sr, err := s.kv.Raw().Status(ctx, s.ep)
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
				raw, _ := os.ReadFile(filepath.Join(s.bundle, "remote.yaml"))
				var rc clustermesh.RemoteConfig
				yaml.Unmarshal(raw, &rc)
				rc.Endpoints = []string{s.ep}
				out, _ := yaml.Marshal(rc)
				os.WriteFile(filepath.Join(dir, s.name+".yaml"), out, 0o600)
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
