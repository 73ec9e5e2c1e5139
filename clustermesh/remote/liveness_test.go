package remote

import (
	"strings"
	"testing"
	"time"
)

// at is a fake clock reading: t0 plus d.
var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

const s = time.Second

func newLiveness(ttl time.Duration) *liveness {
	l := &liveness{ttl: ttl, staleAfter: 6 * s}
	l.up()
	return l
}

// dueFrom checks that l is not due just before want and is due at want.
func dueFrom(t *testing.T, l *liveness, want time.Duration) {
	t.Helper()
	if l.due(at(want - time.Millisecond)) {
		t.Fatalf("due at %v, before %v", want-time.Millisecond, want)
	}
	if !l.due(at(want)) {
		t.Fatalf("not due at %v", want)
	}
	if w, ok := l.withdrawAt(); !ok || !w.Equal(at(want)) {
		t.Fatalf("withdrawAt %v %v, want %v", w, ok, at(want))
	}
}

// The TTL runs from the moment the connection is lost and the canary is
// stale, whichever comes later.
func TestLivenessTTLFromBothSignals(t *testing.T) {
	l := newLiveness(8 * s)
	for i := range 3 {
		l.heartbeat(at(time.Duration(2*i)*s), uint64(i+1)) // beats at 0, 2, 4 s
	}
	l.down(at(5 * s))
	if l.stale(at(9 * s)) {
		t.Fatal("canary stale 5 s after a beat (bound 6 s)")
	}
	if !l.stale(at(10 * s)) {
		t.Fatal("canary fresh 6 s after the last beat")
	}
	// Lost at 5 s, stale at 10 s: the TTL runs from 10 s.
	dueFrom(t, l, 18*s)
	// A later failed check does not move the loss.
	l.down(at(12 * s))
	dueFrom(t, l, 18*s)
}

// The canary stale first (the remote's apiserver stopped beating while its
// etcd still answered), then the connection lost: the TTL runs from the loss.
func TestLivenessStaleThenLost(t *testing.T) {
	l := newLiveness(8 * s)
	l.heartbeat(at(0), 1)
	l.down(at(30 * s))
	dueFrom(t, l, 38*s)
}

// A remote that never sent a heartbeat (an apiserver from before them) has
// a stale canary: the TTL runs from the loss alone.
func TestLivenessNoHeartbeatEver(t *testing.T) {
	l := newLiveness(5 * time.Minute)
	if !l.stale(at(0)) {
		t.Fatal("no heartbeat yet but the canary is fresh")
	}
	if _, ok := l.withdrawAt(); ok {
		t.Fatal("TTL running while connected")
	}
	l.down(at(time.Minute))
	dueFrom(t, l, 6*time.Minute)
}

// A loss shorter than the TTL changes nothing, and a good check resets the
// clock: the next loss gets the whole TTL again.
func TestLivenessShortLossResets(t *testing.T) {
	l := newLiveness(8 * s)
	l.heartbeat(at(0), 1)
	l.down(at(1 * s))
	if l.due(at(13 * s)) {
		t.Fatal("due before the TTL ran")
	}
	l.up() // back at 13 s
	if l.due(at(100 * s)) {
		t.Fatal("due while connected")
	}
	if _, ok := l.withdrawAt(); ok {
		t.Fatal("TTL running after the connection came back")
	}
	l.down(at(100 * s))
	dueFrom(t, l, 108*s)
}

// New heartbeats received while health checks fail (the watch still
// delivers) keep the cluster: the clock restarts when they go stale. A
// value already seen (a listing on reconnect that repeats the last beat)
// renews nothing.
func TestLivenessHeartbeatWhileLost(t *testing.T) {
	l := newLiveness(8 * s)
	l.heartbeat(at(0), 1)
	l.down(at(1 * s))
	if !l.heartbeat(at(20*s), 2) {
		t.Fatal("a new value was not taken")
	}
	dueFrom(t, l, 34*s) // stale at 26 s, + 8 s
	if l.heartbeat(at(30*s), 2) {
		t.Fatal("a repeated value renewed the canary")
	}
	dueFrom(t, l, 34*s)
	// A restarted apiserver's sequence may go down: any new value counts.
	if !l.heartbeat(at(31*s), 1) {
		t.Fatal("a lower but different value was not taken")
	}
	dueFrom(t, l, 45*s)
}

// Withdrawn once: not due again until a session holds entries again; then
// a new loss counts afresh. TTL 0 never withdraws; a cluster never
// connected has nothing to withdraw.
func TestLivenessWithdrawOnceAndOff(t *testing.T) {
	l := newLiveness(8 * s)
	l.down(at(0))
	dueFrom(t, l, 8*s)
	l.withdrew()
	if l.due(at(time.Hour)) {
		t.Fatal("due again after the withdrawal")
	}
	l.up()
	if l.withdrawn {
		t.Fatal("still withdrawn after a new session")
	}
	l.down(at(2 * time.Hour))
	dueFrom(t, l, 2*time.Hour+8*s)

	off := newLiveness(0)
	off.down(at(0))
	if off.due(at(1000 * time.Hour)) {
		t.Fatal("TTL 0 withdrew")
	}
	never := &liveness{ttl: 8 * s, staleAfter: 6 * s}
	never.down(at(0))
	if never.due(at(time.Hour)) {
		t.Fatal("a cluster never connected is due for withdrawal")
	}
}

// Heartbeat values come from the remote: an invalid one is rejected and
// counted and renews nothing; a valid new one renews the canary.
func TestHeartbeatEventHostile(t *testing.T) {
	c := &cluster{m: &Manager{}, name: "east", live: liveness{ttl: 8 * s, staleAfter: 6 * s}}
	c.live.up()
	for _, bad := range []string{"", "-1", "01", "99999999999999999999999", strings.Repeat("1", 1<<20), "2026-12-01T09:00:00Z"} {
		c.heartbeatEvent([]byte(bad), at(time.Second))
	}
	if c.status.Rejected != 6 || !c.live.beatAt.IsZero() {
		t.Fatalf("invalid heartbeats: rejected %d, beat at %v", c.status.Rejected, c.live.beatAt)
	}
	c.heartbeatEvent([]byte("41"), at(2*s))
	if !c.live.beatAt.Equal(at(2*s)) || c.live.stale(at(7*s)) || !c.live.stale(at(8*s)) {
		t.Fatalf("a valid heartbeat: beat at %v", c.live.beatAt)
	}
}
