package service

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	"github.com/filament-net/filament/agent/datapath"
	"golang.org/x/sys/unix"
)

// wideNodePort is a NodePort service of n ports and two backends.
func wideNodePort(n int) *Service {
	s := manyBackends("tenant", "wide", "10.96.1.1", n, 2, true)
	s.Metadata.Annotations = map[string]string{"team": "a"}
	return s
}

// upserts is how many writes of frontends the fake datapath has seen.
func upserts(dp *fakeDP) int {
	_, calls := dp.snapshot()
	return len(calls)
}

// A change nothing of the datapath reads (an annotation) writes nothing to
// it; a change of one port's target writes that port's frontends only; a
// frontend whose write failed is written again at the next change. Until
// 2026-12-07 every change wrote every frontend of the service, every slot
// and member, with the manager's lock held: a Service of 16,000 ports
// flipped in a loop burnt a core of every node and delayed node failover.
func TestManagerUnchangedFrontendsNotRewritten(t *testing.T) {
	m, dp := newManager(t, "random")
	ctx := context.Background()
	s := wideNodePort(100)
	if err := m.Upsert(ctx, s); err != nil {
		t.Fatal(err)
	}
	before := upserts(dp)
	s = wideNodePort(100)
	s.Metadata.Annotations["team"] = "b"
	if err := m.Upsert(ctx, s); err != nil {
		t.Fatal(err)
	}
	if n := upserts(dp) - before; n != 0 {
		t.Fatalf("a change of an annotation nothing reads: %d datapath writes, want 0", n)
	}
	before = upserts(dp)
	s.Spec.Ports[7].TargetPort = 9000
	if err := m.Upsert(ctx, s); err != nil {
		t.Fatal(err)
	}
	if n := upserts(dp) - before; n != 3 { // ClusterIP and a NodePort on each of 2 node addresses
		t.Fatalf("one port's target changed: %d datapath writes, want 3", n)
	}
	dp.mu.Lock()
	dp.fail = fmt.Errorf("map full")
	dp.mu.Unlock()
	s.Spec.Ports[7].TargetPort = 9001
	if err := m.Upsert(ctx, s); err != nil {
		t.Fatal(err)
	}
	dp.mu.Lock()
	dp.fail = nil
	dp.mu.Unlock()
	before = upserts(dp)
	s.Metadata.Annotations["team"] = "c"
	if err := m.Upsert(ctx, s); err != nil {
		t.Fatal(err)
	}
	if n := upserts(dp) - before; n != 3 {
		t.Fatalf("after failed writes: %d datapath writes, want the 3 that failed", n)
	}
}

// BenchmarkManagerApplyWideService: a change of an annotation of a
// ClusterIP service of 16,000 ports (as a tenant flipping it in a loop).
func BenchmarkManagerApplyWideService(b *testing.B) {
	dp := newFakeDP()
	m, err := New(context.Background(), Config{Cluster: "c1", Algorithm: "random", Datapath: dp})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		s := manyBackends("tenant", "wide", "10.96.1.1", 16000, 2, false)
		s.Metadata.Annotations = map[string]string{"flip": fmt.Sprint(i % 2)}
		if err := m.Upsert(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
}

// holdsReferences says whether a value of type t refers to memory beyond
// its own bytes (a pointer, slice, map, string, ...).
func holdsReferences(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Array:
		return holdsReferences(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if holdsReferences(t.Field(i).Type) {
				return true
			}
		}
		return false
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return false
	}
	return true
}

// What the manager keeps of the entry written last to a frontend is a
// value of fixed size, a few dozen bytes, whatever the entry holds; and
// it still tells every changed entry from the last written, one Maglev
// slot or a backend moved from the slots to those kept included. The
// review of dc07e0d found that it kept a copy of every entry, so of each
// Maglev table (16,381 int32s, 64 KiB): with the 1,024 tables
// of lb_maglev in use, 64 MiB more in every agent.
func TestManagerWrittenMemoryBounded(t *testing.T) {
	m, dp := newManager(t, "maglev")
	if err := m.Upsert(context.Background(), manyBackends("tenant", "wide", "10.96.1.1", 4, 3, false)); err != nil {
		t.Fatal(err)
	}
	if n := len(m.written); n != 4 {
		t.Fatalf("%d frontends remembered as written, want 4", n)
	}
	vt := reflect.TypeOf(m.written).Elem()
	if holdsReferences(vt) || vt.Size() > 64 {
		t.Fatalf("what is kept per frontend written is a %s of %d bytes (references: %v), want at most 64 bytes and no references",
			vt, vt.Size(), holdsReferences(vt))
	}

	b := func(ip string, port uint16) datapath.LBBackend {
		return datapath.LBBackend{IP: netip.MustParseAddr(ip), Port: port}
	}
	base := func() datapath.LBService {
		s := datapath.LBService{Backends: []datapath.LBBackend{b("10.0.0.1", 80), b("10.0.0.2", 80)}, Keep: []datapath.LBBackend{b("10.0.0.3", 80)},
			NodePort: true, Algorithm: datapath.AlgMaglev, AffinityTimeout: 10, Maglev: make([]int32, fakeMaglevSize)}
		for i := range s.Maglev {
			s.Maglev[i] = int32(i % 2)
		}
		return s
	}
	changes := map[string]func(*datapath.LBService){
		"one Maglev slot":           func(s *datapath.LBService) { s.Maglev[fakeMaglevSize-1] ^= 1 },
		"a kept backend now a slot": func(s *datapath.LBService) { s.Backends, s.Keep = append(s.Backends, s.Keep...), nil },
		"a backend's port":          func(s *datapath.LBService) { s.Backends[1].Port = 81 },
		"a backend's address":       func(s *datapath.LBService) { s.Backends[0].IP = netip.MustParseAddr("10.0.0.9") },
		"the slots' order":          func(s *datapath.LBService) { s.Backends[0], s.Backends[1] = s.Backends[1], s.Backends[0] },
		"a kept backend gone":       func(s *datapath.LBService) { s.Keep = nil },
		"NodePort":                  func(s *datapath.LBService) { s.NodePort = false },
		"the affinity timeout":      func(s *datapath.LBService) { s.AffinityTimeout = 11 },
		"the algorithm":             func(s *datapath.LBService) { s.Algorithm, s.Maglev = datapath.AlgRandom, nil },
		"no backends":               func(s *datapath.LBService) { s.Backends, s.Maglev = nil, nil },
		"a backend's address IPv6":  func(s *datapath.LBService) { s.Backends[0].IP = netip.MustParseAddr("::ffff:10.0.0.1") },
	}
	fe := datapath.Frontend{IP: netip.MustParseAddr("10.96.9.9"), Port: 80, Proto: unix.IPPROTO_TCP}
	write := func(s datapath.LBService) int {
		t.Helper()
		before := upserts(dp)
		m.mu.Lock()
		defer m.mu.Unlock()
		if err := m.write(fe, s); err != nil {
			t.Fatal(err)
		}
		return upserts(dp) - before
	}
	for name, change := range changes {
		write(base())
		if n := write(base()); n != 0 {
			t.Fatalf("the same entry again: %d writes, want 0", n)
		}
		s := base()
		change(&s)
		if n := write(s); n != 1 {
			t.Errorf("%s changed: %d writes, want 1", name, n)
		}
		if n := write(s); n != 0 {
			t.Errorf("%s changed, written again: %d writes, want 0", name, n)
		}
	}
}
