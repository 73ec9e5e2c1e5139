package ipam

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeClock is a clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newHeld(t *testing.T, cidr string, c *fakeClock) *Pool {
	t.Helper()
	p, err := New(cidr)
	if err != nil {
		t.Fatal(err)
	}
	p.now = c.now
	return p
}

// fill allocates n addresses of p.
func fill(t *testing.T, p *Pool, n int) []netip.Addr {
	t.Helper()
	var addrs []netip.Addr
	for range n {
		a, err := p.Allocate("pod")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, a)
	}
	return addrs
}

// The attack, found 2026-12-07 by a review of endpoint lifecycles: a
// tenant creating and deleting pods walks the round-robin cursor onto a
// just-deleted pod's address (212 cycles on a /24) while state about that
// pod (other pods' conntrack entries, other nodes' and clusters' ipcache)
// still names it. A released address is now held back for ReuseDelay
// while other addresses are free, and for MinReuseDelay whatever the
// churn: a loop faster than that runs out of addresses instead.
func TestReleasedAddressHeldBackFromChurn(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)}
	p := newHeld(t, "10.4.0.0/24", c)
	victim, err := p.Allocate("victim")
	if err != nil {
		t.Fatal(err)
	}
	p.Release(victim)
	refused := 0
	for i := range 2000 {
		c.t = c.t.Add(time.Millisecond)
		a, err := p.Allocate("attacker")
		if errors.Is(err, ErrHeld) {
			refused++
			continue
		}
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if a == victim {
			t.Fatalf("the attacker got the deleted pod's address %s after %d create/delete cycles, %s after its release", a, i+1, time.Duration(i)*time.Millisecond)
		}
		p.Release(a)
	}
	if refused == 0 {
		t.Fatal("2,000 create/delete cycles in 2 s on a /24 were never refused")
	}
	// Past the delay the address is an address like any other.
	c.t = c.t.Add(ReuseDelay)
	seen := false
	for range p.Capacity() {
		a, err := p.Allocate("later")
		if err != nil {
			t.Fatal(err)
		}
		seen = seen || a == victim
	}
	if !seen {
		t.Fatalf("%s never handed out again after the delay", victim)
	}
}

// The attack's second form: an agent restart started the cursor at the
// pool's first address, so the first pod after the restart took a pod's
// address deleted just before it. The release times are kept in the
// state directory (Keep) and read back.
func TestHeldAddressesKeptAcrossRestart(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "released.json")
	p := newHeld(t, "10.5.0.0/28", c)
	if err := p.Keep(path); err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	for range 3 {
		a, err := p.Allocate("pod")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, a)
	}
	p.Release(addrs[0])
	c.t = c.t.Add(10 * time.Second)

	q := newHeld(t, "10.5.0.0/28", c) // the restarted agent
	if err := q.Keep(path); err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs[1:] {
		if err := q.Claim(a, "pod"); err != nil {
			t.Fatal(err)
		}
	}
	for range q.Capacity() - 3 {
		a, err := q.Allocate("new")
		if err != nil {
			t.Fatal(err)
		}
		if a == addrs[0] {
			t.Fatalf("after a restart the pool handed out %s, released 10s before", a)
		}
	}
}

// With every other address in use, a held address is handed out rather
// than the pod refused, the one released longest ago, once MinReuseDelay
// has passed; before, the pod is refused, naming the hold.
func TestHeldAddressGivenWhenNoOtherIsFree(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)}
	p := newHeld(t, "10.6.0.0/29", c) // 5 addresses
	addrs := fill(t, p, 5)
	p.Release(addrs[3])
	c.t = c.t.Add(time.Second)
	p.Release(addrs[1])
	c.t = c.t.Add(time.Second)
	if _, err := p.Allocate("early"); !errors.Is(err, ErrHeld) || errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "released less than") {
		t.Fatalf("an address released 2s ago: %v, want ErrHeld (not ErrExhausted) naming the hold", err)
	}
	c.t = c.t.Add(MinReuseDelay)
	if a, err := p.Allocate("x"); err != nil || a != addrs[3] {
		t.Fatalf("got %s (%v), want %s, the address released longest ago", a, err, addrs[3])
	}
	if a, err := p.Allocate("y"); err != nil || a != addrs[1] {
		t.Fatalf("got %s (%v), want %s", a, err, addrs[1])
	}
}

// A held-addresses file that is not the pool's (another pod CIDR, junk,
// times in the future) is read for what it holds of the pool, bounded.
func TestKeepReadsOnlyThePoolsAddresses(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "released.json")
	p := newHeld(t, "10.8.0.0/24", c)
	if err := p.Keep(path); err != nil {
		t.Fatal(err)
	}
	a, _ := p.Allocate("pod")
	p.Release(a)
	q := newHeld(t, "10.9.0.0/24", c) // the node's pod CIDR changed
	if err := q.Keep(path); err != nil {
		t.Fatal(err)
	}
	if len(q.released) != 0 {
		t.Fatalf("held %v of another pod CIDR", q.released)
	}
}

// An address whose withdrawal has not reached the kvstore (SetBusy) is
// never handed out, not even past its delays with nothing else free.
func TestBusyAddressNeverHandedOut(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)}
	p := newHeld(t, "10.7.0.0/29", c) // 5 addresses
	addrs := fill(t, p, 5)
	busy := map[netip.Addr]bool{addrs[0]: true, addrs[2]: true}
	p.SetBusy(func(a netip.Addr) bool { return busy[a] })
	p.Release(addrs[0])
	p.Release(addrs[2])
	c.t = c.t.Add(10 * ReuseDelay)
	if _, err := p.Allocate("x"); !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "withdrawal") {
		t.Fatalf("with every free address busy: %v, want ErrHeld naming the withdrawal", err)
	}
	delete(busy, addrs[2])
	if a, err := p.Allocate("y"); err != nil || a != addrs[2] {
		t.Fatalf("got %s (%v), want %s, the one no longer busy", a, err, addrs[2])
	}
}

// An address unallocated (its endpoint failed before anything named it)
// is not held back; one claimed at restore is no longer held.
func TestUnallocatedAndClaimedNotHeld(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)}
	p := newHeld(t, "10.10.0.0/29", c) // 5 addresses
	addrs := fill(t, p, 5)
	p.Unallocate(addrs[1])
	if a, err := p.Allocate("again"); err != nil || a != addrs[1] {
		t.Fatalf("got %s (%v), want %s at once", a, err, addrs[1])
	}
	p.Release(addrs[2])
	if len(p.Held()) != 1 {
		t.Fatalf("held %v, want %s", p.Held(), addrs[2])
	}
	if err := p.Claim(addrs[2], "restored"); err != nil {
		t.Fatal(err)
	}
	if len(p.Held()) != 0 || len(p.released) != 0 {
		t.Fatalf("a claimed address still held: %v", p.released)
	}
}
