package lab_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// routingMode is a lab's routing and the agents' extra arguments.
type routingMode struct {
	name, routing string
	args          []string
}

var wireguardStrict = []string{"--encryption", "wireguard", "--encryption-strict"}

// The seeds' example across nodes with native routing (steered at the
// underlay's tc ingress) and with WireGuard (at the encryption device's);
// the server sees the client's own address.
func TestL7IngressRoutingModes(t *testing.T) {
	for _, tc := range []routingMode{
		{"native", "native", nil},
		{"tunnel+wireguard", "tunnel", wireguardStrict},
		{"native+wireguard", "native", wireguardStrict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := labtest.UpRouting(t, 2, tc.routing, tc.args...)
			web := labtest.Pod(t, l, "n1", "web", "app=web")
			far := labtest.Pod(t, l, "n2", "far", "app=client")
			serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
			labtest.ImportPolicy(t, l, "n1", l7Policy)
			base := "http://" + web.IP
			var last string
			defer func() {
				if t.Failed() {
					t.Logf("curl's last answer: %q", last)
				}
			}()
			firstContact(t, l, "GET /public/ from another node allowed through the proxy", func() bool {
				last = curlCodes(t, l, "far", base+"/public/a")
				return last == "200"
			})
			if got := curlCodes(t, l, "far", base+"/private", base+"/public/b"); got != "403 200" {
				t.Errorf("GET /private then GET /public/b on one connection: %q, want \"403 200\"", got)
			}
			assertSeenFrom(t, l, far, base+"/public/from")
		})
	}
}

// A grpc-go client in a pod calls a grpc-go server in another pod on
// another node through the destination's proxy: the allowed method
// answers, any other gets PERMISSION_DENIED.
func TestL7GRPC(t *testing.T) {
	l := labtest.Up(t, 2, 0)
	srvPod := labtest.Pod(t, l, "n1", "grpc", "app=grpc")
	cli := labtest.Pod(t, l, "n2", "client", "app=client")
	var ln net.Listener
	if err := ns.WithNetNSPath(lab.NetNSPath(srvPod.NetNS), func(ns.NetNS) (err error) {
		ln, err = net.Listen("tcp4", ":50051")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	reflection.Register(gs)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	labtest.ImportPolicy(t, l, "n1", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: grpc-health-only}
spec:
  endpointSelector: {matchLabels: {app: grpc}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http: [{method: POST, path: "/grpc.health.v1.Health/Check"}]
`)
	cc, err := grpc.NewClient("passthrough:///"+srvPod.IP+":50051", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (c net.Conn, err error) {
			err = ns.WithNetNSPath(lab.NetNSPath(cli.NetNS), func(ns.NetNS) error {
				c, err = (&net.Dialer{}).DialContext(ctx, "tcp4", addr)
				return err
			})
			return c, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	eventually(t, "Health/Check allowed through the proxy", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err == nil {
		err = st.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
		// io.EOF from Send: the proxy answered (trailers only) before the
		// message went out; the status comes with Recv.
		if err == nil || errors.Is(err, io.EOF) {
			_, err = st.Recv()
		}
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("reflection through the proxy: %v, want PERMISSION_DENIED", err)
	}
}

// The seeds' example across clusters: c1's client reaches c2's web through
// c2's proxy, which knows the client's identity from the mesh (the rule
// names c1), in both directions of the rule: ingress on c2 and egress on c1.
func TestL7AcrossClusters(t *testing.T) {
	l := labtest.UpClusters(t, 2, 1, "tunnel")
	client := labtest.Pod(t, l, "c1/n1", "client", "app=client")
	web := labtest.Pod(t, l, "c2/n1", "web", "app=web")
	connect(t, l, "c1/n1", "c2")
	for _, on := range []string{"c1/n1", "c2/n1"} {
		if out, err := labtest.NodeRun(t, l, on, "filament", "clustermesh", "status", "--wait", "30s"); err != nil {
			t.Fatalf("status --wait on %s: %v %s", on, err, out)
		}
	}
	serveHTTP(t, lab.NetNSPath(web.NetNS), 80)
	labtest.ImportPolicy(t, l, "c2/n1", strings.Replace(l7Policy, "{app: client}", "{app: client, io.cilium.k8s.policy.cluster: c1}", 1))
	base := "http://" + web.IP
	eventually(t, "c1's client: GET /public/ allowed through c2's proxy", func() bool {
		return curlCodes(t, l, "client", base+"/public/a") == "200"
	})
	if got := curlCodes(t, l, "client", base+"/private", base+"/public/b"); got != "403 200" {
		t.Errorf("ingress L7 across clusters: %q, want \"403 200\"", got)
	}
	assertSeenFrom(t, l, client, base+"/public/from")
	// Egress on c1 too, narrower than c2's ingress: /public/x passes c2's
	// rules, not c1's, so its 403 comes from c1's proxy.
	labtest.ImportPolicy(t, l, "c1/n1", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web, io.cilium.k8s.policy.cluster: c2}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public/c.*"}, {path: "/private"}]
`)
	eventually(t, "c1's egress L7 in force", func() bool {
		return curlCodes(t, l, "client", base+"/public/x") == "403"
	})
	if got := curlCodes(t, l, "client", base+"/public/c", base+"/private"); got != "200 403" {
		t.Errorf("egress (c1) then ingress (c2) L7: %q, want \"200 403\" (/private passes c1's rules, not c2's)", got)
	}
}
