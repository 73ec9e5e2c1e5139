package clustermesh

import (
	"fmt"
	"strconv"
	"time"
)

// The heartbeat is the sync canary that goes stale: each cluster's
// apiserver writes HeartbeatKey(cluster) every HeartbeatInterval with the
// next number of a sequence. A reader takes a value it has not seen before
// as proof that the cluster is alive and that it receives its writes; it
// times the beats with its own clock on receipt and never reads a time
// from the remote.
const (
	HeartbeatInterval = 2 * time.Second
	// HeartbeatStale: a heartbeat not renewed for this long (three missed
	// beats) is stale.
	HeartbeatStale = 3 * HeartbeatInterval
	// maxHeartbeatLen bounds a heartbeat value: a uint64 in decimal.
	maxHeartbeatLen = 20
)

// HeartbeatKey is the key of a cluster's heartbeat (remote clusters may
// read it: it is under SyncedPrefix).
func HeartbeatKey(cluster string) string { return SyncedPrefix + cluster + "/heartbeat" }

// FormatHeartbeat is the value of heartbeat seq.
func FormatHeartbeat(seq uint64) []byte { return strconv.AppendUint(nil, seq, 10) }

// ParseHeartbeat reads a heartbeat value written by another cluster (hostile
// input): a decimal uint64 with no sign, space or leading zero, at most 20
// bytes.
func ParseHeartbeat(b []byte) (uint64, error) {
	if len(b) == 0 || len(b) > maxHeartbeatLen {
		return 0, fmt.Errorf("%w: heartbeat of %d bytes: want a decimal sequence number of 1-%d digits", ErrInvalid, len(b), maxHeartbeatLen)
	}
	if len(b) > 1 && b[0] == '0' {
		return 0, fmt.Errorf("%w: heartbeat %q: leading zero", ErrInvalid, b)
	}
	for _, ch := range b {
		if ch < '0' || ch > '9' {
			return 0, fmt.Errorf("%w: heartbeat %q: want a decimal sequence number", ErrInvalid, b)
		}
	}
	seq, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: heartbeat %q: %v", ErrInvalid, b, err)
	}
	return seq, nil
}

// CachePrefix is where a cluster's apiserver, as a cache, re-serves the
// remote clusters it follows: CachePrefix + <remote> + "/" + <the remote's
// key>. Agents may only read it.
const CachePrefix = "filament/cache/"

// CacheStatusKey holds the cache's status of a remote (JSON).
func CacheStatusKey(remote string) string { return CachePrefix + remote + "/.status" }
