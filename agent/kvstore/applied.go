package kvstore

import (
	"context"
	"sync"
)

// Applied is the store revision a follower of a prefix has applied, for
// a writer to wait until its own write (a revision under that prefix) is
// reflected by its follower. The zero value is ready to use.
type Applied struct {
	mu  sync.Mutex
	rev int64
	ch  chan struct{} // closed (and replaced) when rev moves
}

// Advance records that the follower has applied the store up to rev.
func (a *Applied) Advance(rev int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if rev > a.rev {
		a.rev = rev
		if a.ch != nil {
			close(a.ch)
			a.ch = nil
		}
	}
}

// Rev returns the revision applied so far.
func (a *Applied) Rev() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rev
}

// Wait returns nil once rev is applied, or ctx's error when ctx ends
// first.
func (a *Applied) Wait(ctx context.Context, rev int64) error {
	for {
		a.mu.Lock()
		if a.rev >= rev {
			a.mu.Unlock()
			return nil
		}
		if a.ch == nil {
			a.ch = make(chan struct{})
		}
		ch := a.ch
		a.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
