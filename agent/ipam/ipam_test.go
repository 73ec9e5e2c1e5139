package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNewValidates(t *testing.T) {
	for _, bad := range []string{"nonsense", "10.0.0.0/30", "10.0.0.0/7", "10.0.0.5/24", "fd00::/64"} {
		if _, err := New(bad); !errors.Is(err, ErrInvalidCIDR) {
			t.Errorf("%s: want ErrInvalidCIDR, got %v", bad, err)
		} else if !contains(err.Error(), bad) {
			t.Errorf("%s: error does not name the value: %v", bad, err)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func TestAllocateExhaustRelease(t *testing.T) {
	p, err := New("10.1.0.0/29")
	if err != nil {
		t.Fatal(err)
	}
	if p.Gateway().String() != "10.1.0.1" || p.Capacity() != 5 {
		t.Fatalf("gateway %s capacity %d", p.Gateway(), p.Capacity())
	}
	got := map[netip.Addr]bool{}
	for i := 0; i < 5; i++ {
		a, err := p.Allocate(fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		if a == p.Gateway() || a.String() == "10.1.0.0" || a.String() == "10.1.0.7" || got[a] {
			t.Fatalf("handed out %s", a)
		}
		got[a] = true
	}
	_, err = p.Allocate("x")
	if !errors.Is(err, ErrExhausted) || !contains(err.Error(), "10.1.0.0/29") {
		t.Fatalf("exhausted pool: %v", err)
	}
	// A released address comes back once MinReuseDelay has passed
	// (hold_test.go).
	now := time.Now()
	p.now = func() time.Time { return now }
	p.Release(netip.MustParseAddr("10.1.0.4"))
	now = now.Add(MinReuseDelay)
	if a, err := p.Allocate("y"); err != nil || a.String() != "10.1.0.4" {
		t.Fatalf("after release: %s %v", a, err)
	}
}

func TestClaim(t *testing.T) {
	p, _ := New("10.2.0.0/24")
	if err := p.Claim(netip.MustParseAddr("10.2.0.9"), "a"); err != nil {
		t.Fatal(err)
	}
	if err := p.Claim(netip.MustParseAddr("10.2.0.9"), "b"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("double claim: %v", err)
	}
	for _, a := range []string{"10.2.0.1", "10.2.0.255", "10.3.0.1"} {
		if err := p.Claim(netip.MustParseAddr(a), "c"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("claim %s: %v", a, err)
		}
	}
	for i := 0; i < 300; i++ {
		a, err := p.Allocate("z")
		if err != nil {
			break
		}
		if a.String() == "10.2.0.9" {
			t.Fatal("claimed address handed out again")
		}
	}
}

func TestConcurrentAllocationsAreUnique(t *testing.T) {
	p, _ := New("10.3.0.0/22")
	var mu sync.Mutex
	seen := map[netip.Addr]bool{}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				a, err := p.Allocate("g")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[a] {
					t.Errorf("%s handed out twice", a)
				}
				seen[a] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != 800 || p.Used() != 800 {
		t.Fatalf("allocated %d, used %d", len(seen), p.Used())
	}
}
