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

// SetBudget sets the bytes one remote may hold in the cache and the rate
// it may write them at (bytes a second, burst), until the returned func.
func SetBudget(bytes int, perSecond float64, burst int) func() {
	ob, or, obu := maxRemoteBytes, writeRate, writeBurst
	maxRemoteBytes, writeRate, writeBurst = bytes, perSecond, burst
	return func() { maxRemoteBytes, writeRate, writeBurst = ob, or, obu }
}
