package web

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/filament-net/filament/agent/hubble"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/agent/monitor"
)

// The hostile strings a workload may put in its flows: its pod's name,
// its labels, the URLs it asks for.
const (
	hostilePod  = `<img src=x onerror="window.__pwned=1">`
	hostileApp  = `<script>window.__pwned=2</script>`
	hostilePath = `/<script>window.__pwned=3</script>?q=<img src=x onerror="window.__pwned=4">`
)

// testMesh is two clusters' nodes (real Hubble servers, c1/n1 and c2/n1)
// behind one Observer API that merges them as the relay does, reached
// over an in-memory gRPC connection.
type testMesh struct {
	c1, c2 *hubble.Server
	client observer.ObserverClient
}

func labels(cluster, ns, app string) []string {
	return []string{"k8s:app=" + app, "k8s:io.kubernetes.pod.namespace=" + ns, "k8s:filament.io/cluster=" + cluster}
}

// Pods by endpoint, per node: c1 has shop/frontend, shop/cart and a
// hostile pod in default; c2 has billing/payments and billing/ledger.
var pods = map[string]map[uint16][2]string{
	"c1": {1: {"shop", "frontend-7d4b9c6f5d-x2kqz"}, 2: {"shop", "cart-0"}, 3: {"default", hostilePod}},
	"c2": {1: {"billing", "payments-6c9f8d7b5-q7w2p"}, 2: {"billing", "ledger-1"}},
}

// meta is what node n1 of cluster c knows.
func meta(c string) hubble.Meta {
	return hubble.Meta{NodeName: "n1", ClusterName: c, Pod: func(ep uint16) (string, string) {
		p := pods[c][ep]
		return p[0], p[1]
	}}
}

func newTestMesh(t *testing.T) *testMesh {
	t.Helper()
	m := &testMesh{}
	var servers []*hubble.Server
	for _, c := range []string{"c1", "c2"} {
		s, err := hubble.New(hubble.Config{Meta: meta(c), Version: "test"})
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, s)
	}
	m.c1, m.c2 = servers[0], servers[1]
	ln := bufconn.Listen(1 << 20)
	g := grpc.NewServer()
	observer.RegisterObserverServer(g, &fanout{servers: servers})
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ln.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	m.client = observer.NewObserverClient(conn)
	return m
}

// fanout merges the GetFlows of several servers: their answers one after
// the other, or with follow all at once.
type fanout struct {
	observer.UnimplementedObserverServer
	servers []*hubble.Server
}

type lockedStream struct {
	grpc.ServerStreamingServer[observer.GetFlowsResponse]
	mu *sync.Mutex
}

func (s lockedStream) Send(r *observer.GetFlowsResponse) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ServerStreamingServer.Send(r)
}

func (f *fanout) GetFlows(req *observer.GetFlowsRequest, stream grpc.ServerStreamingServer[observer.GetFlowsResponse]) error {
	if !req.Follow {
		for _, s := range f.servers {
			if err := s.GetFlows(req, stream); err != nil {
				return err
			}
		}
		return nil
	}
	ls := lockedStream{stream, &sync.Mutex{}}
	errs := make(chan error, len(f.servers))
	for _, s := range f.servers {
		go func() { errs <- s.GetFlows(req, ls) }()
	}
	err := <-errs // the first to end ends the stream
	return err
}

var (
	frontend = netip.MustParseAddr("10.1.0.10")
	cart     = netip.MustParseAddr("10.1.0.11")
	evil     = netip.MustParseAddr("10.1.0.12")
	coredns  = netip.MustParseAddr("10.1.0.53")
	payments = netip.MustParseAddr("10.2.0.20")
	ledger   = netip.MustParseAddr("10.2.0.21")
)

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// record fills the mesh with the flows of meshEvents.
func (m *testMesh) record(t0 time.Time) {
	for _, ev := range meshEvents(t0) {
		map[string]*hubble.Server{"c1": m.c1, "c2": m.c2}[ev.cluster].Record(ev.Event)
	}
}

// clusterEvent is an event of node n1 of a cluster.
type clusterEvent struct {
	cluster string
	monitor.Event
}

// meshEvents are the mesh's events from t0 on: in c1, shop/frontend
// to shop/cart (a connection and 2 GETs), to kube-system/coredns (DNS)
// and to the world, and the hostile pod to cart (an HTTP request); in c2,
// frontend of c1 to billing/payments dropped twice, ledger to payments (a
// connection and a Kafka produce). 10 flows, 2 dropped.
func meshEvents(t0 time.Time) (out []clusterEvent) {
	fe, ca, ev := labels("c1", "shop", "frontend"), labels("c1", "shop", "cart"), labels("c1", "default", hostileApp)
	dns := labels("c1", "kube-system", "coredns")
	pay, led := labels("c2", "billing", "payments"), labels("c2", "billing", "ledger")
	c1 := func(ev monitor.Event) { out = append(out, clusterEvent{"c1", ev}) }
	c2 := func(ev monitor.Event) { out = append(out, clusterEvent{"c2", ev}) }
	tick := 0
	at := func() time.Time { tick++; return t0.Add(time.Duration(tick) * 100 * time.Millisecond) }
	// toCart: a flow seen at cart's ingress (endpoint 2 of c1).
	toCart := func(src netip.Addr, srcEP uint16, srcLabels []string, typ string, l7 *monitor.L7) monitor.Event {
		return monitor.Event{Time: at(), Type: typ, Direction: "ingress", Endpoint: 2, PeerEP: srcEP, Protocol: "TCP",
			Src: ap(src, 40000), Dst: ap(cart, 8080), SrcIdentity: 70000, DstIdentity: 70001, SrcLabels: srcLabels, DstLabels: ca, L7: l7}
	}
	c1(toCart(frontend, 1, fe, "policy-verdict", nil))
	for range 2 {
		c1(toCart(frontend, 1, fe, "l7", &monitor.L7{Protocol: "HTTP/1.1", Method: "GET", Host: "cart", Path: "/api/items?id=1", Status: 200, Verdict: "forwarded"}))
	}
	c1(monitor.Event{Time: at(), Type: "l7", Direction: "egress", Endpoint: 1, Protocol: "UDP", Src: ap(frontend, 5353), Dst: ap(coredns, 53),
		SrcIdentity: 70000, DstIdentity: 70002, SrcLabels: fe, DstLabels: dns,
		L7: &monitor.L7{Protocol: "DNS/UDP", Method: "A", Host: "shop.example.com.", Verdict: "forwarded", DNSAnswers: []netip.Addr{netip.MustParseAddr("192.0.2.7")}}})
	c1(monitor.Event{Time: at(), Type: "policy-verdict", Direction: "egress", Endpoint: 1, Protocol: "TCP", Src: ap(frontend, 41000),
		Dst: ap(netip.MustParseAddr("192.0.2.7"), 443), SrcIdentity: 70000, DstIdentity: 2, SrcLabels: fe, DstLabels: []string{"reserved:world"}})
	c1(toCart(evil, 3, ev, "l7", &monitor.L7{Protocol: "HTTP/1.1", Method: "GET", Host: "cart", Path: hostilePath, Status: 404, Verdict: "forwarded"}))
	for range 2 {
		c2(monitor.Event{Time: at(), Type: "drop", ReasonCode: 1, Direction: "ingress", Endpoint: 1, Protocol: "TCP",
			Src: ap(frontend, 42000), Dst: ap(payments, 9000), SrcIdentity: 70000, DstIdentity: 130001, SrcLabels: fe, DstLabels: pay})
	}
	c2(monitor.Event{Time: at(), Type: "policy-verdict", Direction: "ingress", Endpoint: 1, PeerEP: 2, Protocol: "TCP",
		Src: ap(ledger, 43000), Dst: ap(payments, 9092), SrcIdentity: 130002, DstIdentity: 130001, SrcLabels: led, DstLabels: pay})
	c2(monitor.Event{Time: at(), Type: "l7", Direction: "ingress", Endpoint: 1, PeerEP: 2, Protocol: "TCP",
		Src: ap(ledger, 43000), Dst: ap(payments, 9092), SrcIdentity: 130002, DstIdentity: 130001, SrcLabels: led, DstLabels: pay,
		L7: &monitor.L7{Protocol: "Kafka", Method: "produce", Path: "payments", Verdict: "forwarded"}})
	return out
}
