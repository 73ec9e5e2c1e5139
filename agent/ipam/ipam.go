// Package ipam owns host-scope address allocation: each node hands out pod
// addresses from its pod CIDR, never twice at once, with the gateway,
// network and broadcast addresses kept out of the pool.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
)

var (
	// ErrExhausted: every address of the pod CIDR is in use.
	ErrExhausted = errors.New("pod CIDR exhausted")
	// ErrInvalidCIDR: the pod CIDR cannot be used.
	ErrInvalidCIDR = errors.New("invalid pod CIDR")
	// ErrUnavailable: a specific address is out of range, reserved or taken.
	ErrUnavailable = errors.New("address unavailable")
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
	return &Pool{prefix: p, gateway: gw, last: broadcast(p), owner: map[netip.Addr]string{}, next: gw.Next()}, nil
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

// Allocate hands out a free address to owner, round-robin so that a just
// released address is not reused at once.
func (p *Pool) Allocate(owner string) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.owner) >= p.Capacity() {
		return netip.Addr{}, fmt.Errorf("%w: all %d addresses of %s are in use", ErrExhausted, p.Capacity(), p.prefix)
	}
	a := p.next
	for {
		if !p.allocatable(a) {
			a = p.gateway.Next()
		}
		if _, used := p.owner[a]; !used {
			break
		}
		a = a.Next()
	}
	p.owner[a] = owner
	p.next = a.Next()
	return a, nil
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
	return nil
}

// Release frees a; releasing a free address does nothing.
func (p *Pool) Release(a netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.owner, a)
}
