package hubble

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/filament-net/filament/agent/flow"
	"github.com/filament-net/filament/agent/hubble/filter"
	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/agent/hubble/pb/peer"
	"github.com/filament-net/filament/agent/monitor"
)

// Server is one node's Hubble API: its flow ring, filled from the
// monitor's events, served by the Observer and Peer services.
type Server struct {
	observer.UnimplementedObserverServer
	peer.UnimplementedPeerServer

	meta    Meta
	ring    *flow.Ring[*flowpb.Flow]
	started time.Time
	version string
	address string // Config.Address
	peers   *Peers
	// queueLost is how many events the monitor could not queue for the
	// server (it fell behind).
	queueLost atomic.Uint64
	// datapathLost is Config.DatapathLost (nil: none).
	datapathLost func() uint64
	// revoked ends revoked clients' calls (revoke.go).
	revoked *revocations
	onFlow  func(*flowpb.Flow)
}

// Config configures a Server.
type Config struct {
	Meta     Meta
	Capacity int    // the flow ring's size (flow.DefaultCapacity when 0)
	Address  string // the address the Peer service announces for this node when Peers has no TCP port (unix:///path)
	Version  string
	// Peers are the nodes the Peer service announces (nil: this node).
	Peers *Peers
	// OnFlow, when set, is called with each flow recorded (the flow
	// metrics), on the recording goroutine: it must not block.
	OnFlow func(*flowpb.Flow)
	// DatapathLost, when set, is how many events the datapath could not
	// report (its events ring was full), reported to following clients
	// as lost events (PERF_EVENT_RING_BUFFER); it must be cheap.
	DatapathLost func() uint64
	// Revoked, when set, tells whether a TLS client may no longer use
	// the API (its certificate revoked by the CA's list, its cluster
	// disconnected: Clients.Check): checked at each call, and for the
	// calls open at each RecheckRevoked.
	Revoked func(*x509.Certificate) error
}

// New returns a server with an empty ring.
func New(c Config) (*Server, error) {
	if c.Capacity == 0 {
		c.Capacity = flow.DefaultCapacity
	}
	ring, err := flow.NewRing[*flowpb.Flow](c.Capacity)
	if err != nil {
		return nil, err
	}
	return &Server{meta: c.Meta, ring: ring, started: time.Now(), version: c.Version, address: c.Address, peers: c.Peers, onFlow: c.OnFlow,
		datapathLost: c.DatapathLost, revoked: newRevocations(c.Revoked)}, nil
}

// Record turns an event into a flow and writes it to the ring.
func (s *Server) Record(ev monitor.Event) {
	f := s.meta.Flow(ev)
	s.ring.Write(f)
	if s.onFlow != nil {
		s.onFlow(f)
	}
}

// Follow records the events of ch until it closes; lost (nil: none) is
// how many events the channel's source could not queue, reported to
// following clients as lost events.
func (s *Server) Follow(ch <-chan monitor.Event, lost func() uint64) {
	for ev := range ch {
		if lost != nil {
			s.queueLost.Store(lost())
		}
		s.Record(ev)
	}
}

// Serve serves the Hubble API on ln until ctx ends, over TLS with conf
// when it is not nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener, conf *tls.Config) error {
	return ServeGRPC(ctx, ln, conf, func(g *grpc.Server) {
		observer.RegisterObserverServer(g, s)
		peer.RegisterPeerServer(g, s)
	}, grpc.ChainUnaryInterceptor(s.revoked.unary), grpc.ChainStreamInterceptor(s.revoked.stream))
}

// ServeGRPC serves what register registers, and health checks, on ln
// until ctx ends (over TLS with conf when it is not nil), with the
// Hubble API's bounds on clients (and extra's options, interceptors
// chained after its own).
func ServeGRPC(ctx context.Context, ln net.Listener, conf *tls.Config, register func(*grpc.Server), extra ...grpc.ServerOption) error {
	opts := []grpc.ServerOption{grpc.MaxConcurrentStreams(maxStreams), grpc.MaxRecvMsgSize(maxRequest),
		grpc.ConnectionTimeout(handshakeTimeout),
		grpc.ChainUnaryInterceptor(recoverUnary), grpc.ChainStreamInterceptor(recoverStream, limitStreams(maxServerStreams)),
		// The relay pings every 30 s to notice a node gone silent.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 20 * time.Second, PermitWithoutStream: true})}
	if conf != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(conf)))
	}
	g := grpc.NewServer(append(opts, extra...)...)
	register(g)
	registerHealth(g)
	go func() {
		<-ctx.Done()
		g.Stop()
	}()
	if err := g.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// handshakeTimeout bounds a new connection's TLS and HTTP/2 handshakes
// (gRPC's default is 120 s): the TCP listener is on the network.
var handshakeTimeout = 10 * time.Second

// A client's bounds: concurrent calls per connection, request size; and
// the server's: streams (GetFlows, Notify) open at once over all clients.
const (
	maxStreams       = 64
	maxRequest       = 256 << 10
	maxServerStreams = 256
)

// recoverUnary and recoverStream turn a handler's panic into an Internal
// error for that call (logged), never a dead agent or relay.
func recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer recovered(info.FullMethod, &err)
	return h(ctx, req)
}

func recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer recovered(info.FullMethod, &err)
	return h(srv, ss)
}

func recovered(method string, err *error) {
	if r := recover(); r != nil {
		slog.Error("hubble API: a call panicked", "method", method, "panic", r, "stack", string(debug.Stack()))
		*err = status.Error(codes.Internal, "internal error")
	}
}

// limitStreams refuses a stream when max of its client's are open
// (ResourceExhausted). A client is its certificate's common name (the
// names the TLS listener admits: this cluster's relay, a connected
// cluster's), or "" without TLS (the unix socket's local clients): one
// client holding all of its streams does not lock the others out. The
// pools are as many as the names the listener admits, plus one.
func limitStreams(max int) grpc.StreamServerInterceptor {
	var mu sync.Mutex
	open := map[string]int{}
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		client := streamClient(ss)
		mu.Lock()
		if open[client] >= max {
			mu.Unlock()
			return status.Errorf(codes.ResourceExhausted, "%d streams open: try later", max)
		}
		open[client]++
		mu.Unlock()
		defer func() {
			mu.Lock()
			if open[client]--; open[client] == 0 {
				delete(open, client)
			}
			mu.Unlock()
		}()
		return h(srv, ss)
	}
}

// streamClient is the common name of the certificate ss's client
// presented ("" without one).
func streamClient(ss grpc.ServerStream) string {
	if ss == nil {
		return ""
	}
	if c := clientCert(ss.Context()); c != nil {
		return c.Subject.CommonName
	}
	return ""
}

// GetFlows sends the flows held that pass the request's filters (the
// last Number, or the first with First, or all; within Since/Until), then
// with Follow the new ones as they come, until the client goes.
func (s *Server) GetFlows(req *observer.GetFlowsRequest, stream grpc.ServerStreamingServer[observer.GetFlowsResponse]) error {
	fs, err := filter.Compile(req.Whitelist, req.Blacklist)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	pass := func(f *flowpb.Flow) bool {
		return filter.InWindow(f.GetTime().AsTime(), req.Since, req.Until) && fs.Pass(f)
	}
	send := func(f *flowpb.Flow) error {
		return stream.Send(&observer.GetFlowsResponse{ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: f}, NodeName: f.NodeName, Time: f.Time})
	}
	lostFrom := func(src flowpb.LostEventSource, n uint64) error {
		return stream.Send(&observer.GetFlowsResponse{
			ResponseTypes: &observer.GetFlowsResponse_LostEvents{LostEvents: &flowpb.LostEvent{Source: src, NumEventsLost: n}},
			NodeName:      s.meta.node(), Time: timestamppb.Now()})
	}
	lostEvent := func(n uint64) error { return lostFrom(flowpb.LostEventSource_HUBBLE_RING_BUFFER, n) }
	queueLost := s.queueLost.Load() // events the server missed before this stream
	dpLost := s.datapathLosses()    // events the datapath lost before this stream
	// grown reports the growth of a loss count n since *last.
	grown := func(src flowpb.LostEventSource, n uint64, last *uint64) error {
		if n <= *last {
			return nil
		}
		d := n - *last
		*last = n
		return lostFrom(src, d)
	}
	// The backlog: the flows held when the request came, at most Number
	// of them kept (the first, or a window of the last); following with
	// neither Number nor Since, none (Hubble's: only new flows).
	n := int(min(req.Number, uint64(s.ring.Capacity()))) // no more are held (and 2n cannot overflow)
	end, _ := s.ring.Stats()
	rd := s.ring.Reader(0, req.Follow && n == 0 && req.Since == nil)
	var backlog []*flowpb.Flow
	var lost uint64
	for rd.Pos() < end && !(req.First && n > 0 && len(backlog) == n) {
		f, l, ok := rd.Next()
		lost += l
		if !ok {
			break
		}
		if !pass(f) {
			continue
		}
		backlog = append(backlog, f)
		if !req.First && n > 0 && len(backlog) >= 2*n {
			backlog = append(backlog[:0], backlog[len(backlog)-n:]...)
		}
	}
	if !req.First && n > 0 && len(backlog) > n {
		backlog = backlog[len(backlog)-n:]
	}
	if lost > 0 {
		if err := lostEvent(lost); err != nil {
			return err
		}
	}
	for _, f := range backlog {
		if err := send(f); err != nil {
			return err
		}
	}
	if !req.Follow {
		return nil
	}
	ctx := stream.Context()
	for {
		f, lost, err := rd.Wait(ctx)
		if err != nil {
			return nil // the client went
		}
		if lost > 0 {
			if err := lostEvent(lost); err != nil {
				return err
			}
		}
		if err := grown(flowpb.LostEventSource_OBSERVER_EVENTS_QUEUE, s.queueLost.Load(), &queueLost); err != nil {
			return err
		}
		if err := grown(flowpb.LostEventSource_PERF_EVENT_RING_BUFFER, s.datapathLosses(), &dpLost); err != nil {
			return err
		}
		if req.Until != nil && !filter.InWindow(f.GetTime().AsTime(), nil, req.Until) {
			return nil // past the window: the stream ends, as Hubble's
		}
		if pass(f) {
			if err := send(f); err != nil {
				return err
			}
		}
	}
}

// datapathLosses is Config.DatapathLost's count (0 without one).
func (s *Server) datapathLosses() uint64 {
	if s.datapathLost == nil {
		return 0
	}
	return s.datapathLost()
}

// Flows is the server's flow ring, for readers other than the API (the
// exporter): a reader that falls behind loses flows, the writer never
// waits.
func (s *Server) Flows() *flow.Ring[*flowpb.Flow] { return s.ring }

// ServerStatus reports the ring's counts.
func (s *Server) ServerStatus(context.Context, *observer.ServerStatusRequest) (*observer.ServerStatusResponse, error) {
	seen, held := s.ring.Stats()
	return &observer.ServerStatusResponse{
		NumFlows: uint64(held), MaxFlows: uint64(s.ring.Capacity()), SeenFlows: seen,
		UptimeNs: uint64(time.Since(s.started)), Version: s.version,
		NumConnectedNodes: wrapperspb.UInt32(1), NumUnavailableNodes: wrapperspb.UInt32(0),
	}, nil
}

// GetNodes lists this node.
func (s *Server) GetNodes(context.Context, *observer.GetNodesRequest) (*observer.GetNodesResponse, error) {
	seen, held := s.ring.Stats()
	return &observer.GetNodesResponse{Nodes: []*observer.Node{{
		Name: s.meta.node(), Version: s.version, Address: s.address, UptimeNs: uint64(time.Since(s.started)),
		NumFlows: uint64(held), MaxFlows: uint64(s.ring.Capacity()), SeenFlows: seen,
	}}}, nil
}

// Notify announces the nodes of Peers (the node's cluster and connected
// clusters, at their Hubble TCP address), then their changes, until the
// client goes; without a TCP API, only this node at Address.
func (s *Server) Notify(_ *peer.NotifyRequest, stream grpc.ServerStreamingServer[peer.ChangeNotification]) error {
	var (
		all     []*peer.ChangeNotification
		changes <-chan *peer.ChangeNotification
		ok      bool
	)
	if s.peers != nil {
		var cancel func()
		all, changes, cancel, ok = s.peers.subscribe()
		if ok {
			defer cancel()
		}
	}
	if !ok {
		all = []*peer.ChangeNotification{{Name: s.meta.node(), Address: s.address, Type: peer.ChangeNotificationType_PEER_ADDED}}
	}
	for _, cn := range all {
		if err := stream.Send(cn); err != nil {
			return err
		}
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case cn, open := <-changes: // nil without Peers: blocks
			if !open {
				return status.Error(codes.ResourceExhausted, "too far behind the node changes: reconnect")
			}
			if err := stream.Send(cn); err != nil {
				return err
			}
		}
	}
}

// ListenUnix listens on the unix socket path (a stale one is replaced),
// readable and writable by its owner and group only: the API serves every
// flow of the node.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("hubble socket dir: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path) // a stale socket; any other file stays, and Listen fails
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("hubble socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("hubble socket: %w", err)
	}
	return ln, nil
}

// healthService is the name Hubble's servers give the Observer in gRPC
// health checks (what `hubble status` asks first).
const healthService = "hubble.server.Observer"

// registerHealth serves gRPC health checks on g, the Observer serving.
func registerHealth(g *grpc.Server) {
	h := health.NewServer()
	h.SetServingStatus(healthService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, h)
}
