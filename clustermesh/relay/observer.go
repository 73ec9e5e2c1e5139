package relay

import (
	"context"
	"errors"
	"io"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/filament-net/filament/agent/hubble/pb/observer"
	relaypb "github.com/filament-net/filament/agent/hubble/pb/relay"
)

// Merging: the flows held when a request comes (its backlog) are gathered
// for up to backlogWindow, sorted by time and cut to the request's Number;
// followed flows are sent in time order within sortWindow of arrival.
const (
	backlogWindow = time.Second
	sortWindow    = 200 * time.Millisecond
	mergeBuffer   = 4096 // responses queued from the nodes
	callTimeout   = 3 * time.Second
)

// arrival is a node's response and when it came.
type arrival struct {
	resp *observer.GetFlowsResponse
	at   time.Time
}

// GetFlows asks every node for the request's flows and sends them merged
// by time; nodes the relay cannot read are announced first as
// NODE_UNAVAILABLE.
func (r *Relay) GetFlows(req *observer.GetFlowsRequest, stream grpc.ServerStreamingServer[observer.GetFlowsResponse]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	items := make(chan arrival, mergeBuffer)
	var wg sync.WaitGroup
	var unavailable []string
	var errMsg string
	for _, p := range r.snapshot() {
		if p.conn == nil {
			unavailable = append(unavailable, p.name)
			errMsg = p.err.Error()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := readNode(ctx, p, req, items); err != nil && ctx.Err() == nil {
				items <- arrival{resp: nodeStatus(relaypb.NodeState_NODE_UNAVAILABLE, err.Error(), p.name), at: time.Now()}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(items)
	}()
	if len(unavailable) > 0 {
		if err := stream.Send(nodeStatus(relaypb.NodeState_NODE_UNAVAILABLE, errMsg, unavailable...)); err != nil {
			return err
		}
	}
	// The backlog: everything until the nodes end (no follow) or the
	// window closes.
	var backlog []arrival
	window := time.NewTimer(backlogWindow)
	if req.Follow && req.Number == 0 && req.Since == nil {
		window.Reset(0) // only new flows: no backlog to gather
	}
	defer window.Stop()
	open := true
gather:
	for open {
		select {
		case a, ok := <-items:
			if !ok {
				open = false
				break gather
			}
			backlog = append(backlog, a)
		case <-window.C:
			if req.Follow {
				break gather
			}
		case <-ctx.Done():
			return nil
		}
	}
	for _, a := range cut(sortByTime(backlog), req) {
		if err := stream.Send(a.resp); err != nil {
			return err
		}
	}
	if !open {
		return nil
	}
	// Following: send in time order what came more than sortWindow ago.
	tick := time.NewTicker(sortWindow / 4)
	defer tick.Stop()
	var pending []arrival
	flush := func(all bool) error {
		sortByTime(pending)
		now := time.Now()
		keep := pending[:0]
		var send []arrival
		for _, a := range pending {
			if all || now.Sub(a.at) >= sortWindow {
				send = append(send, a)
			} else {
				keep = append(keep, a)
			}
		}
		pending = keep
		for _, a := range send {
			if err := stream.Send(a.resp); err != nil {
				return err
			}
		}
		return nil
	}
	for {
		select {
		case a, ok := <-items:
			if !ok {
				return flush(true)
			}
			pending = append(pending, a)
			if len(pending) >= mergeBuffer {
				if err := flush(true); err != nil {
					return err
				}
			}
		case <-tick.C:
			if err := flush(false); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// readNode streams one node's responses into items until it ends.
func readNode(ctx context.Context, p *member, req *observer.GetFlowsRequest, items chan<- arrival) error {
	stream, err := observer.NewObserverClient(p.conn).GetFlows(ctx, req)
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if resp.NodeName == "" {
			resp.NodeName = p.name
		}
		select {
		case items <- arrival{resp: resp, at: time.Now()}:
		case <-ctx.Done():
			return nil
		}
	}
}

// sortByTime sorts responses by their time (stable: a node's order kept).
func sortByTime(as []arrival) []arrival {
	sort.SliceStable(as, func(i, j int) bool { return as[i].resp.GetTime().AsTime().Before(as[j].resp.GetTime().AsTime()) })
	return as
}

// cut keeps the request's Number of flows of the merged backlog: the
// first with First, else the last (other responses are all kept).
func cut(as []arrival, req *observer.GetFlowsRequest) []arrival {
	n := int(req.Number)
	if n <= 0 {
		return as
	}
	flows := 0
	for _, a := range as {
		if a.resp.GetFlow() != nil {
			flows++
		}
	}
	drop := flows - n
	if drop <= 0 {
		return as
	}
	out := make([]arrival, 0, len(as)-drop)
	if req.First {
		kept := 0
		for _, a := range as {
			if a.resp.GetFlow() == nil || kept < n {
				out = append(out, a)
				if a.resp.GetFlow() != nil {
					kept++
				}
			}
		}
		return out
	}
	for _, a := range as {
		if a.resp.GetFlow() != nil && drop > 0 {
			drop--
			continue
		}
		out = append(out, a)
	}
	return out
}

func nodeStatus(state relaypb.NodeState, msg string, nodes ...string) *observer.GetFlowsResponse {
	return &observer.GetFlowsResponse{Time: timestamppb.Now(), ResponseTypes: &observer.GetFlowsResponse_NodeStatus{
		NodeStatus: &relaypb.NodeStatusEvent{StateChange: state, NodeNames: nodes, Message: msg}}}
}

// nodeAnswer is one node's answer to a unary call.
type nodeAnswer[T any] struct {
	p   *member
	v   T
	err error
}

// ask calls f on every readable node at once (callTimeout each).
func ask[T any](ctx context.Context, r *Relay, f func(context.Context, observer.ObserverClient) (T, error)) []nodeAnswer[T] {
	ps := r.snapshot()
	out := make([]nodeAnswer[T], len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		out[i].p = p
		if p.conn == nil {
			out[i].err = p.err
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			defer cancel()
			out[i].v, out[i].err = f(cctx, observer.NewObserverClient(p.conn))
		}()
	}
	wg.Wait()
	return out
}

// ServerStatus sums the nodes' statuses.
func (r *Relay) ServerStatus(ctx context.Context, _ *observer.ServerStatusRequest) (*observer.ServerStatusResponse, error) {
	out := &observer.ServerStatusResponse{Version: "filament-relay"}
	var connected, unavailable uint32
	for _, a := range ask(ctx, r, func(ctx context.Context, c observer.ObserverClient) (*observer.ServerStatusResponse, error) {
		return c.ServerStatus(ctx, &observer.ServerStatusRequest{})
	}) {
		if a.err != nil {
			unavailable++
			out.UnavailableNodes = append(out.UnavailableNodes, a.p.name)
			continue
		}
		connected++
		out.NumFlows += a.v.NumFlows
		out.MaxFlows += a.v.MaxFlows
		out.SeenFlows += a.v.SeenFlows
		out.UptimeNs = max(out.UptimeNs, a.v.UptimeNs)
	}
	if connected == 0 && unavailable == 0 {
		return nil, status.Error(codes.Unavailable, "the relay knows no node yet")
	}
	out.NumConnectedNodes = wrapperspb.UInt32(connected)
	out.NumUnavailableNodes = wrapperspb.UInt32(unavailable)
	return out, nil
}

// GetNodes lists every node the relay knows, connected or not.
func (r *Relay) GetNodes(ctx context.Context, _ *observer.GetNodesRequest) (*observer.GetNodesResponse, error) {
	out := &observer.GetNodesResponse{}
	for _, a := range ask(ctx, r, func(ctx context.Context, c observer.ObserverClient) (*observer.GetNodesResponse, error) {
		return c.GetNodes(ctx, &observer.GetNodesRequest{})
	}) {
		n := &observer.Node{Name: a.p.name, Address: a.p.address, State: relaypb.NodeState_NODE_UNAVAILABLE,
			Tls: &observer.TLS{Enabled: true, ServerName: a.p.serverName}}
		if a.err == nil && len(a.v.Nodes) > 0 {
			got := a.v.Nodes[0]
			n.State, n.Version, n.UptimeNs = relaypb.NodeState_NODE_CONNECTED, got.Version, got.UptimeNs
			n.NumFlows, n.MaxFlows, n.SeenFlows = got.NumFlows, got.MaxFlows, got.SeenFlows
		}
		out.Nodes = append(out.Nodes, n)
	}
	return out, nil
}
