package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/filament-net/filament/agent/hubble/filter"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	relaypb "github.com/filament-net/filament/agent/hubble/pb/relay"
	"github.com/filament-net/filament/agent/monitor"
)

// Merging: the flows held when a request comes (its backlog) are gathered
// for up to backlogWindow, sorted by time and cut to the request's Number;
// a followed flow is held after its arrival as long as the nodes' flows
// have lately taken to arrive (the most of the last lagBuckets seconds,
// plus lagMargin, within minSortWindow..maxSortWindow), then sent in time
// order: a node's flow that is older but slower to come still goes first.
const (
	backlogWindow = time.Second
	minSortWindow = 10 * time.Millisecond
	maxSortWindow = 200 * time.Millisecond
	lagMargin     = 5 * time.Millisecond
	lagBuckets    = 10          // seconds of lag remembered
	scanInterval  = time.Second // a follow looks for new nodes
	mergeBuffer   = 4096        // responses queued from the nodes
	callTimeout   = 3 * time.Second
)

// arrival is a node's response and when it came.
type arrival struct {
	resp *observer.GetFlowsResponse
	at   time.Time
}

// GetFlows asks every node for the request's flows and sends them merged
// by time; nodes the relay cannot read are announced as NODE_UNAVAILABLE.
// A follow also reads the nodes that join while it runs, and reads a node
// whose stream failed again (at most every retryAfter, from then on).
func (r *Relay) GetFlows(req *observer.GetFlowsRequest, stream grpc.ServerStreamingServer[observer.GetFlowsResponse]) error {
	// A filter the nodes would refuse is refused here, once; the nodes'
	// flows are checked against it again (a node's answer is its own).
	fs, err := filter.Compile(req.Whitelist, req.Blacklist)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	req.Number = min(req.Number, maxFlows)
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	m := &merge{r: r, req: req, fs: fs, stream: stream, ctx: ctx, items: make(chan arrival, mergeBuffer),
		ended: make(chan ended), reading: map[*member]time.Time{}, backlog: true}
	if err := m.scan(); err != nil {
		return err
	}
	if m.running == 0 && len(m.reading) == 0 {
		return status.Error(codes.Unavailable, "the relay knows no node yet")
	}
	return m.run()
}

// retryAfter spaces a follow's new reads of a node whose stream failed.
const retryAfter = 5 * time.Second

// Bounds of one call: the flows asked of a node (the most a node's ring
// holds) and held at once; how long a node may take to send what a call
// without follow asks; how far ahead of the relay's clock a node's flow
// time may be (a later time is taken as its arrival's, so a node cannot
// push other nodes' flows out of --last with future times).
const (
	maxFlows = 1 << 20
	maxHeld  = 1 << 18
	// maxOtherResponses bounds the responses that are no flow (lost
	// events) the relay reads from a node for one call without follow
	// (until 2026-12-07 it read them without end: only flows counted).
	maxOtherResponses = 1024
	// maxNodeMessage bounds one message from a node below what the
	// relay's clients take (gRPC's 4 MiB), with room for the node names
	// the relay writes in (a flow's labels, namespace labels included,
	// are not bounded otherwise).
	maxNodeMessage = 4<<20 - 64<<10
	readTimeout    = 30 * time.Second
	maxClockSkew   = 5 * time.Second
)

// errNodeAnswer: a node's answer passed a bound of the relay's (the node
// is reported unavailable for the call).
var errNodeAnswer = errors.New("a node's answer out of the relay's bounds")

// merge is one GetFlows call's state.
type merge struct {
	r      *Relay
	req    *observer.GetFlowsRequest
	fs     filter.Set // req's filters
	stream grpc.ServerStreamingServer[observer.GetFlowsResponse]
	ctx    context.Context
	items  chan arrival
	ended  chan ended
	// reading: the nodes read (or not readable), with when they may be
	// read again (zero: not while this call runs).
	reading map[*member]time.Time
	running int
	backlog bool // still gathering the backlog
	held    []arrival
	lag     lagWindow
}

// lagWindow is the most a flow took from its time to its arrival, per
// second over the last lagBuckets seconds.
type lagWindow struct {
	max [lagBuckets]time.Duration
	sec [lagBuckets]int64 // the second each bucket is for
}

func (w *lagWindow) add(at time.Time, lag time.Duration) {
	i := at.Unix() % lagBuckets
	if w.sec[i] != at.Unix() {
		w.sec[i], w.max[i] = at.Unix(), 0
	}
	w.max[i] = max(w.max[i], lag)
}

// window is how long to hold a flow after its arrival.
func (w *lagWindow) window(now time.Time) time.Duration {
	var most time.Duration
	for i := range w.max {
		if now.Unix()-w.sec[i] < lagBuckets {
			most = max(most, w.max[i])
		}
	}
	return min(max(most+lagMargin, minSortWindow), maxSortWindow)
}

// ended is a node's stream ending (err nil: it ended as asked).
type ended struct {
	p   *member
	err error
}

// scan starts reading the nodes not read yet (and, in a follow, those due
// a retry), announcing the unreadable ones.
func (m *merge) scan() error {
	var unavailable []string
	var msg string
	now := time.Now()
	known := m.r.snapshot()
	for p := range m.reading { // gone from the relay (left, or moved)
		if !slices.Contains(known, p) {
			delete(m.reading, p)
		}
	}
	for _, p := range known {
		again, retry := m.reading[p]
		if retry && (again.IsZero() || now.Before(again)) {
			continue
		}
		m.reading[p] = time.Time{}
		if p.conn == nil {
			unavailable, msg = append(unavailable, p.name), p.err.Error()
			continue
		}
		req := m.req
		if !m.backlog {
			// A node read again, or joining, once the backlog was sent:
			// from now on.
			req = &observer.GetFlowsRequest{Whitelist: m.req.Whitelist, Blacklist: m.req.Blacklist, Follow: true,
				Since: timestamppb.Now(), Until: m.req.Until}
		}
		m.running++
		go func() {
			err := readNode(m.ctx, p, req, m.fs, m.items)
			select {
			case m.ended <- ended{p, err}:
			case <-m.ctx.Done():
			}
		}()
	}
	if len(unavailable) == 0 {
		return nil
	}
	return m.stream.Send(nodeStatus(relaypb.NodeState_NODE_UNAVAILABLE, msg, unavailable...))
}

// run merges until the nodes' streams end (no follow, or a follow that
// reached Until everywhere) or the client goes.
func (m *merge) run() error {
	m.backlog = true
	if m.running == 0 && (!m.req.Follow || m.req.Until != nil) {
		return nil // no node to read: the unreadable ones were announced
	}
	window := time.NewTimer(backlogWindow)
	defer window.Stop()
	if m.req.Follow && m.req.Number == 0 && m.req.Since == nil {
		window.Reset(0) // only new flows: no backlog to gather
	}
	tick := time.NewTicker(scanInterval)
	defer tick.Stop()
	flushAt := time.NewTimer(time.Hour)
	defer flushAt.Stop()
	armed := false // flushAt is set for the oldest held flow
	for {
		select {
		case a := <-m.items:
			if t := a.resp.GetTime(); t != nil {
				m.lag.add(a.at, a.at.Sub(t.AsTime()))
			}
			m.held = append(m.held, a)
			if m.backlog && len(m.held) >= maxHeld {
				m.trim()
			}
			if !m.backlog && len(m.held) >= mergeBuffer {
				if err := m.flush(true); err != nil {
					return err
				}
			}
			if !m.backlog && !armed {
				flushAt.Reset(time.Until(a.at.Add(m.lag.window(a.at))))
				armed = true
			}
		case <-flushAt.C:
			armed = false
			if err := m.flush(false); err != nil {
				return err
			}
			if len(m.held) > 0 { // in time order: the first is what the next send waits for
				flushAt.Reset(time.Until(m.held[0].at.Add(m.lag.window(time.Now()))))
				armed = true
			}
		case e := <-m.ended:
			m.running--
			if e.err != nil && m.ctx.Err() == nil {
				if err := m.stream.Send(nodeStatus(relaypb.NodeState_NODE_UNAVAILABLE, e.err.Error(), e.p.name)); err != nil {
					return err
				}
			}
			if m.req.Follow && m.req.Until == nil && status.Code(e.err) != codes.InvalidArgument {
				m.reading[e.p] = time.Now().Add(retryAfter) // a follow goes on
			}
			if m.running == 0 && (!m.req.Follow || m.req.Until != nil) {
				m.drain()
				return m.flush(true)
			}
		case <-window.C:
			if m.req.Follow {
				if err := m.flush(true); err != nil {
					return err
				}
				m.backlog = false
			}
		case <-tick.C:
			if m.backlog {
				continue
			}
			if err := m.scan(); err != nil {
				return err
			}
		case <-m.ctx.Done():
			return nil
		}
	}
}

// trim halves a backlog grown to maxHeld: the flows the request keeps
// (the first, or the last) stay.
func (m *merge) trim() {
	sortByTime(m.held)
	if m.req.First {
		m.held = m.held[:maxHeld/2]
	} else {
		m.held = append(m.held[:0], m.held[len(m.held)-maxHeld/2:]...)
	}
}

// drain takes what the ended nodes queued (sent before they ended).
func (m *merge) drain() {
	for {
		select {
		case a := <-m.items:
			m.held = append(m.held, a)
		default:
			return
		}
	}
}

// flush sends the held responses in time order: the backlog cut to the
// request's Number, or (following) those held their window since they
// came (all of them with all).
func (m *merge) flush(all bool) error {
	sortByTime(m.held)
	var send []arrival
	if m.backlog {
		send, m.held = cut(m.held, m.req), nil
	} else {
		now := time.Now()
		window := m.lag.window(now)
		// In time order up to the first flow not due: a later flow that is
		// due waits for an earlier one that came later.
		n := 0
		for n < len(m.held) && (all || now.Sub(m.held[n].at) >= window) {
			n++
		}
		send = append(send, m.held[:n]...)
		m.held = append(m.held[:0], m.held[n:]...)
	}
	for _, a := range send {
		if err := m.stream.Send(a.resp); err != nil {
			return err
		}
	}
	return nil
}

// readNode streams one node's responses into items until it ends (a call
// without follow: within readTimeout and three quarters of the time the
// caller left, at most the Number of flows asked).
// What a node says of itself is taken as its: its name is the one it was
// verified as, its flows' times at most maxClockSkew ahead, and node
// statuses are the relay's to give, not a node's.
func readNode(ctx context.Context, p *member, req *observer.GetFlowsRequest, fs filter.Set, items chan<- arrival) error {
	if !req.Follow {
		// Within the caller's own deadline, with a quarter of it left to
		// send what the other nodes sent: until 2026-12-07 one node that
		// accepted the stream and sent nothing held every call for 30 s,
		// past the web page's 20 s, whose map and flows then failed
		// (TestRelayAnswersWithinTheCallersDeadline).
		timeout := readTimeout
		if d, ok := ctx.Deadline(); ok {
			timeout = min(timeout, time.Until(d)*3/4)
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	stream, err := observer.NewObserverClient(p.conn).GetFlows(ctx, req)
	if err != nil {
		return err
	}
	want := req.Number
	if want == 0 {
		want = maxFlows
	}
	other := 0
	for flows := uint64(0); req.Follow || flows < want; {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if resp.GetFlow() == nil && !req.Follow {
			if other++; other > maxOtherResponses {
				return fmt.Errorf("%w: more than %d responses that are no flow", errNodeAnswer, maxOtherResponses)
			}
		}
		if resp.GetNodeStatus() != nil {
			continue
		}
		now := time.Now()
		resp.NodeName = p.name
		if f := resp.GetFlow(); f != nil {
			f.NodeName = p.name
			// A flow the request's filters or times do not pass, at the
			// node's own time as the node checks them, is the node's own
			// doing: dropped, not held (until 2026-12-07 passed on: a
			// node of another cluster filled `--last N --node-name
			// c1/n1`, TestRelayAppliesFiltersToNodesAnswers).
			if !fs.Pass(f) || !filter.InWindow(f.GetTime().AsTime(), req.Since, req.Until) {
				continue
			}
			if f.GetTime().AsTime().After(now.Add(maxClockSkew)) {
				f.Time = timestamppb.New(now)
			}
			flows++
			resp.Time = f.Time
		}
		if resp.GetTime().AsTime().After(now.Add(maxClockSkew)) {
			resp.Time = timestamppb.New(now)
		}
		select {
		case items <- arrival{resp: resp, at: now}:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
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

// nodeStatus is a node status event. Its message may be a node's own
// error text (a node of a connected cluster, hostile as any remote's
// data): it is made valid UTF-8 and bounded, since one that was not ended
// the whole merged stream (the message could not be encoded) until
// 2026-12-04.
func nodeStatus(state relaypb.NodeState, msg string, nodes ...string) *observer.GetFlowsResponse {
	if len(msg) > maxStatusMessage {
		msg = msg[:maxStatusMessage]
	}
	msg = strings.ToValidUTF8(msg, "\uFFFD")
	return &observer.GetFlowsResponse{Time: timestamppb.Now(), ResponseTypes: &observer.GetFlowsResponse_NodeStatus{
		NodeStatus: &relaypb.NodeStatusEvent{StateChange: state, NodeNames: nodes, Message: msg}}}
}

// maxStatusMessage bounds a node status event's message.
const maxStatusMessage = 1024

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
		// Added without wrapping: a node's counts are its own claims.
		out.NumFlows = satAdd(out.NumFlows, a.v.NumFlows)
		out.MaxFlows = satAdd(out.MaxFlows, a.v.MaxFlows)
		out.SeenFlows = satAdd(out.SeenFlows, a.v.SeenFlows)
		out.UptimeNs = max(out.UptimeNs, a.v.UptimeNs)
	}
	if connected == 0 && unavailable == 0 {
		return nil, status.Error(codes.Unavailable, "the relay knows no node yet")
	}
	out.NumConnectedNodes = wrapperspb.UInt32(connected)
	out.NumUnavailableNodes = wrapperspb.UInt32(unavailable)
	return out, nil
}

// maxVersion bounds a node's version string as the relay passes it on.
const maxVersion = 128

// satAdd is a+b, or the largest uint64 past it.
func satAdd(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxUint64
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
			// A node's version is its own text: made printable and cut
			// (it reaches `hubble list nodes` on a terminal).
			n.State, n.Version, n.UptimeNs = relaypb.NodeState_NODE_CONNECTED, monitor.PrintableCut(got.Version, maxVersion), got.UptimeNs
			n.NumFlows, n.MaxFlows, n.SeenFlows = got.NumFlows, got.MaxFlows, got.SeenFlows
		}
		out.Nodes = append(out.Nodes, n)
	}
	return out, nil
}
