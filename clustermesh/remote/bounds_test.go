package remote_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/service"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/apiserver/apiservertest"
	"github.com/filament-net/filament/clustermesh/remote"
)

// A remote's keys and values are bounded in bytes, not only in count:
// until 2026-12-07 a remote's node records under keys that are no node's
// name (refused, but kept whole to be vetted again when a revocation list
// changed), its records and identities of any size, and keys of any
// length were all held by every agent of the mesh.
func TestRemoteHoldsBoundedBytes(t *testing.T) {
	defer remote.SetByteBudget(40 << 10)()
	srv := apiservertest.Start(t, "east", 7)
	kv := srv.Agent
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Records under keys that are no node's name (their bytes count, a
	// kilobyte in all).
	for i := range 20 {
		kv.Put(ctx, fmt.Sprintf("%seast/X_%d", node.NodesPrefix, i), []byte(`{"name":"X"}`), 0)
	}
	// A key longer than any a remote's agents write, and a node record
	// over a record's bound.
	kv.Put(ctx, node.NodesPrefix+"east/"+strings.Repeat("n", clustermesh.MaxRemoteKey), []byte(`{}`), 0)
	huge, _ := json.Marshal(node.Node{Name: "big", Cluster: "east", IPs: []string{"172.30.7.9"}, PodCIDRs: []string{"10.7.9.0/24"},
		Labels: map[string]string{"pad": strings.Repeat("z", clustermesh.MaxRemoteNodeValue)}})
	kv.Put(ctx, node.NodesPrefix+"east/big", huge, 0)
	// Identities of 12.5 KiB: three fit the budget of 40 KiB with the
	// records above, the other two do not.
	for i := range 5 {
		var ls []string
		for j := range 400 {
			ls = append(ls, fmt.Sprintf("k8s:pad%03d=%s", j, strings.Repeat("v", 20)))
		}
		ls = append(ls, "k8s:filament.io/cluster=east")
		kv.Put(ctx, fmt.Sprintf("%s%d", identity.IDPrefix, identity.Compose(7, uint32(300+i))), []byte(strings.Join(ls, ";")), 0)
	}
	dir := t.TempDir()
	m := quietManager(dir)
	go m.Run(ctx)
	srv.WriteRemoteConfig(t, dir)
	st := waitReady(t, m)
	if n := remote.RawNodes(m, "east"); n != 0 {
		t.Errorf("%d node records held as read, want none (none is under a node's name and within its bound)", n)
	}
	if st.Nodes != 0 {
		t.Errorf("%d nodes taken, want none", st.Nodes)
	}
	if st.Identities != 3 {
		t.Errorf("%d identities of 12 KiB taken, want 3 (a budget of 40 KiB)", st.Identities)
	}
	if st.Rejected < 2+2 {
		t.Errorf("%d refusals counted, want at least 4 (the long key, the big record, two identities)", st.Rejected)
	}
}

// A remote whose cluster-config names a cluster ID out of range is
// refused: until 2026-12-07 an ID of 0 (which stands for no claim) was
// taken whenever every other remote held one.
func TestRemoteClusterIDOutOfRangeRefused(t *testing.T) {
	for _, id := range []uint32{0, identity.ClusterIDMax + 1} {
		t.Run(fmt.Sprint(id), func(t *testing.T) {
			srv := apiservertest.Start(t, "east", 7)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			root := srv.Root(t)
			b, _ := json.Marshal(clustermesh.ClusterConfig{Name: "east", ID: id})
			if err := root.Put(ctx, clustermesh.ClusterConfigPrefix+"east", b, 0); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			m := quietManager(dir)
			go m.Run(ctx)
			srv.WriteRemoteConfig(t, dir)
			deadline := time.Now().Add(10 * time.Second)
			for {
				all := m.Status()
				if len(all) == 1 && all[0].Ready {
					t.Fatalf("east with cluster ID %d taken: %+v", id, all[0])
				}
				if len(all) == 1 && strings.Contains(all[0].LastFailure, "cluster ID") {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("east with cluster ID %d: %+v, want refused naming the cluster ID", id, all)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// A remote's keys that an agent refuses are not remembered by its
// watches: until 2026-12-07 every key a remote wrote under a watched
// prefix (node records past the byte budget, keys under the heartbeat's
// and the revocation list's names) stayed in the watch's set of keys to
// report its deletion after a resync, with no bound on their number.
//
// Nor is each refusal logged: until 2026-12-07 every refused key was a
// warning in every agent's log, as often as the remote wrote one.
func TestRemoteRefusedKeysNotRemembered(t *testing.T) {
	defer remote.SetByteBudget(1 << 10)()
	srv := apiservertest.Start(t, "east", 7)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	root := srv.Root(t)
	const n = 2000
	apiservertest.PutEmpty(t, root, n, func(i int) string { return fmt.Sprintf("%seast/x%d", node.NodesPrefix, i) })
	apiservertest.PutEmpty(t, root, n, func(i int) string { return fmt.Sprintf("%sjunk%d", clustermesh.HeartbeatKey("east"), i) })
	apiservertest.PutEmpty(t, root, n, func(i int) string { return fmt.Sprintf("%seastjunk%d", node.CRLPrefix, i) })
	before := kvstore.TrackedKeys()
	warnings := apiservertest.CountWarnings(t)
	dir := t.TempDir()
	m := quietManager(dir)
	go m.Run(ctx)
	srv.WriteRemoteConfig(t, dir)
	st := waitReady(t, m)
	if d := kvstore.TrackedKeys() - before; d > n/4 {
		t.Errorf("the agent's watches remember %d keys of east's, which wrote %d keys of little bytes under each of three prefixes (a budget of 1 KiB)", d, n)
	}
	// Each refusal is counted, and logged up to a rate.
	if st.Rejected < n-50 {
		t.Errorf("%d refusals counted, want about %d", st.Rejected, n)
	}
	if w := warnings(); w > 100 {
		t.Errorf("%d warnings logged for %d refused keys, want at most 100 (a burst, then one a second)", w, st.Rejected)
	}
}

// waitReady waits up to 20 s for m's one remote to be ready, and returns
// its status.
func waitReady(t *testing.T, m *remote.Manager) remote.Status {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if all := m.Status(); len(all) == 1 && all[0].Ready {
			return all[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %+v", m.Status())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// quietManager is a manager of the cluster "local" (ID 1) reading the
// remotes configured in dir, whose callbacks do nothing.
func quietManager(dir string) *remote.Manager {
	return remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node: func(node.Node, bool) {}, Identity: func(identity.Identity, bool) {},
		Entry: func(ipcache.Entry, bool) {}, Service: func(string, *service.Service, bool) {},
	})
}
