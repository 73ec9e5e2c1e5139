package datapath

import (
	"errors"

	"github.com/cilium/ebpf"
)

// eachEntry calls f with every entry of m, read in batches: a batch walk
// goes by hash bucket, so entries coming and going meanwhile (an LRU table
// evicting under a flood of new flows) never make it start again and give
// up, as a walk by key does (cilium/ebpf's MapIterator aborts after
// max_entries restarts: found 2026-12-07, a pod's flood of new flows kept
// the conntrack and NodePort translation walks from ever finishing;
// TestEgressFlowsUnderAFlood, TestForgetReachesTranslationsUnderAFlood,
// TestGCUnderAFlood, TestScrubReachesEstablishedFlowsUnderAFlood). An
// entry that comes or goes during the walk may be missed or seen twice;
// an entry there throughout is seen. Kernels without batch lookups are
// walked by key. K and V are the map's key and value types.
func eachEntry[K, V any](m *ebpf.Map, f func(*K, *V)) error {
	const chunk = 4096
	keys := make([]K, chunk)
	vals := make([]V, chunk)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			f(&keys[i], &vals[i])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil
		case errors.Is(err, ebpf.ErrNotSupported):
			var k K
			var v V
			it := m.Iterate()
			for it.Next(&k, &v) {
				f(&k, &v)
			}
			return it.Err()
		case err != nil:
			return err
		}
	}
}
