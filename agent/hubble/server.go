package hubble

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/filament-net/filament/agent/flow"
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
	// Address is the node's Hubble address that Peer announces.
	address string
}

// Config configures a Server.
type Config struct {
	Meta     Meta
	Capacity int    // the flow ring's size (flow.DefaultCapacity when 0)
	Address  string // host:port the Peer service announces for this node
	Version  string
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
	return &Server{meta: c.Meta, ring: ring, started: time.Now(), version: c.Version, address: c.Address}, nil
}

// Record turns an event into a flow and writes it to the ring.
func (s *Server) Record(ev monitor.Event) { s.ring.Write(s.meta.Flow(ev)) }

// Follow records the events of ch until it closes.
func (s *Server) Follow(ch <-chan monitor.Event) {
	for ev := range ch {
		s.Record(ev)
	}
}

// Serve serves the Hubble API on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	g := grpc.NewServer()
	observer.RegisterObserverServer(g, s)
	peer.RegisterPeerServer(g, s)
	go func() {
		<-ctx.Done()
		g.Stop()
	}()
	if err := g.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// GetFlows sends the flows held that pass the request's filters (the
// last Number, or the first with First, or all; within Since/Until), then
// with Follow the new ones as they come, until the client goes.
func (s *Server) GetFlows(req *observer.GetFlowsRequest, stream grpc.ServerStreamingServer[observer.GetFlowsResponse]) error {
	fs, err := compileFilters(req.Whitelist, req.Blacklist)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	var since, until time.Time
	if req.Since != nil {
		since = req.Since.AsTime()
	}
	if req.Until != nil {
		until = req.Until.AsTime()
	}
	pass := func(f *flowpb.Flow) bool {
		t := f.GetTime().AsTime()
		return (since.IsZero() || !t.Before(since)) && (until.IsZero() || !t.After(until)) && fs.pass(f)
	}
	send := func(f *flowpb.Flow) error {
		return stream.Send(&observer.GetFlowsResponse{ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: f}, NodeName: f.NodeName, Time: f.Time})
	}
	rd := s.ring.Reader(0, false)
	var backlog []*flowpb.Flow
	for {
		f, _, ok := rd.Next()
		if !ok {
			break
		}
		if pass(f) {
			backlog = append(backlog, f)
		}
	}
	if n := int(req.Number); n > 0 && n < len(backlog) {
		if req.First {
			backlog = backlog[:n]
		} else {
			backlog = backlog[len(backlog)-n:]
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
			if err := stream.Send(&observer.GetFlowsResponse{
				ResponseTypes: &observer.GetFlowsResponse_LostEvents{LostEvents: &flowpb.LostEvent{
					Source: flowpb.LostEventSource_HUBBLE_RING_BUFFER, NumEventsLost: lost}},
				NodeName: s.meta.node(), Time: timestamppb.Now()}); err != nil {
				return err
			}
		}
		if until.IsZero() || !f.GetTime().AsTime().After(until) {
			if pass(f) {
				if err := send(f); err != nil {
					return err
				}
			}
		}
	}
}

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

// Notify announces this node (the mesh's other nodes are the relay's to
// find: not done yet) and holds the stream until the client goes.
func (s *Server) Notify(_ *peer.NotifyRequest, stream grpc.ServerStreamingServer[peer.ChangeNotification]) error {
	if err := stream.Send(&peer.ChangeNotification{Name: s.meta.node(), Address: s.address, Type: peer.ChangeNotificationType_PEER_ADDED}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

// Listen is net.Listen with the error naming what it is for.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("hubble API on %s: %w", addr, err)
	}
	return ln, nil
}
