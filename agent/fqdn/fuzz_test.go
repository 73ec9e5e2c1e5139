package fqdn

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/policy/api"
)

// fuzzOps reads a fuzz input as a script of cache operations.
type fuzzOps struct{ b []byte }

func (o *fuzzOps) byte() byte {
	if len(o.b) == 0 {
		return 0
	}
	c := o.b[0]
	o.b = o.b[1:]
	return c
}

// text is a string of up to 31 bytes: raw (any bytes, hostile names) or
// from a small alphabet of DNS characters, '.', '*' and uppercase (names
// and patterns that match each other), with ".example.com" appended when
// asked.
func (o *fuzzOps) text() string {
	h := o.byte()
	n := int(h & 31)
	var b []byte
	for range n {
		c := o.byte()
		if h&0x40 == 0 {
			c = "ab*.-_A0"[c%8]
		}
		b = append(b, c)
	}
	if h&0x80 != 0 {
		b = append(b, ".example.com"...)
	}
	return string(b)
}

// FuzzCacheUpdate drives Update, Expire, SetSelectors, Forget and the clock
// with arbitrary names, addresses and selectors. After every operation the
// bounds hold, the cache's structures agree with each other, every
// selector's Addrs is sorted, deduplicated and exactly the addresses of the
// names its matcher matches, every address set that changed is among the
// keys returned, and a refused selector set changes nothing.
func FuzzCacheUpdate(f *testing.F) {
	f.Add([]byte("\x02\x02\x81*\x05Sub*x\x00\x83abc\x01\x02\x07\x0a\x01\x00\x03\x05\x01"))
	f.Add([]byte{2, 1, 0x81, 2, 0, 0x82, 0, 3, 0, 1, 2, 3, 1, 3, 200, 1, 0, 0x84, 0, 1, 2, 3, 4, 1, 2, 30, 4, 0})
	f.Add([]byte{2, 1, 1, 2, 0, 0x44, 'a', ' ', 0xff, '.', 4, 5, 6, 7, 8, 9, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		clk := newClock()
		c := NewCache(Config{Now: clk.now, MinTTL: 2 * time.Second, MaxAddrsPerName: 4, MaxEntries: 16, AliveRecheck: time.Second})
		o := &fuzzOps{b: data}
		keys := map[string]bool{}
		// mirror is each selector's addresses as a policy keeps them:
		// read whole once (Learned), then updated by TakeDirty alone.
		mirror := map[string]map[netip.Addr][]uint16{}
		// expiry is each (name, address, endpoint) ask's expiry as the
		// answers to that endpoint alone set it.
		type askKey struct {
			name string
			addr netip.Addr
			ep   uint16
		}
		expiry := map[askKey]time.Time{}
		for steps := 0; len(o.b) > 0 && steps < 200; steps++ {
			before := map[string][]netip.Addr{}
			learned := map[string]map[netip.Addr][]uint16{}
			for k := range keys {
				before[k] = c.Addrs(k)
				learned[k] = c.Learned(k)
			}
			var changed []string
			switch o.byte() % 5 {
			case 0:
				ep, name := uint16(o.byte()%4), o.text()
				var addrs []netip.Addr
				for range o.byte() % 6 {
					a := o.byte()
					if a == 255 {
						addrs = append(addrs, netip.MustParseAddr("fd00::1"))
					} else {
						addrs = append(addrs, netip.AddrFrom4([4]byte{10, 0, a >> 4, a & 15}))
					}
				}
				ttl := time.Duration(int8(o.byte())) * time.Second
				changed = c.Update(ep, name, addrs, ttl)
				nm := Normalize(name)
				if validName(nm, false) {
					exp := clk.now().Add(max(ttl, 2*time.Second)).UTC()
					for _, a := range addrs {
						if k := (askKey{nm, a, ep}); a.Is4() && exp.After(expiry[k]) {
							expiry[k] = exp
						}
					}
				}
				if !validName(nm, false) && changed != nil {
					t.Fatalf("Update of the non-name %q changed %v", name, changed)
				}
				for _, s := range c.sels {
					if m := s.m; m.re != nil && m.matchNormalized(nm) != m.re.MatchString(nm) {
						t.Fatalf("%s: fast match of %q differs from its regexp", m, nm)
					}
				}
			case 1:
				odd := o.byte()&1 == 1
				changed = c.Expire(func(a netip.Addr, ep uint16) bool { return odd && a.As4()[3]&1 == 1 && ep != 3 })
			case 2:
				m := map[string]api.FQDNSelector{}
				for range o.byte() % 4 {
					s := api.FQDNSelector{MatchPattern: o.text()}
					if o.byte()&1 == 1 {
						s = api.FQDNSelector{MatchName: s.MatchPattern}
					}
					m[SelectorKey(s)] = s
				}
				var err error
				changed, err = c.SetSelectors(m)
				if err != nil {
					if !errors.Is(err, ErrBadSelector) || changed != nil {
						t.Fatalf("SetSelectors error %v (changed %v) does not wrap ErrBadSelector", err, changed)
					}
					break
				}
				keys = map[string]bool{}
				for k := range mirror {
					if _, ok := m[k]; !ok {
						delete(mirror, k)
					}
				}
				for k := range m {
					if _, ok := mirror[k]; !ok {
						mirror[k] = c.Learned(k)
					}
					keys[k] = true
					if _, ok := before[k]; !ok {
						before[k] = nil
					}
				}
			case 3:
				clk.advance(time.Duration(o.byte()) * 100 * time.Millisecond)
			case 4:
				changed = c.Forget(uint16(o.byte() % 4))
			}
			if !slices.IsSorted(changed) {
				t.Fatalf("changed keys not sorted: %v", changed)
			}
			checkInvariants(t, c)
			checkSelectors(t, c, keys, before, learned, changed)
			// Each ask's expiry is its own endpoint's answers' (an ask gone
			// starts anew when asked again).
			listed := map[askKey]bool{}
			for _, e := range c.List() {
				for _, ep := range e.Endpoints {
					k := askKey{e.Name, e.Addr, ep}
					listed[k] = true
					if !e.Expires.Equal(expiry[k]) {
						t.Fatalf("%s %v endpoint %d expires %v, its answers said %v", e.Name, e.Addr, ep, e.Expires, expiry[k])
					}
				}
			}
			for k := range expiry {
				if !listed[k] {
					delete(expiry, k)
				}
			}
			for k, mk := range mirror {
				d, whole, _ := c.TakeDirty(k)
				if mk == nil || whole {
					mk = map[netip.Addr][]uint16{}
				}
				for a, eps := range d {
					if len(eps) == 0 {
						delete(mk, a)
					} else {
						mk[a] = eps
					}
				}
				mirror[k] = mk
				want := c.Learned(k)
				if len(want) == 0 && len(mk) == 0 {
					continue
				}
				if !reflect.DeepEqual(mk, want) {
					t.Fatalf("selector %s kept by TakeDirty: %v, Learned %v", k, mk, want)
				}
			}
			if (c.Len() == 0) != c.NextExpiry().IsZero() {
				t.Fatalf("Len %d but NextExpiry %v", c.Len(), c.NextExpiry())
			}
		}
	})
}

// checkSelectors checks Addrs of every key against the listed entries and
// that a key whose addresses changed is among changed.
func checkSelectors(t *testing.T, c *Cache, keys map[string]bool, before map[string][]netip.Addr, learned map[string]map[netip.Addr][]uint16, changed []string) {
	t.Helper()
	list := c.List()
	for k := range before {
		got := c.Addrs(k)
		var want []netip.Addr
		var wantL map[netip.Addr][]uint16
		if keys[k] {
			for _, e := range list {
				if c.sels[k].m.Match(e.Name) {
					if wantL == nil {
						wantL = map[netip.Addr][]uint16{}
					}
					eps := append(wantL[e.Addr], e.Endpoints...)
					slices.Sort(eps)
					wantL[e.Addr] = slices.Compact(eps)
				}
			}
			m := c.sels[k].m
			for _, e := range list {
				if m.Match(e.Name) {
					want = append(want, e.Addr)
				}
				if m.re != nil && m.matchNormalized(e.Name) != m.re.MatchString(e.Name) {
					t.Fatalf("%s: fast match of %q differs from its regexp", m, e.Name)
				}
			}
			slices.SortFunc(want, netip.Addr.Compare)
			want = slices.Compact(want)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Addrs(%s) = %v, want %v", k, got, want)
		}
		if !reflect.DeepEqual(got, before[k]) && !slices.Contains(changed, k) {
			t.Fatalf("Addrs(%s) went from %v to %v but changed is %v", k, before[k], got, changed)
		}
		gotL := c.Learned(k)
		if !reflect.DeepEqual(gotL, wantL) {
			t.Fatalf("Learned(%s) = %v, want %v", k, gotL, wantL)
		}
		if !reflect.DeepEqual(gotL, learned[k]) && !slices.Contains(changed, k) {
			t.Fatalf("Learned(%s) went from %v to %v but changed is %v", k, learned[k], gotL, changed)
		}
	}
}
