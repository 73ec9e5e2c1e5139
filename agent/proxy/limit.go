package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// source is who sent a query or opened a connection: its address and
// the identity the datapath (or the ipcache) gave it, so that the
// clients behind one address (another node's proxy) of different
// identities are apart.
type source struct {
	addr netip.Addr
	id   uint32
}

// errShed is the cause of a query's context when another source took its
// slot (slotShare).
var errShed = errors.New("slot taken by a source holding less than its share")

// slotShare is a pool of slots shared by sources (the node's in-flight
// UDP queries). A source holds at most perSource. When every slot is
// taken, a source holding less than its fair share (the slots over the
// sources holding any, itself included) takes the oldest slot of the
// source holding the most (of those, the one holding the oldest slot), if
// that slot has been held for
// minSlotTakeover, and that slot's holder is cancelled (errShed): sources
// that fill the pool together with queries a server never answers, each
// within its own bound, cannot keep another source out, and a source
// sending datagrams it knows end at once (which keeps it below its share)
// cannot cut the others' queries short. Cancelled holders take a while to
// return; holders, cancelled or not, are at most twice the slots.
type slotShare struct {
	mu        sync.Mutex
	max       int
	perSource int
	used      int // slots held, not counting cancelled holders
	running   int // holders not returned, cancelled ones included
	bySrc     map[source][]*slot
}

// minSlotTakeover is how long a slot is held before another source may
// take it (an answered query's exchange takes milliseconds; a stalled one
// the upstream timeout).
const minSlotTakeover = time.Second

// slot is one source's hold on a slot.
type slot struct {
	cancel context.CancelCauseFunc
	since  time.Time
	taken  bool // by another source: its holder no longer counts
}

func newSlotShare(max, perSource int) *slotShare {
	return &slotShare{max: max, perSource: perSource, bySrc: map[source][]*slot{}}
}

// take gives who a slot at now, whose holder cancel stops should another
// source take the slot over, or reports that who gets none.
func (s *slotShare) take(who source, cancel context.CancelCauseFunc, now time.Time) (*slot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := len(s.bySrc[who])
	if held >= s.perSource || s.running >= 2*s.max {
		return nil, false
	}
	if s.used >= s.max {
		holders := len(s.bySrc)
		if held == 0 {
			holders++
		}
		if held >= s.max/holders {
			return nil, false
		}
		var top source
		n := 0
		for src, sl := range s.bySrc {
			// The source holding the most; of those, the one whose oldest
			// slot is the oldest (map order must not pick a young one).
			if len(sl) > n || len(sl) == n && sl[0].since.Before(s.bySrc[top][0].since) {
				top, n = src, len(sl)
			}
		}
		if n <= held+1 {
			return nil, false // nobody holds more than who would
		}
		oldest := s.bySrc[top][0]
		if now.Sub(oldest.since) < minSlotTakeover {
			return nil, false
		}
		s.drop(top, 0)
		oldest.taken = true
		oldest.cancel(errShed)
	}
	sl := &slot{cancel: cancel, since: now}
	s.bySrc[who] = append(s.bySrc[who], sl)
	s.used++
	s.running++
	return sl, true
}

// give returns who's slot sl (its holder is done).
func (s *slotShare) give(who source, sl *slot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running--
	if sl.taken {
		return
	}
	if i := slices.Index(s.bySrc[who], sl); i >= 0 {
		s.drop(who, i)
	}
}

// drop removes who's i-th slot; s.mu is held.
func (s *slotShare) drop(who source, i int) {
	s.used--
	if len(s.bySrc[who]) == 1 {
		delete(s.bySrc, who)
		return
	}
	s.bySrc[who] = slices.Delete(s.bySrc[who], i, i+1)
}

// byteShare is a budget of bytes (semaphore) shared by sources, each of
// which holds at most perSource of it at once: one source's connections
// that announce large requests and then send them slowly hold their own
// share, not the whole budget.
type byteShare struct {
	total     *semaphore.Weighted
	perSource int64
	mu        sync.Mutex
	srcs      map[source]*sourceBytes
}

// sourceBytes is one source's share: the bytes it holds and the callers
// waiting for more.
type sourceBytes struct {
	sem     *semaphore.Weighted
	held    int64
	waiting int
}

func newByteShare(total, perSource int64) *byteShare {
	return &byteShare{total: semaphore.NewWeighted(total), perSource: perSource, srcs: map[source]*sourceBytes{}}
}

// acquire takes n bytes for who, from its share and then from the total,
// waiting until ctx ends; on success who holds n more, which it gives back
// with release, in one call or in several.
func (b *byteShare) acquire(ctx context.Context, who source, n int64) error {
	b.mu.Lock()
	s := b.srcs[who]
	if s == nil {
		s = &sourceBytes{sem: semaphore.NewWeighted(b.perSource)}
		b.srcs[who] = s
	}
	s.waiting++
	b.mu.Unlock()
	err := s.sem.Acquire(ctx, n)
	if err == nil {
		if err = b.total.Acquire(ctx, n); err != nil {
			s.sem.Release(n)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s.waiting--
	if err == nil {
		s.held += n
	}
	b.forget(who, s)
	return err
}

// tryAcquire takes n bytes for who if its share and the total have room
// now, without waiting.
func (b *byteShare) tryAcquire(who source, n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.srcs[who]
	if s == nil {
		s = &sourceBytes{sem: semaphore.NewWeighted(b.perSource)}
		b.srcs[who] = s
	}
	ok := s.sem.TryAcquire(n)
	if ok && !b.total.TryAcquire(n) {
		s.sem.Release(n)
		ok = false
	}
	if ok {
		s.held += n
	}
	b.forget(who, s)
	return ok
}

// release gives back n of the bytes who holds.
func (b *byteShare) release(who source, n int64) {
	if n == 0 {
		return
	}
	b.total.Release(n)
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.srcs[who]
	s.sem.Release(n)
	s.held -= n
	b.forget(who, s)
}

// forget drops who's share once it holds nothing and nobody waits; b.mu
// held.
func (b *byteShare) forget(who source, s *sourceBytes) {
	if s.held == 0 && s.waiting == 0 {
		delete(b.srcs, who)
	}
}

// headBudget bounds the request heads held by requests in flight (what
// headSize counts), node-wide and per source: a pod's requests waiting
// on a server that answers slowly (one it controls, or one that never
// answers) kept their heads, up to 1 MiB each, on each of its 4,096
// connections and 250 streams of each HTTP/2 one, until 2026-12-04.
// Past its share a request is answered 503.
var headBudget = newByteShare(256<<20, 16<<20)

// headSize is what a request's head is counted as: its method, target,
// host and headers, as written (4 bytes of framing each).
func headSize(r *http.Request) int64 {
	n := len(r.Method) + len(r.RequestURI) + len(r.Host) + 16
	for k, vv := range r.Header {
		for _, v := range vv {
			n += len(k) + len(v) + 4
		}
	}
	return int64(n)
}

// holdHead takes the head of r for who from headBudget, without waiting;
// false: the source holds its share (or the node its budget).
func holdHead(who source, r *http.Request) (n int64, ok bool) {
	n = headSize(r)
	return n, headBudget.tryAcquire(who, n)
}
