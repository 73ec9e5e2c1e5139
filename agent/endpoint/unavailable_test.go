package endpoint_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/ipam"
	"github.com/filament-net/filament/agent/labels"
)

// stuckIdentities is an allocator whose kvstore is gone: it waits until
// its context ends (as the etcd client does while it reconnects), or
// fails with err when that is set.
type stuckIdentities struct{ err error }

func (s stuckIdentities) Allocate(ctx context.Context, _ labels.Labels) (identity.Identity, bool, error) {
	if s.err != nil {
		return identity.Identity{}, false, s.err
	}
	<-ctx.Done()
	return identity.Identity{}, false, ctx.Err()
}
func (stuckIdentities) Release(context.Context, labels.Labels) error { return nil }

// An ADD while the kvstore is unreachable (issue 13, item 10) fails with
// ErrUnavailable naming the kvstore, within the manager's bound, and
// leaves nothing behind.
func TestCreateDuringKVStoreOutage(t *testing.T) {
	for name, ids := range map[string]stuckIdentities{
		"no answer":        {},
		"grpc unavailable": {err: status.Error(codes.Unavailable, "connection refused")},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			pool, _ := ipam.New("10.9.0.0/24")
			plumber := &fakePlumber{devices: map[string]bool{}}
			m, err := endpoint.NewManager(endpoint.Config{StateDir: dir, Pool: pool, Identities: ids, Plumber: plumber, KVStoreTimeout: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			netns := filepath.Join(dir, "netns")
			os.WriteFile(netns, nil, 0o600)
			_, err = m.Create(context.Background(), endpoint.CreateRequest{ContainerID: "c", IfName: "eth0", NetNS: netns, Labels: []string{"app=web"}})
			if !errors.Is(err, endpoint.ErrUnavailable) || !strings.Contains(err.Error(), "kvstore") {
				t.Fatalf("want ErrUnavailable naming the kvstore, got %v", err)
			}
			if pool.Used() != 0 || len(plumber.devices) != 0 || len(m.List()) != 0 {
				t.Fatalf("left behind: used=%d devices=%v", pool.Used(), plumber.devices)
			}
		})
	}
	// A request its caller gave up on is not reported as an outage.
	dir := t.TempDir()
	pool, _ := ipam.New("10.9.0.0/24")
	m, _ := endpoint.NewManager(endpoint.Config{StateDir: dir, Pool: pool, Identities: stuckIdentities{}, Plumber: &fakePlumber{devices: map[string]bool{}}})
	netns := filepath.Join(dir, "netns")
	os.WriteFile(netns, nil, 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Create(ctx, endpoint.CreateRequest{ContainerID: "c", IfName: "eth0", NetNS: netns}); errors.Is(err, endpoint.ErrUnavailable) || err == nil {
		t.Fatalf("cancelled request: %v", err)
	}
}

// stuckRelease allocates at once (an identity this node already holds
// needs no kvstore) and releases only when the kvstore answers: never.
type stuckRelease struct{}

func (stuckRelease) Allocate(_ context.Context, ls labels.Labels) (identity.Identity, bool, error) {
	return identity.Identity{ID: 1000, Labels: ls}, false, nil
}
func (stuckRelease) Release(ctx context.Context, _ labels.Labels) error {
	<-ctx.Done()
	return ctx.Err()
}

// A relabel or a delete whose identity release waits on an unreachable
// kvstore gives up within the manager's bound, though its caller's
// context has no deadline: it holds the manager's lock, which an outage
// held until the kvstore answered again (every CNI ADD and DEL stuck).
func TestReleaseDuringKVStoreOutageIsBounded(t *testing.T) {
	dir := t.TempDir()
	pool, _ := ipam.New("10.9.0.0/24")
	m, err := endpoint.NewManager(endpoint.Config{StateDir: dir, Pool: pool, Identities: stuckRelease{},
		Plumber: &fakePlumber{devices: map[string]bool{}}, KVStoreTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	netns := filepath.Join(dir, "netns")
	os.WriteFile(netns, nil, 0o600)
	ctx := context.Background()
	if _, err := m.Create(ctx, endpoint.CreateRequest{ContainerID: "c", IfName: "eth0", NetNS: netns, Namespace: "default", PodName: "web", Labels: []string{"app=web"}}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		n, err := m.SetPodLabels(ctx, "default", "web", []string{"app=db"})
		if err == nil && n != 1 {
			err = errors.New("no endpoint relabelled")
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("relabel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a relabel still waits for the kvstore to release the old identity")
	}
	go func() {
		_, err := m.DeleteByContainer(ctx, "c", "eth0")
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil || len(m.List()) != 0 {
			t.Fatalf("delete: %v, %d endpoints left", err, len(m.List()))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a delete still waits for the kvstore to release the identity")
	}
}
