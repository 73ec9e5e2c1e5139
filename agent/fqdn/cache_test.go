package fqdn

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/policy/api"
)

// clock is a fake clock for Config.Now.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Unix(1_800_000_000, 0)} }
func ips(ss ...string) (out []netip.Addr) {
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func sels(ss ...api.FQDNSelector) map[string]api.FQDNSelector {
	m := map[string]api.FQDNSelector{}
	for _, s := range ss {
		m[SelectorKey(s)] = s
	}
	return m
}

var (
	selWild = api.FQDNSelector{MatchPattern: "*.example.com"}
	selName = api.FQDNSelector{MatchName: "api.example.com"}
	selAll  = api.FQDNSelector{MatchPattern: "*"}
	kWild   = SelectorKey(selWild)
	kName   = SelectorKey(selName)
	kAll    = SelectorKey(selAll)
)

func eq[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s = %v, want %v", what, got, want)
	}
}

func TestSelectorsAndUpdate(t *testing.T) {
	clk := newClock()
	c := NewCache(Config{Now: clk.now})
	ch, err := c.SetSelectors(sels(selWild))
	eq(t, "SetSelectors changed", ch, []string(nil))
	if err != nil {
		t.Fatal(err)
	}

	eq(t, "Update api changed", c.Update(1, "API.example.com", ips("10.0.0.1", "10.0.0.2", "fd00::1"), time.Minute), []string{kWild})
	eq(t, "Addrs", c.Addrs(kWild), ips("10.0.0.1", "10.0.0.2"))
	// The same answer again: nothing changes.
	eq(t, "Update again", c.Update(1, "api.example.com.", ips("10.0.0.2"), time.Minute), []string(nil))
	// A name no selector matches: stored, no change.
	eq(t, "Update other", c.Update(1, "example.org", ips("10.0.0.9"), time.Minute), []string(nil))
	// An address another matched name already has, asked by the same
	// endpoint: the selector's set is the same.
	eq(t, "Update www", c.Update(1, "www.example.com", ips("10.0.0.1"), time.Minute), []string(nil))
	// ... asked by another endpoint: the address is now that endpoint's
	// too (an answer allows only the endpoints that asked).
	eq(t, "Update www by 2", c.Update(2, "www.example.com", ips("10.0.0.1"), time.Minute), []string{kWild})
	eq(t, "Learned", c.Learned(kWild), map[netip.Addr][]uint16{netip.MustParseAddr("10.0.0.1"): {1, 2}, netip.MustParseAddr("10.0.0.2"): {1}})
	eq(t, "Len (entries, each counted once)", c.Len(), 4)
	// IPv6, IPv4-mapped and invalid addresses are ignored.
	eq(t, "Update v6 only", c.Update(2, "v6.example.com", ips("fd00::2", "::ffff:10.0.0.7"), time.Minute), []string(nil))
	eq(t, "Update zero addr", c.Update(2, "v6.example.com", []netip.Addr{{}}, time.Minute), []string(nil))
	eq(t, "Len after v6", c.Len(), 4)

	// Adding selectors: the new ones with matching names are changed.
	ch, err = c.SetSelectors(sels(selWild, selName, selAll, api.FQDNSelector{MatchName: "none.example.com"}))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "SetSelectors add", ch, []string{kName, kAll})
	eq(t, "Addrs name", c.Addrs(kName), ips("10.0.0.1", "10.0.0.2"))
	eq(t, "Addrs all", c.Addrs(kAll), ips("10.0.0.1", "10.0.0.2", "10.0.0.9"))
	eq(t, "Addrs none", c.Addrs("fqdn:name:none.example.com."), []netip.Addr(nil))
	eq(t, "Addrs unknown", c.Addrs("fqdn:name:x."), []netip.Addr(nil))

	// A new address for a matched name changes every selector matching it.
	eq(t, "Update new addr", c.Update(1, "api.example.com", ips("10.0.0.3"), time.Minute), []string{kName, kAll, kWild})

	// A bad selector: error, nothing changes.
	if _, err := c.SetSelectors(sels(api.FQDNSelector{MatchPattern: "a b"})); !errors.Is(err, ErrBadSelector) {
		t.Fatalf("SetSelectors bad: %v", err)
	}
	if _, err := c.SetSelectors(map[string]api.FQDNSelector{"x": selName}); !errors.Is(err, ErrBadSelector) || !strings.Contains(err.Error(), `"x"`) {
		t.Fatalf("SetSelectors wrong key: %v", err)
	}
	eq(t, "Addrs name after bad", c.Addrs(kName), ips("10.0.0.1", "10.0.0.2", "10.0.0.3"))

	// Removing selectors: the removed ones that had addresses are changed.
	ch, err = c.SetSelectors(sels(selName))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "SetSelectors remove", ch, []string{kAll, kWild})
	eq(t, "Addrs removed", c.Addrs(kWild), []netip.Addr(nil))
	eq(t, "Update www after remove", c.Update(2, "www.example.com", ips("10.0.0.8"), time.Minute), []string(nil))
	eq(t, "Addrs name kept", c.Addrs(kName), ips("10.0.0.1", "10.0.0.2", "10.0.0.3"))
	checkInvariants(t, c)
}

func TestUpdateHostileNames(t *testing.T) {
	c := NewCache(Config{})
	if _, err := c.SetSelectors(sels(selAll)); err != nil {
		t.Fatal(err)
	}
	a := ips("10.0.0.1")
	for _, n := range []string{
		"", ".", "..", "a..b", "a b.com", "é.com", "a\x00.com", "*.example.com", "a/b",
		strings.Repeat("a", 256), strings.Repeat("a.", 128) + "b",
	} {
		if ch := c.Update(1, n, a, time.Minute); ch != nil || c.Len() != 0 {
			t.Fatalf("Update(%q) kept it: changed %v, Len %d", n, ch, c.Len())
		}
	}
	// The longest name kept: 255 bytes with its trailing dot.
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 62)
	eq(t, "Update long", c.Update(1, long, a, time.Minute), []string{kAll})
	eq(t, "List long", c.List()[0].Name, long+".")
}

func TestExpiry(t *testing.T) {
	clk := newClock()
	c := NewCache(Config{Now: clk.now, MinTTL: 10 * time.Second})
	if _, err := c.SetSelectors(sels(selWild)); err != nil {
		t.Fatal(err)
	}
	eq(t, "NextExpiry empty", c.NextExpiry(), time.Time{})
	t0 := clk.t
	c.Update(1, "a.example.com", ips("10.0.0.1"), time.Second) // raised to MinTTL
	c.Update(1, "b.example.com", ips("10.0.0.2"), 30*time.Second)
	eq(t, "NextExpiry", c.NextExpiry(), t0.Add(10*time.Second))

	clk.advance(9 * time.Second)
	eq(t, "Expire before MinTTL", c.Expire(nil), []string(nil))
	eq(t, "Addrs", c.Addrs(kWild), ips("10.0.0.1", "10.0.0.2"))
	// Other endpoints' answers give them their own expiry; an earlier
	// answer to endpoint 1 does not shorten its own.
	c.Update(2, "a.example.com", ips("10.0.0.1"), 20*time.Second)
	c.Update(3, "a.example.com", ips("10.0.0.1"), 0)
	c.Update(1, "b.example.com", ips("10.0.0.2"), 0)
	a1, b1 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	eq(t, "List", c.List(), []Entry{
		{Name: "a.example.com.", Addr: a1, Expires: t0.Add(10 * time.Second).UTC(), Endpoints: []uint16{1}},
		{Name: "a.example.com.", Addr: a1, Expires: t0.Add(19 * time.Second).UTC(), Endpoints: []uint16{3}},
		{Name: "a.example.com.", Addr: a1, Expires: t0.Add(29 * time.Second).UTC(), Endpoints: []uint16{2}},
		{Name: "b.example.com.", Addr: b1, Expires: t0.Add(30 * time.Second).UTC(), Endpoints: []uint16{1}},
	})
	clk.advance(2 * time.Second) // t0+11s: endpoint 1's ask of a went
	eq(t, "Expire endpoint 1's a", c.Expire(nil), []string{kWild})
	eq(t, "Learned", c.Learned(kWild), map[netip.Addr][]uint16{a1: {2, 3}, b1: {1}})

	clk.advance(19 * time.Second) // t0+30s: all expired
	eq(t, "NextExpiry passed", c.NextExpiry(), t0.Add(19*time.Second))
	eq(t, "Expire all", c.Expire(nil), []string{kWild})
	eq(t, "Len", c.Len(), 0)
	eq(t, "Addrs after", c.Addrs(kWild), []netip.Addr(nil))
	eq(t, "NextExpiry after", c.NextExpiry(), time.Time{})
	checkInvariants(t, c)
}

// The attack: a pod whose rules let it ask a server of its own is
// answered, for a name another pod looked up too, the same address with a
// day-long TTL. The other pod's answer said a minute: its allow ends after
// the minute, whatever the first pod was told (and the first keeps its
// day). Before 2026-12-02 the entry's expiry was the latest answer's for
// every endpoint that asked.
func TestTTLIsEachEndpointsOwn(t *testing.T) {
	clk := newClock()
	c := NewCache(Config{Now: clk.now})
	if _, err := c.SetSelectors(sels(selWild)); err != nil {
		t.Fatal(err)
	}
	c.Update(1, "api.example.com", ips("10.0.0.1"), time.Minute)
	c.Update(2, "api.example.com", ips("10.0.0.1"), 24*time.Hour)
	eq(t, "Learned", c.Learned(kWild), map[netip.Addr][]uint16{netip.MustParseAddr("10.0.0.1"): {1, 2}})
	eq(t, "List", c.List(), []Entry{
		{Name: "api.example.com.", Addr: netip.MustParseAddr("10.0.0.1"), Expires: clk.now().Add(time.Minute).UTC(), Endpoints: []uint16{1}},
		{Name: "api.example.com.", Addr: netip.MustParseAddr("10.0.0.1"), Expires: clk.now().Add(24 * time.Hour).UTC(), Endpoints: []uint16{2}},
	})
	clk.advance(61 * time.Second)
	eq(t, "NextExpiry", c.NextExpiry().IsZero(), false)
	eq(t, "Expire changed", c.Expire(nil), []string{kWild})
	eq(t, "Learned after endpoint 1's TTL", c.Learned(kWild), map[netip.Addr][]uint16{netip.MustParseAddr("10.0.0.1"): {2}})
	// Endpoint 1 asks again: its own new TTL, not endpoint 2's.
	c.Update(1, "api.example.com", ips("10.0.0.1"), time.Minute)
	clk.advance(61 * time.Second)
	c.Expire(nil)
	eq(t, "Learned after endpoint 1's second TTL", c.Learned(kWild), map[netip.Addr][]uint16{netip.MustParseAddr("10.0.0.1"): {2}})
	// A connection of endpoint 1 keeps its ask past its expiry, not
	// endpoint 2's (which has not expired) nor the other way round.
	c.Update(1, "api.example.com", ips("10.0.0.1"), time.Minute)
	clk.advance(61 * time.Second)
	c.Expire(func(netip.Addr, uint16) bool { return true })
	eq(t, "Learned while endpoint 1's connection lives", c.Learned(kWild), map[netip.Addr][]uint16{netip.MustParseAddr("10.0.0.1"): {1, 2}})
	c.Expire(nil)
	eq(t, "Learned after it ended", c.Learned(kWild), map[netip.Addr][]uint16{netip.MustParseAddr("10.0.0.1"): {2}})
	checkInvariants(t, c)
}

func TestExpireAlive(t *testing.T) {
	clk := newClock()
	c := NewCache(Config{Now: clk.now, AliveRecheck: 5 * time.Second})
	if _, err := c.SetSelectors(sels(selWild)); err != nil {
		t.Fatal(err)
	}
	c.Update(1, "a.example.com", ips("10.0.0.1", "10.0.0.2"), time.Second)
	c.Update(1, "b.example.com", ips("10.0.0.3"), time.Hour)
	conns := map[netip.Addr][]uint16{netip.MustParseAddr("10.0.0.1"): {1}} // endpoint 1's connection
	alive := func(a netip.Addr, ep uint16) bool { return slices.Contains(conns[a], ep) }

	clk.advance(2 * time.Second)
	eq(t, "Expire with a connection", c.Expire(alive), []string{kWild})
	eq(t, "Addrs held", c.Addrs(kWild), ips("10.0.0.1", "10.0.0.3"))
	// The held entry is checked again AliveRecheck after this Expire.
	eq(t, "NextExpiry held", c.NextExpiry(), clk.t.Add(5*time.Second))

	clk.advance(5 * time.Second)
	eq(t, "Expire still alive", c.Expire(alive), []string(nil))
	eq(t, "Addrs still held", c.Addrs(kWild), ips("10.0.0.1", "10.0.0.3"))

	// Another endpoint's answer gives it an ask of its own: endpoint 1's
	// stays held (checked again AliveRecheck after the last Expire).
	c.Update(2, "a.example.com", ips("10.0.0.1"), time.Minute)
	eq(t, "NextExpiry one held", c.NextExpiry(), clk.t.Add(5*time.Second))
	// A new answer to endpoint 1 makes its held ask an ordinary one again.
	c.Update(1, "a.example.com", ips("10.0.0.1"), time.Minute)
	eq(t, "NextExpiry refreshed", c.NextExpiry(), clk.t.Add(time.Minute))
	clk.advance(time.Minute)
	// Held again, for endpoint 1 only: endpoint 2 has no connection to
	// it, and endpoint 1's keeps nothing for endpoint 2.
	eq(t, "Expire held again", c.Expire(alive), []string{kWild})
	eq(t, "Learned held again", c.Learned(kWild), map[netip.Addr][]uint16{netip.MustParseAddr("10.0.0.1"): {1}, netip.MustParseAddr("10.0.0.3"): {1}})

	// The connection ends: the next Expire drops the address.
	delete(conns, netip.MustParseAddr("10.0.0.1"))
	clk.advance(5 * time.Second)
	eq(t, "Expire after close", c.Expire(alive), []string{kWild})
	eq(t, "Addrs after close", c.Addrs(kWild), ips("10.0.0.3"))
	eq(t, "NextExpiry only b", c.NextExpiry(), time.Unix(0, c.live.s[0].expires))
	checkInvariants(t, c)
}

func TestMaxAddrsPerName(t *testing.T) {
	clk := newClock()
	c := NewCache(Config{Now: clk.now, MaxAddrsPerName: 3})
	if _, err := c.SetSelectors(sels(selName)); err != nil {
		t.Fatal(err)
	}
	c.Update(1, "api.example.com", ips("10.0.0.1"), time.Hour) // latest expiry
	c.Update(1, "api.example.com", ips("10.0.0.2"), time.Minute)
	c.Update(1, "api.example.com", ips("10.0.0.3"), time.Minute)
	// Full: the earliest expiry, then the oldest insert goes (10.0.0.2).
	eq(t, "Update 4th", c.Update(1, "api.example.com", ips("10.0.0.4"), time.Minute), []string{kName})
	eq(t, "Addrs", c.Addrs(kName), ips("10.0.0.1", "10.0.0.3", "10.0.0.4"))
	// One answer with many addresses keeps the cap too.
	var many []netip.Addr
	for i := range 50 {
		many = append(many, netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}))
	}
	c.Update(1, "api.example.com", many, 2*time.Hour)
	eq(t, "Addrs many", c.Addrs(kName), many[47:])
	checkInvariants(t, c)
}

func TestMaxEntries(t *testing.T) {
	clk := newClock()
	const max = 10_000
	c := NewCache(Config{Now: clk.now, MaxEntries: max})
	if _, err := c.SetSelectors(sels(selWild, selAll)); err != nil {
		t.Fatal(err)
	}
	// One long-lived name survives the flood of short-lived ones.
	c.Update(1, "keep.example.com", ips("192.0.2.1"), 24*time.Hour)
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	var full uint64
	for i := range 100_000 {
		n := fmt.Sprintf("host-%d.example.com", i)
		c.Update(uint16(i%7), n, []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})}, time.Minute+time.Duration(i)*time.Millisecond)
		if l := c.Len(); l > max {
			t.Fatalf("after %d names Len = %d > %d", i+1, l, max)
		}
		if i == 2*max {
			full = heap()
		}
	}
	// Full, less at most a batch (a sixty-fourth of one endpoint's).
	if l := c.Len(); l > max || l < max-max/64 || len(c.names) != l {
		t.Fatalf("Len %d, %d names: want at most %d, at least %d", l, len(c.names), max, max-max/64)
	}
	after := heap()
	// Bounded: 80,000 more names past the cap add (next to) nothing; and
	// the whole cache stays far below 1 KiB per entry.
	if after > full+4<<20 || after > 64<<20 {
		t.Fatalf("heap grew from %d to %d bytes over 80,000 names past the cap", full, after)
	}
	t.Logf("heap with the cap of %d entries full: %d then %d bytes", max, full, after)
	if !slices.Contains(c.Addrs(kWild), netip.MustParseAddr("192.0.2.1")) {
		t.Fatal("the long-lived entry was evicted before short-lived ones")
	}
	// The newest (latest expiring) names are those kept.
	l := c.List()
	if !slices.ContainsFunc(l, func(e Entry) bool { return e.Name == "host-99999.example.com." }) ||
		slices.ContainsFunc(l, func(e Entry) bool { return e.Name == "host-89999.example.com." }) {
		t.Fatal("eviction did not take the soonest expiring entries")
	}
	eq(t, "Addrs all len", len(c.Addrs(kAll)), c.Len())
	checkInvariants(t, c)
}

// The attack: one endpoint whose lookups are answered by a server it
// chose floods the cache with long-lived names (and the name another
// endpoint uses with many addresses). The other endpoint's entries, fewer
// and sooner to expire, must stay: the full cache takes from the endpoint
// with the most entries, and a name's cap counts each endpoint's
// addresses apart.
func TestOneEndpointCannotEvictAnother(t *testing.T) {
	clk := newClock()
	c := NewCache(Config{Now: clk.now, MaxEntries: 200, MaxAddrsPerName: 8})
	if _, err := c.SetSelectors(sels(selWild, selAll)); err != nil {
		t.Fatal(err)
	}
	const victim, attacker = 2, 1
	c.Update(victim, "api.example.com", ips("10.0.0.1", "10.0.0.2"), time.Minute)
	c.Update(victim, "www.example.com", ips("10.0.0.3"), time.Minute)
	var flood []netip.Addr
	for i := range 40 {
		flood = append(flood, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}))
	}
	c.Update(attacker, "api.example.com", flood, 24*time.Hour)
	for i := range 1000 {
		c.Update(attacker, fmt.Sprintf("n%d.example.com", i), []netip.Addr{netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})}, 24*time.Hour)
		if c.Len() > 200 {
			t.Fatalf("Len %d over the cap", c.Len())
		}
	}
	want := map[netip.Addr][]uint16{}
	for _, a := range ips("10.0.0.1", "10.0.0.2", "10.0.0.3") {
		want[a] = []uint16{victim}
	}
	got := c.Learned(kWild)
	for a, eps := range want {
		if !slices.Equal(got[a], eps) {
			t.Errorf("the victim's %s: endpoints %v, want %v (evicted by the attacker's lookups)", a, got[a], eps)
		}
	}
	api := 0
	for _, e := range c.List() {
		if e.Name == "api.example.com." && slices.Contains(e.Endpoints, attacker) {
			api++
		}
	}
	if api > 8 {
		t.Errorf("the attacker holds %d addresses of api.example.com, over the cap of 8", api)
	}
	checkInvariants(t, c)
}

// Endpoints lists who asked; Forget of several endpoints in one call is
// the same as one after the other.
func TestEndpointsAndForgetMany(t *testing.T) {
	clk := newClock()
	c := NewCache(Config{Now: clk.now})
	if _, err := c.SetSelectors(sels(selWild)); err != nil {
		t.Fatal(err)
	}
	c.Update(3, "a.example.com", ips("10.0.0.1"), time.Minute)
	c.Update(1, "a.example.com", ips("10.0.0.1"), time.Minute)
	c.Update(2, "b.example.com", ips("10.0.0.2"), time.Minute)
	if got := c.Endpoints(); len(got) != 3 || got[0] != 1 || got[2] != 3 {
		t.Fatalf("Endpoints: %v", got)
	}
	eq(t, "Forget 1 and 2", c.Forget(1, 2), []string{kWild})
	eq(t, "Addrs", c.Addrs(kWild), ips("10.0.0.1"))
	if got := c.Endpoints(); len(got) != 1 || got[0] != 3 {
		t.Fatalf("Endpoints after Forget: %v", got)
	}
}

func TestForget(t *testing.T) {
	clk := newClock()
	c := NewCache(Config{Now: clk.now})
	if _, err := c.SetSelectors(sels(selWild)); err != nil {
		t.Fatal(err)
	}
	c.Update(1, "a.example.com", ips("10.0.0.1"), time.Minute)
	c.Update(2, "a.example.com", ips("10.0.0.1", "10.0.0.2"), time.Minute)
	c.Update(1, "b.example.com", ips("10.0.0.3"), time.Minute)
	eq(t, "Forget 1", c.Forget(1), []string{kWild})
	eq(t, "Addrs", c.Addrs(kWild), ips("10.0.0.1", "10.0.0.2"))
	eq(t, "List", c.List(), []Entry{
		{Name: "a.example.com.", Addr: netip.MustParseAddr("10.0.0.1"), Expires: clk.t.Add(time.Minute).UTC(), Endpoints: []uint16{2}},
		{Name: "a.example.com.", Addr: netip.MustParseAddr("10.0.0.2"), Expires: clk.t.Add(time.Minute).UTC(), Endpoints: []uint16{2}},
	})
	eq(t, "Forget unknown", c.Forget(9), []string(nil))
	eq(t, "Forget 2", c.Forget(2), []string{kWild})
	eq(t, "Len", c.Len(), 0)
	checkInvariants(t, c)
}

func TestSaveLoad(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	path := filepath.Join(dir, "fqdn.json")
	c := NewCache(Config{Now: clk.now})
	c.Update(1, "a.example.com", ips("10.0.0.1", "10.0.0.2"), time.Minute)
	c.Update(2, "a.example.com", ips("10.0.0.2"), time.Hour)
	c.Update(3, "short.example.com", ips("10.0.0.3"), time.Second)
	c.Update(4, "b.example.org", ips("10.0.0.4"), time.Hour)
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("saved file: %v %v", fi, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}

	clk.advance(2 * time.Second)
	d := NewCache(Config{Now: clk.now, MaxAddrsPerName: 1})
	if _, err := d.SetSelectors(sels(selWild)); err != nil {
		t.Fatal(err)
	}
	if err := d.Load(path); err != nil {
		t.Fatal(err)
	}
	// short.example.com expired; a.example.com keeps one address per
	// endpoint (the bound): endpoint 1 the newest of its two, which expire
	// together; each endpoint with its own expiry.
	want := []Entry{
		{Name: "a.example.com.", Addr: netip.MustParseAddr("10.0.0.2"), Expires: clk.t.Add(time.Minute - 2*time.Second).UTC(), Endpoints: []uint16{1}},
		{Name: "a.example.com.", Addr: netip.MustParseAddr("10.0.0.2"), Expires: clk.t.Add(time.Hour - 2*time.Second).UTC(), Endpoints: []uint16{2}},
		{Name: "b.example.org.", Addr: netip.MustParseAddr("10.0.0.4"), Expires: clk.t.Add(time.Hour - 2*time.Second).UTC(), Endpoints: []uint16{4}},
	}
	eq(t, "List loaded", d.List(), want)
	eq(t, "Addrs loaded", d.Addrs(kWild), ips("10.0.0.2"))
	checkInvariants(t, d)

	// A missing file: no error, empty cache.
	if err := d.Load(filepath.Join(dir, "missing")); err != nil || d.Len() != 0 {
		t.Fatalf("Load missing: %v, Len %d", err, d.Len())
	}
	// Saving over an existing file replaces it.
	if err := d.Save(path); err != nil {
		t.Fatal(err)
	}
	if err := d.Load(path); err != nil || d.Len() != 0 {
		t.Fatalf("Load of an empty save: %v, Len %d", err, d.Len())
	}
}

func TestLoadCorrupt(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	exp := clk.t.Add(time.Hour).Format(time.RFC3339Nano)
	ent := func(name, addr, eps string) string {
		return `{"version":1,"entries":[{"name":"` + name + `","addr":"` + addr + `","expires":"` + exp + `","endpoints":` + eps + `}]}`
	}
	for i, body := range []string{
		"",
		"{",
		"[]",
		`{"version":2,"entries":[]}`,
		`{"version":1,"entries":[],"extra":1}`,
		`{"version":1,"entries":[]} {}`,
		ent("a.example.com", "10.0.0.1", "[1]"), // not normalized
		ent("a b.com.", "10.0.0.1", "[1]"),
		ent("a.example.com.", "fd00::1", "[1]"),
		ent("a.example.com.", "10.0.0.256", "[1]"),
		ent("a.example.com.", "10.0.0.1", "[]"),
		ent("a.example.com.", "10.0.0.1", "[70000]"),
	} {
		c := NewCache(Config{Now: clk.now})
		c.Update(1, "old.example.com", ips("10.9.9.9"), time.Hour)
		path := filepath.Join(dir, fmt.Sprint(i))
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := c.Load(path); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Load(%q) = %v, want ErrCorrupt", body, err)
		}
		if c.Len() != 0 {
			t.Errorf("Load(%q) left %d entries", body, c.Len())
		}
	}
	// The good form of the same entry loads.
	c := NewCache(Config{Now: clk.now})
	path := filepath.Join(dir, "good")
	if err := os.WriteFile(path, []byte(ent("a.example.com.", "10.0.0.1", "[2,1,2]")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Load(path); err != nil {
		t.Fatal(err)
	}
	eq(t, "endpoints", c.List()[0].Endpoints, []uint16{1, 2})
}

// checkInvariants checks the cache's internal consistency and bounds.
func checkInvariants(t testing.TB, c *Cache) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.size() > c.cfg.MaxEntries {
		t.Fatalf("%d entries > MaxEntries %d", c.size(), c.cfg.MaxEntries)
	}
	total, entries := 0, 0
	for k, n := range c.names {
		if n.name != k || n.dead || len(n.entries) == 0 || !validName(k, false) {
			t.Fatalf("name %q: %d entries, dead %v", k, len(n.entries), n.dead)
		}
		perEP := map[uint16]int{}
		for _, e := range n.entries {
			for _, ep := range e.eps {
				if perEP[ep]++; perEP[ep] > c.cfg.MaxAddrsPerName {
					t.Fatalf("name %q: endpoint %d asked for %d addresses, more than MaxAddrsPerName %d", k, ep, perEP[ep], c.cfg.MaxAddrsPerName)
				}
			}
		}
		for i, e := range n.entries {
			if e.n != n || (i > 0 && compareAddr(n.entries[i-1].addr, e.addr) >= 0) || len(e.eps) == 0 || !slices.IsSorted(e.eps) {
				t.Fatalf("name %q entry %v out of order or without endpoints", k, e.addr)
			}
			if len(e.asks) != len(e.eps) {
				t.Fatalf("name %q entry %v: %d asks for %d endpoints", k, e.addr, len(e.asks), len(e.eps))
			}
			for i, a := range e.asks {
				h := &c.live
				if a.held {
					h = &c.held
				}
				if a.e != e || a.ep != e.eps[i] || a.idx < 0 || a.idx >= len(h.s) || h.s[a.idx] != a {
					t.Fatalf("name %q entry %v: endpoint %d's ask not at its heap index", k, e.addr, e.eps[i])
				}
				if a.held && a.expires > c.lastSweep {
					t.Fatalf("name %q entry %v: endpoint %d's ask held before its expiry", k, e.addr, a.ep)
				}
			}
			total += len(e.asks)
			entries++
		}
	}
	if total != c.live.Len()+c.held.Len() {
		t.Fatalf("names hold %d asks, heaps %d", total, c.live.Len()+c.held.Len())
	}
	if entries != c.size() {
		t.Fatalf("names hold %d entries, the count is %d", entries, c.size())
	}
	asks := 0
	for _, n := range c.names {
		for _, e := range n.entries {
			if len(e.eps) == 0 {
				t.Fatalf("name %q entry %v: no endpoint", n.name, e.addr)
			}
			for _, ep := range e.eps {
				if _, ok := c.byEP[ep][e]; !ok {
					t.Fatalf("name %q entry %v: not indexed for endpoint %d", n.name, e.addr, ep)
				}
				asks++
			}
		}
	}
	for ep, m := range c.byEP {
		if len(m) == 0 {
			t.Fatalf("endpoint %d: an empty index", ep)
		}
		asks -= len(m)
	}
	if asks != 0 {
		t.Fatalf("the endpoint index holds %d asks more than the entries", -asks)
	}
	for k, s := range c.sels {
		want := map[[4]byte]int32{}
		wantEps := map[[4]byte]map[uint16]int32{}
		nn := 0
		for _, n := range c.names {
			match := s.m.Match(n.name)
			if _, in := s.names[n]; in != match || slices.Contains(n.sels, s) != match {
				t.Fatalf("selector %s and name %q: match %v, linked %v", k, n.name, match, in)
			}
			if match {
				nn++
				for _, e := range n.entries {
					want[e.addr]++
					for _, ep := range e.eps {
						if wantEps[e.addr] == nil {
							wantEps[e.addr] = map[uint16]int32{}
						}
						wantEps[e.addr][ep]++
					}
				}
			}
		}
		if nn != len(s.names) || !reflect.DeepEqual(want, s.addrs) && (len(want) > 0 || len(s.addrs) > 0) {
			t.Fatalf("selector %s: %d names (want %d), addrs %v want %v", k, len(s.names), nn, s.addrs, want)
		}
		if !reflect.DeepEqual(wantEps, s.eps) && (len(wantEps) > 0 || len(s.eps) > 0) {
			t.Fatalf("selector %s: endpoints by address %v, want %v", k, s.eps, wantEps)
		}
	}
}

func BenchmarkUpdate(b *testing.B) {
	c := NewCache(Config{})
	m := map[string]api.FQDNSelector{}
	for i := range 9 {
		s := api.FQDNSelector{MatchPattern: fmt.Sprintf("*.svc%d.example.com", i)}
		m[SelectorKey(s)] = s
	}
	m[SelectorKey(api.FQDNSelector{MatchName: "api.example.com"})] = api.FQDNSelector{MatchName: "api.example.com"}
	if _, err := c.SetSelectors(m); err != nil {
		b.Fatal(err)
	}
	const names = 100_000
	ns := make([]string, names)
	as := make([][]netip.Addr, names)
	for i := range ns {
		ns[i] = fmt.Sprintf("host-%d.svc%d.example.com", i, i%12) // 3 of 12 suffixes match no selector
		as[i] = []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		c.Update(uint16(i%16), ns[i%names], as[i%names], time.Minute)
	}
}

func TestWanted(t *testing.T) {
	c := NewCache(Config{})
	sel := api.FQDNSelector{MatchPattern: "*.example.com"}
	if c.Wanted("a.example.com") {
		t.Fatal("wanted with no selector")
	}
	if _, err := c.SetSelectors(map[string]api.FQDNSelector{SelectorKey(sel): sel}); err != nil {
		t.Fatal(err)
	}
	if !c.Wanted("A.Example.com.") || c.Wanted("example.com") || c.Wanted("a.example.org") {
		t.Error("Wanted does not follow the selector")
	}
}

// Names: what an address was looked up as, by the endpoint that asked (or
// anyone), bounded; gone with the entry.
func TestNames(t *testing.T) {
	clk := newClock()
	c := NewCache(Config{Now: clk.now})
	c.Update(1, "api.example.com.", ips("10.0.0.1"), time.Minute)
	c.Update(2, "www.example.com", ips("10.0.0.1", "10.0.0.2"), 2*time.Minute)
	a := netip.MustParseAddr("10.0.0.1")
	eq(t, "Names ep 1", c.Names(a, 1), []string{"api.example.com"})
	eq(t, "Names ep 2", c.Names(a, 2), []string{"www.example.com"})
	eq(t, "Names any", c.Names(a, 0), []string{"api.example.com", "www.example.com"})
	eq(t, "Names ep 3", c.Names(a, 3), []string(nil))
	eq(t, "Names v6", c.Names(netip.MustParseAddr("fd00::1"), 0), []string(nil))
	for i := range 3 * maxIndexedPerAddr {
		c.Update(4, fmt.Sprintf("n%02d.evil.test", i), ips("10.0.0.9"), time.Minute)
	}
	if n := len(c.byAddr[netip.MustParseAddr("10.0.0.9").As4()]); n != maxIndexedPerAddr {
		t.Errorf("one address's index holds %d entries, want the bound %d", n, maxIndexedPerAddr)
	}
	if got := c.Names(netip.MustParseAddr("10.0.0.9"), 4); len(got) != MaxNamesPerAddr || got[0] != "n00.evil.test" {
		t.Errorf("one address, many names: %v", got)
	}
	clk.advance(90 * time.Second)
	c.Expire(nil)
	eq(t, "Names after api expired", c.Names(a, 0), []string{"www.example.com"})
	eq(t, "index entries", len(c.byAddr), 2) // 10.0.0.1, 10.0.0.2 (www's); 10.0.0.9's names expired
}

// Writes moves with every change of what List returns and stays put
// otherwise (the daemon saves the cache only after it moved).
func TestWrites(t *testing.T) {
	clk := newClock()
	path := filepath.Join(t.TempDir(), "fqdn.json")
	c := NewCache(Config{Now: clk.now})
	step := func(what string, change func(), moves bool) {
		t.Helper()
		before, list := c.Writes(), c.List()
		change()
		after := c.Writes()
		if moved := after != before; moved != moves {
			t.Fatalf("%s: Writes %d -> %d, want moved %v", what, before, after, moves)
		}
		if !moves && !reflect.DeepEqual(list, c.List()) {
			t.Fatalf("%s: List changed and Writes did not move", what)
		}
	}
	step("update", func() { c.Update(1, "a.example.com", ips("10.0.0.1"), time.Minute) }, true)
	step("update of another endpoint", func() { c.Update(2, "a.example.com", ips("10.0.0.1"), time.Minute) }, true)
	step("reads", func() {
		c.List()
		c.Names(netip.MustParseAddr("10.0.0.1"), 1)
		c.NextExpiry()
		c.Endpoints()
		c.Len()
		if err := c.Save(path); err != nil {
			t.Fatal(err)
		}
	}, false)
	step("expire with nothing due", func() { c.Expire(nil) }, false)
	step("forget of an endpoint that asked nothing", func() { c.Forget(9) }, false)
	step("forget", func() { c.Forget(2) }, true)
	clk.advance(2 * time.Minute)
	step("expire", func() { c.Expire(nil) }, true)
	step("load", func() {
		if err := c.Load(path); err != nil {
			t.Fatal(err)
		}
	}, true)
}

// An answer resolved to an endpoint ID before the ID was forgotten (the
// endpoint deleted; a new one may have the ID now) is not recorded for
// it; one resolved after is.
func TestUpdateAsOfForgotten(t *testing.T) {
	c := NewCache(Config{Now: newClock().now})
	if _, err := c.SetSelectors(sels(selWild)); err != nil {
		t.Fatal(err)
	}
	c.Update(5, "a.example.com", ips("10.0.0.1"), time.Minute)
	before := c.Gen()
	changed, gen := c.ForgetGen(5)
	eq(t, "ForgetGen changed", changed, []string{kWild})
	if gen <= before || c.Gen() != gen {
		t.Fatalf("generation %d after %d, Gen %d", gen, before, c.Gen())
	}
	eq(t, "UpdateAsOf before the forget", c.UpdateAsOf(before, 5, "b.example.com", ips("10.0.0.2"), time.Minute), []string(nil))
	eq(t, "Len", c.Len(), 0)
	eq(t, "UpdateAsOf after", c.UpdateAsOf(gen, 5, "b.example.com", ips("10.0.0.2"), time.Minute), []string{kWild})
	learned, at := c.LearnedAsOf(kWild)
	eq(t, "LearnedAsOf", learned, map[netip.Addr][]uint16{netip.MustParseAddr("10.0.0.2"): {5}})
	eq(t, "LearnedAsOf gen", at, gen)
	checkInvariants(t, c)
}
