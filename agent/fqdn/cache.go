package fqdn

import (
	"cmp"
	"container/heap"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/filament-net/filament/agent/policy/api"
)

// Defaults of Config.
const (
	DefaultMaxAddrsPerName = 1000
	DefaultMaxEntries      = 65536
	DefaultAliveRecheck    = time.Second
)

// Config bounds a Cache. Zero fields take the defaults.
type Config struct {
	// MinTTL: an answer's TTL below this is raised to it
	// (--tofqdns-min-ttl); 0: none.
	MinTTL time.Duration
	// MaxAddrsPerName bounds the addresses of one name that one endpoint
	// asked for (default 1000): that endpoint's oldest addresses of the
	// name (earliest expiry, then oldest insert) go first; another
	// endpoint's answers for the same name never push them out.
	MaxAddrsPerName int
	// MaxEntries bounds the (name, address) entries of the whole cache
	// (default 65536; an entry many endpoints asked for counts once): when
	// full, the endpoint that asked for the most entries loses its soonest
	// expiring ones (a sixty-fourth of its
	// entries at least, so that a flood costs no sort per answer), so one
	// endpoint's lookups never evict another's while it holds more.
	MaxEntries int
	// AliveRecheck is how long after an Expire that kept entries past their
	// expiry (alive) NextExpiry asks for the next Expire (default 1s).
	AliveRecheck time.Duration
	// Now is the clock (default time.Now; tests inject a fake one).
	Now func() time.Time
}

// Cache is the agent's DNS name cache. It is safe for concurrent use.
//
// Each (name, address) entry has the endpoints that asked, each with its
// own expiry (the TTL of the answers to that endpoint, raised to MinTTL,
// the latest of them: an answer to one endpoint neither lengthens nor
// shortens another's). An endpoint's ask whose expiry has passed leaves on
// Expire unless an open connection of that endpoint still uses the address
// (then it is "held" until it ends); the entry leaves with its last ask.
// Each registered selector keeps the names it matches and a count per
// address, so an Update matches only the new name against the selectors and
// Addrs reads only that selector's addresses.
type Cache struct {
	mu      sync.Mutex
	cfg     Config
	savedAt time.Time // of the file Load read (SavedAt)
	names   map[string]*name
	sels    map[string]*selector
	order   []*selector // sels, for matching new names without a map walk
	// byAddr indexes the entries by address (the names of a flow's
	// addresses).
	byAddr map[[4]byte][]*entry
	live   askHeap // asks not held, by (expires, seq)
	held   askHeap // asks kept past their expiry for a live connection
	// entries counts the (name, address) entries (MaxEntries bounds it).
	entries int
	// byEP indexes the entries by the endpoints that asked for them
	// (MaxEntries takes from the endpoint with the most).
	byEP map[uint16]map[*entry]struct{}
	seq  uint64
	// lastSweep is the time of the last Expire (unix ns), the base of the
	// held entries' next check.
	lastSweep int64
	// writes counts the calls that may have changed what List returns
	// (Writes).
	writes uint64
	// gen counts the Forget calls; forgotten has, per endpoint ID, the
	// gen of its last: an answer resolved to an ID before it was
	// forgotten (UpdateAsOf) is not recorded for it, and the policy drops
	// an ID from addresses read before (LearnedAsOf), so that a new
	// endpoint given a deleted one's ID never inherits its names.
	gen       uint64
	forgotten map[uint16]uint64
}

type name struct {
	name    string
	entries []*entry // sorted by address
	sels    []*selector
	dead    bool // removed from the cache
}

type entry struct {
	n    *name
	eps  []uint16 // the endpoints that asked, sorted
	asks []*ask   // theirs, in the order of eps
	addr [4]byte
}

// ask is one endpoint's ask of an entry: its own expiry (an answer to
// another endpoint neither lengthens nor shortens it).
type ask struct {
	e       *entry
	expires int64  // unix ns
	seq     uint64 // insertion order
	idx     int    // position in its heap
	ep      uint16
	held    bool
}

type selector struct {
	key   string
	m     *Matcher
	names map[*name]struct{}
	addrs map[[4]byte]int32 // how many of names have the address
	// eps counts, per address, the entries of names that each endpoint
	// asked for: what Learned gives the policy (an answer allows its
	// address to the endpoints that asked, not to every endpoint).
	eps map[[4]byte]map[uint16]int32
	// dirty are the addresses whose endpoints changed since the last
	// TakeDirty (what the policy must update, not the whole set); whole
	// is set until the first TakeDirty of a selector (re)registered, which
	// gives the whole set (a policy may hold addresses the cache dropped
	// while the selector was not registered).
	dirty map[[4]byte]struct{}
	whole bool
}

// countEps adds delta to the counts of the endpoints eps for addr, and
// marks s changed when an (address, endpoint) pair comes or goes.
func (s *selector) countEps(addr [4]byte, eps []uint16, delta int32, ch changes) {
	m := s.eps[addr]
	if m == nil {
		if delta < 0 || len(eps) == 0 {
			return
		}
		m = map[uint16]int32{}
		s.eps[addr] = m
	}
	for _, ep := range eps {
		n := m[ep] + delta
		if n <= 0 {
			delete(m, ep)
		} else {
			m[ep] = n
		}
		if n <= 0 || n == delta {
			s.dirty[addr] = struct{}{}
			if ch != nil {
				ch[s.key] = struct{}{}
			}
		}
	}
	if len(m) == 0 {
		delete(s.eps, addr)
	}
}

// NewCache returns an empty cache bounded by cfg.
func NewCache(cfg Config) *Cache {
	if cfg.MaxAddrsPerName <= 0 {
		cfg.MaxAddrsPerName = DefaultMaxAddrsPerName
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.AliveRecheck <= 0 {
		cfg.AliveRecheck = DefaultAliveRecheck
	}
	if cfg.MinTTL < 0 {
		cfg.MinTTL = 0
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Cache{
		cfg:    cfg,
		names:  map[string]*name{},
		sels:   map[string]*selector{},
		byAddr: map[[4]byte][]*entry{},
		byEP:   map[uint16]map[*entry]struct{}{},

		forgotten: map[uint16]uint64{},
	}
}

// changes collects the selector keys whose address set changed.
type changes map[string]struct{}

func (ch changes) sorted() []string {
	if len(ch) == 0 {
		return nil
	}
	out := make([]string, 0, len(ch))
	for k := range ch {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// SetSelectors replaces the toFQDNs selectors in use. Each key must be
// SelectorKey of its selector. It returns the keys whose address set changed
// (sorted): a new selector that matches names with addresses, a removed one
// that had addresses. On error (a selector that does not compile, a key that
// is not its SelectorKey) nothing changes.
func (c *Cache) SetSelectors(sels map[string]api.FQDNSelector) (changed []string, err error) {
	compiled := make(map[string]*Matcher, len(sels))
	for k, s := range sels {
		if want := SelectorKey(s); k != want {
			return nil, fmt.Errorf("%w: key %q is not the selector's key %q", ErrBadSelector, k, want)
		}
		m, err := Compile(s)
		if err != nil {
			return nil, err
		}
		compiled[k] = m
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := changes{}
	for k, s := range c.sels {
		if _, ok := compiled[k]; ok {
			continue
		}
		if len(s.addrs) > 0 {
			ch[k] = struct{}{}
		}
		for n := range s.names {
			n.sels = slices.DeleteFunc(n.sels, func(x *selector) bool { return x == s })
		}
		delete(c.sels, k)
	}
	for k, m := range compiled {
		if _, ok := c.sels[k]; ok {
			continue
		}
		s := &selector{key: k, m: m, names: map[*name]struct{}{}, addrs: map[[4]byte]int32{}, eps: map[[4]byte]map[uint16]int32{},
			dirty: map[[4]byte]struct{}{}, whole: true}
		c.sels[k] = s
		for _, n := range c.names {
			if m.matchNormalized(n.name) {
				s.link(n)
			}
		}
		if len(s.addrs) > 0 {
			ch[k] = struct{}{}
		}
	}
	c.order = c.order[:0]
	for _, s := range c.sels {
		c.order = append(c.order, s)
	}
	return ch.sorted(), nil
}

// link adds n (and its addresses) to s.
func (s *selector) link(n *name) {
	s.names[n] = struct{}{}
	n.sels = append(n.sels, s)
	for _, e := range n.entries {
		s.addrs[e.addr]++
		s.countEps(e.addr, e.eps, 1, nil)
	}
}

// Wanted tells whether a registered selector matches qname: the agent
// keeps only such names (one endpoint's lookups of names no policy
// selects could otherwise crowd the others' out of the bounded cache).
func (c *Cache) Wanted(qname string) bool {
	nm := Normalize(qname)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.order {
		if s.m.matchNormalized(nm) {
			return true
		}
	}
	return false
}

// Update records an allowed answer: endpoint ep asked for qname and got
// addrs with ttl. Only IPv4 addresses are kept (IPv4-mapped IPv6 ones are
// not IPv4), and not special-purpose ones (Learnable). An answer whose name is not a DNS name of at most 255 bytes is
// ignored. An address ep already asked for under the name gets the later
// expiry (ep's own: another endpoint's ask of it keeps its expiry).
// Update returns the selector keys whose address set changed (sorted).
func (c *Cache) Update(ep uint16, qname string, addrs []netip.Addr, ttl time.Duration) (changed []string) {
	return c.UpdateAsOf(^uint64(0), ep, qname, addrs, ttl)
}

// UpdateAsOf is Update for an endpoint ID the caller resolved when Gen
// was gen: nothing is recorded when ep was forgotten since (the endpoint
// was deleted, and the ID may be another's now).
func (c *Cache) UpdateAsOf(gen uint64, ep uint16, qname string, addrs []netip.Addr, ttl time.Duration) (changed []string) {
	nm := Normalize(qname)
	if !validName(nm, false) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.forgotten[ep] > gen {
		return nil
	}
	c.writes++
	if ttl < c.cfg.MinTTL {
		ttl = c.cfg.MinTTL
	}
	if ttl < 0 {
		ttl = 0
	}
	now := c.cfg.Now()
	expires := now.Add(ttl).UnixNano()
	ch := changes{}
	var n *name
	eps := [1]uint16{ep}
	for _, a := range addrs {
		if !Learnable(a) {
			continue // IPv6, or special-purpose (loopback, the metadata service...)
		}
		if n == nil || n.dead {
			n = c.nameFor(nm)
		}
		c.add(n, a.As4(), expires, eps[:], ch)
	}
	if n != nil {
		c.capName(n, ep, ch)
		c.capEntries(ch)
	}
	return ch.sorted()
}

// nameFor returns the name nm, created (and matched against the selectors)
// when not in the cache.
func (c *Cache) nameFor(nm string) *name {
	if n, ok := c.names[nm]; ok {
		return n
	}
	n := &name{name: nm}
	c.names[nm] = n
	for _, s := range c.order {
		if s.m.matchNormalized(nm) {
			s.link(n)
		}
	}
	return n
}

// add records addr for n until expires, asked by eps; the caller applies
// the bounds (capName, capEntries).
func (c *Cache) add(n *name, addr [4]byte, expires int64, eps []uint16, ch changes) {
	i, found := slices.BinarySearchFunc(n.entries, addr, func(e *entry, a [4]byte) int { return compareAddr(e.addr, a) })
	if found {
		e := n.entries[i]
		for _, ep := range eps {
			if c.addAsk(e, ep, expires) {
				// Another endpoint asked: the address is its too.
				for _, s := range n.sels {
					s.countEps(addr, []uint16{ep}, 1, ch)
				}
			}
		}
		return
	}
	e := &entry{n: n, addr: addr}
	c.entries++
	for _, ep := range eps {
		c.addAsk(e, ep, expires)
	}
	n.entries = slices.Insert(n.entries, i, e)
	if len(c.byAddr[addr]) < maxIndexedPerAddr {
		c.byAddr[addr] = append(c.byAddr[addr], e)
	}
	for _, s := range n.sels {
		if s.addrs[addr]++; s.addrs[addr] == 1 {
			ch[s.key] = struct{}{}
		}
		s.countEps(addr, e.eps, 1, ch)
	}
}

// addAsk records that ep asked for e until expires: a new ask (reported),
// or a later expiry for ep's own.
func (c *Cache) addAsk(e *entry, ep uint16, expires int64) bool {
	i, ok := slices.BinarySearch(e.eps, ep)
	if ok {
		a := e.asks[i]
		if expires > a.expires {
			a.expires = expires
			if a.held {
				heap.Remove(&c.held, a.idx)
				a.held = false
				heap.Push(&c.live, a)
			} else {
				heap.Fix(&c.live, a.idx)
			}
		}
		return false
	}
	c.seq++
	a := &ask{e: e, expires: expires, seq: c.seq, ep: ep}
	e.eps = slices.Insert(e.eps, i, ep)
	e.asks = slices.Insert(e.asks, i, a)
	heap.Push(&c.live, a)
	c.asked(e, ep)
	return true
}

// dropAsk takes a out of its heap.
func (c *Cache) dropAsk(a *ask) {
	if a.held {
		heap.Remove(&c.held, a.idx)
	} else {
		heap.Remove(&c.live, a.idx)
	}
}

// askOf is ep's ask of e, nil when ep did not ask.
func (e *entry) askOf(ep uint16) *ask {
	if i, ok := slices.BinarySearch(e.eps, ep); ok {
		return e.asks[i]
	}
	return nil
}

// asked and unasked keep byEP.
func (c *Cache) asked(e *entry, ep uint16) {
	m := c.byEP[ep]
	if m == nil {
		m = map[*entry]struct{}{}
		c.byEP[ep] = m
	}
	m[e] = struct{}{}
}

func (c *Cache) unasked(e *entry, ep uint16) {
	if m := c.byEP[ep]; m != nil {
		delete(m, e)
		if len(m) == 0 {
			delete(c.byEP, ep)
		}
	}
}

// unask drops endpoint ep's ask of e; e goes when no endpoint asks for it
// any more.
func (c *Cache) unask(e *entry, ep uint16, ch changes) {
	i, ok := slices.BinarySearch(e.eps, ep)
	if !ok {
		return
	}
	if len(e.eps) == 1 {
		c.remove(e, ch)
		return
	}
	c.writes++
	c.dropAsk(e.asks[i])
	e.eps = slices.Delete(e.eps, i, i+1)
	e.asks = slices.Delete(e.asks, i, i+1)
	c.unasked(e, ep)
	for _, s := range e.n.sels {
		s.countEps(e.addr, []uint16{ep}, -1, ch)
	}
}

// capName keeps at most MaxAddrsPerName of the addresses of n that ep
// asked for: its first in evictOrder go (from ep only; an entry another
// endpoint asked for stays theirs).
func (c *Cache) capName(n *name, ep uint16, ch changes) {
	if n.dead {
		return
	}
	var mine []*ask
	for _, e := range n.entries {
		if a := e.askOf(ep); a != nil {
			mine = append(mine, a)
		}
	}
	if len(mine) <= c.cfg.MaxAddrsPerName {
		return
	}
	slices.SortFunc(mine, evictOrder)
	for _, a := range mine[:len(mine)-c.cfg.MaxAddrsPerName] {
		c.unask(a.e, ep, ch)
	}
}

// capEntries keeps at most MaxEntries entries: while over, the endpoint
// that asked for the most entries (the lowest ID of a tie) loses its
// first in evictOrder, at least a sixty-fourth of its entries at a time
// (a sort of its entries is then paid once per that many new ones).
func (c *Cache) capEntries(ch changes) {
	for c.size() > c.cfg.MaxEntries {
		var heavy uint16
		most := 0
		for ep, m := range c.byEP {
			if len(m) > most || len(m) == most && ep < heavy {
				heavy, most = ep, len(m)
			}
		}
		if most == 0 {
			return // no entry without an endpoint is ever kept
		}
		mine := make([]*ask, 0, most)
		for e := range c.byEP[heavy] {
			mine = append(mine, e.askOf(heavy))
		}
		slices.SortFunc(mine, evictOrder)
		k := min(len(mine), max(c.size()-c.cfg.MaxEntries, len(mine)/64))
		for _, a := range mine[:k] {
			c.unask(a.e, heavy, ch)
		}
	}
}

// evictOrder orders one endpoint's asks for the caps: evictsBefore, then
// by name and address (a total order, so that eviction is deterministic).
func evictOrder(a, b *ask) int {
	switch {
	case evictsBefore(a, b):
		return -1
	case evictsBefore(b, a):
		return 1
	case a.e.n.name != b.e.n.name:
		return strings.Compare(a.e.n.name, b.e.n.name)
	}
	return compareAddr(a.e.addr, b.e.addr)
}

// evictsBefore orders the asks for the caps: asks not held before held
// ones, then earliest expiry, then oldest insert.
func evictsBefore(a, b *ask) bool {
	if a.held != b.held {
		return !a.held
	}
	if a.expires != b.expires {
		return a.expires < b.expires
	}
	return a.seq < b.seq
}

// remove drops e from the cache, and its name when e was the last entry.
func (c *Cache) remove(e *entry, ch changes) {
	c.writes++
	c.entries--
	for _, a := range e.asks {
		c.dropAsk(a)
	}
	for _, ep := range e.eps {
		c.unasked(e, ep)
	}
	n := e.n
	if i, ok := slices.BinarySearchFunc(n.entries, e.addr, func(x *entry, a [4]byte) int { return compareAddr(x.addr, a) }); ok {
		n.entries = slices.Delete(n.entries, i, i+1)
	}
	if same := slices.DeleteFunc(c.byAddr[e.addr], func(x *entry) bool { return x == e }); len(same) == 0 {
		delete(c.byAddr, e.addr)
	} else {
		c.byAddr[e.addr] = same
	}
	for _, s := range n.sels {
		if s.addrs[e.addr]--; s.addrs[e.addr] <= 0 {
			delete(s.addrs, e.addr)
			ch[s.key] = struct{}{}
		}
		s.countEps(e.addr, e.eps, -1, ch)
	}
	e.n, e.eps, e.asks = nil, nil, nil
	if len(n.entries) == 0 {
		for _, s := range n.sels {
			delete(s.names, n)
		}
		n.sels = nil
		n.dead = true
		delete(c.names, n.name)
	}
}

func compareAddr(a, b [4]byte) int {
	for i := range a {
		if a[i] != b[i] {
			return int(a[i]) - int(b[i])
		}
	}
	return 0
}

// MaxNamesPerAddr bounds the names Names returns; maxIndexedPerAddr the
// entries of one address it looks at (answers may give one address many
// names: a flow's lookup stays small work under the cache's lock).
const (
	MaxNamesPerAddr   = 8
	maxIndexedPerAddr = 32
)

// Names returns the names (without the final dot, sorted, at most
// MaxNamesPerAddr) the cache holds for addr that endpoint ep asked for,
// or that any endpoint asked for when ep is 0: what a flow to addr was
// looked up as.
func (c *Cache) Names(addr netip.Addr, ep uint16) []string {
	if !addr.Is4() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range c.byAddr[addr.As4()] {
		if _, asked := slices.BinarySearch(e.eps, ep); ep == 0 || asked {
			out = append(out, strings.TrimSuffix(e.n.name, "."))
		}
	}
	slices.Sort(out)
	out = slices.Compact(out)
	return out[:min(len(out), MaxNamesPerAddr)]
}

// Addrs returns the addresses of every name the selector key matches, sorted
// and deduplicated: the cache's entries, including those kept past their
// expiry by alive (Expire removes the others). Unknown keys have none.
func (c *Cache) Addrs(key string) []netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sels[key]
	if !ok || len(s.addrs) == 0 {
		return nil
	}
	out := make([]netip.Addr, 0, len(s.addrs))
	for a := range s.addrs {
		out = append(out, netip.AddrFrom4(a))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Learned returns, for every address Addrs returns, the endpoints whose
// lookups gave it (sorted): a toFQDNs selector allows an address only to
// the endpoints that asked for a name it matches and got the address.
// Unknown keys have none.
func (c *Cache) Learned(key string) map[netip.Addr][]uint16 {
	m, _ := c.LearnedAsOf(key)
	return m
}

// LearnedAsOf is Learned with the Gen it was read at.
func (c *Cache) LearnedAsOf(key string) (learned map[netip.Addr][]uint16, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sels[key]
	if !ok || len(s.eps) == 0 {
		return nil, c.gen
	}
	out := make(map[netip.Addr][]uint16, len(s.eps))
	for a, m := range s.eps {
		out[netip.AddrFrom4(a)] = slices.Sorted(maps.Keys(m))
	}
	return out, c.gen
}

// TakeDirty returns the addresses of selector key whose endpoints changed
// since the last TakeDirty, each with its endpoints now (none: no longer
// the selector's), and the Gen it was read at; they are then no longer
// dirty. A policy that has the selector's addresses keeps them up to date
// with it, at the cost of what changed rather than of the whole set. The
// first TakeDirty of a selector (re)registered gives its whole set
// instead (whole: replace, do not update).
func (c *Cache) TakeDirty(key string) (changed map[netip.Addr][]uint16, whole bool, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.sels[key]
	if !ok {
		return nil, false, c.gen
	}
	if s.whole {
		s.whole = false
		clear(s.dirty)
		changed = make(map[netip.Addr][]uint16, len(s.eps))
		for a, m := range s.eps {
			changed[netip.AddrFrom4(a)] = slices.Sorted(maps.Keys(m))
		}
		return changed, true, c.gen
	}
	if len(s.dirty) == 0 {
		return nil, false, c.gen
	}
	changed = make(map[netip.Addr][]uint16, len(s.dirty))
	for a := range s.dirty {
		var eps []uint16
		if m := s.eps[a]; len(m) > 0 {
			eps = slices.Sorted(maps.Keys(m))
		}
		changed[netip.AddrFrom4(a)] = eps
	}
	clear(s.dirty)
	return changed, false, c.gen
}

// Gen counts the Forget calls (see UpdateAsOf).
func (c *Cache) Gen() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// Expire removes the entries whose expiry has passed, except for the
// endpoints ep for which alive(addr, ep) is true (an open connection of
// that endpoint to the address still uses it: the entry stays, for those
// endpoints only, until alive says otherwise on a later Expire; another
// endpoint's connection keeps nothing for the endpoint that asked).
// alive may be nil (nothing is alive); it is called with the cache locked
// and must not call the cache. Expire returns the changed selector keys
// (sorted).
func (c *Cache) Expire(alive func(addr netip.Addr, ep uint16) bool) (changed []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now().UnixNano()
	c.lastSweep = now
	ch := changes{}
	keep := func(a *ask) bool { return alive != nil && alive(netip.AddrFrom4(a.e.addr), a.ep) }
	// Held asks first: those still alive stay, the others go.
	for _, a := range slices.Clone(c.held.s) {
		if !keep(a) {
			c.unask(a.e, a.ep, ch)
		}
	}
	for c.live.Len() > 0 && c.live.s[0].expires <= now {
		a := c.live.s[0]
		if !keep(a) {
			c.unask(a.e, a.ep, ch)
			continue
		}
		heap.Remove(&c.live, a.idx)
		a.held = true
		heap.Push(&c.held, a)
	}
	return ch.sorted()
}

// NextExpiry is when Expire next has work: the earliest expiry of an entry,
// or, when entries are kept past their expiry by alive, AliveRecheck after
// the last Expire if that is earlier. Zero when the cache is empty.
func (c *Cache) NextExpiry() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var t int64
	ok := false
	if c.live.Len() > 0 {
		t, ok = c.live.s[0].expires, true
	}
	if c.held.Len() > 0 {
		r := c.lastSweep + int64(c.cfg.AliveRecheck)
		if !ok || r < t {
			t, ok = r, true
		}
	}
	if !ok {
		return time.Time{}
	}
	return time.Unix(0, t)
}

// Endpoints lists the endpoints that asked for a name held (sorted).
func (c *Cache) Endpoints() []uint16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[uint16]bool{}
	for _, n := range c.names {
		for _, e := range n.entries {
			for _, ep := range e.eps {
				seen[ep] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// Forget drops what endpoints eps asked (they are deleted), in one pass
// over the cache: an entry stays while another endpoint asked for it too.
// It returns the changed selector keys (sorted).
func (c *Cache) Forget(eps ...uint16) (changed []string) {
	changed, _ = c.ForgetGen(eps...)
	return changed
}

// ForgetGen is Forget, also returning the Gen it made: an ID resolved
// before it is not recorded (UpdateAsOf), nor given addresses read before
// it (LearnedAsOf).
func (c *Cache) ForgetGen(eps ...uint16) (changed []string, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for _, ep := range eps {
		c.forgotten[ep] = c.gen
	}
	ch := changes{}
	var gone []*ask
	for _, ep := range slices.Compact(slices.Sorted(slices.Values(eps))) {
		for e := range c.byEP[ep] {
			gone = append(gone, e.askOf(ep))
		}
	}
	for _, a := range gone {
		c.unask(a.e, a.ep, ch)
	}
	return ch.sorted(), c.gen
}

// Entry is one (name, address) of the cache and the endpoints whose asks
// of it expire at Expires, as `filament fqdn cache list`
// shows it and Save stores it.
type Entry struct {
	Name      string     `json:"name"`
	Addr      netip.Addr `json:"addr"`
	Expires   time.Time  `json:"expires"`
	Endpoints []uint16   `json:"endpoints"`
}

// List returns one Entry per (name, address) and expiry (the endpoints
// whose asks end then), sorted by name, address and expiry. An ask kept
// past its expiry by alive shows its passed expiry.
func (c *Cache) List() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]string, 0, len(c.names))
	for k := range c.names {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]Entry, 0, c.size())
	for _, k := range keys {
		for _, e := range c.names[k].entries {
			asks := slices.SortedStableFunc(slices.Values(e.asks), func(a, b *ask) int { return cmp.Compare(a.expires, b.expires) })
			for i, a := range asks {
				if i > 0 && a.expires == asks[i-1].expires {
					last := &out[len(out)-1]
					last.Endpoints = append(last.Endpoints, a.ep)
					continue
				}
				out = append(out, Entry{Name: k, Addr: netip.AddrFrom4(e.addr), Expires: time.Unix(0, a.expires).UTC(), Endpoints: []uint16{a.ep}})
			}
		}
	}
	return out
}

// Writes counts the calls that may have changed what List returns (Update,
// Forget, Expire and Load when they change an entry): while it stays the
// same, so does List (the daemon saves the cache only after it moved).
func (c *Cache) Writes() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes
}

// Len is the number of (name, address) entries.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size()
}

// size is Len with the lock held.
func (c *Cache) size() int { return c.entries }

// askHeap is a min-heap of asks by (expires, seq); each ask knows its
// index.
type askHeap struct{ s []*ask }

func (h *askHeap) Len() int { return len(h.s) }
func (h *askHeap) Less(i, j int) bool {
	a, b := h.s[i], h.s[j]
	if a.expires != b.expires {
		return a.expires < b.expires
	}
	return a.seq < b.seq
}
func (h *askHeap) Swap(i, j int) {
	h.s[i], h.s[j] = h.s[j], h.s[i]
	h.s[i].idx, h.s[j].idx = i, j
}
func (h *askHeap) Push(x any) {
	e := x.(*ask)
	e.idx = len(h.s)
	h.s = append(h.s, e)
}
func (h *askHeap) Pop() any {
	n := len(h.s) - 1
	e := h.s[n]
	h.s[n] = nil
	h.s = h.s[:n]
	e.idx = -1
	return e
}
