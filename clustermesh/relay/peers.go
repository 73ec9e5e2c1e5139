// Package relay is a cluster's Hubble relay: it finds every node of the
// cluster and of the clusters connected to it through one node's Peer
// service, reads their flows over mutual TLS (the cluster's CA and the
// relay's certificate for its own nodes; a connected cluster's
// remote-reader credentials for that cluster's nodes) and serves Hubble's
// Observer API over all of them, so one `hubble observe` sees the whole
// mesh, node names cluster/node.
package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/agent/hubble/pb/peer"
	"github.com/filament-net/filament/crypto/nodeauth"
)

// ErrConfig wraps bad relay configuration.
var ErrConfig = errors.New("relay configuration")

// Credentials returns the TLS client configuration for a cluster's nodes
// (its CA as roots, a client certificate it accepts), or an error when
// the relay has none for that cluster.
type Credentials func(cluster string) (*tls.Config, error)

// Config configures a Relay.
type Config struct {
	// PeerTarget is a node's Hubble API the relay learns the nodes from:
	// unix:///path (the local agent's socket) or host:port (mutual TLS
	// with the local cluster's credentials, PeerServerName).
	PeerTarget     string
	PeerServerName string
	Cluster        string // the local cluster's name
	Credentials    Credentials
}

// A member is one node the relay reads.
type member struct {
	name       string // cluster/node
	address    string
	presented  atomic.Value     // []byte: the certificate (DER) its connection last presented
	serverName string           // what its certificate must name
	conn       *grpc.ClientConn // nil when err is set
	err        error            // why the relay cannot read it
	seen       uint64           // the discovery stream that last announced it
}

// Relay reads every node's flows and serves them merged.
type Relay struct {
	observer.UnimplementedObserverServer
	cfg Config

	mu    sync.Mutex
	peers map[string]*member
}

// New checks c and returns a relay that knows no node until Run.
func New(c Config) (*Relay, error) {
	if c.PeerTarget == "" {
		return nil, fmt.Errorf("%w: peer target: empty", ErrConfig)
	}
	if !strings.HasPrefix(c.PeerTarget, "unix://") && c.PeerServerName == "" {
		return nil, fmt.Errorf("%w: peer target %q: a TCP peer target needs its TLS server name", ErrConfig, c.PeerTarget)
	}
	if c.Cluster == "" || c.Credentials == nil {
		return nil, fmt.Errorf("%w: cluster and credentials are required", ErrConfig)
	}
	return &Relay{cfg: c, peers: map[string]*member{}}, nil
}

// Run follows the peer target's Peer service until ctx ends, reconnecting
// with backoff; nodes not announced again within staleAfter of a new
// discovery stream are dropped.
func (r *Relay) Run(ctx context.Context) {
	defer r.closeAll()
	backoff := time.Second
	for gen := uint64(1); ctx.Err() == nil; gen++ {
		start := time.Now()
		err := r.discover(ctx, gen)
		if ctx.Err() != nil {
			return
		}
		slog.Warn("relay: peer discovery interrupted; retrying", "target", r.cfg.PeerTarget, "err", err, "in", backoff)
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

const staleAfter = 5 * time.Second

// keepaliveTime is how often the relay pings a node with no traffic (the
// nodes allow it: hubble.ServeGRPC's keepalive policy).
const keepaliveTime = 30 * time.Second

// discover reads one Notify stream (generation gen).
func (r *Relay) discover(ctx context.Context, gen uint64) error {
	conn, err := r.dialPeerTarget()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := peer.NewPeerClient(conn).Notify(ctx, &peer.NotifyRequest{})
	if err != nil {
		return err
	}
	sweep := time.AfterFunc(staleAfter, func() { r.sweep(gen) })
	defer sweep.Stop()
	for {
		cn, err := stream.Recv()
		if err != nil {
			return err
		}
		r.apply(cn, gen)
	}
}

func (r *Relay) dialPeerTarget() (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials() // a unix socket: the node's own
	if !strings.HasPrefix(r.cfg.PeerTarget, "unix://") {
		conf, err := r.cfg.Credentials(r.cfg.Cluster)
		if err != nil {
			return nil, err
		}
		conf = conf.Clone()
		conf.ServerName = r.cfg.PeerServerName
		creds = credentials.NewTLS(conf)
	}
	return grpc.NewClient(r.cfg.PeerTarget, grpc.WithTransportCredentials(creds))
}

// apply adds, updates or removes the node a notification names.
func (r *Relay) apply(cn *peer.ChangeNotification, gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.peers[cn.Name]
	if cn.Type == peer.ChangeNotificationType_PEER_DELETED {
		if old != nil {
			old.close()
			delete(r.peers, cn.Name)
			slog.Info("relay: node gone", "node", cn.Name)
		}
		return
	}
	if old != nil && old.address == cn.Address && old.conn != nil {
		old.seen = gen
		return
	}
	if old != nil {
		old.close()
	}
	p := r.connect(cn.Name, cn.Address)
	p.seen = gen
	r.peers[cn.Name] = p
	slog.Info("relay: node", "node", cn.Name, "address", cn.Address, "err", p.err)
}

// connect makes the client of node name at address (lazily connected by
// gRPC, reconnecting on its own). The node is verified by the server name
// its certificate must carry, computed from its name, never taken from
// the announcement.
func (r *Relay) connect(name, address string) *member {
	p := &member{name: name, address: address}
	cluster, node, ok := strings.Cut(name, "/")
	if !ok || cluster == "" || node == "" || address == "" || strings.HasPrefix(address, "unix://") {
		p.err = fmt.Errorf("node %q at %q: want cluster/node at host:port (is the node's --hubble-listen set?)", name, address)
		return p
	}
	conf, err := r.cfg.Credentials(cluster)
	if err != nil {
		p.err = err
		return p
	}
	p.serverName = nodeauth.ServerName(cluster, node)
	conf = conf.Clone()
	// Which certificate the connection presents, noted at each handshake
	// (the relay's may change under it: redial compares).
	if get := conf.GetClientCertificate; get != nil {
		conf.GetClientCertificate = func(i *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := get(i)
			if err == nil && c != nil && len(c.Certificate) > 0 {
				p.presented.Store(c.Certificate[0])
			}
			return c, err
		}
	} else if len(conf.Certificates) > 0 && len(conf.Certificates[0].Certificate) > 0 {
		p.presented.Store(conf.Certificates[0].Certificate[0])
	}
	conf.ServerName = p.serverName
	// A node that refuses a call (PermissionDenied: the certificate this
	// connection presented is no longer served, e.g. another connect
	// issued this relay a new one) gets a connection made anew when the
	// relay's credentials for it changed since (redial).
	refused := func(err error) {
		if status.Code(err) == codes.PermissionDenied {
			r.redial(p)
		}
	}
	p.conn, p.err = grpc.NewClient(address, grpc.WithTransportCredentials(credentials.NewTLS(conf)),
		// A node's messages are bounded well below what the relay's own
		// clients take (gRPC's 4 MiB): until 2026-12-07 one hostile
		// node's flow of nearly 4 MiB, larger still once the relay
		// wrote its name in, ended every query through the relay
		// (TestRelayBoundsWhatANodeSends).
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxNodeMessage)),
		// A node gone silent (its host down) is noticed within a minute.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: 20 * time.Second}),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			err := invoker(ctx, method, req, reply, cc, opts...)
			refused(err)
			return err
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				refused(err)
				return nil, err
			}
			return refusalStream{s, refused}, nil
		}))
	return p
}

// refusalStream passes a stream's receive errors to refused.
type refusalStream struct {
	grpc.ClientStream
	refused func(error)
}

func (s refusalStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	s.refused(err)
	return err
}

// redial replaces member p, while it is still the relay's for its node,
// with one connected anew, when the relay's certificate for its cluster
// is no longer the one p's connection presented (a node refusing the
// same certificate again gets no new connection: no reconnect at every
// refused call).
func (r *Relay) redial(p *member) {
	cluster, _, _ := strings.Cut(p.name, "/")
	conf, err := r.cfg.Credentials(cluster)
	if err != nil {
		return
	}
	was, _ := p.presented.Load().([]byte)
	if now := presentable(conf); now == nil || bytes.Equal(now, was) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.peers[p.name] != p {
		return
	}
	p.close()
	n := r.connect(p.name, p.address)
	n.seen = p.seen
	r.peers[p.name] = n
	slog.Info("relay: node refused the relay's certificate; connecting again", "node", p.name, "err", n.err)
}

// presentable is the certificate (DER) a connection made with conf would
// present now (nil: none).
func presentable(conf *tls.Config) []byte {
	if conf.GetClientCertificate != nil {
		if c, err := conf.GetClientCertificate(&tls.CertificateRequestInfo{}); err == nil && c != nil && len(c.Certificate) > 0 {
			return c.Certificate[0]
		}
		return nil
	}
	if len(conf.Certificates) > 0 && len(conf.Certificates[0].Certificate) > 0 {
		return conf.Certificates[0].Certificate[0]
	}
	return nil
}

func (p *member) close() {
	if p.conn != nil {
		p.conn.Close()
	}
}

// sweep drops the nodes a discovery stream of generation gen did not
// announce (gone while the relay was not listening).
func (r *Relay) sweep(gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, p := range r.peers {
		if p.seen < gen {
			p.close()
			delete(r.peers, name)
		}
	}
}

func (r *Relay) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, p := range r.peers {
		p.close()
		delete(r.peers, name)
	}
}

// snapshot is the known nodes sorted by name.
func (r *Relay) snapshot() []*member {
	r.mu.Lock()
	defer r.mu.Unlock()
	ps := make([]*member, 0, len(r.peers))
	for _, p := range r.peers {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].name < ps[j].name })
	return ps
}
