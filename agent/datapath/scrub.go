package datapath

import (
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/filament-net/filament/bpf"
)

// scrubber deletes, in a goroutine of its own, the conntrack entries that
// name the address of a local endpoint gone (DeleteEndpoint), of every
// endpoint: the entries the other pods keep of their flows with it, and
// its own. A flow's replies are judged with the identity the flow was
// admitted with (bpf/lib/policy.h, enforce); left in place, another pod
// later given the address answered the old pod's peers as the old pod,
// past their ingress policy, for as long as its packets kept the entries
// alive (found 2026-12-07 by a review of endpoint lifecycles,
// TestScrubDeletesAGoneEndpointsFlows). IPAM holds a released address
// back (ipam.ReuseDelay), far longer than a walk takes. One walk serves
// every address queued meanwhile, without the datapath's lock held; a
// failed walk is tried again a second later.
//
// Other nodes' pods (ScrubPeer) are the same case seen from here: a pod
// of this node with a flow to a pod on another node or cluster kept its
// entry after that pod went, and the pod later given its address there
// answered as the old one. Their walk waits peerSettle, so that a burst
// of deletions (a node drained, a lost cluster withdrawn) is one walk and
// a mesh's churn costs a walk every few seconds at most.
type scrubber struct {
	walk sync.Mutex // held for a whole ScrubPendingAddrs
	mu   sync.Mutex
	// pending: addresses (as in the maps) whose entries go.
	pending map[uint32]bool
	// peers: other nodes' addresses whose entries go, once due, unless
	// peerAlive then says the address is the same pod's again (ScrubPeer).
	peers     map[uint32]peerGone
	peerAlive func(ip netip.Addr, pod uint64) bool
	// peerWait is peerSettle (tests shorten it); due times count from
	// epoch (monotonic).
	peerWait time.Duration
	epoch    time.Time
	w        worker
	peerW    worker
	manual   bool // tests: no goroutine; they call ScrubPendingAddrs, peers due at once
}

// peerGone is a gone peer's pod (as ScrubPeer's caller keys it) and when
// its address's walk is due.
type peerGone struct {
	pod uint64
	due time.Duration // since the scrubber's epoch
}

// peerSettle is how long a gone peer's address waits at least before its
// walk (its entry may come back, deleted and put again): far less than
// IPAM holds an address back on its node (70 s at least).
const peerSettle = 5 * time.Second

// since is the time since s's epoch (set at the first call). s.mu is held.
func (s *scrubber) since() time.Duration {
	if s.epoch.IsZero() {
		s.epoch = time.Now()
	}
	return time.Since(s.epoch)
}

// queue adds ip and wakes the walk.
func (s *scrubber) queue(d *Datapath, ip netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending == nil {
		s.pending = map[uint32]bool{}
	}
	s.pending[ipv4(ip)] = true
	if s.manual {
		return
	}
	// The settling moment: for the rest of the endpoint's removal (its
	// ipcache entry) and for other addresses to join the walk.
	s.w.wake(d.closed, 100*time.Millisecond, "conntrack entries of gone endpoints", func() error {
		_, err := d.ScrubPendingAddrs()
		return err
	})
}

// queuePeer adds a peer's ip, whose entries go peerSettle later unless
// peerAlive then says the address is pod's again, and wakes the walk.
func (s *scrubber) queuePeer(d *Datapath, ip netip.Addr, pod uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.peers == nil {
		s.peers = map[uint32]peerGone{}
	}
	wait := s.peerWait
	if wait == 0 {
		wait = peerSettle
	}
	if s.manual {
		wait = 0
	}
	s.peers[ipv4(ip)] = peerGone{pod: pod, due: s.since() + wait}
	if s.manual {
		return
	}
	s.peerW.wake(d.closed, wait, "conntrack entries of gone peers", func() error {
		_, err := d.ScrubPendingAddrs()
		return err
	})
}

// ScrubPendingAddrs runs the queued deletions now (the scrubber's
// goroutine; tests), after any walk under way, and returns how many
// entries went. An address that is a local endpoint's again by then keeps
// its entries (a restored endpoint; IPAM does not give an address back so
// soon). What could not be done stays queued.
func (d *Datapath) ScrubPendingAddrs() (int, error) {
	s := &d.scrub
	s.walk.Lock()
	defer s.walk.Unlock()
	if d.isClosed() {
		return 0, nil
	}
	s.mu.Lock()
	pending := s.pending
	s.pending = nil
	// Only the peers due: a local endpoint's walk, or a wake folded into
	// an earlier one, comes sooner (those not due wait for the next).
	now := s.since()
	var due map[uint32]uint64
	for a, g := range s.peers {
		if g.due <= now {
			if due == nil {
				due = map[uint32]uint64{}
			}
			due[a] = g.pod
			delete(s.peers, a)
		}
	}
	waiting := len(s.peers) > 0 && !s.manual
	alive := s.peerAlive
	s.mu.Unlock()
	if waiting {
		s.peerW.poke()
	}
	if pending == nil {
		pending = map[uint32]bool{}
	}
	for a, pod := range due {
		if !pending[a] && (alive == nil || !alive(addrFrom(a), pod)) {
			pending[a] = true
		}
	}
	var ep bpf.DatapathEndpointInfo
	inUse := func(a uint32) bool { return d.objs.Endpoints.Lookup(&a, &ep) == nil }
	for a := range pending {
		if inUse(a) {
			delete(pending, a)
		}
	}
	if len(pending) == 0 {
		return 0, nil
	}
	// Established flows first: a flood of new flows churning
	// conntrack_new must not keep the walk from them.
	n, err := scrubAddrs([]*ebpf.Map{d.objs.Conntrack, d.objs.ConntrackNew}, pending, inUse)
	if err != nil {
		s.mu.Lock()
		if s.pending == nil {
			s.pending = map[uint32]bool{}
		}
		for a := range pending {
			s.pending[a] = true
		}
		s.mu.Unlock()
	}
	return n, err
}

// Scrub queues ip's conntrack entries for deletion (as DeleteEndpoint
// does): the addresses released before a restart, whose queue went with
// the agent that had them (the pinned entries did not).
func (d *Datapath) Scrub(ip netip.Addr) { d.scrub.queue(d, ip) }

// ScrubPeer queues the conntrack entries naming ip, the address of pod (a
// key the caller gives SetPeerAlive's check) of another node (this
// cluster's or a connected one's) whose ipcache entry went or now names
// another pod, for deletion in a walk at least peerSettle later, unless
// the check then says the address is pod's again (an entry deleted and
// put back). A pod of this node keeps its entries (as with Scrub). It
// takes no lock but the scrubber's: a caller may hold its own.
func (d *Datapath) ScrubPeer(ip netip.Addr, pod uint64) { d.scrub.queuePeer(d, ip, pod) }

// SetPeerAlive sets the check of ScrubPeer's queued addresses, called at
// their walk with the walk's lock held (it must not call the datapath's
// Close): whether ip is pod's again. Without one, every queued address's
// entries go.
func (d *Datapath) SetPeerAlive(f func(ip netip.Addr, pod uint64) bool) {
	d.scrub.mu.Lock()
	defer d.scrub.mu.Unlock()
	d.scrub.peerAlive = f
}

// scrubAddrs deletes the entries of the conntrack tables whose source or
// destination is one of addrs, in one walk of each (every table walked,
// whatever another's walk met), and returns how many. An address that
// inUse says is a local endpoint's again by the time of the deletion
// keeps its entries.
func scrubAddrs(tables []*ebpf.Map, addrs map[uint32]bool, inUse func(uint32) bool) (int, error) {
	n := 0
	var errs []error
	// Looked at once, after the first walk, just before its deletions
	// (ScrubPendingAddrs dropped those in use before the walk).
	var spared map[uint32]bool
	for _, m := range tables {
		var gone []bpf.DatapathCtKey
		err := eachEntry(m, func(k *bpf.DatapathCtKey, _ *bpf.DatapathCtEntry) {
			if addrs[k.Saddr] || addrs[k.Daddr] {
				gone = append(gone, *k)
			}
		})
		if err != nil {
			errs = append(errs, err)
		}
		if spared == nil {
			spared = map[uint32]bool{}
			for a := range addrs {
				if inUse(a) {
					spared[a] = true
				}
			}
		}
		for i := range gone {
			if spared[gone[i].Saddr] || spared[gone[i].Daddr] {
				continue
			}
			if err := m.Delete(&gone[i]); err == nil {
				n++
			} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
				break
			}
		}
	}
	return n, errors.Join(errs...)
}
