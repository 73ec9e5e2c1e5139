// Package testutil owns what tests share: the one helper that skips a test
// needing root or a kernel feature (naming what is missing), the lookup of
// the tools `make` builds and caches, and a real embedded etcd per test.
package testutil

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/goleak"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/kvstore/embedded"
)

// RequireRoot skips t unless the test runs as root, saying why. When
// FILAMENT_REQUIRE_PRIVILEGED=1 (as `make test` sets it) a missing privilege
// fails the test instead, so CI never passes by skipping the datapath.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("FILAMENT_REQUIRE_PRIVILEGED") == "1" {
		t.Fatalf("needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and FILAMENT_REQUIRE_PRIVILEGED=1 forbids skipping")
	}
	t.Skip("skipped: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
}

// InNewNetNS runs the rest of the test (its goroutine, locked to its
// thread) in a new network namespace, the previous one set back at
// cleanup. It requires root.
func InNewNetNS(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		netns.Set(orig)
		ns.Close()
		orig.Close()
		runtime.UnlockOSThread()
	})
}

// SkipMissingFeature skips t because the kernel lacks feature (err says how
// that was found out).
func SkipMissingFeature(t testing.TB, feature string, err error) {
	t.Helper()
	t.Skipf("skipped: kernel feature %s is missing: %v", feature, err)
}

// CachedTool returns the path of a tool `make <target>` builds and caches:
// $env when set (make test sets it: a missing file fails t), else
// ~/.cache/filament/<file> (missing: t is skipped, saying how to build it).
func CachedTool(t testing.TB, env, file, target string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v (make %s builds it)", env, p, err, target)
		}
		return p
	}
	home, _ := os.UserHomeDir()
	p := filepath.Join(home, ".cache", "filament", file)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("skipped: no %s at %s (make %s builds it from the module proxy)", filepath.Base(file), p, target)
	}
	return p
}

// Etcd starts a real embedded etcd for t (stopped at cleanup) and returns its
// client endpoints.
func Etcd(t testing.TB) []string {
	t.Helper()
	s, err := embedded.Start(embedded.Config{
		Dir:           t.TempDir(),
		ClientURL:     "http://127.0.0.1:0",
		PeerURL:       "http://127.0.0.1:0",
		UnsafeNoFsync: true,
	})
	if err != nil {
		t.Fatalf("embedded etcd: %v", err)
	}
	t.Cleanup(s.Close)
	return s.Endpoints()
}

// EtcdClient starts an embedded etcd for t and returns a connected client.
func EtcdClient(t testing.TB) *kvstore.Client {
	t.Helper()
	return Connect(t, Etcd(t))
}

// Connect opens one more client to endpoints, closed at cleanup.
func Connect(t testing.TB, endpoints []string) *kvstore.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := kvstore.Connect(ctx, kvstore.Config{Endpoints: endpoints})
	if err != nil {
		t.Fatalf("connect etcd: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// GrantLease grants a lease of ttl on kv, failing the test if it cannot.
func GrantLease(t testing.TB, ctx context.Context, kv *kvstore.Client, ttl time.Duration) *kvstore.Lease {
	t.Helper()
	l, err := kv.GrantLease(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// FreeURL is an http URL on a loopback port free right now (an embedded
// etcd restarted on the same URLs comes back where its clients look).
func FreeURL(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return fmt.Sprintf("http://%s", ln.Addr())
}

// Eventually waits up to 10 s for cond, failing the test if it never holds.
func Eventually(t testing.TB, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Error("timed out")
			return
		}
	}
}

// SubscribeDuringChange subscribes f through subscribe with its first call
// (the start of a replay of what is known) held until change has run (a
// change of what is subscribed to, which change waits to see applied) and
// the change had time to be delivered: a test that the replay's older
// values do not come after the change.
func SubscribeDuringChange[T any](t testing.TB, subscribe func(func(v T, deleted bool)), change func(), f func(v T, deleted bool)) {
	t.Helper()
	var mu sync.Mutex
	calls := 0
	release := make(chan struct{})
	go func() {
		Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return calls > 0 })
		change()
		time.Sleep(100 * time.Millisecond) // the watch's delivery, if it is not held
		close(release)
	}()
	subscribe(func(v T, deleted bool) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			<-release
		}
		f(v, deleted)
	})
}

// NoLeaks fails t if goroutines other than those before names (taken
// with goleak.IgnoreCurrent) are still running after 10 s. goleak's own
// VerifyNone gives up after about 0.4 s, which a loaded machine's
// connection goroutines, unwinding after a close, can take.
func NoLeaks(t testing.TB, before goleak.Option) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := goleak.Find(before)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("goroutines left after 10 s: %v", err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
