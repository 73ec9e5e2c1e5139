package hubble

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/crypto/ca"
)

// NodeTLSFixture is a CA of cluster c1 and, in dir, its ca.pem and a
// node's server pair for 127.0.0.1 (node.pem, node-key.pem). Exported for
// the package's external tests.
func NodeTLSFixture(t *testing.T) (authority *ca.CA, dir string) {
	t.Helper()
	authority, err := ca.New("c1")
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	srvPair, err := authority.Issue("node", true, []net.IP{net.ParseIP("127.0.0.1")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WritePair(dir, "node", srvPair); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), authority.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return authority, dir
}

// A certificate revoked while its client is connected loses what it has
// open at the next recheck (the agent's, when the revocation list
// changes): its following streams end with PermissionDenied, and a new
// call on the same connection (gRPC keeps it open; the handshake's check
// ran once) is refused. Another client's stream goes on. Before
// 2026-12-05 the check was the handshake's only: a leaked relay
// certificate revoked while `hubble observe --follow` ran read the
// node's flows until the stream or the connection ended.
func TestRevokedClientsStreamsEnd(t *testing.T) {
	authority, dir := NodeTLSFixture(t)
	good, _ := authority.Issue("hubble-relay", false, nil, nil)
	leaked, _ := authority.Issue("hubble-relay", false, nil, nil)
	leakedCert, err := tls.X509KeyPair(leaked.Cert, leaked.Key)
	if err != nil {
		t.Fatal(err)
	}
	var revokedNow atomic.Bool
	check := func(c *x509.Certificate) error {
		if revokedNow.Load() && c.SerialNumber.Cmp(leakedCert.Leaf.SerialNumber) == 0 {
			return errors.New("certificate revoked")
		}
		return nil
	}
	conf, err := ServerTLS(filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"), filepath.Join(dir, "ca.pem"),
		Clients{Names: []string{"hubble-relay"}, Revoked: check})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Meta: Meta{NodeName: "n1", ClusterName: "c1"}, Address: "127.0.0.1:4244", Version: "test", Revoked: check})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go s.Serve(ctx, ln, conf)
	roots, err := PoolOf(authority.PEM, "ca")
	if err != nil {
		t.Fatal(err)
	}
	client := func(p ca.Pair) observer.ObserverClient {
		cert, err := tls.X509KeyPair(p.Cert, p.Key)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(
			&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1"})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return observer.NewObserverClient(conn)
	}
	follow := func(c observer.ObserverClient) observer.Observer_GetFlowsClient {
		st, err := c.GetFlows(ctx, &observer.GetFlowsRequest{Follow: true})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	goodC, leakedC := client(good), client(leaked)
	goodSt, leakedSt := follow(goodC), follow(leakedC)
	// New flows all along (a following stream gets those recorded after
	// it started).
	go func() {
		for ctx.Err() == nil {
			ev := events(time.Now())[0]
			s.Record(ev)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	for _, st := range []observer.Observer_GetFlowsClient{goodSt, leakedSt} {
		if _, err := st.Recv(); err != nil {
			t.Fatalf("before the revocation: %v", err)
		}
	}

	revokedNow.Store(true)
	s.RecheckRevoked()
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := leakedSt.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	select {
	case err := <-ended:
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("the revoked client's stream ended with %v, want PermissionDenied", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked client's following stream goes on after the recheck")
	}
	if _, err := goodSt.Recv(); err != nil {
		t.Errorf("the other client's stream: %v", err)
	}
	// A new call on the revoked client's open connection.
	st, err := leakedC.GetFlows(ctx, &observer.GetFlowsRequest{Number: 1})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("a new stream of the revoked client: %v, want PermissionDenied", err)
	}
	if _, err := leakedC.ServerStatus(ctx, &observer.ServerStatusRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a unary call of the revoked client: %v, want PermissionDenied", err)
	}
	if _, err := goodC.ServerStatus(ctx, &observer.ServerStatusRequest{}); err != nil {
		t.Errorf("the other client's unary call: %v", err)
	}
}
