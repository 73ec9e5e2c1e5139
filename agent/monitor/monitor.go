// Package monitor owns the live stream of datapath events: it adds the
// labels of both sides to each event and fans it out to the subscribers
// (`filament monitor`), each with its own filter. A slow subscriber loses
// events rather than slowing the datapath reader; losses are counted.
package monitor

import (
	"sync"
	"sync/atomic"

	"github.com/filament-net/filament/agent/identity"
)

// Filter selects events; zero values match everything.
type Filter struct {
	Endpoint uint16 // the deciding endpoint or the peer endpoint
	Type     string // "drop", "policy-verdict", "translated" or "l7"
}

// Match reports whether ev passes f.
func (f Filter) Match(ev Event) bool {
	if f.Endpoint != 0 && ev.Endpoint != f.Endpoint && ev.PeerEP != f.Endpoint {
		return false
	}
	return f.Type == "" || f.Type == ev.Type
}

type sub struct {
	ch     chan Event
	filter Filter
	lost   atomic.Uint64 // events this subscriber missed
}

// Hub fans events out.
type Hub struct {
	labels func(identity.NumericIdentity) []string
	iface  func(ifindex uint32) (uint16, identity.NumericIdentity, bool)

	mu   sync.Mutex
	next int
	subs map[int]*sub

	lost atomic.Uint64

	onSubscribe []func()
}

// OnSubscribe calls f (which must not block) whenever a subscriber comes:
// a source that only works while someone listens starts at once.
func (h *Hub) OnSubscribe(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.onSubscribe = append(h.onSubscribe, f)
}

// NewHub returns a hub that looks labels up with labels (may be nil).
func NewHub(labels func(identity.NumericIdentity) []string) *Hub {
	return &Hub{labels: labels, subs: map[int]*sub{}}
}

// SetInterfaces gives the hub the endpoint (and its identity) whose host
// interface has index ifindex, to name the endpoint of events that carry
// none. Call it before the first Publish.
func (h *Hub) SetInterfaces(f func(ifindex uint32) (ep uint16, id identity.NumericIdentity, ok bool)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.iface = f
}

// Publish enriches ev and sends it to every matching subscriber.
func (h *Hub) Publish(ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) == 0 {
		return
	}
	h.nameEndpoint(&ev)
	if h.labels != nil {
		ev.SrcLabels = h.labels(ev.SrcIdentity)
		ev.DstLabels = h.labels(ev.DstIdentity)
	}
	for _, s := range h.subs {
		if !s.filter.Match(ev) {
			continue
		}
		select {
		case s.ch <- ev:
		default:
			h.lost.Add(1)
			s.lost.Add(1)
		}
	}
}

// nameEndpoint fills in the endpoint of an event that carries none but
// came in or went out on an endpoint's host interface: a packet dropped
// before its endpoint was known (a source address not of the endpoint, a
// malformed packet). The endpoint's identity becomes the side it is on
// when that side has none.
func (h *Hub) nameEndpoint(ev *Event) {
	if ev.Endpoint != 0 || ev.IfIndex == 0 || h.iface == nil {
		return
	}
	ep, id, ok := h.iface(ev.IfIndex)
	if !ok {
		return
	}
	ev.Endpoint = ep
	side := &ev.SrcIdentity // egress: the packet came out of the endpoint
	if ev.Direction == "ingress" {
		side = &ev.DstIdentity
	}
	if *side == 0 {
		*side = id
	}
}

// Subscribe returns a channel of matching events and a function that ends
// the subscription (and closes the channel).
func (h *Hub) Subscribe(f Filter) (<-chan Event, func()) {
	ch, _, cancel := h.SubscribeCounted(f)
	return ch, cancel
}

// SubscribeCounted is Subscribe that also returns how many events the
// subscriber has missed so far (its channel was full).
func (h *Hub) SubscribeCounted(f Filter) (<-chan Event, func() uint64, func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	id := h.next
	h.next++
	s := &sub{ch: make(chan Event, 1024), filter: f}
	h.subs[id] = s
	for _, w := range h.onSubscribe {
		w() // must not block
	}
	return s.ch, s.lost.Load, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[id]; ok {
			delete(h.subs, id)
			close(s.ch)
		}
	}
}

// Lost is how many events slow subscribers missed.
func (h *Hub) Lost() uint64 { return h.lost.Load() }

// Wants tells whether a subscriber would take events of type typ, so that
// a source can skip the work of making them.
func (h *Hub) Wants(typ string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.subs {
		if s.filter.Type == "" || s.filter.Type == typ {
			return true
		}
	}
	return false
}
