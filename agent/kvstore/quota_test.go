package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/agent/kvstore/embedded"
	"github.com/filament-net/filament/internal/testutil"
)

// An embedded etcd holds at most its quota: writes past it are refused
// with etcd's "database space exceeded" (here at 64 MiB, the smallest
// quota taken), and a quota outside the bounds is refused at start,
// naming it.
func TestEmbeddedQuota(t *testing.T) {
	for _, bad := range []int64{-1, embedded.MinQuotaBytes - 1, embedded.MaxQuotaBytes + 1} {
		_, err := embedded.Start(embedded.Config{Dir: t.TempDir(), QuotaBytes: bad})
		if !errors.Is(err, embedded.ErrQuota) || !strings.Contains(err.Error(), fmt.Sprint(bad)) {
			t.Fatalf("quota %d: %v", bad, err)
		}
	}
	dir, clientURL, peerURL := t.TempDir(), testutil.FreeURL(t), testutil.FreeURL(t)
	start := func(quota int64) (*embedded.Server, *kvstore.Client) {
		s, err := embedded.Start(embedded.Config{Dir: dir, ClientURL: clientURL, PeerURL: peerURL, UnsafeNoFsync: true, QuotaBytes: quota})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		c := testutil.Connect(t, s.Endpoints())
		return s, c
	}
	noSpace := func(err error) bool {
		return errors.Is(err, rpctypes.ErrGRPCNoSpace) || strings.Contains(fmt.Sprint(err), "database space exceeded")
	}
	s, c := start(embedded.MinQuotaBytes)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Writes of 1 MiB until etcd refuses one: the database is then within
	// about 1 MiB of the quota.
	mib := []byte(strings.Repeat("x", 1<<20))
	var werr error
	wrote := 0
	for i := range 100 {
		if werr = c.Put(ctx, fmt.Sprintf("filament/big/%d", i), mib, 0); werr != nil {
			break
		}
		wrote++
	}
	if wrote < 32 || !noSpace(werr) {
		t.Fatalf("%d writes of 1 MiB under a 64 MiB quota, then: %v", wrote, werr)
	}
	t.Logf("%d writes of 1 MiB, then %v", wrote, werr)
	// etcd keeps its alarm across a restart: with the same quota (which
	// the database no longer fits with an eighth free), even a small write
	// is refused.
	s.Close()
	s, c = start(embedded.MinQuotaBytes)
	if err := c.Put(ctx, "filament/small", []byte("x"), 0); !noSpace(err) {
		t.Fatalf("a small write after a restart with the same quota: %v", err)
	}
	// With a quota the database fits, the alarm is disarmed at start.
	s.Close()
	_, c = start(256 << 20)
	if err := c.Put(ctx, "filament/small", []byte("x"), 0); err != nil {
		t.Fatalf("a small write after a restart with a larger quota: %v", err)
	}
}
