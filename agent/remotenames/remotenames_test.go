package remotenames

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/ipcache"
)

type fakeMesh struct {
	calls   int
	entries map[netip.Addr]ipcache.Entry
}

func (f *fakeMesh) lookup(_ context.Context, cluster string, ip netip.Addr) (ipcache.Entry, error) {
	f.calls++
	e, ok := f.entries[ip]
	if !ok || cluster != "c2" {
		return ipcache.Entry{}, errors.New("not held")
	}
	return e, nil
}

func TestNamesCachedAndForgotten(t *testing.T) {
	a := netip.MustParseAddr("10.2.0.5")
	f := &fakeMesh{entries: map[netip.Addr]ipcache.Entry{a: {IP: a, Namespace: "shop", Pod: "cart-1"}}}
	n := New(f.lookup, Config{})
	for range 3 {
		if ns, pod := n.Of("c2", a); ns != "shop" || pod != "cart-1" {
			t.Fatalf("Of: %q %q", ns, pod)
		}
	}
	if f.calls != 1 {
		t.Fatalf("%d lookups for one address, want 1 (cached)", f.calls)
	}
	f.entries[a] = ipcache.Entry{IP: a, Namespace: "shop", Pod: "cart-2"}
	n.Forget(a)
	if _, pod := n.Of("c2", a); pod != "cart-2" {
		t.Fatalf("after Forget: %q", pod)
	}
	// An address the mesh does not hold is unnamed, and remembered so.
	b := netip.MustParseAddr("10.2.0.6")
	calls := f.calls
	for range 3 {
		if ns, pod := n.Of("c2", b); ns != "" || pod != "" {
			t.Fatalf("unknown address named %q %q", ns, pod)
		}
	}
	if f.calls != calls+1 {
		t.Fatalf("%d lookups for an unknown address, want 1", f.calls-calls)
	}
}

func TestNamesExpire(t *testing.T) {
	a := netip.MustParseAddr("10.2.0.5")
	f := &fakeMesh{entries: map[netip.Addr]ipcache.Entry{a: {IP: a, Namespace: "shop", Pod: "cart-1"}}}
	n := New(f.lookup, Config{TTL: 50 * time.Millisecond})
	n.Of("c2", a)
	f.entries[a] = ipcache.Entry{IP: a, Namespace: "shop", Pod: "cart-9"}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, pod := n.Of("c2", a); pod == "cart-9" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a cached name did not expire")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A pod making flows to many remote addresses gets at most the burst of
// lookups at once; the rest go unnamed, and the cache stays bounded.
func TestLookupsLimited(t *testing.T) {
	f := &fakeMesh{entries: map[netip.Addr]ipcache.Entry{}}
	for i := range 1000 {
		a := netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
		f.entries[a] = ipcache.Entry{IP: a, Namespace: "ns", Pod: "p"}
	}
	n := New(f.lookup, Config{Size: 64, Rate: 0.001, Burst: 10})
	named := 0
	for a := range f.entries {
		if _, pod := n.Of("c2", a); pod != "" {
			named++
		}
	}
	if f.calls != 10 || named != 10 {
		t.Fatalf("%d lookups, %d named; want the burst, 10", f.calls, named)
	}
	if l := n.cache.Len(); l > 64 {
		t.Fatalf("cache holds %d, bound 64", l)
	}
}
