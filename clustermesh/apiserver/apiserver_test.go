package apiserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/kvstore/embedded"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/apiserver"
	"github.com/filament-net/filament/clustermesh/apiserver/apiservertest"
	"github.com/filament-net/filament/internal/testutil"
)

// The cluster's agents read and write; a remote cluster's credentials read
// state and cluster-config and can write nothing; another CA is refused.
func TestAuthAndClusterConfig(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	bundle, ep := srv.Bundle, srv.Endpoint
	ctx := context.Background()
	agent := srv.Agent
	if err := agent.Put(ctx, "filament/state/nodes/v1/east/n1", []byte("{}"), 0); err != nil {
		t.Fatalf("agent write: %v", err)
	}
	cfg, err := agent.Get(ctx, clustermesh.ClusterConfigPrefix+"east")
	var cc clustermesh.ClusterConfig
	if err != nil || json.Unmarshal(cfg.Value, &cc) != nil || cc.Name != "east" || cc.ID != 7 || cfg.Lease == 0 {
		t.Fatalf("cluster-config: %+v %v", cfg, err)
	}
	for _, c := range clustermesh.Canaries {
		if _, err := agent.Get(ctx, clustermesh.SyncedPrefix+"east/"+c); err != nil {
			t.Fatalf("canary %s: %v", c, err)
		}
	}
	remote, err := srv.Connect(clustermesh.UserRemote)
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	if _, err := remote.Get(ctx, "filament/state/nodes/v1/east/n1"); err != nil {
		t.Fatalf("remote read of state: %v", err)
	}
	if _, err := remote.Get(ctx, clustermesh.ClusterConfigPrefix+"east"); err != nil {
		t.Fatalf("remote read of cluster-config: %v", err)
	}
	for _, key := range []string{"filament/state/nodes/v1/east/evil", "filament/cluster-config/east", "filament/other"} {
		err := remote.Put(ctx, key, []byte("x"), 0)
		if err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("remote write of %s: %v, want permission denied", key, err)
		}
	}
	if err := remote.Delete(ctx, "filament/state/nodes/v1/east/n1"); err == nil {
		t.Error("remote delete succeeded")
	}
	if _, err := remote.Get(ctx, "filament/other"); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("remote read outside state: %v", err)
	}
	// Nor the state remotes do not follow: this cluster's policies, cloud
	// group results, pod CIDR leases, identity references (until
	// 2026-12-05 the remote user read all of filament/state/).
	for _, key := range []string{"filament/state/policies/v1/east/default/p", "filament/state/groups/v1/east/results/x",
		"filament/state/podcidrs/v1/east/10.0.0.0_24", "filament/state/identities/v1/value/x/n1"} {
		if err := agent.Put(ctx, key, []byte("{}"), 0); err != nil {
			t.Fatalf("agent write of %s: %v", key, err)
		}
		if _, err := remote.Get(ctx, key); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("remote read of %s: %v, want permission denied", key, err)
		}
	}
	for _, key := range []string{"filament/state/identities/v1/id/70000", "filament/state/ip/v1/east/10.0.0.5",
		"filament/state/services/v1/east/default/s", "filament/state/node-crl/v1/east"} {
		if err := agent.Put(ctx, key, []byte("{}"), 0); err != nil {
			t.Fatalf("agent write of %s: %v", key, err)
		}
		if _, err := remote.Get(ctx, key); err != nil {
			t.Errorf("remote read of %s: %v", key, err)
		}
	}
	// Credentials issued by another cluster's CA are refused.
	other := t.TempDir()
	if _, err := clustermesh.Enable(other, "west", 8, nil); err != nil {
		t.Fatal(err)
	}
	c, err := kvstore.Connect(ctx, kvstore.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second,
		CAFile: filepath.Join(bundle, "ca.pem"), CertFile: filepath.Join(other, "remote.pem"), KeyFile: filepath.Join(other, "remote-key.pem")})
	if err == nil {
		c.Close()
		t.Fatal("a certificate from another CA was accepted")
	}
	// And a server from another CA is refused by the client.
	c, err = kvstore.Connect(ctx, kvstore.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second,
		CAFile: filepath.Join(other, "ca.pem"), CertFile: filepath.Join(bundle, "remote.pem"), KeyFile: filepath.Join(bundle, "remote-key.pem")})
	if err == nil {
		c.Close()
		t.Fatal("a server from another CA was trusted")
	}
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong-CA error does not say why: %v", err)
	}
}

func TestConnectExchangesConfigs(t *testing.T) {
	a, b, c := t.TempDir(), t.TempDir(), t.TempDir()
	clustermesh.Enable(a, "a", 1, []net.IP{net.ParseIP("10.0.0.1")})
	clustermesh.Enable(b, "b", 2, nil)
	clustermesh.Enable(c, "c", 1, nil)
	if _, _, err := clustermesh.Connect(a, b); err != nil {
		t.Fatal(err)
	}
	ra, err := clustermesh.LoadRemote(filepath.Join(clustermesh.RemotesDir(b), "a.yaml"))
	if err != nil || ra.Endpoints[0] != "https://10.0.0.1:2379" {
		t.Fatalf("b's config for a: %+v %v", ra, err)
	}
	if _, err := clustermesh.LoadRemote(filepath.Join(clustermesh.RemotesDir(a), "b.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := clustermesh.Connect(a, c); !errors.Is(err, clustermesh.ErrInvalid) || !strings.Contains(err.Error(), "ID 1") {
		t.Fatalf("connecting two clusters with ID 1: %v", err)
	}
	if err := clustermesh.Disconnect(a, b); err != nil {
		t.Fatal(err)
	}
	if _, err := clustermesh.LoadRemote(filepath.Join(clustermesh.RemotesDir(a), "b.yaml")); err == nil {
		t.Fatal("config left after disconnect")
	}
	// A peers file that is not a name and a token a line is refused,
	// naming the file and line, and nothing is half-connected.
	if err := os.WriteFile(clustermesh.PeersFile(a), []byte("b 0123456789abcdef\nc nottoken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := clustermesh.Connect(a, b); !errors.Is(err, clustermesh.ErrInvalid) || !strings.Contains(err.Error(), "remote-peers line 2") {
		t.Fatalf("connect with a bad peers file: %v", err)
	}
	if _, err := clustermesh.LoadRemote(filepath.Join(clustermesh.RemotesDir(a), "b.yaml")); err == nil {
		t.Fatal("connect with a bad peers file wrote a config")
	}
	for u, want := range map[string]bool{"remote-b-0123456789abcdef": true, "remote-my-cluster-0123456789abcdef": true,
		"remote": false, "remote-b": false, "remote-b-0123": false, "remote--0123456789abcdef": false, "agent": false} {
		if clustermesh.IsPeerUser(u) != want {
			t.Errorf("IsPeerUser(%q) = %v", u, !want)
		}
	}
	if err := clustermesh.ValidateCluster("Bad_Name", 1); err == nil {
		t.Fatal("bad name accepted")
	}
	if err := clustermesh.ValidateCluster("ok", 256); err == nil {
		t.Fatal("ID 256 accepted")
	}
}

// With --etcd-endpoints the apiserver uses an external etcd cluster instead
// of its embedded one and writes the cluster-config and canaries there.
func TestExternalEtcd(t *testing.T) {
	ep := testutil.Etcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- apiserver.Run(ctx, apiserver.Config{ClusterName: "ext", ClusterID: 3, EtcdEndpoints: ep})
	}()
	defer func() { cancel(); <-done }()
	kv := testutil.Connect(t, ep)
	deadline := time.Now().Add(10 * time.Second)
	for {
		kvv, err := kv.Get(context.Background(), clustermesh.ClusterConfigPrefix+"ext")
		if err == nil {
			var cc clustermesh.ClusterConfig
			if json.Unmarshal(kvv.Value, &cc) != nil || cc.ID != 3 {
				t.Fatalf("cluster-config %s", kvv.Value)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cluster-config in the external etcd: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The canaries follow the cluster-config.
	for {
		_, err := kv.Get(context.Background(), clustermesh.SyncedPrefix+"ext/ip")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A bad cluster ID is refused before anything is written.
	err := apiserver.Run(context.Background(), apiserver.Config{ClusterName: "bad", ClusterID: 300, EtcdEndpoints: ep})
	if !errors.Is(err, clustermesh.ErrInvalid) || !strings.Contains(err.Error(), "300") {
		t.Fatalf("cluster ID 300: %v", err)
	}
	// So is a quota, which is for the embedded etcd only.
	err = apiserver.Run(context.Background(), apiserver.Config{ClusterName: "q", ClusterID: 4, EtcdEndpoints: ep, EtcdQuotaBytes: 4 << 30})
	if !errors.Is(err, embedded.ErrQuota) {
		t.Fatalf("a quota with an external etcd: %v", err)
	}
	if _, err := kv.Get(context.Background(), clustermesh.ClusterConfigPrefix+"q"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("cluster-config of a refused apiserver: %v", err)
	}
}

// The apiserver writes the heartbeat every interval, readable by remote
// clusters; restarted, it goes on from the stored number (a reader sees a
// new value at once, never an old one again).
func TestHeartbeat(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	ctx := context.Background()
	remote, err := srv.Connect(clustermesh.UserRemote)
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	read := func() uint64 {
		t.Helper()
		kv, err := remote.Get(ctx, clustermesh.HeartbeatKey("east"))
		if err != nil {
			t.Fatalf("remote read of the heartbeat: %v", err)
		}
		seq, err := clustermesh.ParseHeartbeat(kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	first := read()
	deadline := time.Now().Add(3 * clustermesh.HeartbeatInterval)
	for read() == first {
		if time.Now().After(deadline) {
			t.Fatalf("heartbeat stuck at %d for %v", first, 3*clustermesh.HeartbeatInterval)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A restart on the same data goes on from the stored number.
	last := read()
	remote.Close()
	srv.Restart(t)
	if remote, err = srv.Connect(clustermesh.UserRemote); err != nil {
		t.Fatal(err)
	}
	if got := read(); got <= last {
		t.Fatalf("heartbeat %d after a restart, %d before", got, last)
	}
}

// Agents may read the cache (filament/cache/) but not write it, and keep
// every other key of filament/; an apiserver that gave them the whole of
// filament/ before is set right by a restart.
func TestAgentsReadOnlyCache(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	ctx := context.Background()
	root, err := srv.Connect(clustermesh.UserRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	// The grant of earlier versions.
	if _, err := root.Raw().RoleGrantPermission(ctx, clustermesh.UserAgent, kvstore.Prefix, clientv3.GetPrefixRangeEnd(kvstore.Prefix),
		clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		t.Fatal(err)
	}
	root.Close()
	srv.Restart(t)
	if root, err = srv.Connect(clustermesh.UserRoot); err != nil {
		t.Fatal(err)
	}
	cached := clustermesh.CachePrefix + "west/filament/state/ip/v1/west/10.2.0.2"
	if err := root.Put(ctx, cached, []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	agent := srv.Agent
	if _, err := agent.Get(ctx, cached); err != nil {
		t.Fatalf("agent read of the cache: %v", err)
	}
	for _, key := range []string{cached, clustermesh.CachePrefix + "x", clustermesh.CacheStatusKey("west")} {
		if err := agent.Put(ctx, key, []byte("x"), 0); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("agent write of %s: %v, want permission denied", key, err)
		}
	}
	if err := agent.Delete(ctx, cached); err == nil {
		t.Error("agent delete in the cache succeeded")
	}
	for _, key := range []string{"filament/state/ip/v1/east/10.7.0.2", "filament/cache", "filament/cachez", "filament/z"} {
		if err := agent.Put(ctx, key, []byte("{}"), 0); err != nil {
			t.Errorf("agent write of %s: %v", key, err)
		}
	}
}

// A cluster disconnected from this one loses its read access within
// seconds: each connected cluster reads with a certificate of its own
// (etcd user remote-<its name>), the apiserver follows the bundle's list
// of peers, deletes a gone peer's user and ends its open watches (etcd
// checks a watch's permission only when it is made). Found 2026-12-06 as
// listed in docs/architecture.md: every peer was handed the same remote
// certificate, so a disconnected cluster (or anyone who once held its
// remotes/) kept reading this one's nodes, identities, endpoints and
// services for the certificate's lifetime (5 years).
func TestDisconnectedPeerLosesAccess(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	west, north := t.TempDir(), t.TempDir()
	for _, p := range []struct {
		dir, name string
		id        uint32
	}{{west, "west", 8}, {north, "north", 9}} {
		if _, err := clustermesh.Enable(p.dir, p.name, p.id, nil); err != nil {
			t.Fatal(err)
		}
		if _, _, err := clustermesh.Connect(srv.Bundle, p.dir); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if err := srv.Agent.Put(ctx, "filament/state/nodes/v1/east/n1", []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	peer := func(dir string) *kvstore.Client {
		t.Helper()
		rc, err := clustermesh.LoadRemote(filepath.Join(clustermesh.RemotesDir(dir), "east.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		rc.Endpoints = []string{srv.Endpoint}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := kvstore.Connect(cctx, rc.KVStore())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	readable := func(c *kvstore.Client) error {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := c.Get(rctx, "filament/state/nodes/v1/east/n1")
		return err
	}
	w, n := peer(west), peer(north)
	// The apiserver takes the peers within a second or two.
	deadline := time.Now().Add(10 * time.Second)
	for readable(w) != nil || readable(n) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("connected peers cannot read: west %v, north %v", readable(w), readable(n))
		}
		time.Sleep(200 * time.Millisecond)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	watch := w.Raw().Watch(wctx, "filament/state/nodes/v1/", clientv3.WithPrefix())
	northWatch := n.Raw().Watch(wctx, "filament/state/nodes/v1/", clientv3.WithPrefix())
	if err := srv.Agent.Put(ctx, "filament/state/nodes/v1/east/n2", []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	for who, ch := range map[string]clientv3.WatchChan{"west": watch, "north": northWatch} {
		if r := <-ch; r.Err() != nil || len(r.Events) != 1 {
			t.Fatalf("%s's watch before the disconnect: %+v %v", who, r.Events, r.Err())
		}
	}

	if err := clustermesh.Disconnect(srv.Bundle, west); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for readable(w) == nil {
		if time.Now().After(deadline) {
			t.Fatal("a disconnected peer still reads this cluster's state 10 s after the disconnect")
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Its open watch ends (the client does not get the write after it).
	if err := srv.Agent.Put(ctx, "filament/state/nodes/v1/east/n3", []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	watchEnds(t, watch, "/n3", "a disconnected peer's")
	// The other peer reads on, its open watch too.
	if err := readable(n); err != nil {
		t.Fatalf("a peer still connected lost access: %v", err)
	}
	select {
	case r := <-northWatch:
		if r.Err() != nil || len(r.Events) != 1 || !strings.HasSuffix(string(r.Events[0].Kv.Key), "/n3") {
			t.Fatalf("a connected peer's open watch after another's disconnect: %+v %v", r.Events, r.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a connected peer's open watch did not get a write after another's disconnect")
	}
	// Another cluster named west connects: the certificate the
	// disconnected one kept names a user that does not come back.
	west2 := t.TempDir()
	if _, err := clustermesh.Enable(west2, "west", 10, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := clustermesh.Connect(srv.Bundle, west2); err != nil {
		t.Fatal(err)
	}
	w2 := peer(west2)
	deadline = time.Now().Add(10 * time.Second)
	for readable(w2) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the new west cannot read: %v", readable(w2))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if readable(w) == nil {
		t.Error("the disconnected west's certificate reads again once another cluster of its name connected")
	}
}

// Clusters connected before 2026-12-06 share one etcd user (remote),
// whose certificate a cluster disconnected since keeps: only retiring
// that user (--retire-shared-remote, once the others connected again)
// ends such a cluster's reads and its open watches. A connected
// cluster's own user reads on.
func TestRetiredSharedRemoteLosesAccess(t *testing.T) {
	srv := apiservertest.Start(t, "east", 7)
	west := t.TempDir()
	if _, err := clustermesh.Enable(west, "west", 8, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := clustermesh.Connect(srv.Bundle, west); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := srv.Agent.Put(ctx, "filament/state/nodes/v1/east/n1", []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	readable := func(c *kvstore.Client) error {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		_, err := c.Get(rctx, "filament/state/nodes/v1/east/n1")
		return err
	}
	eventuallyReadable := func(what string, c *kvstore.Client, want bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for (readable(c) == nil) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: readable %v, want %v", what, readable(c) == nil, want)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	shared, err := srv.Connect(clustermesh.UserRemote)
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	rc, err := clustermesh.LoadRemote(filepath.Join(clustermesh.RemotesDir(west), "east.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rc.Endpoints = []string{srv.Endpoint}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	own, err := kvstore.Connect(cctx, rc.KVStore())
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	eventuallyReadable("the shared user, kept (the default)", shared, true)
	eventuallyReadable("west's own user", own, true)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	watch := shared.Raw().Watch(wctx, "filament/state/nodes/v1/", clientv3.WithPrefix())

	srv.RestartWith(t, func(c *apiserver.Config) { c.RetireSharedRemote = true })
	eventuallyReadable("the shared user, retired", shared, false)
	eventuallyReadable("west's own user, the shared one retired", own, true)
	if err := srv.Agent.Put(ctx, "filament/state/nodes/v1/east/n2", []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	watchEnds(t, watch, "/n2", "the retired shared user's")
}

// watchEnds fails t unless watch (whose's open watch) ends within 10 s
// without delivering the write of the key ending in suffix.
func watchEnds(t *testing.T, watch clientv3.WatchChan, suffix, whose string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for done := false; !done; {
		select {
		case r, ok := <-watch:
			for _, ev := range r.Events {
				if strings.HasSuffix(string(ev.Kv.Key), suffix) {
					t.Fatalf("%s open watch still got a write after its access ended", whose)
				}
			}
			done = !ok || r.Canceled || r.Err() != nil
		case <-timeout:
			t.Fatalf("%s open watch was not ended", whose)
		}
	}
}
