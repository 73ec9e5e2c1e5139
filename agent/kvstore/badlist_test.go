package kvstore

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// pagesServer answers each Range with the next of its pages (keys), more
// following while pages are left.
type pagesServer struct {
	etcdserverpb.UnimplementedKVServer
	pages [][]string
}

func (s *pagesServer) Range(_ context.Context, _ *etcdserverpb.RangeRequest) (*etcdserverpb.RangeResponse, error) {
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
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			g := grpc.NewServer()
			etcdserverpb.RegisterKVServer(g, &pagesServer{pages: tc.pages})
			go g.Serve(ln)
			defer g.Stop()
			cc, err := clientv3.New(clientv3.Config{Endpoints: []string{ln.Addr().String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got []string
			_, err = (&Client{c: cc}).ListPages(ctx, "p/", 2, func(kv KeyValue) bool { got = append(got, kv.Key); return true })
			if tc.bad != errors.Is(err, ErrBadList) || !tc.bad && (err != nil || len(got) != 3) {
				t.Fatalf("list: %v (keys %q); want bad list %v", err, got, tc.bad)
			}
		})
	}
}
