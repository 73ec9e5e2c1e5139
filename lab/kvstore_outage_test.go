package lab_test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// The cluster's kvstore restarts after an outage shorter than the lease TTL
// (issue 13 item 10): cross-node connections never fail, no remote ipcache
// entry leaves the datapath, the agents report the kvstore healthy again and
// keep their leases, and their entries in etcd survive.
func TestKvstoreOutageKeepsLeasesAndEntries(t *testing.T) {
	l := labtest.UpRouting(t, 2, "tunnel")
	a, b := echoPods(t, l)

	cluster := l.Clusters[0]
	leases := map[string]string{}
	for _, n := range []string{"n1", "n2"} {
		st := agentStatus(t, l, n)
		if !st.Kvstore.Healthy || st.Kvstore.LeaseID == "" {
			t.Fatalf("%s before the outage: kvstore %+v", n, st.Kvstore)
		}
		leases[n] = st.Kvstore.LeaseID
	}
	before := etcdIPEntries(t, l, cluster)
	for _, p := range []*lab.Pod{a, b} {
		if _, ok := before[p.IP]; !ok {
			t.Fatalf("pod %s (%s) has no ipcache entry in etcd: %v", p.Name, p.IP, before)
		}
	}

	// Probe continuously: a new single-attempt TCP connection each way and
	// a look at each node's pinned ipcache map every 100 ms.
	probe := startProbes(t, l, a, b)

	if err := l.StopKvstore(cluster.Name); err != nil {
		t.Fatal(err)
	}
	// Down for 12 s, shorter than the agents' 15 s lease TTL but long enough
	// for gRPC's default reconnect backoff to grow past several seconds and
	// for the etcd client's own keep-alive deadline to pass.
	time.Sleep(12 * time.Second)
	if err := l.StartKvstore(cluster.Name); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	for _, n := range []string{"n1", "n2"} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err := statusOnce(l, n)
			if err == nil && st.Kvstore.Healthy {
				t.Logf("%s: kvstore healthy again %v after it was back", n, time.Since(back).Round(10*time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: kvstore not healthy within 10 s of its restart: %+v %v", n, st.Kvstore, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Go on probing past the point where a lost lease would have expired.
	time.Sleep(10 * time.Second)
	probe.finish(t)

	for _, n := range []string{"n1", "n2"} {
		if st := agentStatus(t, l, n); st.Kvstore.LeaseID != leases[n] {
			t.Errorf("%s: lease %s before the outage, %s after (it was granted again)", n, leases[n], st.Kvstore.LeaseID)
		}
	}
	after := etcdIPEntries(t, l, cluster)
	for ip, kv := range before {
		got, ok := after[ip]
		if !ok {
			t.Errorf("ipcache entry %s vanished from etcd", ip)
		} else if got.Lease != kv.Lease || got.CreateRevision != kv.CreateRevision {
			t.Errorf("ipcache entry %s was written again: lease %x rev %d before, lease %x rev %d after", ip, kv.Lease, kv.CreateRevision, got.Lease, got.CreateRevision)
		}
	}
}

// echoPods starts pod a on n1 and b on n2, each with an echo server on
// port 7000, and waits until they reach each other.
func echoPods(t *testing.T, l *lab.Lab) (a, b *lab.Pod) {
	t.Helper()
	a = labtest.Pod(t, l, "n1", "a", "app=a")
	b = labtest.Pod(t, l, "n2", "b", "app=b")
	serve(t, lab.NetNSPath(a.NetNS), 7000)
	serve(t, lab.NetNSPath(b.NetNS), 7000)
	eventually(t, "a reaches b", func() bool { return reach(t, lab.NetNSPath(a.NetNS), "tcp", b.IP, 7000) })
	eventually(t, "b reaches a", func() bool { return reach(t, lab.NetNSPath(b.NetNS), "tcp", a.IP, 7000) })
	return a, b
}

func statusOnce(l *lab.Lab, node string) (types.Status, error) {
	n, err := l.Node(node)
	if err != nil {
		return types.Status{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return client.New(n.Socket).Status(ctx)
}

func agentStatus(t *testing.T, l *lab.Lab, node string) types.Status {
	t.Helper()
	st, err := statusOnce(l, node)
	if err != nil {
		t.Fatalf("status of %s: %v", node, err)
	}
	return st
}

// connectOnce opens one TCP connection from the namespace at path, with no
// retry, and checks the echo server answers.
func connectOnce(path, ip string, port int) error {
	return ns.WithNetNSPath(path, func(ns.NetNS) error {
		// 2 s: a SYN or segment lost once is sent again after 1 s, and a
		// busy machine may stall the echo server for a moment; a path the
		// datapath breaks fails every attempt.
		c, err := net.DialTimeout("tcp4", fmt.Sprintf("%s:%d", ip, port), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		if _, err := c.Read(buf); err != nil {
			return err
		}
		return nil
	})
}

// etcdIPEntries lists the cluster's ipcache entries straight from its etcd,
// dialling from inside the kvstore's namespace, by IP.
func etcdIPEntries(t *testing.T, l *lab.Lab, c lab.Cluster) map[string]kvstore.KeyValue {
	t.Helper()
	cli := etcdIn(t, l, c, clustermesh.UserAgent)
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	prefix := ipcache.Prefix + c.Name + "/"
	r, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("list %s: %v", prefix, err)
	}
	out := map[string]kvstore.KeyValue{}
	for _, kv := range r.Kvs {
		out[strings.TrimPrefix(string(kv.Key), prefix)] = kvstore.KeyValue{Key: string(kv.Key), Value: kv.Value,
			CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Lease: kv.Lease}
	}
	return out
}

// One agent cut off from the kvstore for longer than its lease TTL while
// failure detection still reaches it: its lease ends in etcd, but the other
// node keeps its record and entries (no cross-node connection fails), and
// once back it writes them again under a new lease.
func TestKvstorePartitionedAgentKeepsItsPodsReachable(t *testing.T) {
	l := labtest.UpRouting(t, 2, "tunnel", "--lease-ttl", "5s")
	a, b := echoPods(t, l)
	cluster := l.Clusters[0]
	lease := agentStatus(t, l, "n2").Kvstore.LeaseID

	probe := startProbes(t, l, a, b)
	n2, _ := l.Node("n2")
	kvHost := strings.TrimPrefix(cluster.Kvstore, "https://")
	kvIP := kvHost[:strings.LastIndex(kvHost, ":")]
	cut := func(op string) error {
		out, err := exec.Command("ip", "-n", n2.NetNS, "route", op, "blackhole", kvIP+"/32").CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip route %s blackhole %s in %s: %v %s", op, kvIP, n2.NetNS, err, out)
		}
		return nil
	}
	if err := cut("add"); err != nil {
		t.Fatal(err)
	}
	cutOn := true
	t.Cleanup(func() {
		if cutOn {
			cut("del")
		}
	})
	// Until n2's lease is gone from etcd (its entry vanishes), then a while.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, ok := etcdIPEntries(t, l, cluster)[b.IP]; !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("n2's entry still in etcd 30 s after it was cut off (lease TTL 5 s)")
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	if err := cut("del"); err != nil {
		t.Fatal(err)
	}
	cutOn = false
	eventually(t, "n2 writes its entry again under a new lease", func() bool {
		kv, ok := etcdIPEntries(t, l, cluster)[b.IP]
		st, err := statusOnce(l, "n2")
		return ok && err == nil && st.Kvstore.Healthy && st.Kvstore.LeaseID != lease && fmt.Sprintf("%x", kv.Lease) == st.Kvstore.LeaseID
	})
	time.Sleep(2 * time.Second)
	probe.finish(t)
}

// probes checks every 100 ms, until finish, that each node's pinned
// ipcache has the other's pod and that one new TCP connection each way
// works (single attempts, no retry).
type probes struct {
	mu       sync.Mutex
	failures []string
	rounds   int
	stop     chan struct{}
	done     chan struct{}
}

func startProbes(t *testing.T, l *lab.Lab, a, b *lab.Pod) *probes {
	t.Helper()
	ipc1, err := ebpfLoadPinned(filepath.Join(labtest.PinDir(l, a.Node), "ipcache"))
	if err != nil {
		t.Fatal(err)
	}
	ipc2, err := ebpfLoadPinned(filepath.Join(labtest.PinDir(l, b.Node), "ipcache"))
	if err != nil {
		ipc1.Close()
		t.Fatal(err)
	}
	p := &probes{stop: make(chan struct{}), done: make(chan struct{})}
	fail := func(format string, args ...any) {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.failures = append(p.failures, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
	}
	go func() {
		defer close(p.done)
		defer ipc1.Close()
		defer ipc2.Close()
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			p.mu.Lock()
			p.rounds++
			p.mu.Unlock()
			if !ipcHas(ipc1, b.IP, 32) {
				fail("%s's ipcache lost %s (pod %s on %s)", a.Node, b.IP, b.Name, b.Node)
			}
			if !ipcHas(ipc2, a.IP, 32) {
				fail("%s's ipcache lost %s (pod %s on %s)", b.Node, a.IP, a.Name, a.Node)
			}
			if err := connectOnce(lab.NetNSPath(a.NetNS), b.IP, 7000); err != nil {
				fail("%s -> %s: %v", a.Name, b.Name, err)
			}
			if err := connectOnce(lab.NetNSPath(b.NetNS), a.IP, 7000); err != nil {
				fail("%s -> %s: %v", b.Name, a.Name, err)
			}
		}
	}()
	return p
}

// finish stops the probes and fails t if any failed.
func (p *probes) finish(t *testing.T) {
	t.Helper()
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	t.Logf("%d probe rounds", p.rounds)
	if len(p.failures) > 0 {
		t.Errorf("%d failed probes, first ones:\n%s", len(p.failures), strings.Join(p.failures[:min(len(p.failures), 10)], "\n"))
	}
}
