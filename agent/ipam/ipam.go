// Package ipam owns host-scope address allocation: each node hands out pod
// addresses from its pod CIDR, never twice at once, with the gateway,
// network and broadcast addresses kept out of the pool, and a released
// address held back for a while (ReuseDelay), across agent restarts.
package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ReuseDelay is how long a released address is held back while other
// addresses are free. State about a deleted pod outlives it: other pods'
// conntrack entries of flows with it (UDP: 60 s after their last packet,
// bpf/lib/conntrack.h), other nodes' and clusters' ipcache entries until
// the withdrawal reaches them. A pod given the address before then was
// taken for the old one (found 2026-12-07: a tenant's create/delete loop
// walked the round-robin cursor onto a deleted pod's address, and an
// agent restart started the cursor again at the first address).
//
// While every free address was released less than ReuseDelay ago, the one
// released longest ago is handed out, but never one released less than
// MinReuseDelay ago (longer than an idle UDP flow's conntrack entry
// lives): the pod is then refused (ErrHeld), as a tenant deleting
// and creating pods fast enough to release the node's whole free pool
// in that time could otherwise pick up a victim's address.
const (
	ReuseDelay    = 2 * time.Minute
	MinReuseDelay = 70 * time.Second
)

var (
	// ErrExhausted: every address of the pod CIDR is in use.
	ErrExhausted = errors.New("pod CIDR exhausted")
	// ErrInvalidCIDR: the pod CIDR cannot be used.
	ErrInvalidCIDR = errors.New("invalid pod CIDR")
	// ErrUnavailable: a specific address is out of range, reserved or taken.
	ErrUnavailable = errors.New("address unavailable")
	// ErrHeld: every free address is held back for now (released too
	// recently, or its withdrawal not written yet); try again later.
	ErrHeld = errors.New("every free pod address is held back")
)

// Pool allocates addresses of one IPv4 prefix. The first host address is
// the gateway of the pods; the network and broadcast addresses are never handed out.
type Pool struct {
	prefix  netip.Prefix
	gateway netip.Addr
	last    netip.Addr

	mu    sync.Mutex
	owner map[netip.Addr]string
	next  netip.Addr
	// released: when each address released in the last ReuseDelay was
	// (free addresses only); journal, when set (Keep), the file they are
	// written to at each release.
	released map[netip.Addr]time.Time
	journal  string
	now      func() time.Time
	// busy, when set (SetBusy), says a free address is not to be handed
	// out at all yet.
	busy func(netip.Addr) bool
}

// SetBusy has Allocate skip the free addresses busy reports, whatever
// their release time: the agent's are those whose ipcache withdrawal has
// not reached the kvstore (ipcache.Sync.Withdrawing), which every other
// node and cluster still maps to the gone pod's identity (found
// 2026-12-07: during a kvstore outage a node gave such an address to a
// new pod, which the rest of the mesh took for the old one). busy is
// called with the pool's lock held.
func (p *Pool) SetBusy(busy func(netip.Addr) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.busy = busy
}

// New parses cidr (e.g. 10.244.1.0/24). It must be IPv4, /8 to /29, and
// written with its network address.
func New(cidr string) (*Pool, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrInvalidCIDR, cidr, err)
	}
	if !p.Addr().Is4() {
		return nil, fmt.Errorf("%w %q: only IPv4 pod CIDRs are supported", ErrInvalidCIDR, cidr)
	}
	if p.Bits() < 8 || p.Bits() > 29 {
		return nil, fmt.Errorf("%w %q: prefix length must be /8 to /29", ErrInvalidCIDR, cidr)
	}
	if p.Masked() != p {
		return nil, fmt.Errorf("%w %q: host bits set (did you mean %s?)", ErrInvalidCIDR, cidr, p.Masked())
	}
	gw := p.Addr().Next()
	return &Pool{prefix: p, gateway: gw, last: broadcast(p), owner: map[netip.Addr]string{}, next: gw.Next(),
		released: map[netip.Addr]time.Time{}, now: time.Now}, nil
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Prefix is the pool's CIDR.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Gateway is the address pods use as their default gateway.
func (p *Pool) Gateway() netip.Addr { return p.gateway }

// Capacity is how many pod addresses the pool holds.
func (p *Pool) Capacity() int { return 1<<(32-p.prefix.Bits()) - 3 }

// Used is how many addresses are allocated.
func (p *Pool) Used() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.owner)
}

func (p *Pool) allocatable(a netip.Addr) bool {
	return p.prefix.Contains(a) && a != p.prefix.Addr() && a != p.gateway && a != p.last
}

// Allocate hands out a free address to owner, round-robin, skipping the
// addresses released less than ReuseDelay ago; when every free address is
// one of those, the one released longest ago if that was MinReuseDelay
// ago or more, else none (ErrExhausted).
func (p *Pool) Allocate(owner string) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.owner) >= p.Capacity() {
		return netip.Addr{}, fmt.Errorf("%w: all %d addresses of %s are in use", ErrExhausted, p.Capacity(), p.prefix)
	}
	now := p.now()
	var oldest netip.Addr
	var oldestAt time.Time
	a := p.next
	for range p.Capacity() + 3 {
		if !p.allocatable(a) {
			a = p.gateway.Next()
		}
		if _, used := p.owner[a]; !used && (p.busy == nil || !p.busy(a)) {
			at, held := p.released[a]
			if !held || now.Sub(at) >= ReuseDelay {
				return p.take(a, owner), nil
			}
			if !oldest.IsValid() || at.Before(oldestAt) {
				oldest, oldestAt = a, at
			}
		}
		a = a.Next()
	}
	if !oldest.IsValid() {
		return netip.Addr{}, fmt.Errorf("%w: every free address of %s is still mapped to its last pod elsewhere (its withdrawal not written to the kvstore yet)",
			ErrHeld, p.prefix)
	}
	if now.Sub(oldestAt) < MinReuseDelay {
		return netip.Addr{}, fmt.Errorf("%w: every free address of %s was released less than %s ago (held back so that nothing left of its last pod names a new one)",
			ErrHeld, p.prefix, MinReuseDelay)
	}
	slog.Warn("pod address handed out again before its reuse delay: every other address is in use or was released later", "ip", oldest,
		"released", now.Sub(oldestAt).Round(time.Second), "delay", ReuseDelay)
	return p.take(oldest, owner), nil
}

// take gives a to owner; p.mu held.
func (p *Pool) take(a netip.Addr, owner string) netip.Addr {
	p.owner[a] = owner
	delete(p.released, a)
	p.next = a.Next()
	return a
}

// Claim marks a specific address as owned (restoring state after a restart).
func (p *Pool) Claim(a netip.Addr, owner string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.allocatable(a) {
		return fmt.Errorf("%w: %s is not a pod address of %s", ErrUnavailable, a, p.prefix)
	}
	if o, used := p.owner[a]; used && o != owner {
		return fmt.Errorf("%w: %s is already owned by %s", ErrUnavailable, a, o)
	}
	p.owner[a] = owner
	delete(p.released, a)
	return nil
}

// Unallocate frees a without holding it back: an address handed out to an
// endpoint whose creation failed before anything named it (no datapath,
// no ipcache entry), so nothing of it outlives the failure (a kvstore
// outage failing ADDs in a loop held a whole pool back otherwise).
func (p *Pool) Unallocate(a netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.owner, a)
}

// Held lists the addresses released less than ReuseDelay ago and still
// free (read back by Keep after a restart too).
func (p *Pool) Held() []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	var out []netip.Addr
	for a, at := range p.released {
		if _, used := p.owner[a]; !used && now.Sub(at) < ReuseDelay {
			out = append(out, a)
		}
	}
	return out
}

// Release frees a; releasing a free address does nothing. The address is
// held back for ReuseDelay (and written to the Keep file).
func (p *Pool) Release(a netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, used := p.owner[a]; !used {
		return
	}
	delete(p.owner, a)
	now := p.now()
	p.released[a] = now
	for r, at := range p.released {
		if now.Sub(at) >= ReuseDelay {
			delete(p.released, r)
		}
	}
	if p.journal != "" {
		if err := p.write(); err != nil {
			slog.Warn("released pod addresses not saved; after a restart they may be handed out before their reuse delay", "err", err)
		}
	}
}

// Keep reads the addresses released less than ReuseDelay ago from path
// (written by an earlier agent; missing: none) and writes them there at
// every release from now on. Only the pool's addresses are read, and a
// time in the future counts as now.
func (p *Pool) Keep(path string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.journal = path
	// Temporary files of a write a crash interrupted.
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".released-*")); len(left) > 0 {
		for _, f := range left {
			os.Remove(f)
		}
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		slog.Warn("released pod addresses unreadable; none held back", "path", path, "err", err)
		return nil
	}
	var saved map[string]time.Time
	if err := json.Unmarshal(data, &saved); err != nil {
		slog.Warn("released pod addresses unreadable; none held back", "path", path, "err", err)
		return nil
	}
	now := p.now()
	for s, at := range saved {
		a, err := netip.ParseAddr(s)
		if err != nil || !p.allocatable(a) {
			continue
		}
		if at.After(now) {
			at = now
		}
		if now.Sub(at) < ReuseDelay {
			p.released[a] = at
		}
	}
	return nil
}

// write saves p.released to p.journal (replaced whole); p.mu held.
func (p *Pool) write() error {
	out := make(map[string]time.Time, len(p.released))
	for a, at := range p.released {
		out[a.String()] = at
	}
	data, err := json.Marshal(out)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p.journal), ".released-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p.journal)
}
