package node

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Detector finds dead nodes quickly with memberlist (SWIM) among the
// cluster's agents; the kvstore stays the source of truth. Timings are
// tuned so a dead node is noticed in about a second.
type Detector struct {
	ml     *memberlist.Memberlist
	keys   *memberlist.Keyring
	port   int
	notify func(name string, alive bool)

	// nmu orders notifications (events); never held while asking
	// memberlist anything (it calls NotifyJoin with its own lock held).
	nmu sync.Mutex
	mu  sync.Mutex
	// wanted are the address of each node Join was asked for and Forget
	// has not dropped; joining marks the addresses with a join under way.
	wanted  map[string]string
	joining map[string]bool
	// unseen are the wanted nodes memberlist has not reported alive yet,
	// with when Join first asked for them; declared those of them
	// declared dead for it (firstContactTimeout).
	unseen   map[string]time.Time
	declared map[string]bool
	// quiet are the wanted nodes whose record says they run no failure
	// detection: they count as alive.
	quiet   map[string]bool
	stop    chan struct{}
	stopped bool
}

// rejoinInterval is how often a detector joins again the wanted nodes
// that are not alive members: memberlist probes no node it declared dead,
// so after a partition of the gossip alone (no record changed, no join
// asked) both sides would stay dead to each other for good.
var rejoinInterval = 5 * time.Second

// firstContactTimeout is how long a node Join was asked for may stay
// unseen by memberlist (never an alive member) before it is declared dead.
var firstContactTimeout = 3 * rejoinInterval

type events struct{ d *Detector }

// Notifications go out under d.nmu, the rejoin loop's declarations of
// silent nodes too: a node's join seen while a declaration of its silence
// was on its way out comes after it, never before.
func (e events) NotifyJoin(n *memberlist.Node) {
	e.d.nmu.Lock()
	defer e.d.nmu.Unlock()
	e.d.seen(n.Name)
	e.d.notify(n.Name, true)
}

func (e events) NotifyLeave(n *memberlist.Node) {
	e.d.nmu.Lock()
	defer e.d.nmu.Unlock()
	e.d.mu.Lock()
	quiet := e.d.quiet[n.Name]
	e.d.mu.Unlock()
	if !quiet { // a node that says it runs no detection counts as alive
		e.d.notify(n.Name, false)
	}
}

func (e events) NotifyUpdate(n *memberlist.Node) {}

// NewDetector listens on ip:port; notify is called when a node is seen
// alive or declared dead. Gossip is sealed with keys[0] (AES-GCM) and only
// messages sealed with one of keys are accepted: a sender without the
// cluster's key (a pod, say) is ignored.
func NewDetector(name string, ip netip.Addr, port int, keys [][]byte, notify func(name string, alive bool)) (*Detector, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("memberlist on %s:%d: no gossip key", ip, port)
	}
	kr, err := memberlist.NewKeyring(keys, keys[0])
	if err != nil {
		return nil, fmt.Errorf("memberlist gossip keys: %w", err)
	}
	d := &Detector{port: port, notify: notify, wanted: map[string]string{}, joining: map[string]bool{}, keys: kr, stop: make(chan struct{}),
		unseen: map[string]time.Time{}, declared: map[string]bool{}, quiet: map[string]bool{}}
	c := memberlist.DefaultLANConfig()
	c.Keyring = kr
	c.GossipVerifyIncoming = true
	c.GossipVerifyOutgoing = true
	c.Name = name
	c.BindAddr = ip.String()
	c.BindPort = port
	c.AdvertiseAddr = ip.String()
	c.AdvertisePort = port
	c.ProbeInterval = 200 * time.Millisecond
	c.ProbeTimeout = 100 * time.Millisecond
	c.SuspicionMult = 2
	// Lifeguard slows a member's own probing when its probes fail without
	// nacks; with few agents (no one to ask for indirect probes) every
	// failed probe of a dead node counts against the prober, stretching
	// detection to seconds. Off: a crash is declared in about a second.
	c.AwarenessMaxMultiplier = 1
	c.GossipInterval = 50 * time.Millisecond
	c.PushPullInterval = 10 * time.Second
	c.Logger = log.New(io.Discard, "", 0)
	c.Events = events{d}
	ml, err := memberlist.Create(c)
	if err != nil {
		return nil, fmt.Errorf("memberlist on %s:%d: %w", ip, port, err)
	}
	d.ml = ml
	go d.rejoin(rejoinInterval)
	return d, nil
}

// rejoin joins again, every interval, the wanted nodes that are not alive
// members (TestShortPartitionHeals).
func (d *Detector) rejoin(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		alive, members := map[string]bool{}, map[string]bool{}
		for _, m := range d.ml.Members() {
			alive[m.Address()], members[m.Name] = true, true
		}
		d.nmu.Lock()
		d.mu.Lock()
		for _, addr := range d.wanted {
			if !alive[addr] {
				d.joinLocked(addr)
			}
		}
		var silent []string
		for name, since := range d.unseen {
			if members[name] {
				// Joined while Join was noting it unseen.
				delete(d.unseen, name)
				delete(d.declared, name)
				continue
			}
			if !d.declared[name] && time.Since(since) >= firstContactTimeout {
				d.declared[name] = true
				silent = append(silent, name)
			}
		}
		d.mu.Unlock()
		for _, name := range silent {
			d.notify(name, false)
		}
		d.nmu.Unlock()
	}
}

// seen notes that memberlist reported node name alive: from then on its
// liveness is memberlist's.
func (d *Detector) seen(name string) {
	d.mu.Lock()
	delete(d.unseen, name)
	delete(d.declared, name)
	d.mu.Unlock()
}

// SetKeys replaces the gossip keys: keys[0] becomes primary, keys no
// longer listed are dropped (a rotation step of the cluster's key file).
func (d *Detector) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return fmt.Errorf("gossip keys: none given")
	}
	for _, k := range keys {
		if err := d.keys.AddKey(k); err != nil {
			return fmt.Errorf("gossip keys: %w", err)
		}
	}
	if err := d.keys.UseKey(keys[0]); err != nil {
		return fmt.Errorf("gossip keys: %w", err)
	}
	for _, have := range d.keys.GetKeys() {
		if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, have) }) {
			if err := d.keys.RemoveKey(have); err != nil {
				return fmt.Errorf("gossip keys: %w", err)
			}
		}
	}
	return nil
}

// Join contacts node name, found in the registry at ip, and keeps
// contacting it (at its latest address) while it is not an alive member,
// until Forget. gossip says the node's record says it runs failure
// detection: if memberlist never sees it alive, it is declared dead after
// firstContactTimeout (a node that does not say so, detection off or an
// agent from before the record said it, counts as alive: turning
// detection on rolls out node by node).
func (d *Detector) Join(name string, ip netip.Addr, gossip bool) {
	addr := net.JoinHostPort(ip.String(), strconv.Itoa(d.port))
	// Asked before d.mu: memberlist calls NotifyJoin (seen, which takes
	// d.mu) with its own lock held.
	member := d.isMember(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	if !gossip {
		delete(d.unseen, name)
		delete(d.declared, name)
		if !d.quiet[name] {
			// Declared dead before (silent, or memberlist lost it when it
			// turned detection off), it counts as alive now.
			d.quiet[name] = true
			if !member {
				go d.quietAlive(name)
			}
		}
	} else {
		wasQuiet := d.quiet[name]
		delete(d.quiet, name)
		if _, known := d.unseen[name]; !known && !member && !d.declared[name] && (d.wanted[name] == "" || wasQuiet) {
			// Memberlist reports only the members it has known: a node
			// that never answers would count as alive for good (until
			// 2026-12-06, TestNeverSeenNodeDeclaredDead).
			d.unseen[name] = time.Now()
		}
	}
	if d.wanted[name] == addr {
		return // joined, or joined again by rejoin
	}
	d.wanted[name] = addr
	d.joinLocked(addr)
}

// quietAlive tells that node name, whose record says it runs no
// detection, is alive, unless it says otherwise again by then.
func (d *Detector) quietAlive(name string) {
	d.nmu.Lock()
	defer d.nmu.Unlock()
	d.mu.Lock()
	quiet := d.quiet[name]
	d.mu.Unlock()
	if quiet {
		d.notify(name, true)
	}
}

// isMember says whether memberlist knows node name as an alive member.
func (d *Detector) isMember(name string) bool {
	for _, m := range d.ml.Members() {
		if m.Name == name {
			return true
		}
	}
	return false
}

// joinLocked starts a join of addr unless one is under way or the
// detector is closed; d.mu held.
func (d *Detector) joinLocked(addr string) {
	if d.joining[addr] || d.stopped {
		return
	}
	d.joining[addr] = true
	go func() {
		d.ml.Join([]string{addr})
		d.mu.Lock()
		delete(d.joining, addr)
		d.mu.Unlock()
	}()
}

// Forget stops contacting node name (it left the registry, or was
// refused); a later Join contacts it again.
func (d *Detector) Forget(name string) {
	d.mu.Lock()
	delete(d.wanted, name)
	delete(d.unseen, name)
	delete(d.declared, name)
	delete(d.quiet, name)
	d.mu.Unlock()
}

// Close stops without announcing a leave: to the others this looks like a
// crash, and a restarted agent that comes back is seen alive again.
func (d *Detector) Close() {
	d.mu.Lock()
	if !d.stopped {
		d.stopped = true
		close(d.stop)
	}
	d.mu.Unlock()
	d.ml.Shutdown()
}
