package remote

import "time"

// liveness decides when a lost remote cluster's entries are withdrawn. It
// is deterministic: every method takes the time, which the cluster's
// goroutines read from the agent's own monotonic clock (time.Now, compared
// with Sub); nothing here comes from the remote's clock.
//
// Two signals:
//   - the connection: lost from the first failed health check (or failed
//     session) after a good one, until the next good one;
//   - the canary: the remote's heartbeat, stale once no new value has been
//     received for staleAfter (never received: stale).
//
// The TTL runs from the moment both hold — the connection lost and the
// canary stale — so from max(lostAt, beatAt+staleAfter); a good health
// check or a new heartbeat stops and resets it. The entries are withdrawn
// when it has run for ttl (ttl 0: never). A remote that comes back before
// then keeps its entries; after a withdrawal, the next session lists the
// remote again from nothing.
type liveness struct {
	ttl        time.Duration
	staleAfter time.Duration

	// holding: entries may have been passed on since the last withdrawal
	// (a session got connected).
	holding   bool
	withdrawn bool
	lostAt    time.Time // zero while connected (or never connected)
	beatAt    time.Time // receipt of the last new heartbeat; zero: none yet
	beat      uint64
	haveBeat  bool
}

// up: a session is connected or a health check passed.
func (l *liveness) up() {
	l.lostAt = time.Time{}
	l.holding, l.withdrawn = true, false
}

// down: a health check or a session failed at now.
func (l *liveness) down(now time.Time) {
	if l.lostAt.IsZero() {
		l.lostAt = now
	}
}

// heartbeat records heartbeat seq received at now; it reports whether the
// value is new (the only kind that renews the canary: a listing that
// repeats the last value the remote wrote proves nothing).
func (l *liveness) heartbeat(now time.Time, seq uint64) bool {
	if l.haveBeat && seq == l.beat {
		return false
	}
	l.beat, l.haveBeat, l.beatAt = seq, true, now
	return true
}

// stale reports whether the canary is stale at now.
func (l *liveness) stale(now time.Time) bool {
	return l.beatAt.IsZero() || now.Sub(l.beatAt) >= l.staleAfter
}

// clock returns when the TTL started running (both signals down), if it runs.
func (l *liveness) clock() (time.Time, bool) {
	if l.ttl <= 0 || !l.holding || l.withdrawn || l.lostAt.IsZero() {
		return time.Time{}, false
	}
	start := l.lostAt
	if !l.beatAt.IsZero() {
		if staleAt := l.beatAt.Add(l.staleAfter); staleAt.After(start) {
			start = staleAt
		}
	}
	return start, true
}

// due reports whether the entries must be withdrawn at now.
func (l *liveness) due(now time.Time) bool {
	start, ok := l.clock()
	return ok && now.Sub(start) >= l.ttl
}

// withdrawAt is when the entries go if nothing changes (ok false: they are
// not going).
func (l *liveness) withdrawAt() (time.Time, bool) {
	start, ok := l.clock()
	return start.Add(l.ttl), ok
}

// withdrew: the entries were withdrawn. The last heartbeat is remembered,
// so a listing that repeats it does not count as a new one.
func (l *liveness) withdrew() {
	l.holding, l.withdrawn = false, true
}
