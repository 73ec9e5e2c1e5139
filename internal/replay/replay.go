// Package replay hands a new subscriber of a changing set what the set
// holds, then every later change, in that order: a change that comes while
// the replay runs is queued behind it, never delivered before it (which
// would let the replay's older value win).
package replay

import "sync"

// Change is one change of a set: a value, put or deleted.
type Change[T any] struct {
	V       T
	Deleted bool
}

// Sub is one subscriber. Create it with New, add it to the set's
// subscribers and copy the set under the set's lock, then call Replay
// with the copy outside the lock; the set's changes go to Deliver.
type Sub[T any] struct {
	f         func(v T, deleted bool)
	mu        sync.Mutex
	replaying bool
	queued    []Change[T]
}

// New is a subscriber calling f, replaying until Replay is done.
func New[T any](f func(v T, deleted bool)) *Sub[T] { return &Sub[T]{f: f, replaying: true} }

// Deliver hands a change to the subscriber, or queues it behind the
// replay.
func (s *Sub[T]) Deliver(v T, deleted bool) {
	s.mu.Lock()
	if s.replaying {
		s.queued = append(s.queued, Change[T]{v, deleted})
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.f(v, deleted)
}

// Replay hands over known (as puts), then the changes queued meanwhile;
// from then on Deliver hands changes over directly.
func (s *Sub[T]) Replay(known []T) {
	for _, v := range known {
		s.f(v, false)
	}
	for {
		s.mu.Lock()
		q := s.queued
		s.queued = nil
		if len(q) == 0 {
			s.replaying = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for _, c := range q {
			s.f(c.V, c.Deleted)
		}
	}
}
