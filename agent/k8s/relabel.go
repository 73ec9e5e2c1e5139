package k8s

import (
	"math"
	"sort"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Pacing of identity-changing relabels, per namespace on the node. Each
// such relabel writes (and later deletes) an identity and this node's
// reference to it in etcd, about 120 KB of history for a label set at
// endpoint.MaxLabelBytes, which counts against etcd's quota until the
// next compaction: at one per second a namespace adds at most about
// 36 MB per node between two compactions (every 5 min). A burst of ten
// leaves an operator's label change of a few pods at once unpaced; pods
// come and go (CNI ADD and DEL) without relabels.
const (
	relabelBurst            = 10
	relabelRate  rate.Limit = 1 // per second
)

// relabelQueue holds the pods (namespace/name keys) whose endpoints are to
// take their pod's labels, each at most once: ready ones in order, others
// not before a time (a failed relabel's retry, or their namespace's
// pacing). A pod's relabel reads the pod when it runs, so changes that
// came while it waited collapse into its latest labels.
type relabelQueue struct {
	mu       sync.Mutex
	ready    []string
	queued   map[string]bool    // in ready
	later    map[string]delayed // waiting for their time
	earliest time.Time          // the first time in later
	seq      uint64             // orders later's equal times: first deferred, first promoted
	// exempt are the ready pods whose relabel is not paced: started by
	// the agent (restore, re-check) or a namespace's change, not by the
	// pod's own.
	exempt   map[string]bool
	attempts map[string]int // failed relabels in a row
	limits   map[string]*rate.Limiter
	wake     chan struct{} // a pod became ready
}

type delayed struct {
	at        time.Time
	seq       uint64
	throttled bool // waiting for its namespace's pacing, not a retry
	exempt    bool // a retry of a relabel not paced, not paced either
}

func newRelabelQueue() *relabelQueue {
	return &relabelQueue{queued: map[string]bool{}, later: map[string]delayed{}, exempt: map[string]bool{},
		attempts: map[string]int{}, limits: map[string]*rate.Limiter{}, wake: make(chan struct{}, 1)}
}

// add queues pod key. A pod waiting for its namespace's pacing, or for
// the retry of a relabel not paced, stays waiting (its latest labels are
// applied then), unless exempt: the pod's own change does not borrow the
// retry's exemption (found by a review); one waiting for another retry
// runs now.
func (q *relabelQueue) add(key string, exempt bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if exempt {
		q.exempt[key] = true
	}
	if q.queued[key] {
		return
	}
	if d, ok := q.later[key]; ok && (d.throttled || d.exempt) && !exempt {
		return
	} else if ok && d.exempt {
		q.exempt[key] = true
	}
	delete(q.later, key)
	q.ready = append(q.ready, key)
	q.queued[key] = true
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// deferUntil makes pod key wait until at (throttled: for its namespace's
// pacing; exempt: the retry of a relabel not paced, which is not paced
// either), unless an event queued it again meanwhile.
func (q *relabelQueue) deferUntil(key string, at time.Time, throttled, exempt bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.queued[key] {
		if exempt {
			q.exempt[key] = true
		}
		return
	}
	q.seq++
	q.later[key] = delayed{at: at, seq: q.seq, throttled: throttled, exempt: exempt}
	if len(q.later) == 1 || at.Before(q.earliest) {
		q.earliest = at
	}
}

// next takes the first ready pod at now, those whose time has come
// included (after the ones ready before), and whether it is exempt.
func (q *relabelQueue) next(now time.Time) (key string, exempt, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.later) > 0 && !now.Before(q.earliest) {
		q.promote(now)
	}
	if len(q.ready) == 0 {
		return "", false, false
	}
	key, q.ready = q.ready[0], q.ready[1:]
	exempt = q.exempt[key]
	delete(q.queued, key)
	delete(q.exempt, key)
	return key, exempt, true
}

// promote makes the waiting pods whose time has come ready, in the order
// of their times; q.mu held.
func (q *relabelQueue) promote(now time.Time) {
	var due []string
	q.earliest = time.Time{}
	for key, d := range q.later {
		if now.Before(d.at) {
			if q.earliest.IsZero() || d.at.Before(q.earliest) {
				q.earliest = d.at
			}
			continue
		}
		due = append(due, key)
	}
	sort.Slice(due, func(i, j int) bool {
		a, b := q.later[due[i]], q.later[due[j]]
		return a.at.Before(b.at) || a.at.Equal(b.at) && a.seq < b.seq
	})
	for _, key := range due {
		if q.later[key].exempt {
			q.exempt[key] = true
		}
		delete(q.later, key)
		q.ready = append(q.ready, key)
		q.queued[key] = true
	}
}

// nextAt is when the first waiting pod is due (false: none waits).
func (q *relabelQueue) nextAt() (time.Time, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.earliest, len(q.later) > 0
}

// failed counts a failed relabel of pod key and returns how many failed in a row.
func (q *relabelQueue) failed(key string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.attempts[key]++
	return q.attempts[key]
}

// done forgets pod key's failures.
func (q *relabelQueue) done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.attempts, key)
}

// wait is how long namespace's relabels must wait for their pacing at
// now (0: one may run).
func (q *relabelQueue) wait(namespace string, now time.Time) time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	tokens := q.limiter(namespace, now).TokensAt(now)
	if tokens >= 1 {
		return 0
	}
	return time.Duration(math.Ceil((1 - tokens) / float64(relabelRate) * float64(time.Second)))
}

// take counts one identity-changing relabel of namespace at now.
func (q *relabelQueue) take(namespace string, now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.limiter(namespace, now).AllowN(now, 1)
}

// limiter is namespace's pacing; a new one is full. Those full again are
// forgotten whenever one is made, so the namespaces that relabelled once
// are not kept for good. q.mu held.
func (q *relabelQueue) limiter(namespace string, now time.Time) *rate.Limiter {
	if l, ok := q.limits[namespace]; ok {
		return l
	}
	for ns, l := range q.limits {
		if l.TokensAt(now) >= relabelBurst {
			delete(q.limits, ns)
		}
	}
	l := rate.NewLimiter(relabelRate, relabelBurst)
	q.limits[namespace] = l
	return l
}
