package kvstore

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// pagesServer answers each Range with the next of its pages (keys), more
// following while pages are left.
type pagesServer struct {
	etcdserverpb.UnimplementedKVServer
	pages  [][]string
	failAt int // this call (1: the first) fails once, as in a leader election
	calls  int
}

func (s *pagesServer) Range(_ context.Context, _ *etcdserverpb.RangeRequest) (*etcdserverpb.RangeResponse, error) {
	if s.calls++; s.calls == s.failAt {
		return nil, rpctypes.ErrGRPCLeaderChanged
	}
	r := &etcdserverpb.RangeResponse{Header: &etcdserverpb.ResponseHeader{Revision: 9}}
	if len(s.pages) > 0 {
		for _, k := range s.pages[0] {
			r.Kvs = append(r.Kvs, &mvccpb.KeyValue{Key: []byte(k), Value: []byte("v")})
		}
		s.pages = s.pages[1:]
		r.More = len(s.pages) > 0
	}
	return r, nil
}

// A page whose read fails with an error the etcd client retries for
// reads (a leader change) is read again, not the list from its start.
func TestListPagesRetriesAPage(t *testing.T) {
	srv := &pagesServer{pages: [][]string{{"p/a", "p/b"}, {"p/c"}}, failAt: 2}
	cc := pagesClient(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []string
	_, err := (&Client{c: cc}).ListPages(ctx, "p/", 2, func(kv KeyValue) bool { got = append(got, kv.Key); return true })
	if err != nil || len(got) != 3 || srv.calls != 3 {
		t.Fatalf("list: %v, keys %q, %d reads; want 3 keys in 3 reads (the second page read again)", err, got, srv.calls)
	}
}

// pagesClient serves srv and returns an etcd client of it.
func pagesClient(t *testing.T, srv *pagesServer) *clientv3.Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	etcdserverpb.RegisterKVServer(g, srv)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	cc, err := clientv3.New(clientv3.Config{Endpoints: []string{ln.Addr().String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestListPagesRefusesBadPages: a server (a remote cluster's, hostile or
// broken) whose pages repeat or reorder keys, or wander outside the
// prefix, fails the list with ErrBadList instead of making it endless;
// a good one is read whole.
func TestListPagesRefusesBadPages(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pages [][]string
		bad   bool
	}{
		{"in order", [][]string{{"p/a", "p/b"}, {"p/c"}}, false},
		{"out of order in a page", [][]string{{"p/b", "p/a"}}, true},
		{"a key twice in a page", [][]string{{"p/a", "p/a"}}, true},
		{"a page repeated", [][]string{{"p/a", "p/b"}, {"p/a", "p/b"}}, true},
		{"the last key again", [][]string{{"p/a", "p/b"}, {"p/b", "p/c"}}, true},
		{"outside the prefix", [][]string{{"p/a", "q/b"}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := pagesClient(t, &pagesServer{pages: tc.pages})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got []string
			_, err := (&Client{c: cc}).ListPages(ctx, "p/", 2, func(kv KeyValue) bool { got = append(got, kv.Key); return true })
			if tc.bad != errors.Is(err, ErrBadList) || !tc.bad && (err != nil || len(got) != 3) {
				t.Fatalf("list: %v (keys %q); want bad list %v", err, got, tc.bad)
			}
		})
	}
}
