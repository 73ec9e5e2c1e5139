package kvstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Lease is an etcd lease kept alive until Close. Keys written under it
// vanish when the holder dies. A keep-alive that fails (etcd down or
// restarting) is resumed on the same lease as soon as etcd answers, so a
// short outage changes nothing. Only if etcd really lost the lease (the
// holder was cut off longer than the TTL) is a new one granted, and every
// OnRenew callback runs with its ID so owners can write their keys again.
type Lease struct {
	c   *Client
	ttl time.Duration

	mu        sync.Mutex
	id        clientv3.LeaseID
	callbacks []func(ctx context.Context, id int64)

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// GrantLease grants a lease of ttl (rounded up to whole seconds, at least 1)
// and keeps it alive in the background.
func (c *Client) GrantLease(ctx context.Context, ttl time.Duration) (*Lease, error) {
	secs := int64((ttl + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	r, err := c.c.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("kvstore: grant lease: %w", err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	l := &Lease{c: c, ttl: time.Duration(secs) * time.Second, id: r.ID, ctx: lctx, cancel: cancel, done: make(chan struct{})}
	ka, err := c.c.KeepAlive(lctx, r.ID)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("kvstore: keep lease alive: %w", err)
	}
	go l.run(ka)
	return l, nil
}

// ID is the current lease ID.
func (l *Lease) ID() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int64(l.id)
}

// TTL is the lease's time to live.
func (l *Lease) TTL() time.Duration { return l.ttl }

// OnRenew registers f to run with the new ID whenever the lease had to be
// granted again.
func (l *Lease) OnRenew(f func(ctx context.Context, id int64)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.callbacks = append(l.callbacks, f)
}

func (l *Lease) run(ka <-chan *clientv3.LeaseKeepAliveResponse) {
	defer close(l.done)
	for {
		for range ka {
		}
		if l.ctx.Err() != nil {
			return
		}
		// The keep-alive stream ended. That alone does not mean the lease
		// is gone: the client gives up on it once its TTL passes without an
		// answer, as it does while etcd is down, and etcd renews every
		// lease when it starts again. Keep the same lease while etcd still
		// has it (its keys stay where they are); grant a new one only when
		// etcd says it is gone.
		next, ok := l.recover()
		if !ok {
			return
		}
		ka = next
	}
}

// leaseRetry is the pause between two attempts to reach etcd while
// recovering the lease.
const leaseRetry = 200 * time.Millisecond

// recover resumes the keep-alive of the current lease, or of a new one when
// etcd no longer has it, retrying until etcd answers; false when the lease
// was closed meanwhile.
func (l *Lease) recover() (<-chan *clientv3.LeaseKeepAliveResponse, bool) {
	for {
		id := clientv3.LeaseID(l.ID())
		alive, err := l.exists(id)
		if err == nil && alive {
			if next, err := l.c.c.KeepAlive(l.ctx, id); err == nil {
				slog.Info("kvstore lease kept across a lost keep-alive", "lease", fmt.Sprintf("%x", id))
				return next, true
			}
		} else if err == nil {
			if next, err := l.regrant(); err == nil {
				return next, true
			}
		}
		select {
		case <-l.ctx.Done():
			return nil, false
		case <-time.After(leaseRetry):
		}
	}
}

// exists asks etcd whether lease id is still alive.
func (l *Lease) exists(id clientv3.LeaseID) (bool, error) {
	ctx, cancel := context.WithTimeout(l.ctx, 2*time.Second)
	defer cancel()
	return l.c.LeaseAlive(ctx, int64(id))
}

// LeaseAlive asks etcd whether lease id still exists.
func (c *Client) LeaseAlive(ctx context.Context, id int64) (bool, error) {
	r, err := c.c.TimeToLive(ctx, clientv3.LeaseID(id))
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("kvstore: lease %x: %w", id, err)
	}
	return r.TTL > 0, nil
}

// LeaseEnded reports whether ev deleted a key because its lease ended
// (expired or revoked) rather than by an explicit delete; false when that
// cannot be told (no previous lease, etcd not answering).
func (c *Client) LeaseEnded(ctx context.Context, ev Event) bool {
	if ev.Type != EventDelete || ev.PrevLease == 0 {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	alive, err := c.LeaseAlive(ctx, ev.PrevLease)
	return err == nil && !alive
}

// regrant grants a new lease, keeps it alive and runs every OnRenew
// callback with its ID so owners write their keys again.
func (l *Lease) regrant() (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	gctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	r, err := l.c.c.Grant(gctx, int64(l.ttl/time.Second))
	cancel()
	if err != nil {
		return nil, err
	}
	next, err := l.c.c.KeepAlive(l.ctx, r.ID)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	old := l.id
	l.id = r.ID
	cbs := append([]func(context.Context, int64){}, l.callbacks...)
	l.mu.Unlock()
	slog.Warn("kvstore lease was lost (expired in etcd); granted a new one", "old", fmt.Sprintf("%x", old), "lease", fmt.Sprintf("%x", r.ID))
	for _, f := range cbs {
		f(l.ctx, int64(r.ID))
	}
	return next, nil
}

// Close stops the keep-alive and revokes the lease, deleting its keys.
func (l *Lease) Close(ctx context.Context) error {
	l.cancel()
	<-l.done
	_, err := l.c.c.Revoke(ctx, clientv3.LeaseID(l.ID()))
	if err != nil {
		return fmt.Errorf("kvstore: revoke lease: %w", err)
	}
	return nil
}

// Abandon stops the keep-alive without revoking: the keys stay until the
// lease expires, as when a node dies.
func (l *Lease) Abandon() {
	l.cancel()
	<-l.done
}
