package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

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
	s, err := embedded.Start(embedded.Config{Dir: t.TempDir(), ClientURL: freeURL(t), PeerURL: freeURL(t), UnsafeNoFsync: true, QuotaBytes: embedded.MinQuotaBytes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	c := testutil.Connect(t, s.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	big := []byte(strings.Repeat("x", 16<<20))
	var werr error
	wrote := 0
	for i := range 8 {
		if werr = c.Put(ctx, fmt.Sprintf("filament/big/%d", i), big, 0); werr != nil {
			break
		}
		wrote++
	}
	if wrote == 0 || !errors.Is(werr, rpctypes.ErrGRPCNoSpace) && !strings.Contains(fmt.Sprint(werr), "database space exceeded") {
		t.Fatalf("%d writes of 16 MiB under a 64 MiB quota, then: %v", wrote, werr)
	}
	t.Logf("%d writes of 16 MiB, then %v", wrote, werr)
}
