package flow

import (
	"context"
	"errors"
	"testing"
	"time"
)

func drain(rd *Reader[int]) (vals []int, lost uint64) {
	for {
		v, l, ok := rd.Next()
		lost += l
		if !ok {
			return vals, lost
		}
		vals = append(vals, v)
	}
}

func eqInts(t *testing.T, what string, got, want []int) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %v, want %v", what, got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: %v, want %v", what, got, want)
		}
	}
}

func TestRingKeepsTheLastValues(t *testing.T) {
	if _, err := NewRing[int](0); !errors.Is(err, ErrCapacity) {
		t.Fatalf("capacity 0: %v", err)
	}
	r, _ := NewRing[int](4)
	vals, lost := drain(r.Reader(0, false))
	if len(vals) != 0 || lost != 0 {
		t.Fatalf("empty ring: %v lost %d", vals, lost)
	}
	for i := 1; i <= 6; i++ {
		r.Write(i)
	}
	vals, lost = drain(r.Reader(0, false))
	eqInts(t, "all held", vals, []int{3, 4, 5, 6})
	if lost != 0 {
		t.Fatalf("a new reader starts at the oldest held: lost %d", lost)
	}
	vals, _ = drain(r.Reader(2, false))
	eqInts(t, "last 2", vals, []int{5, 6})
	vals, _ = drain(r.Reader(10, false))
	eqInts(t, "last 10 of 4 held", vals, []int{3, 4, 5, 6})
	tail := r.Reader(0, true)
	if vals, _ := drain(tail); len(vals) != 0 {
		t.Fatalf("tail reader read %v", vals)
	}
	r.Write(7)
	vals, _ = drain(tail)
	eqInts(t, "tail after a write", vals, []int{7})
	if seen, held := r.Stats(); seen != 7 || held != 4 {
		t.Fatalf("stats: seen %d held %d", seen, held)
	}
}

// A reader that falls behind by more than the capacity is told how many
// values it lost and goes on at the oldest held.
func TestRingReaderFallsBehind(t *testing.T) {
	r, _ := NewRing[int](3)
	r.Write(1)
	rd := r.Reader(0, false)
	for i := 2; i <= 8; i++ {
		r.Write(i)
	}
	v, lost, ok := rd.Next()
	if !ok || v != 6 || lost != 5 {
		t.Fatalf("after falling behind: %d lost %d ok %v, want 6 lost 5", v, lost, ok)
	}
	vals, lost := drain(rd)
	eqInts(t, "the rest", vals, []int{7, 8})
	if lost != 0 {
		t.Fatalf("lost again: %d", lost)
	}
}

func TestRingWait(t *testing.T) {
	r, _ := NewRing[int](2)
	rd := r.Reader(0, true)
	got := make(chan int)
	go func() {
		v, _, err := rd.Wait(context.Background())
		if err != nil {
			close(got)
			return
		}
		got <- v
	}()
	r.Write(42)
	select {
	case v := <-got:
		if v != 42 {
			t.Fatalf("Wait: %d", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after a write")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := rd.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with an ended context: %v", err)
	}
}

// Readers and a writer at once (go test -race).
func TestRingConcurrent(t *testing.T) {
	r, _ := NewRing[int](16)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan uint64)
	for range 4 {
		rd := r.Reader(0, false) // before the first write: every value is its
		go func() {
			var n, lost uint64
			for n+lost < 1000 {
				_, l, err := rd.Wait(ctx)
				if err != nil {
					break
				}
				n, lost = n+1, lost+l
			}
			done <- n + lost
		}()
	}
	for i := range 1000 {
		r.Write(i)
	}
	for range 4 {
		if got := <-done; got != 1000 {
			t.Fatalf("a reader accounted for %d of 1000 values", got)
		}
	}
}
