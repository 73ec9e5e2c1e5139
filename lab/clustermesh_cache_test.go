package lab_test

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/remote"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// etcdIn is a client of a cluster's etcd with a bundle user's certificate,
// dialling from inside the kvstore's namespace; the caller closes it.
func etcdIn(tb testing.TB, l *lab.Lab, c lab.Cluster, user string) *clientv3.Client {
	tb.Helper()
	tc, err := kvstore.Config{CAFile: filepath.Join(c.Bundle, "ca.pem"),
		CertFile: filepath.Join(c.Bundle, user+".pem"),
		KeyFile:  filepath.Join(c.Bundle, user+"-key.pem")}.TLSConfig()
	if err != nil {
		tb.Fatal(err)
	}
	nsPath := lab.NetNSPath(l.KvstoreNS(c.Name))
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{c.Kvstore}, TLS: tc, DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var conn net.Conn
			err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
				var err error
				conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
				return err
			})
			return conn, err
		})},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return cli
}

// cacheLab: two clusters whose apiservers cache each other; c1/n1 reads c2
// through its apiserver's cache, c1/n2 directly. Both follow c2 on return.
func cacheLab(tb testing.TB) *lab.Lab {
	tb.Helper()
	l := labtest.UpWith(tb, lab.Options{Clusters: 2, Nodes: 2, Routing: "tunnel", ClusterMeshCache: true,
		NodeAgentArgs: map[string][]string{"c1/n1": {"--clustermesh-cache"}}})
	c2, _ := l.Cluster("c2")
	if out, err := labtest.NodeRun(tb, l, "c1/n1", "filament", "clustermesh", "connect", "--to", c2.Bundle); err != nil {
		tb.Fatalf("connect: %v %s", err, out)
	}
	for _, on := range []string{"c1/n1", "c1/n2"} {
		if out, err := labtest.NodeRun(tb, l, on, "filament", "clustermesh", "status", "--wait", "60s"); err != nil {
			tb.Fatalf("status --wait on %s: %v %s", on, err, out)
		}
	}
	return l
}

// connectionsTo lists the TCP connections of a node's namespace to addr.
func connectionsTo(t *testing.T, l *lab.Lab, node, addr string) string {
	t.Helper()
	n, _ := l.Node(node)
	host, port, _ := net.SplitHostPort(addr)
	out, err := labtest.NodeRun(t, l, node, "ss", "-tnH", "state", "established", "dst", host, "dport", "= :"+port)
	if err != nil {
		t.Fatalf("ss in %s: %v %s", n.NetNS, err, out)
	}
	return strings.TrimSpace(out)
}

// An agent in cache mode follows the remote cluster with no connection to
// it (only to its own apiserver) and reaches its pods; status shows both
// levels (the agent's and the cache's view); the direct mode beside it
// still connects to the remote.
func TestClusterMeshCache(t *testing.T) {
	l := cacheLab(t)
	web := labtest.Pod(t, l, "c1/n1", "web", "app=web")
	db := labtest.Pod(t, l, "c2/n1", "db", "app=db")
	serve(t, lab.NetNSPath(db.NetNS), 5432)
	eventually(t, "web (c1/n1, via the cache) reaches db (c2)", func() bool {
		return reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432)
	})
	var cached, direct remote.Status
	eventually(t, "status on both levels, the same counts", func() bool {
		cached, direct = meshPeer(t, l, "c1/n1", "c2"), meshPeer(t, l, "c1/n2", "c2")
		return cached.Via == "cache" && cached.CacheConnected && cached.Ready && cached.HeartbeatAge != "" && cached.Endpoints == direct.Endpoints &&
			cached.Nodes == direct.Nodes && cached.Identities == direct.Identities && direct.Via == "direct" && direct.Ready
	})
	t.Logf("via the cache: %+v", cached)
	c2, _ := l.Cluster("c2")
	kvAddr := strings.TrimPrefix(c2.Kvstore, "https://")
	if conns := connectionsTo(t, l, "c1/n1", kvAddr); conns != "" {
		t.Fatalf("c1/n1 (cache mode) holds connections to c2's apiserver:\n%s", conns)
	}
	if conns := connectionsTo(t, l, "c1/n2", kvAddr); conns == "" {
		t.Fatal("c1/n2 (direct mode) holds no connection to c2's apiserver: the check above proves nothing")
	}
	// A partition shorter than the TTL: the cache loses c2 and the agent
	// sees it on both levels; healed, the cache lists c2 again but writes
	// only what changed (db's cached entry keeps its revision) and the agent
	// passes nothing on.
	c1, _ := l.Cluster("c1")
	cli := etcdIn(t, l, *c1, clustermesh.UserAgent)
	defer cli.Close()
	cachedDB := clustermesh.CachePrefix + "c2/" + ipcache.Prefix + "c2/" + db.IP
	rev := func() int64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := cli.Get(ctx, cachedDB)
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("cached %s: %v", cachedDB, err)
		}
		return r.Kvs[0].ModRevision
	}
	before, rev0 := meshPeer(t, l, "c1/n1", "c2"), rev()
	if err := l.Partition("c1", "c2"); err != nil {
		t.Fatal(err)
	}
	eventuallyWithin(t, 20*time.Second, "c1/n1 sees c2 lost through the cache", func() bool {
		st := meshPeer(t, l, "c1/n1", "c2")
		return !st.Connected && !st.CacheConnected && st.CacheLastFailure != ""
	})
	if err := l.Heal("c1", "c2"); err != nil {
		t.Fatal(err)
	}
	eventuallyWithin(t, 30*time.Second, "c1/n1 follows c2 again through the cache", func() bool {
		st := meshPeer(t, l, "c1/n1", "c2")
		return st.Connected && st.CacheConnected && st.Ready && !st.CanaryStale
	})
	after := meshPeer(t, l, "c1/n1", "c2")
	if after.Upserts != before.Upserts || after.Deletes != before.Deletes || after.Withdrawn {
		t.Errorf("across a short partition through the cache: %d upserts, %d deletes before; %d, %d after", before.Upserts, before.Deletes, after.Upserts, after.Deletes)
	}
	if r := rev(); r != rev0 {
		t.Errorf("the cache wrote db's unchanged entry again across the partition (revision %d, then %d)", rev0, r)
	}
	eventually(t, "web reaches db after the heal", func() bool { return reach(t, lab.NetNSPath(web.NetNS), "tcp", db.IP, 5432) })
	out, err := labtest.NodeRun(t, l, "c1/n1", "filament", "clustermesh", "status")
	if err != nil || !strings.Contains(out, "cache") {
		t.Fatalf("clustermesh status: %v\n%s", err, out)
	}
	t.Logf("clustermesh status on c1/n1:\n%s", out)
}

// BenchmarkMeshCachePropagation: from a write of an ipcache entry to c2's
// etcd until it is in the BPF ipcache of c1/n1 (reading c2 through c1's
// apiserver cache) and of c1/n2 (reading c2 directly), both timed for the
// same writes, 200 of them (addresses of a c2 node's pod CIDR, with the
// identity of a pod there): p50 and p99 of each.
func BenchmarkMeshCachePropagation(b *testing.B) {
	const count = 200
	l := cacheLab(b)
	db := labtest.Pod(b, l, "c2/n1", "db", "app=db")
	c2, _ := l.Cluster("c2")
	cli := etcdIn(b, l, *c2, clustermesh.UserAgent)
	defer cli.Close()
	ctx := context.Background()
	r, err := cli.Get(ctx, ipcache.Prefix+"c2/"+db.IP)
	if err != nil || len(r.Kvs) != 1 {
		b.Fatalf("c2's entry of %s: %v", db.IP, err)
	}
	var tmpl ipcache.Entry
	if err := json.Unmarshal(r.Kvs[0].Value, &tmpl); err != nil {
		b.Fatal(err)
	}
	open := func(node string) *ebpf.Map {
		m, err := ebpfLoadPinned(filepath.Join(labtest.PinDir(l, node), "ipcache"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { m.Close() })
		return m
	}
	viaCache, direct := open("c1/n1"), open("c1/n2")
	base := netip.MustParseAddr(db.IP).As4()
	var cacheD, directD []time.Duration
	for i := range count {
		e := tmpl
		// Addresses of db's node (its /24 pod CIDR), none in use.
		e.IP = netip.AddrFrom4([4]byte{base[0], base[1], base[2], byte(50 + i)})
		v, _ := json.Marshal(e)
		start := time.Now()
		if _, err := cli.Put(ctx, ipcache.Prefix+"c2/"+e.IP.String(), string(v)); err != nil {
			b.Fatal(err)
		}
		var gotCache, gotDirect bool
		for !gotCache || !gotDirect {
			if !gotCache && ipcHas(viaCache, e.IP.String(), 32) {
				gotCache = true
				cacheD = append(cacheD, time.Since(start))
			}
			if !gotDirect && ipcHas(direct, e.IP.String(), 32) {
				gotDirect = true
				directD = append(directD, time.Since(start))
			}
			if time.Since(start) > 10*time.Second {
				b.Fatalf("entry %s not in both ipcaches after 10s (cache %v, direct %v)", e.IP, gotCache, gotDirect)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	pct := func(d []time.Duration, p int) float64 {
		slices.Sort(d)
		return float64(d[(len(d)*p+99)/100-1].Microseconds()) / 1000
	}
	b.Logf("%d writes: via cache p50 %.2f ms p99 %.2f ms; direct p50 %.2f ms p99 %.2f ms", count,
		pct(cacheD, 50), pct(cacheD, 99), pct(directD, 50), pct(directD, 99))
	for _, x := range []struct {
		name string
		d    []time.Duration
	}{{"via-cache", cacheD}, {"baseline-direct", directD}} {
		b.Run(x.name, func(b *testing.B) {
			b.ReportMetric(pct(x.d, 50), "p50-ms")
			b.ReportMetric(pct(x.d, 99), "p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}
