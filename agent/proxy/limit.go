package proxy

import (
	"net/netip"
	"sync"
)

// source is who sent a query or opened a connection: its address and
// the identity the datapath (or the ipcache) gave it, so that the
// clients behind one address (another node's proxy) of different
// identities are apart.
type source struct {
	addr netip.Addr
	id   uint32
}

// sourceLimit counts what each source holds of a shared resource and
// refuses one more than max.
type sourceLimit struct {
	mu   sync.Mutex
	max  int
	held map[source]int
}

func newSourceLimit(max int) *sourceLimit {
	return &sourceLimit{max: max, held: map[source]int{}}
}

// take counts one more for s, unless s holds max already.
func (l *sourceLimit) take(s source) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[s] >= l.max {
		return false
	}
	l.held[s]++
	return true
}

// give counts one less for s (a take's end).
func (l *sourceLimit) give(s source) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[s] <= 1 {
		delete(l.held, s)
		return
	}
	l.held[s]--
}
