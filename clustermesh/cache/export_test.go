package cache

// SetLimit lowers how many keys of one remote's prefix the cache holds,
// for a test; the returned func puts the old bound back.
func SetLimit(prefix string, n int) func() {
	old, had := limitOverride[prefix]
	limitOverride[prefix] = n
	return func() {
		if had {
			limitOverride[prefix] = old
		} else {
			delete(limitOverride, prefix)
		}
	}
}
