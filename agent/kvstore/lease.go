package kvstore

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Lease is an etcd lease kept alive until Close. Keys written under it
// vanish when the holder dies. If etcd loses the lease anyway (the holder was
// cut off longer than the TTL), a new lease is granted and every OnRenew
// callback runs with its ID so owners can write their keys again.
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
		// The keep-alive stream ended: the lease expired or etcd was
		// unreachable for too long. Grant a new one until that works.
		for {
			gctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
			r, err := l.c.c.Grant(gctx, int64(l.ttl/time.Second))
			cancel()
			if err == nil {
				next, err := l.c.c.KeepAlive(l.ctx, r.ID)
				if err == nil {
					l.mu.Lock()
					l.id = r.ID
					cbs := append([]func(context.Context, int64){}, l.callbacks...)
					l.mu.Unlock()
					slog.Warn("kvstore lease was lost; granted a new one", "lease", fmt.Sprintf("%x", r.ID))
					for _, f := range cbs {
						f(l.ctx, int64(r.ID))
					}
					ka = next
					break
				}
			}
			select {
			case <-l.ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
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
