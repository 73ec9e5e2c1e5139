// Package embedded owns the etcd server that runs inside a Filament process
// (go.etcd.io/etcd/server/v3/embed) when no external etcd is configured:
// its data directory, listen addresses and start/stop.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/filament-net/filament/crypto/ca"
	"github.com/filament-net/filament/internal/atomicfile"
)

// ErrStart is wrapped by every start failure.
var ErrStart = errors.New("embedded etcd did not start")

// Limits of one request to the embedded etcd (see kvstore.MaxRequestBytes
// for the client's side).
const (
	MaxTxnOps       = 1 << 18
	MaxRequestBytes = 64 << 20
)

// Config of an embedded etcd.
type Config struct {
	// Dir holds the etcd data (created 0700 if missing).
	Dir string
	// Name of the member; "filament" if empty.
	Name string
	// ClientURL to listen on, e.g. http://127.0.0.1:2379. Port 0 picks a free port.
	ClientURL string
	// PeerURL to listen on for raft; 127.0.0.1:2380 if empty. Port 0
	// picks a free port. It serves TLS whatever its scheme, and takes only
	// a certificate of the member's own authority (peerTLS).
	PeerURL string
	// UnsafeNoFsync trades durability for speed (tests and labs only).
	UnsafeNoFsync bool
	// StartTimeout bounds the wait for readiness (default 30 s).
	StartTimeout time.Duration
	// QuotaBytes is the most the database may hold (etcd's
	// --quota-backend-bytes; ValidateQuota). A write past it raises etcd's
	// NOSPACE alarm, which refuses every write and is kept in the database
	// across restarts; Start disarms it when the database fits the quota
	// it is given with an eighth of it free (a larger quota, or after a
	// defragmentation). 0: etcd's
	// default, 2 GiB.
	QuotaBytes int64
	// TLS for clients (ClientURL must then be https://): the server's
	// certificate and key, and the CA that client certificates must chain to
	// (mutual TLS when set).
	CertFile, KeyFile, ClientCAFile string
	// OwnClientTLS, with no certificate given: serve clients mutual TLS
	// (whatever ClientURL's scheme) with certificates of the member's own
	// authority, made at each start, whose client certificate
	// Server.ClientTLS gives: only this process (and root, who reads
	// <Dir>/tls) can then reach the store.
	OwnClientTLS bool
	// GRPCServerOptions are added to the etcd gRPC server's (interceptors:
	// grpc.ChainStreamInterceptor, grpc.ChainUnaryInterceptor).
	GRPCServerOptions []grpc.ServerOption
}

// Bounds of Config.QuotaBytes: etcd's suggested maximum, and a floor
// below which a cluster's own state would not fit.
const (
	MinQuotaBytes = 64 << 20
	MaxQuotaBytes = 8 << 30
)

// ErrQuota is wrapped by ValidateQuota's errors.
var ErrQuota = errors.New("etcd quota")

// ValidateQuota checks a database quota in bytes: 0 (etcd's default) or
// within [MinQuotaBytes, MaxQuotaBytes].
func ValidateQuota(b int64) error {
	if b != 0 && (b < MinQuotaBytes || b > MaxQuotaBytes) {
		return fmt.Errorf("%w: %d bytes: want 0 (etcd's default, 2 GiB) or 64 MiB to 8 GiB", ErrQuota, b)
	}
	return nil
}

// Server is a running embedded etcd.
type Server struct {
	e         *embed.Etcd
	endpoints []string
	close     sync.Once
	client    clientTLS
}

// clientTLS are the files of a client certificate of the member's own
// authority (Config.OwnClientTLS), and that authority's.
type clientTLS struct{ ca, cert, key string }

// ClientTLS gives the CA, certificate and key files a client presents to
// a member started with Config.OwnClientTLS (empty otherwise).
func (s *Server) ClientTLS() (caFile, certFile, keyFile string) {
	return s.client.ca, s.client.cert, s.client.key
}

// Start runs etcd and waits until it serves clients.
func Start(c Config) (*Server, error) {
	if c.Dir == "" {
		return nil, fmt.Errorf("%w: data dir is empty", ErrStart)
	}
	if err := ValidateQuota(c.QuotaBytes); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStart, err)
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: data dir: %v", ErrStart, err)
	}
	if c.Name == "" {
		c.Name = "filament"
	}
	if c.ClientURL == "" {
		c.ClientURL = "http://127.0.0.1:2379"
	}
	if c.PeerURL == "" {
		c.PeerURL = "http://127.0.0.1:2380"
	}
	cu, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("%w: client URL %q: %v", ErrStart, c.ClientURL, err)
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("%w: peer URL %q: %v", ErrStart, c.PeerURL, err)
	}
	// The member is alone, so nothing but itself may hold a certificate
	// its peer (raft) listener takes: until 2026-12-07 the peer port served
	// plain HTTP, and one unauthenticated raft append from any process
	// that reached it (the chart's apiserver has it on its node's
	// loopback, on the host network) wrote any key as etcd's root
	// (TestPeerPortRefusesStrangers).
	own, err := newOwnTLS(filepath.Join(c.Dir, "tls"))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStart, err)
	}
	pu.Scheme = "https"
	peer, err := own.tlsInfo("peer", pu.Hostname())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStart, err)
	}
	var client clientTLS
	if c.OwnClientTLS && c.CertFile == "" && c.KeyFile == "" {
		cu.Scheme = "https"
		server, err := own.tlsInfo("server", cu.Hostname())
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrStart, err)
		}
		c.CertFile, c.KeyFile, c.ClientCAFile = server.CertFile, server.KeyFile, server.TrustedCAFile
		if client.cert, client.key, err = own.issue("client", false, ""); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrStart, err)
		}
		client.ca = own.caFile()
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.Dir
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = c.Name + "=" + pu.String()
	cfg.PeerTLSInfo = peer
	cfg.UnsafeNoFsync = c.UnsafeNoFsync
	cfg.GRPCAdditionalServerOptions = c.GRPCServerOptions
	if c.CertFile != "" || c.KeyFile != "" {
		if cu.Scheme != "https" {
			return nil, fmt.Errorf("%w: client URL %q must be https:// when a certificate is given", ErrStart, c.ClientURL)
		}
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: c.CertFile, KeyFile: c.KeyFile,
			TrustedCAFile: c.ClientCAFile, ClientCertAuth: c.ClientCAFile != ""}
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.LogLevel = "error"
	// Keep history long enough for watchers to resume, compact periodically.
	cfg.AutoCompactionMode = "revision"
	cfg.AutoCompactionRetention = "10000"
	// A policy import is one transaction (all or nothing), one put per
	// policy: make room for the largest body the API takes (8 MiB of
	// documents) instead of etcd's 128 operations and 1.5 MiB.
	cfg.MaxTxnOps = MaxTxnOps
	cfg.MaxRequestBytes = MaxRequestBytes
	cfg.QuotaBackendBytes = c.QuotaBytes
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStart, err)
	}
	timeout := c.StartTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("%w: %v", ErrStart, err)
	case <-time.After(timeout):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("%w: not ready after %s", ErrStart, timeout)
	}
	clearNoSpace(e, c.QuotaBytes)
	s := &Server{e: e, client: client}
	for _, l := range e.Clients {
		s.endpoints = append(s.endpoints, cu.Scheme+"://"+dialable(l.Addr()))
	}
	return s, nil
}

// ownTLS is an authority a member makes at each start, in dir (0700;
// files 0600): certificates it signs are held by this process alone.
type ownTLS struct {
	dir  string
	auth *ca.CA
}

func newOwnTLS(dir string) (*ownTLS, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("own TLS: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("own TLS: %w", err)
	}
	auth, err := ca.New("embedded-etcd")
	if err != nil {
		return nil, fmt.Errorf("own TLS: %w", err)
	}
	o := &ownTLS{dir: dir, auth: auth}
	if err := atomicfile.Write(o.caFile(), auth.PEM, 0o600); err != nil {
		return nil, fmt.Errorf("own TLS: %w", err)
	}
	return o, nil
}

func (o *ownTLS) caFile() string { return filepath.Join(o.dir, "ca.pem") }

// issue writes name.pem and name-key.pem, a certificate of the authority
// (a server's for host, the addresses a name resolves to, and the
// loopback addresses, which Endpoints gives for any address).
func (o *ownTLS) issue(name string, server bool, host string) (certFile, keyFile string, err error) {
	var ips []net.IP
	var names []string
	if server {
		ips = append(ips, net.IPv4(127, 0, 0, 1), net.IPv6loopback)
		names = append(names, "localhost")
		if ip := net.ParseIP(host); ip != nil {
			ips = append(ips, ip)
		} else if host != "" {
			names = append(names, host)
			addrs, _ := net.LookupIP(host) // what the listener binds
			ips = append(ips, addrs...)
		}
	}
	pair, err := o.auth.Issue(name, server, ips, names)
	if err != nil {
		return "", "", fmt.Errorf("own TLS: %w", err)
	}
	certFile, keyFile = filepath.Join(o.dir, name+".pem"), filepath.Join(o.dir, name+"-key.pem")
	for _, f := range []struct {
		path string
		data []byte
	}{{certFile, pair.Cert}, {keyFile, pair.Key}} {
		if err := atomicfile.Write(f.path, f.data, 0o600); err != nil {
			return "", "", fmt.Errorf("own TLS: %w", err)
		}
	}
	return certFile, keyFile, nil
}

// tlsInfo is a listener's TLS with certificate name, taking only clients
// with a certificate of the authority.
func (o *ownTLS) tlsInfo(name, host string) (transport.TLSInfo, error) {
	cert, key, err := o.issue(name, true, host)
	if err != nil {
		return transport.TLSInfo{}, err
	}
	return transport.TLSInfo{CertFile: cert, KeyFile: key, TrustedCAFile: o.caFile(), ClientCertAuth: true}, nil
}

// dialable is a listener's address as a client dials it: an unspecified
// address (a listener on every address, IPv6's dual-stack) as 127.0.0.1,
// which the server's certificate names (a bundle's, by default, as its
// own).
func dialable(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok || !ta.IP.IsUnspecified() {
		return a.String()
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ta.Port))
}

// DefaultQuotaBytes is etcd's quota when Config.QuotaBytes is 0.
const DefaultQuotaBytes = 2 << 30

// clearNoSpace disarms a NOSPACE alarm an earlier run raised when the
// database now fits quota with an eighth of it free (etcd raises the alarm
// as soon as a write would not fit, so a database just under the same
// quota keeps it); otherwise it says in one line why writes stay refused.
func clearNoSpace(e *embed.Etcd, quota int64) {
	if quota == 0 {
		quota = DefaultQuotaBytes
	}
	for _, a := range e.Server.Alarms() {
		if a.Alarm != pb.AlarmType_NOSPACE {
			continue
		}
		size := e.Server.Backend().Size()
		if size > quota/8*7 {
			slog.Error("the embedded etcd is full: every write is refused until it restarts with a quota its database fits with an eighth free (--etcd-quota, up to 8Gi), or after its database is compacted and defragmented",
				"size", size, "quota", quota)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := e.Server.Alarm(ctx, &pb.AlarmRequest{Action: pb.AlarmRequest_DEACTIVATE, MemberID: a.MemberID, Alarm: pb.AlarmType_NOSPACE})
		cancel()
		if err != nil {
			slog.Error("the embedded etcd's database fits its quota again, but its NOSPACE alarm could not be disarmed", "size", size, "quota", quota, "err", err)
			return
		}
		slog.Warn("the embedded etcd's NOSPACE alarm is disarmed: its database fits the quota again", "size", size, "quota", quota)
	}
}

// Endpoints are the client URLs clients should dial (with the real port).
func (s *Server) Endpoints() []string { return s.endpoints }

// Close stops etcd (once; later calls do nothing).
func (s *Server) Close() {
	s.close.Do(s.e.Close)
}
