package apiserver

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/kvstore/embedded"
	"github.com/filament-net/filament/clustermesh"
)

// The retirement of the shared remote user ends the watches it has open
// on this apiserver's etcd at once (the stream interceptor follows that
// user too), with no restart in between that would end them anyway; and
// a bad peers file does not keep them. setupAuth retiring on an etcd
// that never had the user is no error.
func TestRetiringSharedRemoteEndsItsOpenWatches(t *testing.T) {
	bundle := t.TempDir()
	if _, err := clustermesh.Enable(bundle, "east", 7, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	free := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	st := newStreams()
	clientURL := "https://127.0.0.1:" + strconv.Itoa(free())
	srv, err := embedded.Start(embedded.Config{Dir: t.TempDir(), ClientURL: clientURL, PeerURL: "http://127.0.0.1:" + strconv.Itoa(free()), UnsafeNoFsync: true,
		CertFile: filepath.Join(bundle, "server.pem"), KeyFile: filepath.Join(bundle, "server-key.pem"), ClientCAFile: filepath.Join(bundle, "ca.pem"),
		GRPCServerOptions: []grpc.ServerOption{grpc.ChainStreamInterceptor(st.intercept)}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	connect := func(user string) *kvstore.Client {
		t.Helper()
		c, err := kvstore.Connect(ctx, kvstore.Config{Endpoints: srv.Endpoints(), CAFile: filepath.Join(bundle, "ca.pem"),
			CertFile: filepath.Join(bundle, user+".pem"), KeyFile: filepath.Join(bundle, user+"-key.pem")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	root := connect(clustermesh.UserRoot)
	if err := setupAuth(ctx, root.Raw(), false); err != nil {
		t.Fatalf("retired on an etcd that never had the user: %v", err)
	}
	if err := setupAuth(ctx, root.Raw(), true); err != nil {
		t.Fatal(err)
	}
	if err := root.Put(ctx, "filament/state/nodes/v1/east/n1", []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	shared := connect(clustermesh.UserRemote)
	if _, err := shared.Get(ctx, "filament/state/nodes/v1/east/n1"); err != nil {
		t.Fatalf("the shared user, kept: %v", err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	watch := shared.Raw().Watch(wctx, "filament/state/nodes/v1/", clientv3.WithPrefix())
	if err := root.Put(ctx, "filament/state/nodes/v1/east/n2", []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	if r := <-watch; r.Err() != nil || len(r.Events) != 1 {
		t.Fatalf("the shared user's watch: %+v %v", r.Events, r.Err())
	}
	// Retired with a bad peers file: the watch ends all the same.
	bad := filepath.Join(t.TempDir(), "remote-peers")
	if err := os.WriteFile(bad, []byte("not a peer line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ps := peerSync{file: bad, shared: false, streams: st}
	if err := setupAuth(ctx, root.Raw(), false); err != nil {
		t.Fatal(err)
	}
	if err := ps.sync(ctx, root.Raw()); err == nil {
		t.Fatal("a bad peers file synced")
	}
	if err := root.Put(ctx, "filament/state/nodes/v1/east/n3", []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	select {
	case r, ok := <-watch:
		for _, ev := range r.Events {
			t.Fatalf("the retired shared user's open watch got %s", ev.Kv.Key)
		}
		if ok && !r.Canceled && r.Err() == nil {
			t.Fatalf("the retired shared user's open watch goes on: %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the retired shared user's open watch was not ended")
	}
}
