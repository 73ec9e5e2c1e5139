package kvstore

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EventType says what happened to a key.
type EventType int

const (
	// EventUpsert: the key was created or changed.
	EventUpsert EventType = iota
	// EventDelete: the key was deleted (or expired with its lease).
	EventDelete
	// EventSynced: every key that existed at the listed revision has been
	// reported; sent after the initial list and after every resync.
	EventSynced
	// EventResync: a list begins (sent by untracked watches only, before
	// each list): the keys it reports up to the next EventSynced are all
	// the prefix holds, the caller removes the others.
	EventResync
)

func (t EventType) String() string {
	switch t {
	case EventUpsert:
		return "upsert"
	case EventDelete:
		return "delete"
	case EventSynced:
		return "synced"
	case EventResync:
		return "resync"
	}
	return "unknown"
}

// Event is one change under a watched prefix.
type Event struct {
	Type     EventType
	Key      string
	Value    []byte
	Revision int64 // store revision of the change (of the list, for EventSynced)
	// PrevLease is the lease the key was under before a delete seen by the
	// watch stream (0 when unknown, as for deletes found by a resync).
	PrevLease int64
	// Listed, on an upsert of a list, is how many keys the whole list
	// holds as the server counted them (a hint for sizing, not checked;
	// 0 for the watch stream's changes).
	Listed int64
	// FromList: an upsert found by a list (its Revision is the key's
	// own; the list's entries come in key order, not revision order).
	FromList bool
}

// listPage is how many keys a watch's list reads at a time: a list of a
// large prefix (a remote cluster's 100,000 ipcache entries) never holds
// more than a page of them in memory at once. etcd counts the rest of the
// range for each page, so pages much smaller cost it more CPU.
var listPage int64 = 4096

// A watch whose list fails lists again after listRetryMin, doubling the
// wait after each further failure up to listRetryMax.
const (
	listRetryMin = 200 * time.Millisecond
	listRetryMax = 5 * time.Second
)

// WatchOptions tune Watch.
type WatchOptions struct {
	// Revision, when non-zero, resumes after this revision instead of listing
	// first: the caller already holds the state as of Revision.
	Revision int64
	// Known are the keys the caller holds when resuming; after a compaction
	// forces a resync, the ones that no longer exist are reported deleted.
	Known []string
	// Untracked: the watch keeps no set of the keys it reported (a set of
	// keys costs more than a caller's compact copy of a large prefix), so a
	// resync cannot report deletions: each list is preceded by
	// EventResync, and the caller removes what the list did not hold.
	// Known is ignored.
	Untracked bool
	// TrimPrefix is cut from the front of every key reported (a caller
	// reading another store's copy under a prefix of this one sees that
	// store's keys). Known holds keys as stored, untrimmed.
	TrimPrefix string
	// Page is how many keys each read of a list asks for (0: listPage).
	// etcd counts the rest of the range at every read, so larger pages
	// cost the server less CPU and the reader more memory per list.
	Page int64
	// Lists, when set, is shared by watches whose lists may not all run
	// at once: a list waits for a slot and holds it until its last page
	// is read, so the memory of the pages in flight is bounded by the
	// slots, not by the number of watches (NewListGate).
	Lists ListGate
}

// ListGate bounds how many watches' lists run at once (WatchOptions.Lists).
type ListGate chan struct{}

// NewListGate makes a gate of n slots (at least one).
func NewListGate(n int) ListGate { return make(ListGate, max(n, 1)) }

// enter takes a slot, false if ctx ends first; a nil gate always has one.
func (g ListGate) enter(ctx context.Context) bool {
	if g == nil {
		return true
	}
	select {
	case g <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// leave gives back the slot enter took.
func (g ListGate) leave() {
	if g != nil {
		<-g
	}
}

// trackedKeys is how many keys the process's tracked watches hold in
// their sets (TrackedKeys).
var trackedKeys atomic.Int64

// TrackedKeys is how many keys the process's tracked watches remember in
// all (each to report its deletion after a resync); untracked watches
// remember none. Memory that a store's writer, not this process, decides:
// a watch of another cluster's keys is untracked.
func TrackedKeys() int64 { return trackedKeys.Load() }

// Watch lists prefix (unless resuming), then streams its changes until ctx
// ends, when the channel is closed. If etcd has compacted the revision the
// watch needs, it lists again and reports the difference against what it has
// reported so far (upserts for present keys, deletes for vanished ones),
// followed by EventSynced. A broken watch stream is re-established from the
// last revision seen.
func (c *Client) Watch(ctx context.Context, prefix string, o WatchOptions) <-chan Event {
	ch := make(chan Event, 128)
	go c.watchLoop(ctx, prefix, o, ch)
	return ch
}

func (c *Client) watchLoop(ctx context.Context, prefix string, o WatchOptions, ch chan<- Event) {
	defer close(ch)
	var known map[string]bool // nil: untracked
	if !o.Untracked {
		known = make(map[string]bool, len(o.Known))
		for _, k := range o.Known {
			known[k] = true
		}
		trackedKeys.Add(int64(len(known)))
		defer func() { trackedKeys.Add(-int64(len(known))) }()
	}
	track := func(k string) {
		if known != nil && !known[k] {
			known[k] = true
			trackedKeys.Add(1)
		}
	}
	forget := func(k string) {
		if known[k] {
			delete(known, k)
			trackedKeys.Add(-1)
		}
	}
	send := func(ev Event) bool {
		ev.Key = strings.TrimPrefix(ev.Key, o.TrimPrefix)
		select {
		case ch <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	// resync lists the prefix and reports the difference with known.
	paged := true
	resync := func() (int64, bool) {
		retry := listRetryMin
		for {
			if o.Untracked && !send(Event{Type: EventResync}) {
				return 0, false
			}
			var present map[string]bool
			if known != nil {
				present = map[string]bool{}
			}
			stopped := false
			each := func(kv KeyValue, total int64) bool {
				if known != nil {
					present[kv.Key] = true
					track(kv.Key)
				}
				stopped = !send(Event{Type: EventUpsert, Key: kv.Key, Value: kv.Value, Revision: kv.ModRevision, Listed: total, FromList: true})
				return !stopped
			}
			page := listPage
			if o.Page > 0 {
				page = o.Page
			}
			if !paged {
				page = 0
			}
			if !o.Lists.enter(ctx) {
				return 0, false
			}
			rev, err := c.listPages(ctx, prefix, page, each)
			o.Lists.leave()
			if stopped || ctx.Err() != nil {
				return 0, false
			}
			// A list whose revision was compacted while its pages were
			// read (a slow reader, a busy store) is read in one piece
			// the next time, so that it always ends.
			paged = !errors.Is(err, rpctypes.ErrCompacted)
			if err != nil {
				// Listed again from the start (what was sent is sent
				// again, or reported deleted if it went meanwhile),
				// waiting longer after each failure: a store that keeps
				// failing is not listed five times a second for ever.
				select {
				case <-ctx.Done():
					return 0, false
				case <-time.After(retry):
				}
				retry = min(2*retry, listRetryMax)
				continue
			}
			for k := range known {
				if !present[k] {
					forget(k)
					if !send(Event{Type: EventDelete, Key: k, Revision: rev}) {
						return 0, false
					}
				}
			}
			return rev, send(Event{Type: EventSynced, Revision: rev})
		}
	}

	rev := o.Revision
	if rev == 0 {
		var ok bool
		if rev, ok = resync(); !ok {
			return
		}
	}
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := c.c.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV())
		compacted := false
		for resp := range wch {
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) || resp.CompactRevision != 0 {
					compacted = true
				}
				break
			}
			for _, e := range resp.Events {
				ev := Event{Key: string(e.Kv.Key), Value: e.Kv.Value, Revision: e.Kv.ModRevision}
				if e.Type == clientv3.EventTypeDelete {
					ev.Type = EventDelete
					if e.PrevKv != nil {
						ev.PrevLease = e.PrevKv.Lease
					}
					forget(ev.Key)
				} else {
					ev.Type = EventUpsert
					track(ev.Key)
				}
				if !send(ev) {
					cancel()
					return
				}
				rev = e.Kv.ModRevision
			}
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		if compacted {
			var ok bool
			if rev, ok = resync(); !ok {
				return
			}
			continue
		}
		// The stream broke for another reason: back off a little and resume.
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}
