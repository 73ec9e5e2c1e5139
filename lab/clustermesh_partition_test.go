package lab_test

import (
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/clustermesh/remote"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// meshPeer is the status on node `on` of remote cluster peer.
func meshPeer(t *testing.T, l *lab.Lab, on, peer string) remote.Status {
	t.Helper()
	for _, st := range meshStatus(t, l, on) {
		if st.Name == peer {
			return st
		}
	}
	t.Fatalf("%s does not list remote cluster %s", on, peer)
	return remote.Status{}
}

// held is what a node holds of a remote cluster, as one count.
func held(st remote.Status) int { return st.Nodes + st.Identities + st.Endpoints + st.Services }

// ipcacheWatch checks every 100 ms, until stop, that a node's pinned BPF
// ipcache holds ip, and counts the rounds it did not.
type ipcacheWatch struct {
	mu             sync.Mutex
	rounds, misses int
	stop, done     chan struct{}
}

func watchIPCache(t *testing.T, l *lab.Lab, node, ip string) *ipcacheWatch {
	t.Helper()
	m, err := ebpfLoadPinned(filepath.Join(labtest.PinDir(l, node), "ipcache"))
	if err != nil {
		t.Fatal(err)
	}
	w := &ipcacheWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer m.Close()
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ok := ipcHas(m, ip, 32)
			w.mu.Lock()
			w.rounds++
			if !ok {
				w.misses++
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *ipcacheWatch) finish() (rounds, misses int) {
	close(w.stop)
	<-w.done
	return w.rounds, w.misses
}

// Two clusters partitioned (the router between their underlays drops
// everything both ways) with --clustermesh-ttl 20s. Shorter than the TTL:
// each side sees the other lost, keeps every entry (no change passed on, no
// policy map write, the remote pod never leaves the BPF ipcache) and an
// established TCP connection across the partition carries data again after
// the heal. Longer: the remote cluster is withdrawn after the TTL and a
// global service preferring it fails over to the local backend; healed, it
// is back once (each entry re-added once, the service with one backend per
// cluster) and clients return to it.
func TestClusterMeshPartition(t *testing.T) {
	const ttl = 20 * time.Second
	l := labtest.UpClusters(t, 2, 1, "tunnel", "--clustermesh-ttl", ttl.String())
	client := labtest.Pod(t, l, "c1/n1", "client")
	web1 := labtest.Pod(t, l, "c1/n1", "api-c1", "app=api")
	web2 := labtest.Pod(t, l, "c2/n1", "api-c2", "app=api")
	labtest.ServeName(t, lab.NetNSPath(web1.NetNS), 8080, "c1")
	labtest.ServeName(t, lab.NetNSPath(web2.NetNS), 8080, "c2")
	connect(t, l, "c1/n1", "c2")
	const global = `service.cilium.io/global: "true"`
	labtest.MustUpsertService(t, l, "c2/n1", globalDoc(global, web2.IP, "n1"))
	labtest.MustUpsertService(t, l, "c1/n1", globalDoc(global+`, service.cilium.io/affinity: remote`, web1.IP, "n1"))
	path := lab.NetNSPath(client.NetNS)
	const vip = "10.96.0.20:80"
	allFrom := func(cluster string) func() bool {
		return func() bool { return labtest.Tally(path, vip, 10)[cluster] == 10 }
	}
	eventuallyWithin(t, 30*time.Second, "c1's clients prefer c2's backend", allFrom("c2"))
	// One backend per cluster, c2's preferred.
	oneEach := func() bool {
		ss := labtest.Services(t, l, "c1/n1")
		return len(ss) == 1 && len(ss[0].Clusters) == 2 && len(ss[0].Frontends[0].Backends) == 2 && preferredClusters(ss[0])["c2"] == 1
	}
	if !oneEach() {
		t.Fatalf("c1's service before the partitions: %+v", labtest.Services(t, l, "c1/n1"))
	}
	synced := func(on, peer string) func() bool {
		return func() bool {
			st := meshPeer(t, l, on, peer)
			ok := st.Connected && st.Ready && !st.Withdrawn && st.HeartbeatAge != "" && !st.CanaryStale && st.TTL == ttl.String()
			if !ok {
				t.Logf("%s on %s: %+v", on, peer, st)
			}
			return ok
		}
	}
	eventually(t, "c1 follows c2", synced("c1/n1", "c2"))
	eventually(t, "c2 follows c1", synced("c2/n1", "c1"))

	// An established connection from c1's client to c2's pod, written to
	// every 5 ms; a write may wait up to 45 s.
	stream := startStream(t, lab.NetNSPath(web2.NetNS), path, web2.IP, 9000, 5*time.Second, 45*time.Second)
	stream.grows(t, "before the partition")

	before := map[string]remote.Status{"c1/n1": meshPeer(t, l, "c1/n1", "c2"), "c2/n1": meshPeer(t, l, "c2/n1", "c1")}
	writes := map[string]float64{}
	for on := range before {
		writes[on] = metric(t, l, on, "filament_policy_map_writes_total", "")
	}
	ipc := watchIPCache(t, l, "c1/n1", web2.IP)

	// Short: partitioned (through the CLI) until both sides see the loss,
	// then 2 s more, well inside the TTL (which starts when the heartbeat,
	// too, is stale).
	if out, err := labtest.LabCLI(t, "partition", "--name", l.Name, "c1", "c2"); err != nil {
		t.Fatalf("filament-lab partition: %v %s", err, out)
	}
	cut := time.Now()
	for on, peer := range map[string]string{"c1/n1": "c2", "c2/n1": "c1"} {
		eventuallyWithin(t, 20*time.Second, on+" sees "+peer+" lost", func() bool {
			st := meshPeer(t, l, on, peer)
			return !st.Connected && !st.LostSince.IsZero()
		})
	}
	t.Logf("both sides saw the loss %v after the cut", time.Since(cut).Round(10*time.Millisecond))
	time.Sleep(2 * time.Second)
	st := meshPeer(t, l, "c1/n1", "c2")
	if left, err := time.ParseDuration(st.TTLLeft); st.Withdrawn || err != nil || left <= 0 {
		t.Fatalf("c1 during the short partition: %+v", st)
	}
	t.Logf("c1 on c2 during the short partition: heartbeat %s (stale %v), TTL left %s", st.HeartbeatAge, st.CanaryStale, st.TTLLeft)
	if out, err := labtest.LabCLI(t, "heal", "--name", l.Name, "c1", "c2"); err != nil {
		t.Fatalf("filament-lab heal: %v %s", err, out)
	}
	t.Logf("healed %v after the cut", time.Since(cut).Round(10*time.Millisecond))
	eventuallyWithin(t, 30*time.Second, "c1 follows c2 again", synced("c1/n1", "c2"))
	eventuallyWithin(t, 30*time.Second, "c2 follows c1 again", synced("c2/n1", "c1"))
	stream.grows(t, "after the short partition")
	if rounds, misses := ipc.finish(); misses > 0 || rounds == 0 {
		t.Errorf("c1/n1's BPF ipcache lacked c2's pod %s in %d of %d rounds across the short partition", web2.IP, misses, rounds)
	}
	for on, b := range before {
		peer := "c2"
		if on == "c2/n1" {
			peer = "c1"
		}
		a := meshPeer(t, l, on, peer)
		if a.Upserts != b.Upserts || a.Deletes != b.Deletes || held(a) != held(b) || a.Withdrawn {
			t.Errorf("%s: %s's changes passed on went from %d upserts, %d deletes (%d held) to %d, %d (%d held) across a partition shorter than the TTL",
				on, peer, b.Upserts, b.Deletes, held(b), a.Upserts, a.Deletes, held(a))
		}
		if w := metric(t, l, on, "filament_policy_map_writes_total", ""); w != writes[on] {
			t.Errorf("%s: policy map writes went from %v to %v across the short partition", on, writes[on], w)
		}
	}
	if !oneEach() {
		t.Fatalf("c1's service after the short partition: %+v", labtest.Services(t, l, "c1/n1"))
	}
	if werr, serr := stream.finish(); werr != nil || serr != nil {
		t.Fatalf("the established connection across the short partition: write %v, server %v", werr, serr)
	}

	// Long: withdrawn once the TTL has run, after the loss and the stale
	// heartbeat; c1's clients fail over to their local backend.
	b := meshPeer(t, l, "c1/n1", "c2")
	if err := l.Partition("c1", "c2"); err != nil {
		t.Fatal(err)
	}
	cut = time.Now()
	eventuallyWithin(t, ttl+40*time.Second, "c1 withdraws c2", func() bool { return meshPeer(t, l, "c1/n1", "c2").Withdrawn })
	took := time.Since(cut)
	t.Logf("c1 withdrew c2 %v after the cut", took.Round(10*time.Millisecond))
	if took < ttl {
		t.Fatalf("c2 withdrawn %v after the cut, before the TTL (%v)", took, ttl)
	}
	w := meshPeer(t, l, "c1/n1", "c2")
	if held(w) != 0 || w.Deletes-b.Deletes != held(b) {
		t.Fatalf("c1 after withdrawing c2: %+v (held %d before)", w, held(b))
	}
	eventuallyWithin(t, 20*time.Second, "c1's clients fail over to c1", allFrom("c1"))
	ss := labtest.Services(t, l, "c1/n1")
	if len(ss) != 1 || len(ss[0].Clusters) != 1 || len(ss[0].Frontends[0].Backends) != 1 {
		t.Fatalf("c1's service with c2 withdrawn: %+v", ss)
	}
	eventuallyWithin(t, 20*time.Second, "c2 withdraws c1", func() bool { return meshPeer(t, l, "c2/n1", "c1").Withdrawn })

	// Healed: back once.
	if err := l.Heal("c1", "c2"); err != nil {
		t.Fatal(err)
	}
	eventuallyWithin(t, 40*time.Second, "c1 follows c2 after the heal", func() bool {
		st := meshPeer(t, l, "c1/n1", "c2")
		return st.Connected && st.Ready && !st.Withdrawn && held(st) == held(b)
	})
	eventuallyWithin(t, 30*time.Second, "c1's clients back on c2", allFrom("c2"))
	a := meshPeer(t, l, "c1/n1", "c2")
	if a.Upserts-w.Upserts != held(b) || a.Deletes != w.Deletes {
		t.Errorf("the heal passed on %d upserts and %d deletes, want each of the %d entries added once and none deleted",
			a.Upserts-w.Upserts, a.Deletes-w.Deletes, held(b))
	}
	if !oneEach() {
		t.Fatalf("c1's service after the heal (one backend per cluster): %+v", labtest.Services(t, l, "c1/n1"))
	}
	eventuallyWithin(t, 40*time.Second, "c2 follows c1 after the heal", synced("c2/n1", "c1"))
	out, err := labtest.NodeRun(t, l, "c1/n1", "filament", "clustermesh", "status")
	if err != nil || !strings.Contains(out, "HEARTBEAT") || !strings.Contains(out, ttl.String()) {
		t.Fatalf("clustermesh status: %v\n%s", err, out)
	}
	t.Logf("clustermesh status on c1/n1:\n%s", out)
}
