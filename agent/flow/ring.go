// Package flow owns the node's record of flows: a fixed-size ring the
// datapath's and the proxies' events are written to, and the readers that
// follow it (the Hubble API, `filament observe`). It knows nothing of
// where flows come from or how they are served.
package flow

import (
	"context"
	"errors"
	"sync"
)

// DefaultCapacity is the ring's default size, Hubble's.
const DefaultCapacity = 4095

// ErrCapacity: a ring needs room for at least one flow.
var ErrCapacity = errors.New("flow ring capacity must be at least 1")

// Ring keeps the last Capacity values written; a writer never waits for a
// reader. Every value has a sequence number, one more than the value
// written before it. A reader that falls behind by more than the
// capacity loses the values overwritten meanwhile and is told how many
// (Hubble reports them as lost events).
type Ring[T any] struct {
	mu   sync.Mutex
	buf  []T
	next uint64        // the sequence number of the next value written
	wake chan struct{} // closed (and replaced) at each write
}

// NewRing returns an empty ring of the given capacity.
func NewRing[T any](capacity int) (*Ring[T], error) {
	if capacity < 1 {
		return nil, ErrCapacity
	}
	return &Ring[T]{buf: make([]T, capacity), wake: make(chan struct{})}, nil
}

// Capacity is how many values the ring keeps.
func (r *Ring[T]) Capacity() int { return len(r.buf) }

// Write adds v, overwriting the oldest value when the ring is full.
func (r *Ring[T]) Write(v T) {
	r.mu.Lock()
	r.buf[r.next%uint64(len(r.buf))] = v
	r.next++
	close(r.wake)
	r.wake = make(chan struct{})
	r.mu.Unlock()
}

// Stats are the ring's counts: values written so far, values held now.
func (r *Ring[T]) Stats() (seen uint64, held int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.next, r.held()
}

func (r *Ring[T]) held() int { return int(min(r.next, uint64(len(r.buf)))) }

// oldest is the sequence number of the oldest value held; r.mu is held.
func (r *Ring[T]) oldest() uint64 { return r.next - uint64(r.held()) }

// Reader returns a reader at the oldest value held, or at the last n
// values (n > 0), or at the next value written (tail).
func (r *Ring[T]) Reader(n int, tail bool) *Reader[T] {
	r.mu.Lock()
	defer r.mu.Unlock()
	pos := r.oldest()
	switch {
	case tail:
		pos = r.next
	case n > 0 && uint64(n) < r.next-pos:
		pos = r.next - uint64(n)
	}
	return &Reader[T]{r: r, pos: pos}
}

// Pos is the sequence number of the next value the reader reads.
func (rd *Reader[T]) Pos() uint64 { return rd.pos }

// Reader reads a ring in order from a position.
type Reader[T any] struct {
	r   *Ring[T]
	pos uint64
}

// Next returns the next value and the number of values lost before it
// (overwritten before this reader got to them). ok is false when there is
// no next value yet.
func (rd *Reader[T]) Next() (v T, lost uint64, ok bool) {
	r := rd.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.oldest(); rd.pos < old {
		lost, rd.pos = old-rd.pos, old
	}
	if rd.pos == r.next {
		return v, lost, false
	}
	v = r.buf[rd.pos%uint64(len(r.buf))]
	rd.pos++
	return v, lost, true
}

// Wait returns the next value, waiting for one to be written until ctx
// ends (then it returns ctx's error).
func (rd *Reader[T]) Wait(ctx context.Context) (v T, lost uint64, err error) {
	for {
		rd.r.mu.Lock()
		wake := rd.r.wake // taken before Next: a write after it closes this one
		rd.r.mu.Unlock()
		v, l, ok := rd.Next()
		lost += l
		if ok {
			return v, lost, nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return v, lost, ctx.Err()
		}
	}
}
