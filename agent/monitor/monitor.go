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
	Type     string // "drop" or "policy-verdict"
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
}

// Hub fans events out.
type Hub struct {
	labels func(identity.NumericIdentity) []string

	mu   sync.Mutex
	next int
	subs map[int]*sub

	lost atomic.Uint64
}

// NewHub returns a hub that looks labels up with labels (may be nil).
func NewHub(labels func(identity.NumericIdentity) []string) *Hub {
	return &Hub{labels: labels, subs: map[int]*sub{}}
}

// Publish enriches ev and sends it to every matching subscriber.
func (h *Hub) Publish(ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) == 0 {
		return
	}
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
		}
	}
}

// Subscribe returns a channel of matching events and a function that ends
// the subscription (and closes the channel).
func (h *Hub) Subscribe(f Filter) (<-chan Event, func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	id := h.next
	h.next++
	s := &sub{ch: make(chan Event, 1024), filter: f}
	h.subs[id] = s
	return s.ch, func() {
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
