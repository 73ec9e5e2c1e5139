package proxy

import (
	"cmp"
	"context"
	"errors"
	"maps"
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

// errShed is the cause of a holder's context when another source took
// its slot (slotShare).
var errShed = errors.New("slot taken by a source holding less than its share")

// slotShare is a pool shared by sources in slots of a size each: the
// node's in-flight UDP queries (a slot each), the request heads held
// (headBudget: a head's bytes). A source holds at most perSource. When a
// slot does not fit the pool, a source that would still hold no more
// than its fair share (the pool over the sources holding any, itself
// included) takes the oldest slots of the source holding the most (of
// those, the one holding the oldest slot; if its slots cannot, the next
// such source's), as many as make room, if they have been held for
// minSlotTakeover and that source is left holding at least as much as
// the taker; those slots' holders are cancelled
// (errShed). So sources that fill the pool together with queries or
// requests a server never answers, each within its own bound, cannot
// keep another source out, and a source sending requests it knows end at
// once (which keeps it below its share) cannot cut the others' short.
// The pool is never exceeded; cancelled holders take a while to return,
// and holders, cancelled or not, hold at most twice the pool.
type slotShare struct {
	mu        sync.Mutex
	max       int64
	perSource int64
	used      int64 // held, not counting cancelled holders
	running   int64 // held by holders not returned, cancelled ones included
	bySrc     map[source]*srcSlots
	// takeover is minSlotTakeover (tests set it to an hour while they
	// fill a pool, and to 0 where a takeover is to happen).
	takeover time.Duration
}

// srcSlots are one source's slots, oldest first, and their sizes' sum.
type srcSlots struct {
	held  int64
	slots []*slot
}

// minSlotTakeover is how long a slot is held before another source may
// take it (an answered query's exchange takes milliseconds; a stalled one
// the upstream timeout).
const minSlotTakeover = time.Second

// slot is one source's hold on a slot of a share, until give.
type slot struct {
	share  *slotShare // the one it came from, whatever a test made headBudget since
	who    source
	n      int64
	cancel context.CancelCauseFunc
	since  time.Time
	taken  bool // by another source: its holder no longer counts
}

func newSlotShare(max, perSource int64) *slotShare {
	return &slotShare{max: max, perSource: perSource, bySrc: map[source]*srcSlots{}, takeover: minSlotTakeover}
}

// take gives who a slot of size n at now, whose holder cancel stops
// should another source take the slot over, or reports that who gets
// none. cancel is called with s.mu held.
func (s *slotShare) take(who source, n int64, cancel context.CancelCauseFunc, now time.Time) (*slot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	mine := s.bySrc[who]
	var held int64
	if mine != nil {
		held = mine.held
	}
	if held+n > s.perSource || s.running+n > 2*s.max {
		return nil, false
	}
	if s.used+n > s.max {
		holders := int64(len(s.bySrc))
		if mine == nil {
			holders++
		}
		if held+n > s.max/holders {
			return nil, false
		}
		// The sources holding the most first; of those, the one whose
		// oldest slot is the oldest (map order must not pick a young
		// one). The first whose oldest slots make room is taken from: a
		// source whose slots are all young does not shield the others
		// (until 2026-12-07 only the top one was tried, and a source
		// recycling its slots within minSlotTakeover kept a full pool
		// shut, TestSlotShareYoungTopDoesNotShieldOthers).
		srcs := slices.SortedFunc(maps.Values(s.bySrc), func(a, b *srcSlots) int {
			if a.held != b.held {
				return cmp.Compare(b.held, a.held)
			}
			return a.slots[0].since.Compare(b.slots[0].since)
		})
		var top *srcSlots
		var free int64
		k := 0
		for _, ss := range srcs {
			// Never the taker itself, nor a source within its fair share.
			if ss == mine || ss.held <= s.max/holders {
				continue
			}
			if f, j, ok := s.room(ss, n, held, now); ok {
				top, free, k = ss, f, j
				break
			}
		}
		if top == nil {
			return nil, false
		}
		for _, sl := range top.slots[:k] {
			sl.taken = true
			sl.cancel(errShed)
		}
		top.slots = slices.Delete(top.slots, 0, k)
		top.held -= free
		s.used -= free
	}
	if mine == nil {
		mine = &srcSlots{}
		s.bySrc[who] = mine
	}
	sl := &slot{share: s, who: who, n: n, cancel: cancel, since: now}
	mine.slots = append(mine.slots, sl)
	mine.held += n
	s.used += n
	s.running += n
	return sl, true
}

// room says whether ss's oldest slots, held s.takeover at now, make
// room for n more in the pool while leaving ss holding no less than the
// taker would (held+n), and how many (k) of how many bytes (free).
// s.mu is held.
func (s *slotShare) room(ss *srcSlots, n, held int64, now time.Time) (free int64, k int, ok bool) {
	for ; s.used-free+n > s.max; k++ {
		if k == len(ss.slots) || now.Sub(ss.slots[k].since) < s.takeover || ss.held-free-ss.slots[k].n < held+n {
			return 0, 0, false
		}
		free += ss.slots[k].n
	}
	return free, k, true
}

// give returns the slot to its share (its holder is done).
func (sl *slot) give() {
	s := sl.share
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running -= sl.n
	if sl.taken {
		return
	}
	mine := s.bySrc[sl.who]
	if mine == nil {
		return
	}
	i := slices.Index(mine.slots, sl)
	if i < 0 {
		return
	}
	s.used -= sl.n
	if len(mine.slots) == 1 {
		delete(s.bySrc, sl.who)
		return
	}
	mine.slots = slices.Delete(mine.slots, i, i+1)
	mine.held -= sl.n
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
// Past its share a request is answered 503. When the node's budget is
// full, a source below its fair share takes the oldest heads of the
// source holding the most, whose requests end (slotShare): until
// 2026-12-07 it was a byteShare, and 17 sources holding their 16 MiB
// each kept every other pod's request out (TestHeadBudgetSharedFairly).
var headBudget = newSlotShare(256<<20, 16<<20)

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

// holdHead takes the head of r for who from headBudget, without
// waiting, until the slot's give; end ends the request should another
// source take its head over. false: the source holds its share (or the
// node its budget, and who has its fair share of it).
func holdHead(who source, r *http.Request, end context.CancelCauseFunc) (*slot, bool) {
	return headBudget.take(who, headSize(r), end, time.Now())
}
