package identity

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/labels"
)

// Key layout of identities in the kvstore.
const (
	IDPrefix    = kvstore.Prefix + "state/identities/v1/id/"
	ValuePrefix = kvstore.Prefix + "state/identities/v1/value/"
	// CursorKey holds the last number created in the cluster (no lease):
	// new numbers are taken after it (nextFree).
	CursorKey = kvstore.Prefix + "state/identities/v1/cursor"
)

var (
	// ErrExhausted: the cluster has no free identity number left.
	ErrExhausted = errors.New("identity space of the cluster is exhausted")
	// ErrNotFound: no identity with that number.
	ErrNotFound = errors.New("identity not found")
	// ErrContention: allocation kept losing races; try again.
	ErrContention = errors.New("identity allocation did not settle")
	// errMaybeApplied: a transaction failed without an answer; etcd may
	// have applied it.
	errMaybeApplied = errors.New("identity transaction's outcome unknown")
)

// valueKeyPrefix is where the references of a label set live. The label
// string is base64url-encoded so that no label set's prefix can be a prefix
// of another's.
func valueKeyPrefix(canonical string) string {
	return ValuePrefix + base64.RawURLEncoding.EncodeToString([]byte(canonical)) + "/"
}

func idKey(n NumericIdentity) string { return IDPrefix + strconv.FormatUint(uint64(n), 10) }

type ref struct {
	id     NumericIdentity
	count  int
	labels labels.Labels // with the cluster label
	// unsure: a release's delete of the reference failed, and may have
	// been applied (its answer lost; count is then 0), or writing it
	// again after a lease loss failed, or an allocation's write failed
	// and may have been applied (count 0, id 0: unknown): the reference
	// is written again before the count is trusted, or deleted again by
	// GC when nothing holds it.
	unsure bool
}

// Allocator gives label sets cluster-wide numeric identities. Each node runs
// one: it holds a reference key per label set in use under the node's lease,
// and keeps a cache of all identities of the cluster from a kvstore watch.
type Allocator struct {
	kv          *kvstore.Client
	clusterID   uint32
	clusterName string
	node        string
	lease       *kvstore.Lease

	mu   sync.Mutex // serialises allocation and release on this node
	refs map[string]*ref

	cmu     sync.RWMutex
	byID    map[NumericIdentity]labels.Labels
	byLabel map[string]NumericIdentity
	synced  chan struct{}

	smu       sync.Mutex
	subs      []func(id Identity, deleted bool)
	renumbers []func(ls labels.Labels, old, new NumericIdentity)
	// qmu guards the renumberings waiting for delivery (tell).
	qmu        sync.Mutex
	queue      []renumbering
	delivering bool
	// dmu orders deliveries: the watch holds it from a cache change to
	// its notification, SubscribeList from its listing to its
	// subscription.
	dmu sync.Mutex
}

// Subscribe calls f (from the watch goroutine) for every identity of the
// cluster that appears, changes or goes after the initial sync.
func (a *Allocator) Subscribe(f func(id Identity, deleted bool)) {
	a.smu.Lock()
	defer a.smu.Unlock()
	a.subs = append(a.subs, f)
}

// SubscribeList calls f for every identity the cache holds now (List,
// reserved ones included, as upserts), then, as Subscribe, for every
// change after: nothing missed between the two, nothing older delivered
// after something newer.
func (a *Allocator) SubscribeList(f func(id Identity, deleted bool)) {
	a.dmu.Lock()
	defer a.dmu.Unlock()
	for _, id := range a.List() {
		f(id, false)
	}
	a.Subscribe(f)
}

// OnRenumber calls f when this node's number for label set ls (with the
// cluster label) changed from old to new: after the node's lease was lost,
// the number was freed by another node's GC and taken by another label set
// before this node wrote its references again. The node's endpoints of ls
// still carry old, which every node now resolves to that other label set.
func (a *Allocator) OnRenumber(f func(ls labels.Labels, old, new NumericIdentity)) {
	a.smu.Lock()
	defer a.smu.Unlock()
	a.renumbers = append(a.renumbers, f)
}

func (a *Allocator) notify(id Identity, deleted bool) {
	a.smu.Lock()
	subs := append([]func(Identity, bool){}, a.subs...)
	a.smu.Unlock()
	for _, f := range subs {
		f(id, deleted)
	}
}

// AllocatorConfig configures NewAllocator.
type AllocatorConfig struct {
	ClusterID   uint32
	ClusterName string
	Node        string
	Lease       *kvstore.Lease // the node's lease; references live under it
}

// NewAllocator starts the identity cache watch and returns once it is synced.
func NewAllocator(ctx context.Context, kv *kvstore.Client, c AllocatorConfig) (*Allocator, error) {
	if err := ValidateClusterID(c.ClusterID); err != nil {
		return nil, err
	}
	if c.Node == "" || strings.Contains(c.Node, "/") {
		return nil, fmt.Errorf("identity allocator: node name %q must be non-empty without '/'", c.Node)
	}
	a := &Allocator{
		kv: kv, clusterID: c.ClusterID, clusterName: c.ClusterName, node: c.Node, lease: c.Lease,
		refs: map[string]*ref{}, byID: map[NumericIdentity]labels.Labels{}, byLabel: map[string]NumericIdentity{},
		synced: make(chan struct{}),
	}
	go a.watch(ctx)
	select {
	case <-a.synced:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c.Lease.OnRenew(a.reacquire)
	return a, nil
}

func (a *Allocator) watch(ctx context.Context) {
	once := sync.Once{}
	for ev := range a.kv.Watch(ctx, IDPrefix, kvstore.WatchOptions{}) {
		switch ev.Type {
		case kvstore.EventSynced:
			once.Do(func() { close(a.synced) })
		case kvstore.EventUpsert, kvstore.EventDelete:
			n, err := strconv.ParseUint(strings.TrimPrefix(ev.Key, IDPrefix), 10, 32)
			if err != nil {
				continue
			}
			id := NumericIdentity(n)
			a.dmu.Lock()
			a.cacheSet(id, ev.Type == kvstore.EventUpsert, string(ev.Value))
			if ev.Type == kvstore.EventDelete {
				a.notify(Identity{ID: id}, true)
			} else if got, err := a.Get(id); err == nil {
				a.notify(got, false)
			}
			a.dmu.Unlock()
		}
	}
}

func (a *Allocator) cacheSet(id NumericIdentity, present bool, canonical string) {
	a.cmu.Lock()
	defer a.cmu.Unlock()
	if old, ok := a.byID[id]; ok {
		delete(a.byLabel, old.String())
		delete(a.byID, id)
	}
	if !present {
		return
	}
	ls, err := labels.ParseCanonical(canonical)
	if err != nil {
		slog.Warn("ignoring identity with invalid labels in the kvstore", "id", uint32(id), "labels", canonical, "err", err)
		return
	}
	a.byID[id] = ls
	a.byLabel[ls.String()] = id
}

// WithCluster returns ls with the cluster label this allocator adds to every identity.
func (a *Allocator) WithCluster(ls labels.Labels) (labels.Labels, error) {
	return ls.With(labels.Label{Source: labels.SourceK8s, Key: labels.KeyCluster, Value: a.clusterName})
}

// Allocate returns the identity of ls (with the cluster label added) and
// takes a reference on it for this node; isNew reports that this call
// created it in the kvstore. Concurrent allocators of the same label set get
// the same number.
func (a *Allocator) Allocate(ctx context.Context, ls labels.Labels) (id Identity, isNew bool, err error) {
	if rid, ok := LookupReserved(ls); ok {
		return Identity{ID: rid, Labels: ls}, false, nil
	}
	ls, err = a.WithCluster(ls)
	if err != nil {
		return Identity{}, false, err
	}
	key := ls.String()
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.refs[key]; ok {
		if r.unsure {
			// Until 2026-12-06 the count was trusted, and the number,
			// with no reference behind it, could be freed by another
			// node's GC and given to another label set
			// (TestUnsureReleaseWritesTheReferenceAgain).
			c, err := a.retake(ctx, key, r)
			if err != nil {
				return Identity{}, false, err
			}
			if c != nil {
				a.tell([]renumbering{*c})
			}
		}
		r.count++
		return Identity{ID: r.id, Labels: ls}, false, nil
	}
	n, isNew, err := a.acquire(ctx, key, 0)
	if errors.Is(err, errMaybeApplied) {
		// Its reference may be in etcd, under the node's live lease, with
		// nothing holding it: the next GC deletes it again, the next
		// allocation writes it again (settleUnsure, retake). Until
		// 2026-12-07 nothing was recorded, and GC kept the reference and
		// its number for the lease's lifetime
		// (TestAllocateAnswerLostLeavesNoReference).
		a.refs[key] = &ref{labels: ls, unsure: true}
	}
	if err != nil {
		return Identity{}, false, err
	}
	a.refs[key] = &ref{id: n, count: 1, labels: ls}
	a.cacheSet(n, true, key)
	return Identity{ID: n, Labels: ls}, isNew, nil
}

// acquire writes this node's reference for canonical and returns the number.
// Invariant kept by every transaction: at any revision, all references of a
// label set carry the same number, and that number's id key holds the label
// set. A reference is only written (a) copying a reference that still
// exists unchanged, or (b) when no reference exists at all. want, when
// not 0, is the number this node held for the label set before (its lease
// lost): with no reference anywhere it is taken first, while its id key
// still holds the label set or is free.
func (a *Allocator) acquire(ctx context.Context, canonical string, want NumericIdentity) (NumericIdentity, bool, error) {
	vprefix := valueKeyPrefix(canonical)
	myRef := vprefix + a.node
	noRefs := clientv3.Compare(clientv3.CreateRevision(vprefix), "=", 0).WithPrefix()
	tried := map[NumericIdentity]bool{}
	var after NumericIdentity // the cursor, read once when a number is claimed
	cursorRead := false
	for attempt := 0; attempt < 64; attempt++ {
		if err := ctx.Err(); err != nil {
			return 0, false, err
		}
		lease := clientv3.WithLease(clientv3.LeaseID(a.lease.ID()))
		refs, _, err := a.kv.List(ctx, vprefix)
		if err != nil {
			return 0, false, err
		}
		if len(refs) > 0 {
			// (a) Copy an existing reference while it still exists unchanged.
			r := refs[0]
			n, perr := strconv.ParseUint(string(r.Value), 10, 32)
			if perr != nil {
				return 0, false, fmt.Errorf("identity reference %s holds %q, not a number", r.Key, r.Value)
			}
			id := NumericIdentity(n)
			ok, err := a.txn(ctx, []clientv3.Cmp{
				clientv3.Compare(clientv3.Value(idKey(id)), "=", canonical),
				clientv3.Compare(clientv3.ModRevision(r.Key), "=", r.ModRevision),
			}, []clientv3.Op{clientv3.OpPut(myRef, string(r.Value), lease)})
			if err != nil {
				return 0, false, err
			}
			if ok {
				return id, false, nil
			}
			continue
		}
		// (b) No reference anywhere: take back the number held before,
		// reuse the number still recorded for the label set, or claim a
		// free one.
		if want != 0 && !tried[want] {
			tried[want] = true
			num := strconv.FormatUint(uint64(want), 10)
			ok, err := a.txn(ctx, []clientv3.Cmp{
				clientv3.Compare(clientv3.Value(idKey(want)), "=", canonical), noRefs,
			}, []clientv3.Op{clientv3.OpPut(myRef, num, lease)})
			if err != nil {
				return 0, false, err
			}
			if ok {
				return want, false, nil
			}
			ok, err = a.txn(ctx, []clientv3.Cmp{
				clientv3.Compare(clientv3.CreateRevision(idKey(want)), "=", 0), noRefs,
			}, []clientv3.Op{clientv3.OpPut(idKey(want), canonical), clientv3.OpPut(myRef, num, lease)})
			if err != nil {
				return 0, false, err
			}
			if ok {
				return want, true, nil
			}
			continue
		}
		a.cmu.RLock()
		id, known := a.byLabel[canonical]
		a.cmu.RUnlock()
		if known && !tried[id] {
			tried[id] = true
			ok, err := a.txn(ctx, []clientv3.Cmp{
				clientv3.Compare(clientv3.Value(idKey(id)), "=", canonical), noRefs,
			}, []clientv3.Op{clientv3.OpPut(myRef, strconv.FormatUint(uint64(id), 10), lease)})
			if err != nil {
				return 0, false, err
			}
			if ok {
				return id, false, nil
			}
			continue
		}
		if !cursorRead {
			if after, err = a.cursor(ctx); err != nil {
				return 0, false, err
			}
			cursorRead = true
		}
		id, err = a.freeNumber(after, tried)
		if err != nil {
			return 0, false, err
		}
		tried[id] = true
		num := strconv.FormatUint(uint64(id), 10)
		ok, err := a.txn(ctx, []clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(idKey(id)), "=", 0), noRefs,
		}, []clientv3.Op{
			clientv3.OpPut(idKey(id), canonical),
			clientv3.OpPut(myRef, num, lease),
			clientv3.OpPut(CursorKey, num),
		})
		if err != nil {
			return 0, false, err
		}
		if ok {
			return id, true, nil
		}
		// Lost a race: learn who holds the number before the next try,
		// which goes on after it (the numbers before it may have been
		// released meanwhile: not the next new label set's at once).
		if kv, err := a.kv.Get(ctx, idKey(id)); err == nil {
			a.cacheSet(id, true, string(kv.Value))
		}
		after = id
	}
	return 0, false, fmt.Errorf("%w: %s", ErrContention, canonical)
}

// txn runs an etcd transaction of acquire; an error wraps
// errMaybeApplied: without an answer, etcd may have applied it.
func (a *Allocator) txn(ctx context.Context, cmps []clientv3.Cmp, then []clientv3.Op) (bool, error) {
	ok, err := a.kv.Txn(ctx, cmps, then)
	if err != nil {
		return false, fmt.Errorf("%w: %w", errMaybeApplied, err)
	}
	return ok, nil
}

// cursor returns the number new ones are taken after: the last number
// created in the cluster (CursorKey, written with each), or, when no
// valid one is recorded (a new cluster, or one whose allocators did not
// write it yet), the highest number of the cluster in use.
func (a *Allocator) cursor(ctx context.Context) (NumericIdentity, error) {
	kv, err := a.kv.Get(ctx, CursorKey)
	if err != nil && !errors.Is(err, kvstore.ErrNotFound) {
		return 0, err
	}
	if err == nil {
		n, perr := strconv.ParseUint(string(kv.Value), 10, 32)
		if id := NumericIdentity(n); perr == nil && id.InClusterRange(a.clusterID) {
			return id, nil
		}
	}
	a.cmu.RLock()
	defer a.cmu.RUnlock()
	var highest NumericIdentity
	for id := range a.byID {
		if id.InClusterRange(a.clusterID) && id > highest {
			highest = id
		}
	}
	return highest, nil
}

// freeNumber returns the first number of the cluster's range after after
// (going round) not in use and not tried.
func (a *Allocator) freeNumber(after NumericIdentity, tried map[NumericIdentity]bool) (NumericIdentity, error) {
	a.cmu.RLock()
	defer a.cmu.RUnlock()
	id, ok := nextFree(a.clusterID, after, func(id NumericIdentity) bool {
		_, used := a.byID[id]
		return used || tried[id]
	})
	if !ok {
		return 0, fmt.Errorf("%w: cluster %d has all %d numbers in use", ErrExhausted, a.clusterID, LocalMax-LocalMin+1)
	}
	return id, nil
}

// nextFree returns the first number of cluster's range (local numbers
// LocalMin–LocalMax of the layout) after after, going round, that taken
// does not report; the first from LocalMin when after is outside the
// range. A number released is so handed out again only after the whole
// range has gone round: until 2026-12-07 the lowest free number was
// taken (TestReleasedNumberNotReusedAtOnce).
func nextFree(cluster uint32, after NumericIdentity, taken func(NumericIdentity) bool) (NumericIdentity, bool) {
	size := LocalMax - LocalMin + 1
	start := LocalMax
	if after.InClusterRange(cluster) {
		start = uint32(after) & LocalMax
	}
	for i := uint32(1); i <= size; i++ {
		id := Compose(cluster, LocalMin+(start-LocalMin+i)%size)
		if !taken(id) {
			return id, true
		}
	}
	return 0, false
}

// Release drops one reference of ls taken by Allocate. When the node's last
// reference goes, its reference key is deleted and the identity is removed
// from the kvstore if no other node references it.
func (a *Allocator) Release(ctx context.Context, ls labels.Labels) error {
	if _, ok := LookupReserved(ls); ok {
		return nil
	}
	ls, err := a.WithCluster(ls)
	if err != nil {
		return err
	}
	key := ls.String()
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.refs[key]
	if !ok {
		return fmt.Errorf("%w: this node holds no reference to %s", ErrNotFound, key)
	}
	if r.count > 1 {
		r.count--
		return nil
	}
	if err := a.kv.Delete(ctx, valueKeyPrefix(key)+a.node); err != nil {
		// The endpoint goes anyway: nothing holds the label set here now.
		r.count, r.unsure = 0, true
		return err
	}
	delete(a.refs, key)
	_, err = a.collect(ctx, r.id, key)
	return err
}

// collect deletes identity id if it still holds canonical and nobody references it.
func (a *Allocator) collect(ctx context.Context, id NumericIdentity, canonical string) (bool, error) {
	return a.kv.Txn(ctx, []clientv3.Cmp{
		clientv3.Compare(clientv3.Value(idKey(id)), "=", canonical),
		clientv3.Compare(clientv3.CreateRevision(valueKeyPrefix(canonical)), "=", 0).WithPrefix(),
	}, []clientv3.Op{clientv3.OpDelete(idKey(id))})
}

// GC deletes every identity of the cluster that no node references any more
// (for example those of dead nodes whose leases expired). It is safe to run
// on several nodes at once.
func (a *Allocator) GC(ctx context.Context) (int, error) {
	a.settleUnsure(ctx)
	kvs, _, err := a.kv.List(ctx, IDPrefix)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, kv := range kvs {
		num, err := strconv.ParseUint(strings.TrimPrefix(kv.Key, IDPrefix), 10, 32)
		if err != nil || !NumericIdentity(num).InClusterRange(a.clusterID) {
			continue
		}
		deleted, err := a.collect(ctx, NumericIdentity(num), string(kv.Value))
		if err != nil {
			return n, err
		}
		if deleted {
			n++
		}
	}
	return n, nil
}

// settleUnsure deals with this node's unsure references (ref.unsure):
// one nothing holds is deleted again, one still held written again (the
// same number while free, else renumbered).
//
// a.mu is held meanwhile (Allocate and Release wait), so each kvstore call
// is bounded by settleTimeout and the first failure ends the round: the
// kvstore being out is what makes references unsure.
func (a *Allocator) settleUnsure(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for key, r := range a.refs {
		if !r.unsure {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, settleTimeout)
		var err error
		if r.count == 0 {
			if err = a.kv.Delete(cctx, valueKeyPrefix(key)+a.node); err == nil {
				delete(a.refs, key)
				a.collect(cctx, r.id, key)
			}
		} else {
			var c *renumbering
			if c, err = a.retake(cctx, key, r); c != nil {
				a.tell([]renumbering{*c})
			}
		}
		cancel()
		if err != nil {
			return
		}
	}
}

// settleTimeout bounds each kvstore call of settleUnsure.
const settleTimeout = 2 * time.Second

// renumbering is a label set's number changed (OnRenumber).
type renumbering struct {
	ls       labels.Labels
	old, new NumericIdentity
}

// retake writes this node's reference of key (held as r) again, the same
// number while free; it returns the renumbering when the number changed.
// a.mu held.
func (a *Allocator) retake(ctx context.Context, key string, r *ref) (*renumbering, error) {
	id, _, err := a.acquire(ctx, key, r.id)
	if err != nil {
		r.unsure = true
		return nil, err
	}
	r.unsure = false
	if id == r.id || r.id == 0 {
		// 0: the number of an allocation whose answer was lost, unknown.
		r.id = id
		a.cacheSet(id, true, key)
		return nil, nil
	}
	slog.Warn("identity number changed: another label set took it; the node's endpoints move to the new one", "labels", key, "old", uint32(r.id), "new", uint32(id))
	c := &renumbering{r.labels, r.id, id}
	r.id = id
	a.cacheSet(id, true, key)
	return c, nil
}

// tell queues changes for the renumber subscribers, in the order the
// numbers changed (callers hold a.mu, which orders them), and one
// goroutine delivers them: the subscribers take their endpoints' lock,
// which an Allocate caller may hold.
func (a *Allocator) tell(changes []renumbering) {
	if len(changes) == 0 {
		return
	}
	a.qmu.Lock()
	defer a.qmu.Unlock()
	a.queue = append(a.queue, changes...)
	if !a.delivering {
		a.delivering = true
		go a.deliver()
	}
}

// deliver hands the queued renumberings to the subscribers, oldest first,
// until the queue is empty.
func (a *Allocator) deliver() {
	for {
		a.qmu.Lock()
		if len(a.queue) == 0 {
			a.delivering = false
			a.qmu.Unlock()
			return
		}
		c := a.queue[0]
		a.queue = a.queue[1:]
		a.qmu.Unlock()
		a.renumbered(c.ls, c.old, c.new)
	}
}

// reacquire runs after the node's lease was lost and granted again: the
// references vanished with the old lease and are written again.
// Each label set takes its number back if nobody took it meanwhile;
// otherwise it gets another, and the renumber subscribers are told, in
// order, from a goroutine of their own (tell: they update endpoints, whose
// manager allocates under its own lock). Until 2026-12-06 the lowest free number was taken and
// the change only logged (TestLeaseLossKeepsOrRenumbers).
func (a *Allocator) reacquire(ctx context.Context, _ int64) {
	a.mu.Lock()
	for key, r := range a.refs {
		if r.count == 0 {
			continue // released (unsure): GC deletes it again
		}
		c, err := a.retake(ctx, key, r)
		if err != nil {
			slog.Error("could not take back identity reference after lease loss; trying again at the next identity GC", "labels", key, "err", err)
			continue
		}
		if c != nil {
			a.tell([]renumbering{*c})
		}
	}
	a.mu.Unlock()
}

// renumbered tells the renumber subscribers; a.mu not held.
func (a *Allocator) renumbered(ls labels.Labels, old, new NumericIdentity) {
	a.smu.Lock()
	subs := slices.Clone(a.renumbers)
	a.smu.Unlock()
	for _, f := range subs {
		f(ls, old, new)
	}
}

// Get returns identity n from the cache (reserved ones included).
func (a *Allocator) Get(n NumericIdentity) (Identity, error) {
	for _, r := range Reserved() {
		if r.ID == n {
			return r, nil
		}
	}
	a.cmu.RLock()
	defer a.cmu.RUnlock()
	ls, ok := a.byID[n]
	if !ok {
		return Identity{}, fmt.Errorf("%w: %d", ErrNotFound, uint32(n))
	}
	return Identity{ID: n, Labels: ls}, nil
}

// List returns the reserved identities and every identity in the cluster, by number.
func (a *Allocator) List() []Identity {
	out := Reserved()
	a.cmu.RLock()
	for id, ls := range a.byID {
		out = append(out, Identity{ID: id, Labels: ls})
	}
	a.cmu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Holds reports how many local references this node holds on the identity
// of ls (0 when none).
func (a *Allocator) Holds(ls labels.Labels) int {
	ls, err := a.WithCluster(ls)
	if err != nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.refs[ls.String()]; ok {
		return r.count
	}
	return 0
}
