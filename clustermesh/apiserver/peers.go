package apiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/filament-net/filament/clustermesh"
)

// PeersInterval is how often the apiserver reads the bundle's list of
// peers (clustermesh.PeersFile).
const PeersInterval = time.Second

// streams are the open gRPC streams (watches) of connected clusters' users,
// so that a peer whose user goes loses its watches at once: etcd checks a
// watch's permission only when it is made.
type streams struct {
	mu   sync.Mutex
	next uint64
	open map[string]map[uint64]context.CancelFunc // user -> stream -> its end
}

func newStreams() *streams { return &streams{open: map[string]map[uint64]context.CancelFunc{}} }

// certUser is the common name of the verified client certificate of a
// call's connection (etcd's user for it), "" without one.
func certUser(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return ""
	}
	return ti.State.VerifiedChains[0][0].Subject.CommonName
}

// ctxStream is a server stream whose context ends when its peer's user
// goes.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }

// SendMsg sends nothing once the stream was ended: etcd's watch sends from
// a goroutine of its own, which could still send an event made after the
// end (a cluster disconnected got a change written after it was; seen
// once under load in TestRetiringSharedRemoteEndsItsOpenWatches).
func (s ctxStream) SendMsg(m any) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	return s.ServerStream.SendMsg(m)
}

// intercept follows each stream of a connected cluster's user while it is
// open (registered before etcd checks its permission, so a user deleted
// after that check still finds it).
func (s *streams) intercept(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	user := certUser(ss.Context())
	if !readerUser(user) {
		return handler(srv, ss)
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	s.mu.Lock()
	s.next++
	id := s.next
	if s.open[user] == nil {
		s.open[user] = map[uint64]context.CancelFunc{}
	}
	s.open[user][id] = cancel
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.open[user], id)
		if len(s.open[user]) == 0 {
			delete(s.open, user)
		}
		s.mu.Unlock()
	}()
	return handler(srv, ctxStream{ss, ctx})
}

// readerUser says whether etcd user u is one a connected cluster reads
// this one with: a peer's own (clustermesh.IsPeerUser) or the one shared
// by clusters connected before those (clustermesh.UserRemote).
func readerUser(u string) bool { return u == clustermesh.UserRemote || clustermesh.IsPeerUser(u) }

// end ends the open streams of user.
func (s *streams) end(user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cancel := range s.open[user] {
		cancel()
	}
}

// keep ends the open streams of every connected cluster's user not in
// users.
func (s *streams) keep(users map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for user, m := range s.open {
		if users[user] {
			continue
		}
		for _, cancel := range m {
			cancel()
		}
		slog.Info("ended the open watches of a cluster no longer connected", "user", user, "streams", len(m))
	}
}

// peerSync keeps etcd's users of connected clusters those of the peers
// file (clustermesh.PeersFile), and the shared clustermesh.UserRemote
// while shared.
type peerSync struct {
	file    string
	shared  bool
	streams *streams
}

// sync makes etcd's users of connected clusters those of the peers file:
// a new peer's user is added (read-only, the remote role), a gone peer's
// deleted (and no other user: only names a peer's could be,
// clustermesh.IsPeerUser, and the shared one when not kept), and the
// open streams of every user no longer wanted are ended, whatever else
// failed.
func (ps peerSync) sync(ctx context.Context, c *clientv3.Client) error {
	peers, err := clustermesh.ScanPeers(ps.file)
	if err != nil {
		if !ps.shared { // retired whatever the file says (setupAuth deleted the user)
			ps.streams.end(clustermesh.UserRemote)
		}
		return fmt.Errorf("connected clusters: %w", err)
	}
	want := map[string]bool{}
	if ps.shared {
		want[clustermesh.UserRemote] = true
	}
	for _, p := range peers {
		want[p.RemoteUser()] = true
	}
	have, err := c.UserList(ctx)
	if err != nil {
		return fmt.Errorf("etcd users: %w", err)
	}
	st := ps.streams
	// Before the deletes too: then no gone peer's watch sees a write its
	// reads would be refused.
	st.keep(want)
	var errs []error
	for _, u := range have.Users {
		if readerUser(u) && !want[u] {
			if _, err := c.UserDelete(ctx, u); err != nil {
				errs = append(errs, fmt.Errorf("etcd user %s: %w", u, err))
				continue
			}
			slog.Info("a cluster no longer connected lost its etcd user", "user", u)
		}
	}
	// After the deletes: a stream made before one is ended here, one made
	// after it is refused by etcd.
	st.keep(want)
	for u := range want {
		if slices.Contains(have.Users, u) || u == clustermesh.UserRemote {
			continue // the shared user is setupAuth's
		}
		if _, err := c.UserAddWithOptions(ctx, u, "", &clientv3.UserAddOptions{NoPassword: true}); ignoreExists(err) != nil {
			errs = append(errs, fmt.Errorf("etcd user %s: %w", u, err))
			continue
		}
		if _, err := c.UserGrantRole(ctx, u, clustermesh.UserRemote); err != nil {
			errs = append(errs, fmt.Errorf("etcd user %s role %s: %w", u, clustermesh.UserRemote, err))
			continue
		}
		slog.Info("a connected cluster got its etcd user", "user", u)
	}
	return errors.Join(errs...)
}

// follow runs sync every PeersInterval until ctx ends (errors logged once
// until it succeeds again; a bad peers file leaves the users as they
// were).
func (ps peerSync) follow(ctx context.Context, c *clientv3.Client) {
	t := time.NewTicker(PeersInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := ps.sync(ctx, c)
		if err != nil && !failing && ctx.Err() == nil {
			slog.Warn("following the connected clusters", "err", err)
		}
		failing = err != nil
	}
}
