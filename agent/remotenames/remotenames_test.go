package remotenames

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/ipcache"
)

type fakeMesh struct {
	mu      sync.Mutex
	calls   int
	entries map[netip.Addr]ipcache.Entry
	block   chan struct{} // when set, a lookup waits for it
}

func (f *fakeMesh) lookup(ctx context.Context, cluster string, ip netip.Addr) (ipcache.Entry, error) {
	f.mu.Lock()
	f.calls++
	e, ok := f.entries[ip]
	block := f.block
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ipcache.Entry{}, ctx.Err()
		}
	}
	if !ok || cluster != "c2" {
		return ipcache.Entry{}, errors.New("not held")
	}
	return e, nil
}

func (f *fakeMesh) set(ip netip.Addr, e ipcache.Entry) {
	f.mu.Lock()
	f.entries[ip] = e
	f.mu.Unlock()
}

func (f *fakeMesh) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func start(t *testing.T, f *fakeMesh, cfg Config) *Names {
	n := New(f.lookup, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return n
}

// nameOf polls Of until it names ip (the worker fills the cache).
func nameOf(t *testing.T, n *Names, cluster string, ip netip.Addr, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, pod := n.Of(cluster, ip); pod == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s in %s not named %q within 5 s", ip, cluster, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNamesCachedAndForgotten(t *testing.T) {
	a := netip.MustParseAddr("10.2.0.5")
	f := &fakeMesh{entries: map[netip.Addr]ipcache.Entry{a: {IP: a, Namespace: "shop", Pod: "cart-1"}}}
	n := start(t, f, Config{})
	if ns, pod := n.Of("c2", a); ns != "" || pod != "" {
		t.Fatalf("a miss answered %q %q, want nothing at once", ns, pod)
	}
	nameOf(t, n, "c2", a, "cart-1")
	calls := f.count()
	for range 3 {
		n.Of("c2", a)
	}
	if f.count() != calls {
		t.Fatalf("%d lookups for a cached address", f.count()-calls)
	}
	// Another cluster's view of the address is not this one's.
	if _, pod := n.Of("c3", a); pod != "" {
		t.Fatalf("named for cluster c3: %q", pod)
	}
	f.set(a, ipcache.Entry{IP: a, Namespace: "shop", Pod: "cart-2"})
	n.Forget(a)
	nameOf(t, n, "c2", a, "cart-2")
}

// A lookup under way when the entry changes is not cached: the next Of
// looks the address up again.
func TestForgetDuringLookup(t *testing.T) {
	a := netip.MustParseAddr("10.2.0.5")
	f := &fakeMesh{entries: map[netip.Addr]ipcache.Entry{a: {IP: a, Namespace: "shop", Pod: "old"}}, block: make(chan struct{})}
	n := start(t, f, Config{})
	n.Of("c2", a)
	for f.count() == 0 {
		time.Sleep(time.Millisecond)
	}
	f.set(a, ipcache.Entry{IP: a, Namespace: "shop", Pod: "new"})
	n.Forget(a)
	f.mu.Lock()
	close(f.block)
	f.block = nil
	f.mu.Unlock()
	nameOf(t, n, "c2", a, "new")
}

func TestNamesExpire(t *testing.T) {
	a := netip.MustParseAddr("10.2.0.5")
	f := &fakeMesh{entries: map[netip.Addr]ipcache.Entry{a: {IP: a, Namespace: "shop", Pod: "cart-1"}}}
	n := start(t, f, Config{TTL: 50 * time.Millisecond})
	nameOf(t, n, "c2", a, "cart-1")
	f.set(a, ipcache.Entry{IP: a, Namespace: "shop", Pod: "cart-9"})
	nameOf(t, n, "c2", a, "cart-9")
}

// A pod making flows to many remote addresses: Of never waits (the
// lookups block here), the queue and the cache stay bounded, and lookups
// go at the rate limit.
func TestLookupsBounded(t *testing.T) {
	f := &fakeMesh{entries: map[netip.Addr]ipcache.Entry{}, block: make(chan struct{})}
	defer close(f.block)
	n := start(t, f, Config{Size: 64, Queue: 16, Rate: 0.001, Burst: 2, Timeout: time.Hour})
	begin := time.Now()
	for i := range 1000 {
		a := netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
		if _, pod := n.Of("c2", a); pod != "" {
			t.Fatal("named at once")
		}
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Fatalf("1,000 misses took %v: Of waited", d)
	}
	n.mu.Lock()
	q, p := len(n.queue), len(n.pending)
	n.mu.Unlock()
	if q > 16 || p > 17 {
		t.Fatalf("queue %d, pending %d: bounds 16 queued, one more looked up", q, p)
	}
	time.Sleep(50 * time.Millisecond)
	if c := f.count(); c > 2 {
		t.Fatalf("%d lookups started, want at most the burst (2)", c)
	}
}
