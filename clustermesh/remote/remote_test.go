package remote_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/clustermesh/apiserver"
	"github.com/filament-net/filament/clustermesh/remote"
)

func freePort(t *testing.T) int {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// A remote cluster's nodes, identities and ipcache entries reach the
// callbacks; identities (and entries) outside its cluster's range are
// rejected and counted; removing the config withdraws everything.
func TestFollowAndRejectOutOfRange(t *testing.T) {
	bundle := t.TempDir()
	if _, err := clustermesh.Enable(bundle, "east", 7, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go apiserver.Run(ctx, apiserver.Config{Bundle: bundle, DataDir: t.TempDir(), ClientURL: ep,
		PeerURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), UnsafeNoFsync: true})
	var kv *kvstore.Client
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		kv, err = kvstore.Connect(ctx, kvstore.Config{Endpoints: []string{ep}, DialTimeout: time.Second,
			CAFile: bundle + "/ca.pem", CertFile: bundle + "/agent.pem", KeyFile: bundle + "/agent-key.pem"})
		if err == nil {
			if _, err = kv.Get(ctx, clustermesh.ClusterConfigPrefix+"east"); err == nil {
				break
			}
			kv.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("apiserver: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer kv.Close()
	good := identity.Compose(7, 300)
	bad := identity.Compose(5, 300)
	kv.Put(ctx, fmt.Sprintf("%s%d", identity.IDPrefix, good), []byte("k8s:app=web;k8s:filament.io/cluster=east"), 0)
	kv.Put(ctx, fmt.Sprintf("%s%d", identity.IDPrefix, bad), []byte("k8s:app=spoof;k8s:filament.io/cluster=west"), 0)
	nb, _ := json.Marshal(node.Node{Name: "n1", Cluster: "east", IPs: []string{"172.30.7.1"}, PodCIDRs: []string{"10.7.0.0/24"}})
	kv.Put(ctx, node.NodesPrefix+"east/n1", nb, 0)
	for _, e := range []ipcache.Entry{{IP: netip.MustParseAddr("10.7.0.2"), Identity: good, Node: "n1"}, {IP: netip.MustParseAddr("10.7.0.3"), Identity: bad, Node: "n1"}} {
		b, _ := json.Marshal(e)
		kv.Put(ctx, ipcache.Prefix+"east/"+e.IP.String(), b, 0)
	}

	var mu sync.Mutex
	got := map[string]bool{}
	record := func(what string, deleted bool) {
		mu.Lock()
		got[what] = !deleted
		mu.Unlock()
	}
	dir := t.TempDir()
	m := remote.NewManager(dir, "local", 1, 0, remote.Callbacks{
		Node:     func(n node.Node, d bool) { record("node "+n.Name, d) },
		Identity: func(id identity.Identity, d bool) { record(fmt.Sprintf("id %d", id.ID), d) },
		Entry:    func(e ipcache.Entry, d bool) { record("ip "+e.IP.String()+" "+e.Node, d) },
	})
	go m.Run(ctx)
	// The bundle names port 2379; this apiserver listens elsewhere.
	raw, _ := os.ReadFile(filepath.Join(bundle, "remote.yaml"))
	var rc clustermesh.RemoteConfig
	if err := yaml.Unmarshal(raw, &rc); err != nil {
		t.Fatal(err)
	}
	rc.Endpoints = []string{ep}
	out, _ := yaml.Marshal(rc)
	os.WriteFile(filepath.Join(dir, "east.yaml"), out, 0o600)
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				mu.Lock()
				t.Fatalf("%s; got %v, status %+v", what, got, m.Status())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	has := func(k string) bool { mu.Lock(); defer mu.Unlock(); return got[k] }
	wait("remote followed", func() bool {
		st := m.Status()
		return len(st) == 1 && st[0].Ready && has("node east/n1") && has(fmt.Sprintf("id %d", good)) && has("ip 10.7.0.2 east/n1")
	})
	st := m.Status()[0]
	if has(fmt.Sprintf("id %d", bad)) || has("ip 10.7.0.3 east/n1") || st.Rejected != 2 || st.ClusterID != 7 || st.Nodes != 1 || st.Endpoints != 1 || st.Identities != 1 {
		t.Fatalf("out-of-range entries: got %v, status %+v", got, st)
	}
	// Deletions propagate.
	kv.Delete(ctx, ipcache.Prefix+"east/10.7.0.2")
	wait("entry deleted", func() bool { return !has("ip 10.7.0.2 east/n1") })
	// Removing the config withdraws the rest.
	os.Remove(filepath.Join(dir, "east.yaml"))
	wait("withdrawn", func() bool { return len(m.Status()) == 0 && !has("node east/n1") && !has(fmt.Sprintf("id %d", good)) })
}

// A lost remote cluster keeps its entries until the TTL, then they are
// withdrawn and status says so.
func TestTTLWithdrawsLostCluster(t *testing.T) {
	bundle := t.TempDir()
	if _, err := clustermesh.Enable(bundle, "gone", 9, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	ep := fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
	actx, stopAPI := context.WithCancel(context.Background())
	apiDone := make(chan struct{})
	go func() {
		apiserver.Run(actx, apiserver.Config{Bundle: bundle, DataDir: t.TempDir(), ClientURL: ep,
			PeerURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), UnsafeNoFsync: true})
		close(apiDone)
	}()
	defer func() { stopAPI(); <-apiDone }()
	deadline := time.Now().Add(20 * time.Second)
	var kv *kvstore.Client
	for {
		var err error
		kv, err = kvstore.Connect(actx, kvstore.Config{Endpoints: []string{ep}, DialTimeout: time.Second,
			CAFile: bundle + "/ca.pem", CertFile: bundle + "/agent.pem", KeyFile: bundle + "/agent-key.pem"})
		if err == nil {
			if _, err = kv.Get(actx, clustermesh.ClusterConfigPrefix+"gone"); err == nil {
				break
			}
			kv.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("apiserver: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	id := identity.Compose(9, 300)
	b, _ := json.Marshal(ipcache.Entry{IP: netip.MustParseAddr("10.9.0.2"), Identity: id, Node: "n1"})
	kv.Put(actx, ipcache.Prefix+"gone/10.9.0.2", b, 0)
	kv.Close()

	var live atomic.Int64
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := remote.NewManager(dir, "local", 1, 3*time.Second, remote.Callbacks{
		Node: func(node.Node, bool) {}, Identity: func(identity.Identity, bool) {},
		Entry: func(_ ipcache.Entry, deleted bool) {
			if deleted {
				live.Add(-1)
			} else {
				live.Add(1)
			}
		},
	})
	go m.Run(ctx)
	raw, _ := os.ReadFile(filepath.Join(bundle, "remote.yaml"))
	var rc clustermesh.RemoteConfig
	yaml.Unmarshal(raw, &rc)
	rc.Endpoints = []string{ep}
	out, _ := yaml.Marshal(rc)
	os.WriteFile(filepath.Join(dir, "gone.yaml"), out, 0o600)
	waitFor := func(what string, cond func() bool, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: status %+v, live entries %d", what, m.Status(), live.Load())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("synced", func() bool { s := m.Status(); return len(s) == 1 && s[0].Ready && live.Load() == 1 }, 20*time.Second)
	stopAPI()
	<-apiDone
	waitFor("seen disconnected, entries kept", func() bool { s := m.Status(); return !s[0].Connected && live.Load() == 1 }, 10*time.Second)
	waitFor("withdrawn after the TTL", func() bool { s := m.Status(); return s[0].Withdrawn && live.Load() == 0 }, 20*time.Second)
}
