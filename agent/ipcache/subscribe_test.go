package ipcache_test

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipcache"
	"github.com/filament-net/filament/internal/testutil"
)

// A subscriber gets the entries known when it subscribes, then every
// later change, in that order: a change the watch delivers while the
// replay is still running waits for it. Found 2026-12-06 by reading
// Subscribe: the replay ran outside the lock while the watch already
// delivered newer values to the new subscriber, so a remote pod
// relabelled during an agent's start-up replay kept its old identity in
// the router (the replay's older value came last).
func TestSubscribeReplayNotAfterNewer(t *testing.T) {
	_, _, _, a, b := syncPair(t)
	x := netip.MustParseAddr("10.1.0.1")
	host := netip.MustParseAddr("172.30.0.2")
	b.Publish(ipcache.Entry{IP: x, Identity: 1000, HostIP: host})
	testutil.Eventually(t, func() bool { e, ok := a.Lookup(x); return ok && e.Identity == 1000 })

	var mu sync.Mutex
	var last identity.NumericIdentity
	testutil.SubscribeDuringChange(t, a.Subscribe, func() {
		b.Publish(ipcache.Entry{IP: x, Identity: 2000, HostIP: host})
		testutil.Eventually(t, func() bool { e, ok := a.Lookup(x); return ok && e.Identity == 2000 })
	}, func(e ipcache.Entry, deleted bool) {
		mu.Lock()
		defer mu.Unlock()
		if e.IP == x && !deleted {
			last = e.Identity
		}
	})
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if last != 2000 {
		t.Fatalf("the subscriber's last value for %s is identity %d, the kvstore's 2000", x, last)
	}
}
