package service

import (
	"context"
	"fmt"
	"testing"
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
