package identity

import "context"

// Reacquire runs what a renewal of the node's lease after its loss runs
// (tests: the loss's consequences set up by hand).
func (a *Allocator) Reacquire(ctx context.Context) { a.reacquire(ctx, 0) }

// RefKey is node's reference key of the label set canonical.
func RefKey(canonical, node string) string { return valueKeyPrefix(canonical) + node }

// ReleaseFailed leaves this node's reference of the label set canonical
// as a release whose delete failed does.
func (a *Allocator) ReleaseFailed(canonical string) {
	a.mu.Lock()
	r := a.refs[canonical]
	r.count, r.unsure = 0, true
	a.mu.Unlock()
}
