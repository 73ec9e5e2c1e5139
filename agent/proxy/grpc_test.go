package proxy

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
)

// A grpc-go client through the proxy to a grpc-go server: the allowed
// method is answered, the others get PERMISSION_DENIED.
func TestGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(serverIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	reflection.Register(srv)
	go srv.Serve(ln)
	defer srv.Stop()
	h := newHarnessTo(t, netip.MustParseAddrPort(ln.Addr().String()), Options{})
	h.ingress(PeerRules{Remotes: []uint32{clientID}, HTTP: []HTTPRule{{Method: "POST", Path: "/grpc.health.v1.Health/Check"}}})
	rec := h.records()

	cc, err := grpc.NewClient("passthrough:///"+h.addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return clientDialer().DialContext(ctx, "tcp", h.addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(cc)
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check: %v %v", resp, err)
	}
	// A streaming call that is denied.
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Watch: %v, want PermissionDenied", err)
	}
	// Reflection, a bidirectional stream, denied too.
	rs, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err == nil {
		// Send may see the stream ended already (io.EOF); Recv has the status.
		rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
		_, err = rs.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reflection: %v, want PermissionDenied", err)
	}
	// The connection still works after the denials.
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Check after denials: %v", err)
	}
	got := rec(4)
	for i, want := range []struct{ path, verdict string }{
		{"/grpc.health.v1.Health/Check", Forwarded},
		{"/grpc.health.v1.Health/Watch", Denied},
		{"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Denied},
		{"/grpc.health.v1.Health/Check", Forwarded},
	} {
		if r := got[i]; r.Protocol != "gRPC" || r.Path != want.path || r.Verdict != want.verdict || r.Status != 200 {
			t.Errorf("record %d: %+v, want %+v", i, r, want)
		}
	}

	// Upgrade the rules: reflection allowed now, on the same connection.
	h.ingress(PeerRules{HTTP: []HTTPRule{{Path: "/grpc.reflection.v1.ServerReflection/.*"}}})
	rs, err = reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := rs.Recv()
	if err != nil || len(r.GetListServicesResponse().GetService()) < 2 {
		t.Fatalf("reflection allowed: %v %v", r, err)
	}
	rs.CloseSend()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Check after the change: %v, want PermissionDenied", err)
	}
}
