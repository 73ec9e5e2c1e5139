// Package ipcache owns the cluster-wide IP → identity table in the kvstore:
// each node publishes its endpoints under filament/state/ip/v1/<cluster>/
// (under its lease, so a dead node's entries expire) and watches everyone
// else's, handing remote entries to the datapath.
package ipcache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/internal/replay"
)

// Prefix of the IP entries.
const Prefix = kvstore.Prefix + "state/ip/v1/"

// Entry is one endpoint address.
type Entry struct {
	IP        netip.Addr               `json:"ip"`
	Identity  identity.NumericIdentity `json:"identity"`
	HostIP    netip.Addr               `json:"hostIP"` // the node's underlay address
	Node      string                   `json:"node"`
	Namespace string                   `json:"namespace,omitempty"`
	Pod       string                   `json:"pod,omitempty"`
}

// SamePod says whether cur, an address's entry now, still names the pod
// prev named: the same node, and the same pod where both name one (a
// sparse ipcache's compact entries name none). An address given to
// another pod of the same node within a few seconds is not told apart:
// its node's IPAM holds a released address back for 70 s at least.
func SamePod(prev, cur Entry) bool {
	if prev.Node != cur.Node {
		return false
	}
	return prev.Pod == "" || cur.Pod == "" || prev.Namespace == cur.Namespace && prev.Pod == cur.Pod
}

// PodKey is a short form of the pod e names, for SamePodKey: its node's
// name hashed in the high half, its namespace and pod's in the low (0:
// none). A gone peer's queued address holds it (8 bytes, not the entry).
func PodKey(e Entry) uint64 {
	h := fnv.New32a()
	h.Write([]byte(e.Node))
	key := uint64(h.Sum32()) << 32
	if e.Pod != "" {
		h.Reset()
		h.Write([]byte(e.Namespace + "/" + e.Pod))
		key |= uint64(max(h.Sum32(), 1))
	}
	return key
}

// SamePodKey is SamePod on PodKeys (two pods of a node whose names'
// 32-bit hashes meet are taken for one).
func SamePodKey(prev, cur uint64) bool {
	const pod = 1<<32 - 1
	return prev>>32 == cur>>32 && (prev&pod == 0 || cur&pod == 0 || prev == cur)
}

// Retires says whether an address's change retires the pod its entry
// named (old, when had): the entry deleted, or now naming another pod (a
// watch listing again after a lost connection sees no deletion). The
// conntrack entries naming it then go (datapath.ScrubPeer).
func Retires(old Entry, had bool, e Entry, deleted bool) bool {
	return deleted || had && !SamePod(old, e)
}

// ErrInvalid is wrapped by every error about an entry read from the
// kvstore.
var ErrInvalid = errors.New("invalid ipcache entry")

// Check vets an entry read from the kvstore under the key for key: its
// address must be that IPv4 address, and its node's address, if given,
// IPv4. Anyone with write access to a kvstore (another node, a remote
// cluster) wrote it: nothing unchecked reaches the datapath.
func (e Entry) Check(key netip.Addr) error {
	switch {
	case !e.IP.Is4():
		return fmt.Errorf("%w: ip %v: want an IPv4 address", ErrInvalid, e.IP)
	case e.IP != key:
		return fmt.Errorf("%w: ip %v under the key of %v", ErrInvalid, e.IP, key)
	case e.HostIP.IsValid() && !e.HostIP.Is4():
		return fmt.Errorf("%w: hostIP %v: want an IPv4 address", ErrInvalid, e.HostIP)
	case e.Node == "":
		return fmt.Errorf("%w: %v: no node", ErrInvalid, e.IP)
	case len(e.Node) > MaxNameLen:
		return fmt.Errorf("%w: %v: node name of %d bytes (at most %d)", ErrInvalid, e.IP, len(e.Node), MaxNameLen)
	case len(e.Namespace) > MaxNamespaceLen:
		return fmt.Errorf("%w: %v: namespace of %d bytes (at most %d)", ErrInvalid, e.IP, len(e.Namespace), MaxNamespaceLen)
	case len(e.Pod) > MaxNameLen:
		return fmt.Errorf("%w: %v: pod name of %d bytes (at most %d)", ErrInvalid, e.IP, len(e.Pod), MaxNameLen)
	case !validName(e.Node, nodeName):
		return fmt.Errorf("%w: %v: node %q: not a node name (a DNS label)", ErrInvalid, e.IP, e.Node)
	case e.Namespace != "" && !validName(e.Namespace, namespaceName):
		return fmt.Errorf("%w: %v: namespace %q: not a namespace name", ErrInvalid, e.IP, e.Namespace)
	case e.Pod != "" && !ValidPodName(e.Pod):
		return fmt.Errorf("%w: %v: pod %q: not a pod name", ErrInvalid, e.IP, e.Pod)
	}
	return nil
}

// ValidPodName reports whether s may name a pod in an entry (a Kubernetes
// object name: a DNS subdomain of at most 253). Entries' names are shown
// to operators (Hubble flows name a remote pod from its entry) and written
// by other nodes and clusters: until 2026-12-07 only their lengths were
// checked, and a remote's pod name with a terminal's escape sequences
// reached the flows raw. The endpoints this node publishes are held to it
// too (agent/endpoint).
func ValidPodName(s string) bool { return validName(s, podName) }

// The names of an entry, as validName checks them: a node's as
// node.ValidName (a DNS label), a namespace's as labels.ValidateValue, a
// pod's as a Kubernetes object name. Loops, not regular expressions: every
// entry of a cluster mesh's millions is checked at its initial sync, and
// three regular expressions took it to 1.7 times the agent's CPU
// (TestNameRulesMatchTheirExpressions holds them equal).
type nameRule struct {
	max        int
	upper      bool // A-Z allowed
	underscore bool // '_' allowed inside
	dot        bool // '.' allowed inside
}

var (
	nodeName      = nameRule{max: 63}
	namespaceName = nameRule{max: 63, upper: true, underscore: true, dot: true}
	podName       = nameRule{max: 253, dot: true}
)

// validName: 1 to r.max bytes, alphanumerics first and last, and inside
// alphanumerics, '-', and what r allows.
func validName(s string, r nameRule) bool {
	if len(s) == 0 || len(s) > r.max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c >= 'A' && c <= 'Z' && r.upper:
		case i > 0 && i < len(s)-1 && (c == '-' || c == '_' && r.underscore || c == '.' && r.dot):
		default:
			return false
		}
	}
	return true
}

// Bounds of an entry's names (Kubernetes': a DNS subdomain, a DNS label):
// a writer cannot make every reader hold large strings.
const (
	MaxNameLen      = 253
	MaxNamespaceLen = 63
)

// MaxValueLen bounds an entry's stored value: a longer one is refused
// unread.
const MaxValueLen = 4 << 10

// Sync publishes local entries and follows remote ones.
type Sync struct {
	kv      *kvstore.Client
	lease   *kvstore.Lease
	cluster string
	node    string

	mu    sync.Mutex
	local map[netip.Addr]Entry
	// dirty are the local addresses whose kvstore key the writer has yet
	// to make match local (an entry to put, or a key to delete), each
	// with the generation of its last change; kick wakes the writer.
	dirty map[netip.Addr]uint64
	gen   uint64
	kick  chan struct{}

	remote map[netip.Addr]Entry
	subs   []*replay.Sub[Entry]
	synced chan struct{}
	// hold keeps the entries of a node whose lease ended while failure
	// detection still reaches it; pending are those entries (their
	// deletion not applied yet).
	hold    *kvstore.Hold[netip.Addr]
	pending map[netip.Addr]bool
}

func (s *Sync) key(ip netip.Addr) string { return Prefix + s.cluster + "/" + ip.String() }

// New starts following the cluster's entries; it returns once the initial
// list is in. Entries of this node found there (from before a restart) are
// left for Publish to overwrite or Prune to remove.
func New(ctx context.Context, kv *kvstore.Client, lease *kvstore.Lease, cluster, node string) *Sync {
	s := &Sync{kv: kv, lease: lease, cluster: cluster, node: node,
		local: map[netip.Addr]Entry{}, remote: map[netip.Addr]Entry{}, synced: make(chan struct{}), pending: map[netip.Addr]bool{},
		dirty: map[netip.Addr]uint64{}, kick: make(chan struct{}, 1)}
	lease.OnRenew(func(context.Context, int64) {
		// The writer puts every local entry again, under the new lease.
		s.mu.Lock()
		for ip := range s.local {
			s.markLocked(ip)
		}
		s.mu.Unlock()
	})
	go s.writer(ctx)
	go s.watch(ctx)
	select {
	case <-s.synced:
	case <-ctx.Done():
	}
	return s
}

// HoldExpired keeps a remote node's entries in place when they vanish
// because its lease ended (it was cut off from the kvstore longer than the
// TTL) while alive(node) says failure detection still reaches it: its pods
// keep being reachable until it writes them again under its new lease. They
// go once the node is seen down, or after max. An explicit withdrawal (a
// deleted endpoint) is never held. Call before events matter.
func (s *Sync) HoldExpired(alive func(node string) bool, max time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold = &kvstore.Hold[netip.Addr]{Alive: alive, Max: max, Release: s.release}
}

// release applies the held deletion of ip, unless it was written again.
func (s *Sync) release(ip netip.Addr) {
	s.mu.Lock()
	e, ok := s.remote[ip]
	if !s.pending[ip] || !ok {
		s.mu.Unlock()
		return
	}
	delete(s.pending, ip)
	delete(s.remote, ip)
	subs := slices.Clone(s.subs)
	s.mu.Unlock()
	slog.Info("withdrawing a held ipcache entry", "ip", ip, "node", e.Node)
	for _, sb := range subs {
		sb.Deliver(e, true)
	}
}

// Subscribe calls f for each remote entry now known and then every later
// change, in that order: a change that comes during the replay is handed
// over after it (until 2026-12-06 it could come before, and the replay's
// older value stayed: TestSubscribeReplayNotAfterNewer).
func (s *Sync) Subscribe(f func(e Entry, deleted bool)) {
	sb := replay.New(f)
	s.mu.Lock()
	s.subs = append(s.subs, sb)
	entries := make([]Entry, 0, len(s.remote))
	for _, e := range s.remote {
		entries = append(entries, e)
	}
	s.mu.Unlock()
	sb.Replay(entries)
}

func (s *Sync) put(ctx context.Context, e Entry, lease int64) error {
	b, _ := json.Marshal(e)
	return s.kv.Put(ctx, s.key(e.IP), b, lease)
}

// Publish records a local endpoint's entry for the writer to put in the
// kvstore. It does not wait for the kvstore: the policy engine calls it
// holding its lock, which a kvstore outage held until the kvstore
// answered again (until 2026-12-03). A write that fails is tried again
// until it succeeds or a later Publish or Withdraw of the address
// replaces it.
func (s *Sync) Publish(e Entry) {
	e.Node = s.node
	s.mu.Lock()
	defer s.mu.Unlock()
	s.local[e.IP] = e
	s.markLocked(e.IP)
}

// Withdraw records that a local endpoint's entry is gone, for the writer
// to delete from the kvstore (as Publish: no wait, tried until done).
func (s *Sync) Withdraw(ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.local, ip)
	s.markLocked(ip)
}

// Withdrawing says whether the deletion of a gone local endpoint's key is
// yet to be written (the kvstore away): every other node and cluster
// still maps ip to that endpoint's identity, so IPAM must not give the
// address to a new pod yet (ipam.Pool.SetBusy).
func (s *Sync) Withdrawing(ip netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, dirty := s.dirty[ip]
	_, local := s.local[ip]
	return dirty && !local
}

// markLocked has the writer make ip's key match local; s.mu held.
func (s *Sync) markLocked(ip netip.Addr) {
	s.gen++
	s.dirty[ip] = s.gen
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Writes is what the writer has yet to write: the local addresses whose
// kvstore key does not match yet.
func (s *Sync) Writes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.dirty)
}

// writeTimeout bounds one kvstore write of the writer; retryMin and
// retryMax bound its wait after a round with a failed write.
const (
	writeTimeout = 5 * time.Second
	retryMin     = time.Second
	retryMax     = 30 * time.Second
)

// writer is the only writer of this node's keys: it makes each marked
// address's key match local (put or delete), one address at a time, so a
// write never overtakes a later one of the same address.
func (s *Sync) writer(ctx context.Context) {
	wait, failing := retryMin, false
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-retry:
		}
		retry = nil
		err := s.flush(ctx)
		switch {
		case err == nil:
			if failing {
				slog.Info("cluster ipcache: this node's entries are written again")
			}
			wait, failing = retryMin, false
		case ctx.Err() != nil:
			return
		default:
			if !failing {
				slog.Warn("cluster ipcache: writing this node's entries failed; trying again until the kvstore answers", "err", err)
			}
			failing = true
			retry = time.After(wait)
			wait = min(wait*2, retryMax)
		}
	}
}

// flush writes every marked address once; it returns the last error.
func (s *Sync) flush(ctx context.Context) error {
	s.mu.Lock()
	marked := make(map[netip.Addr]uint64, len(s.dirty))
	maps.Copy(marked, s.dirty)
	s.mu.Unlock()
	var last error
	for ip := range marked {
		s.mu.Lock()
		e, ok := s.local[ip]
		gen, still := s.dirty[ip]
		s.mu.Unlock()
		if !still {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		var err error
		if ok {
			err = s.put(wctx, e, s.lease.ID())
		} else {
			err = s.kv.Delete(wctx, s.key(ip))
		}
		cancel()
		if err != nil {
			last = err
			continue
		}
		s.mu.Lock()
		if s.dirty[ip] == gen {
			delete(s.dirty, ip)
		}
		s.mu.Unlock()
	}
	return last
}

// Prune has the writer delete the entries of this node that are not
// published any more (endpoints deleted while the agent was down); it
// returns how many it found.
func (s *Sync) Prune(ctx context.Context) (int, error) {
	kvs, _, err := s.kv.List(ctx, Prefix+s.cluster+"/")
	if err != nil {
		return 0, err
	}
	n := 0
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, kv := range kvs {
		e, err := DecodeEntry(kv.Value)
		if err != nil || e.Node != s.node {
			continue
		}
		ip, err := netip.ParseAddr(strings.TrimPrefix(kv.Key, Prefix+s.cluster+"/"))
		if err != nil {
			continue
		}
		if _, keep := s.local[ip]; !keep {
			s.markLocked(ip)
			n++
		}
	}
	return n, nil
}

// Lookup returns the entry of ip: this node's endpoint's, or another
// node's of the cluster.
func (s *Sync) Lookup(ip netip.Addr) (Entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.local[ip]; ok {
		return e, true
	}
	e, ok := s.remote[ip]
	return e, ok
}

// Remote returns the entries of other nodes.
func (s *Sync) Remote() []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Entry, 0, len(s.remote))
	for _, e := range s.remote {
		out = append(out, e)
	}
	return out
}

func (s *Sync) watch(ctx context.Context) {
	prefix := Prefix + s.cluster + "/"
	once := sync.Once{}
	for ev := range s.kv.Watch(ctx, prefix, kvstore.WatchOptions{}) {
		if ev.Type == kvstore.EventSynced {
			once.Do(func() { close(s.synced) })
			continue
		}
		ip, err := netip.ParseAddr(strings.TrimPrefix(ev.Key, prefix))
		if err != nil {
			continue
		}
		s.mu.Lock()
		var e Entry
		deleted := ev.Type == kvstore.EventDelete
		if deleted {
			old, ok := s.remote[ip]
			if !ok || s.pending[ip] {
				s.mu.Unlock()
				continue
			}
			if hold := s.hold; hold != nil {
				// Pending before the hold starts, so its release finds it;
				// this goroutine is the only other writer of s.remote[ip].
				s.pending[ip] = true
				s.mu.Unlock()
				held := s.kv.LeaseEnded(ctx, ev) && hold.Add(ctx, ip, old.Node)
				if held {
					slog.Info("holding the ipcache entry of a node whose lease ended while it is reachable", "ip", ip, "node", old.Node)
					continue
				}
				s.mu.Lock()
				delete(s.pending, ip)
			}
			e = old
			delete(s.remote, ip)
		} else {
			wasPending := s.pending[ip]
			if wasPending {
				delete(s.pending, ip)
				s.hold.Clear(ip)
			}
			e, err = DecodeEntry(ev.Value)
			if err == nil {
				err = e.Check(ip)
			}
			if err != nil {
				s.mu.Unlock()
				slog.Warn("ignoring an unreadable ipcache entry", "key", ev.Key, "err", err)
				continue
			}
			if e.Node == s.node {
				old, ok := s.remote[ip]
				if !wasPending || !ok {
					s.mu.Unlock()
					continue
				}
				// A held remote entry whose address is now this node's.
				e, deleted = old, true
				delete(s.remote, ip)
			} else if old, ok := s.remote[ip]; ok && old == e {
				s.mu.Unlock()
				continue
			} else {
				s.remote[ip] = e
			}
		}
		subs := slices.Clone(s.subs)
		s.mu.Unlock()
		for _, sb := range subs {
			sb.Deliver(e, deleted)
		}
	}
}
