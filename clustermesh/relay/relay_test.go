package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/filament-net/filament/agent/hubble"
	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/agent/hubble/pb/peer"
	relaypb "github.com/filament-net/filament/agent/hubble/pb/relay"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/crypto/ca"
	"github.com/filament-net/filament/crypto/nodeauth"
)

// cluster is a test cluster's CA and the client certificate its nodes
// accept from the relay.
type cluster struct {
	name   string
	ca     *ca.CA
	client ca.Pair
}

func newCluster(t *testing.T, name, clientCN string) cluster {
	t.Helper()
	authority, err := ca.New(name)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := authority.Issue(clientCN, false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cluster{name, authority, pair}
}

func (c cluster) clientTLS(t *testing.T) *tls.Config {
	t.Helper()
	conf, err := clientTLS(c.ca.PEM, c.name, func() (tls.Certificate, error) { return tls.X509KeyPair(c.client.Cert, c.client.Key) })
	if err != nil {
		t.Fatal(err)
	}
	return conf
}

// startNode serves a node's Hubble API over mutual TLS with its node
// certificate, holding the events given.
func startNode(t *testing.T, c cluster, node string, evs ...monitor.Event) string {
	t.Helper()
	addr, _ := startNodeServer(t, c, node, evs...)
	return addr
}

// startNodeServer is startNode returning the node's server too.
func startNodeServer(t *testing.T, c cluster, node string, evs ...monitor.Event) (string, *hubble.Server) {
	t.Helper()
	return startNodeAs(t, c, node, hubble.Meta{NodeName: node, ClusterName: c.name}, evs...)
}

// startNodeAs serves node's API (its certificate) with flows that say
// what meta says (a hostile node's claims).
func startNodeAs(t *testing.T, c cluster, node string, meta hubble.Meta, evs ...monitor.Event) (string, *hubble.Server) {
	t.Helper()
	return startNodeWith(t, c, node, meta, hubble.Clients{Names: []string{"hubble-relay", "hubble-remote"}}, evs...)
}

// startNodeWith is startNodeAs serving the TLS clients clients admits
// (at the handshake and at each call).
func startNodeWith(t *testing.T, c cluster, node string, meta hubble.Meta, clients hubble.Clients, evs ...monitor.Event) (string, *hubble.Server) {
	t.Helper()
	conf := nodeTLS(t, c, node, clients)
	s, err := hubble.New(hubble.Config{Meta: meta, Revoked: clients.Check})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		s.Record(ev)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go s.Serve(ctx, ln, conf)
	return ln.Addr().String(), s
}

// nodeTLS is node's server TLS config (its certificate from c's CA),
// admitting clients.
func nodeTLS(t *testing.T, c cluster, node string, clients hubble.Clients) *tls.Config {
	t.Helper()
	dir := t.TempDir()
	pair, err := nodeauth.Issue(c.ca, c.name, node)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WritePair(dir, "node", pair); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), c.ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	conf, err := hubble.ServerTLS(filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"), filepath.Join(dir, "ca.pem"), clients)
	if err != nil {
		t.Fatal(err)
	}
	return conf
}

func drop(at time.Time, port uint16) monitor.Event {
	return monitor.Event{Time: at, Type: "drop", Direction: "ingress", Protocol: "TCP", Endpoint: 1, ReasonCode: 1,
		Src: netip.MustParseAddrPort("10.0.0.1:40000"), Dst: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), port)}
}

// serveRelay serves r and returns an Observer client of it.
func serveRelay(t *testing.T, r *Relay) observer.ObserverClient {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go r.Serve(ctx, ln)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return observer.NewObserverClient(conn)
}

func collect(t *testing.T, c observer.ObserverClient, req *observer.GetFlowsRequest) []*observer.GetFlowsResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := c.GetFlows(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var out []*observer.GetFlowsResponse
	for {
		resp, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, resp)
	}
}

// Two clusters' nodes, each with its own CA, read with each cluster's
// credentials: flows merged in time order, cut to Number (last or first);
// a node the relay has no credentials for, and one whose certificate does
// not name it, are reported unavailable.
func TestRelayMerges(t *testing.T) {
	c1, c2 := newCluster(t, "c1", "hubble-relay"), newCluster(t, "c2", "hubble-remote")
	t0 := time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)
	a := startNode(t, c1, "n1", drop(t0, 1), drop(t0.Add(2*time.Second), 3), drop(t0.Add(4*time.Second), 5))
	b := startNode(t, c2, "n1", drop(t0.Add(time.Second), 2), drop(t0.Add(3*time.Second), 4))
	creds := func(name string) (*tls.Config, error) {
		switch name {
		case "c1":
			return c1.clientTLS(t), nil
		case "c2":
			return c2.clientTLS(t), nil
		}
		return nil, errors.New("no credentials for " + name)
	}
	r, err := New(Config{PeerTarget: "unix:///nowhere", Cluster: "c1", Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	for _, cn := range []*peer.ChangeNotification{{Name: "c1/n1", Address: a}, {Name: "c2/n1", Address: b}} {
		r.apply(cn, 1)
	}
	c := serveRelay(t, r)
	ports := func(rs []*observer.GetFlowsResponse) (ps []uint32, nodes []string) {
		for _, resp := range rs {
			if f := resp.GetFlow(); f != nil {
				ps = append(ps, f.L4.GetTCP().DestinationPort)
				nodes = append(nodes, resp.NodeName)
			}
		}
		return ps, nodes
	}
	got, nodes := ports(collect(t, c, &observer.GetFlowsRequest{}))
	if want := []uint32{1, 2, 3, 4, 5}; !equal(got, want) || nodes[0] != "c1/n1" || nodes[1] != "c2/n1" {
		t.Errorf("merged: ports %v nodes %v, want %v alternating c1/n1, c2/n1", got, nodes, want)
	}
	if got, _ := ports(collect(t, c, &observer.GetFlowsRequest{Number: 2})); !equal(got, []uint32{4, 5}) {
		t.Errorf("last 2: %v", got)
	}
	if got, _ := ports(collect(t, c, &observer.GetFlowsRequest{Number: 2, First: true})); !equal(got, []uint32{1, 2}) {
		t.Errorf("first 2: %v", got)
	}
	st, err := c.ServerStatus(context.Background(), &observer.ServerStatusRequest{})
	if err != nil || st.NumFlows != 5 || st.NumConnectedNodes.GetValue() != 2 || st.NumUnavailableNodes.GetValue() != 0 {
		t.Errorf("status: %v %v", st, err)
	}

	// c3: no credentials; "c1/n2" announced at c2's node: its certificate
	// names another node.
	r.apply(&peer.ChangeNotification{Name: "c3/n1", Address: b}, 1)
	r.apply(&peer.ChangeNotification{Name: "c2/n2", Address: b}, 1)
	rs := collect(t, c, &observer.GetFlowsRequest{})
	unavailable := map[string]bool{}
	for _, resp := range rs {
		if ns := resp.GetNodeStatus(); ns != nil && ns.StateChange == relaypb.NodeState_NODE_UNAVAILABLE {
			for _, n := range ns.NodeNames {
				unavailable[n] = true
			}
		}
	}
	if got, _ := ports(rs); !equal(got, []uint32{1, 2, 3, 4, 5}) || !unavailable["c3/n1"] || !unavailable["c2/n2"] || len(unavailable) != 2 {
		t.Errorf("with two unreadable nodes: ports %v, unavailable %v", got, unavailable)
	}
	nodesResp, err := c.GetNodes(context.Background(), &observer.GetNodesRequest{})
	if err != nil || len(nodesResp.Nodes) != 4 {
		t.Fatalf("nodes: %v %v", nodesResp, err)
	}
	for _, n := range nodesResp.Nodes {
		connected := n.State == relaypb.NodeState_NODE_CONNECTED
		if connected != (n.Name == "c1/n1" || n.Name == "c2/n1") {
			t.Errorf("node %s: %v", n.Name, n.State)
		}
	}

	// A new discovery stream that does not announce c3/n1 drops it.
	r.apply(&peer.ChangeNotification{Name: "c1/n1", Address: a}, 2)
	r.sweep(2)
	if ps := r.snapshot(); len(ps) != 1 || ps[0].name != "c1/n1" {
		t.Errorf("after the sweep: %d nodes", len(ps))
	}
	r.apply(&peer.ChangeNotification{Name: "c1/n1", Type: peer.ChangeNotificationType_PEER_DELETED}, 2)
	if ps := r.snapshot(); len(ps) != 0 {
		t.Errorf("after the delete: %d nodes", len(ps))
	}
}

func equal(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The bundle's credentials: a cluster name from an announcement cannot
// name a file outside the bundle's remotes.
func TestBundleCredentialsRefusesBadNames(t *testing.T) {
	dir, peerDir := t.TempDir(), t.TempDir()
	if _, err := clustermesh.Enable(dir, "c1", 1, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := clustermesh.Enable(peerDir, "c2", 2, []net.IP{net.ParseIP("127.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	name, creds, err := BundleCredentials(dir)
	if err != nil || name != "c1" {
		t.Fatalf("BundleCredentials: %q %v", name, err)
	}
	if _, err := creds("c1"); err != nil {
		t.Errorf("own cluster: %v", err)
	}
	if _, err := creds("c2"); !errors.Is(err, ErrConfig) {
		t.Errorf("c2 before connect: %v, want ErrConfig", err)
	}
	if _, _, err := clustermesh.Connect(dir, peerDir); err != nil {
		t.Fatal(err)
	}
	conf, err := creds("c2")
	if err != nil {
		t.Fatalf("c2 after connect: %v", err)
	}
	// The relay's certificate for c2 is the one c2 issued to c1's relay
	// (listed in c2's remote-peers), not the agents' remote reader.
	leaf, err := x509.ParseCertificate(conf.Certificates[0].Certificate[0])
	p, ok := clustermesh.PeerOfRelayUser(leaf.Subject.CommonName)
	peers, _ := clustermesh.ScanPeers(clustermesh.PeersFile(peerDir))
	if err != nil || !ok || p.Name != "c1" || !slices.Contains(peers, p) {
		t.Errorf("certificate for c2: %v %v (c2's peers %v)", leaf.Subject, err, peers)
	}
	for _, bad := range []string{"../c1", "", "C1/../../etc", "c2/../c2"} {
		if _, err := creds(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("cluster %q: %v, want ErrConfig", bad, err)
		}
	}
	if err := clustermesh.Disconnect(dir, peerDir); err != nil {
		t.Fatal(err)
	}
	if _, err := creds("c2"); !errors.Is(err, ErrConfig) {
		t.Errorf("c2 after disconnect: %v, want ErrConfig", err)
	}
}

// The page answers for loopback names only (DNS rebinding).
func TestLoopbackHosts(t *testing.T) {
	h := LoopbackHosts(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	for host, want := range map[string]int{
		"127.0.0.1:4246": http.StatusNoContent, "localhost:4246": http.StatusNoContent, "[::1]:4246": http.StatusNoContent,
		"127.0.0.1": http.StatusNoContent, "evil.example:4246": http.StatusMisdirectedRequest,
		"10.0.0.1:4246": http.StatusMisdirectedRequest, "": http.StatusMisdirectedRequest, "localhost.evil:80": http.StatusMisdirectedRequest,
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = host
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("Host %q: %d, want %d", host, w.Code, want)
		}
	}
}

// A follow reads the nodes that join while it runs; with no node known,
// the relay says so.
func TestRelayFollowPicksUpNewNodes(t *testing.T) {
	c1 := newCluster(t, "c1", "hubble-relay")
	creds := func(string) (*tls.Config, error) { return c1.clientTLS(t), nil }
	r, err := New(Config{PeerTarget: "unix:///nowhere", Cluster: "c1", Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	c := serveRelay(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if st, err := c.GetFlows(ctx, &observer.GetFlowsRequest{}); err == nil {
		if _, err = st.Recv(); status.Code(err) != codes.Unavailable {
			t.Errorf("no node known: %v, want Unavailable", err)
		}
	}
	a, na := startNodeServer(t, c1, "n1")
	r.apply(&peer.ChangeNotification{Name: "c1/n1", Address: a}, 1)
	st, err := c.GetFlows(ctx, &observer.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	// nodeFlow writes flows on s until one of node comes through the
	// follow (so the follow runs before what the caller does next).
	nodeFlow := func(s *hubble.Server, node string) {
		t.Helper()
		done := make(chan struct{})
		defer close(done)
		go func() {
			for port := uint16(1); ; port++ {
				select {
				case <-done:
					return
				case <-time.After(20 * time.Millisecond):
					s.Record(drop(time.Now(), port))
				}
			}
		}()
		for {
			resp, err := st.Recv()
			if err != nil {
				t.Fatalf("following: %v", err)
			}
			if resp.GetFlow() != nil && resp.NodeName == node {
				return
			}
		}
	}
	nodeFlow(na, "c1/n1")
	b, nb := startNodeServer(t, c1, "n2")
	r.apply(&peer.ChangeNotification{Name: "c1/n2", Address: b}, 1)
	nodeFlow(nb, "c1/n2")
}

// sent records what a GetFlows stream sends.
type sent struct {
	grpc.ServerStream
	resps []*observer.GetFlowsResponse
}

func (s *sent) Send(r *observer.GetFlowsResponse) error {
	s.resps = append(s.resps, r)
	return nil
}

// A followed flow is held its window after it came, and sent in time
// order: a later flow that is due waits for an earlier one that came
// later. The window follows the nodes' recent lag, within its bounds.
func TestFollowOrder(t *testing.T) {
	now := time.Now()
	flowAt := func(sec int64, arrived time.Duration) arrival {
		return arrival{resp: &observer.GetFlowsResponse{Time: timestamppb.New(time.Unix(sec, 0)),
			ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: &flowpb.Flow{}}}, at: now.Add(-arrived)}
	}
	st := &sent{}
	m := &merge{stream: st, req: &observer.GetFlowsRequest{Follow: true}}
	early, late := flowAt(1, time.Millisecond), flowAt(2, time.Second) // the earlier flow came last
	m.held = []arrival{late, early}
	if err := m.flush(false); err != nil || len(st.resps) != 0 {
		t.Fatalf("sent %d before the earlier flow was due", len(st.resps))
	}
	m.held[0].at = now.Add(-time.Second) // now both are due
	if err := m.flush(false); err != nil || len(st.resps) != 2 || st.resps[0].Time.Seconds != 1 {
		t.Fatalf("sent %v, want both, the earlier first", st.resps)
	}
	var w lagWindow
	if got := w.window(now); got != minSortWindow {
		t.Errorf("no lag seen: window %v, want %v", got, minSortWindow)
	}
	w.add(now, 40*time.Millisecond)
	if got := w.window(now); got != 40*time.Millisecond+lagMargin {
		t.Errorf("lag 40ms: window %v", got)
	}
	w.add(now, time.Minute)
	if got := w.window(now); got != maxSortWindow {
		t.Errorf("lag a minute: window %v, want the bound %v", got, maxSortWindow)
	}
	if got := w.window(now.Add(lagBuckets * time.Second)); got != minSortWindow {
		t.Errorf("lag forgotten after %ds: window %v", lagBuckets, got)
	}
}

// What a node says of itself is not taken: its flows carry the name it
// was verified as, a time far ahead is taken as the arrival's (it cannot
// push other nodes' flows out of --last), and a filter no node could
// apply is refused by the relay itself.
func TestRelayDistrustsNodes(t *testing.T) {
	c1, c2 := newCluster(t, "c1", "hubble-relay"), newCluster(t, "c2", "hubble-remote")
	now := time.Now()
	a := startNode(t, c1, "n1", drop(now.Add(-time.Second), 1))
	b, _ := startNodeAs(t, c2, "n1", hubble.Meta{NodeName: "n1", ClusterName: "c1"}, // claims to be c1/n1
		drop(now.Add(time.Hour), 2)) // from the future
	creds := func(name string) (*tls.Config, error) {
		if name == "c1" {
			return c1.clientTLS(t), nil
		}
		return c2.clientTLS(t), nil
	}
	r, err := New(Config{PeerTarget: "unix:///nowhere", Cluster: "c1", Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	r.apply(&peer.ChangeNotification{Name: "c1/n1", Address: a}, 1)
	r.apply(&peer.ChangeNotification{Name: "c2/n1", Address: b}, 1)
	c := serveRelay(t, r)
	got := collect(t, c, &observer.GetFlowsRequest{Number: 1 << 63})
	var names []string
	for _, resp := range got {
		if f := resp.GetFlow(); f != nil {
			names = append(names, resp.NodeName+"="+f.NodeName)
			if f.Time.AsTime().After(time.Now().Add(maxClockSkew)) {
				t.Errorf("a flow dated %v passed", f.Time.AsTime())
			}
		}
	}
	if len(names) != 2 || names[0] != "c1/n1=c1/n1" || names[1] != "c2/n1=c2/n1" {
		t.Errorf("flows by node (response=flow): %v, want c1/n1's then c2/n1's under their own names", names)
	}
	st, err := c.GetFlows(context.Background(), &observer.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{HttpStatusCode: []string{"abc"}}}})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("a bad filter: %v, want InvalidArgument from the relay", err)
	}
}

// Another site open in the operator's browser could send blind requests
// to the relay's page (no-cors GETs of /api/flows?follow=1 pass the Host
// check) and hold every follow slot, so the page showed nothing. A
// request a browser marks as another site's, or from another origin, is
// refused.
func TestCrossSiteRequestsRefused(t *testing.T) {
	h := LoopbackHosts(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	for _, c := range []struct {
		header, value string
		want          int
	}{
		{"Sec-Fetch-Site", "cross-site", http.StatusForbidden},
		{"Sec-Fetch-Site", "same-site", http.StatusForbidden},
		{"Origin", "https://evil.example", http.StatusForbidden},
		{"Origin", "null", http.StatusForbidden},
		{"Sec-Fetch-Site", "same-origin", http.StatusNoContent},
		{"Sec-Fetch-Site", "none", http.StatusNoContent},
		{"Origin", "http://localhost:4246", http.StatusNoContent},
		{"Origin", "http://127.0.0.1:4246", http.StatusForbidden}, // another origin than localhost:4246
		{"", "", http.StatusNoContent},                            // curl, hubble: no browser headers
	} {
		r := httptest.NewRequest("GET", "/api/flows?follow=1", nil)
		r.Host = "localhost:4246"
		if c.header != "" {
			r.Header.Set(c.header, c.value)
		}
		// The API refuses another site's requests even marked as a
		// navigation.
		r.Header.Set("Sec-Fetch-Mode", "navigate")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != c.want {
			t.Errorf("%s: %s: %d, want %d", c.header, c.value, w.Code, c.want)
		}
	}
}

// A node of a connected cluster answering with an error text that is not
// UTF-8 made the relay's node status event impossible to encode, and the
// whole merged stream ended (at each retry, with follow). The message is
// made valid and bounded.
func TestNodeStatusMessageEncodes(t *testing.T) {
	r := nodeStatus(relaypb.NodeState_NODE_UNAVAILABLE, "rpc error: "+strings.Repeat("\xff", 4096), "east/n1")
	if _, err := proto.Marshal(r); err != nil {
		t.Fatalf("a node status with a hostile message: %v", err)
	}
	if m := r.GetNodeStatus().GetMessage(); len(m) > 3*maxStatusMessage {
		t.Errorf("message of %d bytes", len(m))
	}
}

// A link from another site (a wiki, a dashboard) to the page itself is
// followed.
func TestCrossSiteLinkToPage(t *testing.T) {
	h := LoopbackHosts(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	r := httptest.NewRequest("GET", "/", nil)
	r.Host = "localhost:4246"
	r.Header.Set("Sec-Fetch-Site", "cross-site")
	r.Header.Set("Sec-Fetch-Mode", "navigate")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusNoContent {
		t.Errorf("a navigation from another site to the page: %d", w.Code)
	}
}

// The relay refuses a node of its cluster whose certificate the CA's
// revocation list in the bundle revokes (the agents' peer lists leave
// such a node out; this holds where an agent is not given the list),
// and connects to the others. Before 2026-12-05 it checked the CA only.
func TestBundleCredentialsRefuseRevokedNode(t *testing.T) {
	dir, authority := bundle(t, "c1", 1, "127.0.0.1")
	leaf := func() *x509.Certificate {
		p, err := nodeauth.Issue(authority, "c1", "n1")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(p.Cert)
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	good, revoked := leaf(), leaf()
	crl, err := authority.Revoke(nil, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: revoked.Raw}))
	if err != nil {
		t.Fatal(err)
	}
	_, creds, err := BundleCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := creds("c1")
	if err != nil {
		t.Fatal(err)
	}
	if conf.VerifyPeerCertificate == nil {
		t.Fatal("the relay's TLS checks no revocation")
	}
	verify := func(c *x509.Certificate) error { return conf.VerifyPeerCertificate(nil, [][]*x509.Certificate{{c}}) }
	if err := verify(revoked); err != nil {
		t.Fatalf("no list yet: %v", err)
	}
	if err := os.WriteFile(clustermesh.NodeCRLFile(dir), crl, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := verify(revoked); err == nil {
		t.Error("the relay connects to a node whose certificate is revoked")
	}
	if err := verify(good); err != nil {
		t.Errorf("another node refused: %v", err)
	}
}

// Connected again, the relay has a new certificate for the other
// cluster's nodes, which refuse the one its open connection presented
// (PermissionDenied at each call): the relay connects anew, with the
// certificate read again, and reads the node without being told of it
// again.
func TestRelayConnectsAnewWhenRefused(t *testing.T) {
	dir1, _ := bundle(t, "c1", 1, "127.0.0.1")
	dir2, authority := bundle(t, "c2", 2, "127.0.0.2")
	if _, _, err := clustermesh.Connect(dir1, dir2); err != nil {
		t.Fatal(err)
	}
	c2 := cluster{name: "c2", ca: authority}
	t0 := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	addr, _ := startNodeWith(t, c2, "n1", hubble.Meta{NodeName: "n1", ClusterName: "c2"},
		hubble.Clients{Names: []string{clustermesh.HubbleRelay}, PeersFile: clustermesh.PeersFile(dir2)}, drop(t0, 1))
	flows := relayOf(t, dir1, "c2/n1", addr)
	if n := flows(); n != 1 {
		t.Fatalf("connected: %d flows of c2/n1, want 1", n)
	}
	if _, _, err := clustermesh.Connect(dir1, dir2); err != nil {
		t.Fatal(err)
	}
	readsAgain(t, flows, "connected again: the relay does not read c2/n1 10 s later (it kept the connection its node refuses)")
}

// The relay's own certificate re-issued (hubble-relay.pem) and the old
// one refused by the cluster's node (revoked): the relay's open
// connection presented the old one, so it connects anew with the new one
// and reads the node again.
func TestRelayConnectsAnewWithItsNewCertificate(t *testing.T) {
	dir, authority := bundle(t, "c1", 1, "127.0.0.1")
	old, err := tls.LoadX509KeyPair(filepath.Join(dir, clustermesh.HubbleRelay+".pem"), filepath.Join(dir, clustermesh.HubbleRelay+"-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	oldLeaf, err := x509.ParseCertificate(old.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	var refuseOld atomic.Bool
	revoked := func(c *x509.Certificate) error {
		if refuseOld.Load() && c.SerialNumber.Cmp(oldLeaf.SerialNumber) == 0 {
			return errors.New("revoked")
		}
		return nil
	}
	t0 := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	addr, _ := startNodeWith(t, cluster{name: "c1", ca: authority}, "n1", hubble.Meta{NodeName: "n1", ClusterName: "c1"},
		hubble.Clients{Names: []string{clustermesh.HubbleRelay}, Revoked: revoked}, drop(t0, 1))
	flows := relayOf(t, dir, "c1/n1", addr)
	if n := flows(); n != 1 {
		t.Fatalf("before the new certificate: %d flows, want 1", n)
	}
	pair, err := authority.Issue(clustermesh.HubbleRelay, false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WritePair(dir, clustermesh.HubbleRelay, pair); err != nil {
		t.Fatal(err)
	}
	refuseOld.Store(true)
	readsAgain(t, flows, "the relay does not read its own cluster's node with its new certificate 10 s later")
}

// relayOf serves a relay of the cluster of bundle dir told of node name
// at addr, and returns a count of the flows a GetFlows through it gives.
func relayOf(t *testing.T, dir, name, addr string) func() int {
	t.Helper()
	cluster, creds, err := BundleCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{PeerTarget: "unix:///nowhere", Cluster: cluster, Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	r.apply(&peer.ChangeNotification{Name: name, Address: addr}, 1)
	c := serveRelay(t, r)
	return func() int {
		n := 0
		for _, resp := range collect(t, c, &observer.GetFlowsRequest{}) {
			if resp.GetFlow() != nil {
				n++
			}
		}
		return n
	}
}

// readsAgain fails t with why unless flows gives 1 within 10 s.
func readsAgain(t *testing.T, flows func() int, why string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for flows() != 1 {
		if time.Now().After(deadline) {
			t.Fatal(why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// bundle is a new clustermesh bundle of cluster name (ID id, apiserver at
// ip) and its CA.
func bundle(t *testing.T, name string, id uint32, ip string) (string, *ca.CA) {
	t.Helper()
	dir := t.TempDir()
	if _, err := clustermesh.Enable(dir, name, id, []net.IP{net.ParseIP(ip)}); err != nil {
		t.Fatal(err)
	}
	authority, err := ca.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, authority
}

// hostileNode answers GetFlows with what send sends (a node of a
// compromised cluster).
type hostileNode struct {
	observer.UnimplementedObserverServer
	send   func(observer.Observer_GetFlowsServer) error
	status *observer.ServerStatusResponse
	nodes  *observer.GetNodesResponse
}

func (h hostileNode) ServerStatus(context.Context, *observer.ServerStatusRequest) (*observer.ServerStatusResponse, error) {
	return h.status, nil
}

func (h hostileNode) GetNodes(context.Context, *observer.GetNodesRequest) (*observer.GetNodesResponse, error) {
	return h.nodes, nil
}

func (h hostileNode) GetFlows(_ *observer.GetFlowsRequest, st observer.Observer_GetFlowsServer) error {
	return h.send(st)
}

// A node's answers are bounded in bytes and in count: until 2026-12-07
// the relay read a node's messages up to gRPC's 4 MiB each and held every
// response that was no flow, so one hostile node's flow of nearly 4 MiB
// (larger still once the relay wrote its node name in) ended every query
// through the relay with ResourceExhausted at the client, and its stream
// of lost events for `--last 1` was all held. The node is now reported
// unavailable and the other node's flows still come.
func TestRelayBoundsWhatANodeSends(t *testing.T) {
	c1 := newCluster(t, "c1", "hubble-relay")
	now := time.Now()
	a := startNode(t, c1, "n1", drop(now.Add(-time.Second), 1))
	serve := func(node string, send func(observer.Observer_GetFlowsServer) error) string {
		return serveHostile(t, c1, node, hostileNode{send: send})
	}
	big := serve("n2", func(st observer.Observer_GetFlowsServer) error {
		f := &flowpb.Flow{Time: timestamppb.New(now.Add(-2 * time.Second)), Summary: strings.Repeat("x", 4<<20-64)}
		return st.Send(&observer.GetFlowsResponse{ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: f}, Time: f.Time})
	})
	var sentLost atomic.Int64
	lost := serve("n3", func(st observer.Observer_GetFlowsServer) error {
		for range 20000 {
			if err := st.Send(&observer.GetFlowsResponse{ResponseTypes: &observer.GetFlowsResponse_LostEvents{LostEvents: &observer.LostEvent{NumEventsLost: 1}}}); err != nil {
				return err
			}
			sentLost.Add(1)
		}
		return nil
	})
	r, c := relayOf1(t, c1, a, big)
	flows, unavailable, err := flowsBesides(c, 20*time.Second, "c1/n2")
	if err != nil {
		t.Fatalf("a node's flow of nearly 4 MiB ended the query: %v", err)
	}
	if flows != 1 || !unavailable {
		t.Errorf("%d flows, c1/n2 reported unavailable %v; want n1's flow and n2 unavailable", flows, unavailable)
	}

	r.apply(&peer.ChangeNotification{Name: "c1/n2", Type: peer.ChangeNotificationType_PEER_DELETED}, 1)
	r.apply(&peer.ChangeNotification{Name: "c1/n3", Address: lost}, 1)
	got := collect(t, c, &observer.GetFlowsRequest{Number: 1})
	if len(got) > 2*maxOtherResponses {
		t.Errorf("%d responses passed on for the last flow (the node sent %d lost events), want at most %d", len(got), sentLost.Load(), 2*maxOtherResponses)
	}
}

// serveHostile serves h as node of c (its certificate) and returns its
// address.
func serveHostile(t *testing.T, c cluster, node string, h hostileNode) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go hubble.ServeGRPC(ctx, ln, nodeTLS(t, c, node, hubble.Clients{Names: []string{"hubble-relay", "hubble-remote"}}), func(g *grpc.Server) {
		observer.RegisterObserverServer(g, h)
	})
	return ln.Addr().String()
}

// A node's status and node list are its own claims: until 2026-12-07 a
// node's flow counts were added as they came (one node's 2^64-1 wrapped
// the relay's totals to what it liked) and its version went on with
// control characters to `hubble list nodes`.
func TestRelayNodeStatusBounded(t *testing.T) {
	c1 := newCluster(t, "c1", "hubble-relay")
	a := startNode(t, c1, "n1", drop(time.Now(), 1))
	h := serveHostile(t, c1, "n2", hostileNode{
		status: &observer.ServerStatusResponse{NumFlows: math.MaxUint64, MaxFlows: math.MaxUint64, SeenFlows: math.MaxUint64},
		nodes:  &observer.GetNodesResponse{Nodes: []*observer.Node{{Name: "n2", Version: "\x1b]0;pwned\x07\x1b[2J" + strings.Repeat("v", 4096)}}},
	})
	_, c := relayOf1(t, c1, a, h)
	st, err := c.ServerStatus(context.Background(), &observer.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.NumFlows != math.MaxUint64 || st.MaxFlows != math.MaxUint64 || st.SeenFlows != math.MaxUint64 {
		t.Errorf("totals %d/%d/%d, want them held at the largest (not wrapped)", st.NumFlows, st.MaxFlows, st.SeenFlows)
	}
	nodes, err := c.GetNodes(context.Background(), &observer.GetNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes.Nodes {
		if strings.ContainsAny(n.Version, "\x1b\x07") || len(n.Version) > 128 {
			t.Errorf("node %s's version passed on as %.40q… (%d bytes)", n.Name, n.Version, len(n.Version))
		}
	}
}

// relayOf1 is a relay of cluster c (its credentials) knowing nodes c/n1,
// c/n2, ... at addrs, served; it returns the relay and a client of it.
func relayOf1(t *testing.T, c cluster, addrs ...string) (*Relay, observer.ObserverClient) {
	t.Helper()
	creds := func(string) (*tls.Config, error) { return c.clientTLS(t), nil }
	r, err := New(Config{PeerTarget: "unix:///nowhere", Cluster: c.name, Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range addrs {
		r.apply(&peer.ChangeNotification{Name: fmt.Sprintf("%s/n%d", c.name, i+1), Address: a}, 1)
	}
	return r, serveRelay(t, r)
}

// The relay applies a request's filters to what each node sends: until
// 2026-12-07 it passed on whatever a node answered, so a node of another
// cluster that ignored the filters and dated its flows a few seconds
// ahead filled `--last 1 --node-name c1/n1` with its own.
func TestRelayAppliesFiltersToNodesAnswers(t *testing.T) {
	c1 := newCluster(t, "c1", "hubble-relay")
	now := time.Now()
	a := startNode(t, c1, "n1", drop(now.Add(-time.Second), 1))
	h := serveHostile(t, c1, "n2", hostileNode{send: func(st observer.Observer_GetFlowsServer) error {
		for i := range 5 {
			f := &flowpb.Flow{Time: timestamppb.New(now.Add(4 * time.Second)), NodeName: "c1/n1", L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{DestinationPort: uint32(100 + i)}}}}
			if err := st.Send(&observer.GetFlowsResponse{ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: f}, Time: f.Time}); err != nil {
				return err
			}
		}
		return nil
	}})
	_, c := relayOf1(t, c1, a, h)
	got := collect(t, c, &observer.GetFlowsRequest{Number: 1, Whitelist: []*flowpb.FlowFilter{{NodeName: []string{"c1/n1"}}}})
	var ports []uint32
	for _, resp := range got {
		if f := resp.GetFlow(); f != nil {
			ports = append(ports, f.GetL4().GetTCP().GetDestinationPort())
		}
	}
	if !equal(ports, []uint32{1}) {
		t.Errorf("--last 1 --node-name c1/n1: ports %v, want c1/n1's flow (port 1)", ports)
	}
}

// A call without follow is answered within the caller's deadline, a node
// that sends nothing reported unavailable: until 2026-12-07 the relay
// waited 30 s for every node, past the web page's 20 s.
func TestRelayAnswersWithinTheCallersDeadline(t *testing.T) {
	c1 := newCluster(t, "c1", "hubble-relay")
	a := startNode(t, c1, "n1", drop(time.Now(), 1))
	silent := serveHostile(t, c1, "n2", hostileNode{send: func(st observer.Observer_GetFlowsServer) error {
		<-st.Context().Done()
		return nil
	}})
	_, c := relayOf1(t, c1, a, silent)
	flows, unavailable, err := flowsBesides(c, 4*time.Second, "c1/n2")
	if err != nil {
		t.Fatalf("a silent node held the call past its deadline: %v", err)
	}
	if flows != 1 || !unavailable {
		t.Errorf("%d flows, the silent node reported unavailable %v; want n1's flow and n2 unavailable", flows, unavailable)
	}
}

// flowsBesides asks c for the last 10 flows within timeout and counts the
// flows it answers, and whether node was reported unavailable.
func flowsBesides(c observer.ObserverClient, timeout time.Duration, node string) (flows int, unavailable bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := c.GetFlows(ctx, &observer.GetFlowsRequest{Number: 10})
	if err != nil {
		return 0, false, err
	}
	for {
		resp, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return flows, unavailable, nil
		}
		if err != nil {
			return flows, unavailable, err
		}
		if resp.GetFlow() != nil {
			flows++
		}
		if ns := resp.GetNodeStatus(); ns != nil && ns.StateChange == relaypb.NodeState_NODE_UNAVAILABLE && slices.Contains(ns.NodeNames, node) {
			unavailable = true
		}
	}
}
