package kvstore

import (
	"context"
	"sync"
	"time"
)

// Hold keeps deleted entries whose owner's lease ended while the owner
// still looks alive (failure detection reaches it): a node cut off from the
// kvstore for longer than its lease TTL keeps serving its pods, and it
// writes its keys again under a new lease as soon as it is back. An entry is
// released (its deletion finally applied) when its owner is seen down or
// after Max; it is cleared when its key is written again.
type Hold[K comparable] struct {
	// Alive says whether an owner is up now.
	Alive func(owner string) bool
	// Max bounds how long an entry is held.
	Max time.Duration
	// Release applies the deletion of a held entry.
	Release func(k K)

	mu      sync.Mutex
	held    map[K]heldEntry
	running bool
}

type heldEntry struct {
	owner string
	since time.Time
}

// holdCheck is how often held entries are checked.
const holdCheck = 200 * time.Millisecond

// Add holds k, owned by owner, when owner is alive; false (the caller
// applies the deletion) otherwise.
func (h *Hold[K]) Add(ctx context.Context, k K, owner string) bool {
	if h == nil || h.Alive == nil || !h.Alive(owner) {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == nil {
		h.held = map[K]heldEntry{}
	}
	h.held[k] = heldEntry{owner: owner, since: time.Now()}
	if !h.running {
		h.running = true
		go h.run(ctx)
	}
	return true
}

// Clear forgets k (its key was written again).
func (h *Hold[K]) Clear(k K) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.held, k)
}

// Held reports whether k is held.
func (h *Hold[K]) Held(k K) bool {
	if h == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	_, ok := h.held[k]
	return ok
}

func (h *Hold[K]) run(ctx context.Context) {
	t := time.NewTicker(holdCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			h.mu.Lock()
			h.running = false
			h.mu.Unlock()
			return
		case <-t.C:
		}
		// Alive is asked without h.mu held: it may take its owner's lock,
		// which is held around Clear.
		h.mu.Lock()
		snapshot := make(map[K]heldEntry, len(h.held))
		for k, e := range h.held {
			snapshot[k] = e
		}
		h.mu.Unlock()
		var due []K
		for k, e := range snapshot {
			if time.Since(e.since) > h.Max || !h.Alive(e.owner) {
				due = append(due, k)
			}
		}
		h.mu.Lock()
		var release []K
		for _, k := range due {
			if e, ok := h.held[k]; ok && e == snapshot[k] {
				release = append(release, k)
				delete(h.held, k)
			}
		}
		done := len(h.held) == 0
		if done {
			h.running = false
		}
		h.mu.Unlock()
		for _, k := range release {
			h.Release(k)
		}
		if done {
			return
		}
	}
}
