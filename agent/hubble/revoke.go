package hubble

import (
	"context"
	"crypto/x509"
	"log/slog"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// revocations checks TLS clients' certificates against the CA's
// revocation list at each call, not only at the handshake (gRPC keeps a
// connection open for many calls), and ends the calls open with a
// certificate revoked since (RecheckRevoked).
type revocations struct {
	check func(*x509.Certificate) error // nil: no list

	mu   sync.Mutex
	open map[*openCall]struct{}
}

// openCall is a call in progress with its client's certificate.
type openCall struct {
	cert    *x509.Certificate
	cancel  context.CancelFunc
	revoked bool // ended by RecheckRevoked (under revocations.mu)
}

func newRevocations(check func(*x509.Certificate) error) *revocations {
	return &revocations{check: check, open: map[*openCall]struct{}{}}
}

// clientCert is the certificate ctx's TLS client presented (nil without
// TLS: the unix socket's local clients).
func clientCert(ctx context.Context) *x509.Certificate {
	p, ok := grpcpeer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return nil
	}
	return ti.State.PeerCertificates[0]
}

// begin checks the call's client and registers the call; end (always
// called after begin succeeded) deregisters it and says whether
// RecheckRevoked ended it.
func (r *revocations) begin(ctx context.Context) (context.Context, *openCall, error) {
	cert := clientCert(ctx)
	if r == nil || r.check == nil || cert == nil {
		return ctx, nil, nil
	}
	// Registered before the check: a recheck between them (the list
	// changed) ends the call; checked before, it could miss it.
	ctx, cancel := context.WithCancel(ctx)
	c := &openCall{cert: cert, cancel: cancel}
	r.mu.Lock()
	r.open[c] = struct{}{}
	r.mu.Unlock()
	if err := r.check(cert); err != nil {
		r.end(c)
		return nil, nil, status.Errorf(codes.PermissionDenied, "client %q: %v", cert.Subject.CommonName, err)
	}
	return ctx, c, nil
}

func (r *revocations) end(c *openCall) (revoked bool) {
	if c == nil {
		return false
	}
	c.cancel()
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.open, c)
	return c.revoked
}

// recheck ends the open calls whose certificate check refuses now.
func (r *revocations) recheck() int {
	if r == nil || r.check == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for c := range r.open {
		if c.revoked {
			continue
		}
		if err := r.check(c.cert); err != nil {
			c.revoked = true
			c.cancel()
			n++
			slog.Warn("hubble API: a call of a revoked client certificate ended", "client", c.cert.Subject.CommonName, "serial", c.cert.SerialNumber, "err", err)
		}
	}
	return n
}

var errRevokedCall = status.Error(codes.PermissionDenied, "client certificate revoked")

func (r *revocations) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	ctx, c, err := r.begin(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := h(ctx, req)
	if r.end(c) {
		return nil, errRevokedCall
	}
	return resp, err
}

func (r *revocations) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	ctx, c, err := r.begin(ss.Context())
	if err != nil {
		return err
	}
	if c != nil {
		ss = &ctxStream{ServerStream: ss, ctx: ctx}
	}
	err = h(srv, ss)
	if r.end(c) {
		return errRevokedCall
	}
	return err
}

// ctxStream is a server stream with another context (one RecheckRevoked
// can cancel).
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

// RecheckRevoked checks the certificates of the TLS clients' open calls
// again (call it when the revocation list changed) and ends those of
// revoked ones with PermissionDenied. It returns how many it ended.
func (s *Server) RecheckRevoked() int { return s.revoked.recheck() }
