package policysync

import "context"

// SetBeforeCommit sets a hook run just before an import's transaction.
func (s *Store) SetBeforeCommit(f func(ctx context.Context)) { s.beforeCommit = f }
