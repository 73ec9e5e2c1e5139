// Package kvstore owns Filament's access to etcd: plain reads and writes,
// create-if-absent and compare transactions, prefix list+watch that resumes
// from a revision and resynchronises after compaction, leases kept alive for
// the life of a node, and the TLS client configuration for remote etcds.
package kvstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Prefix is the root of every key Filament writes.
const Prefix = "filament/"

// MaxRequestBytes is the largest request the client sends, as large as the
// embedded etcd takes (a policy import is one transaction).
const MaxRequestBytes = 64 << 20

var (
	// ErrNotFound is returned by Get for a key that does not exist.
	ErrNotFound = errors.New("kvstore: key not found")
	// ErrExists is returned by CreateIfAbsent when the key is already there.
	ErrExists = errors.New("kvstore: key already exists")
	// ErrConfig is wrapped by configuration errors.
	ErrConfig = errors.New("kvstore: invalid configuration")
)

// Config says how to reach etcd.
type Config struct {
	Endpoints   []string      `json:"endpoints" yaml:"endpoints"`
	DialTimeout time.Duration `json:"dialTimeout,omitempty" yaml:"dialTimeout,omitempty"`
	// TLS files; all empty means plain text. CAFile alone verifies the server;
	// CertFile and KeyFile together authenticate the client.
	CAFile   string `json:"caFile,omitempty" yaml:"caFile,omitempty"`
	CertFile string `json:"certFile,omitempty" yaml:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty" yaml:"keyFile,omitempty"`
	// The same material inline, in PEM (used instead of the files when set).
	CAData   string `json:"caData,omitempty" yaml:"caData,omitempty"`
	CertData string `json:"certData,omitempty" yaml:"certData,omitempty"`
	KeyData  string `json:"keyData,omitempty" yaml:"keyData,omitempty"`
	// Username and Password for etcd authentication, if enabled.
	Username string `json:"username,omitempty" yaml:"username,omitempty"`
	Password string `json:"password,omitempty" yaml:"password,omitempty"`
}

// TLSConfig builds the client TLS configuration from the files in c, or nil
// when no TLS file is set.
func (c Config) TLSConfig() (*tls.Config, error) {
	if c.CAFile == "" && c.CertFile == "" && c.KeyFile == "" && c.CAData == "" && c.CertData == "" && c.KeyData == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	caPEM := []byte(c.CAData)
	if len(caPEM) == 0 && c.CAFile != "" {
		b, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: caFile: %v", ErrConfig, err)
		}
		caPEM = b
	}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("%w: CA %s: no PEM certificate in it", ErrConfig, c.CAFile)
		}
		tc.RootCAs = pool
	}
	certPEM, keyPEM := []byte(c.CertData), []byte(c.KeyData)
	if len(certPEM) == 0 && len(keyPEM) == 0 {
		if (c.CertFile == "") != (c.KeyFile == "") {
			return nil, fmt.Errorf("%w: certFile and keyFile must be given together", ErrConfig)
		}
		if c.CertFile != "" {
			var err error
			if certPEM, err = os.ReadFile(c.CertFile); err != nil {
				return nil, fmt.Errorf("%w: certFile: %v", ErrConfig, err)
			}
			if keyPEM, err = os.ReadFile(c.KeyFile); err != nil {
				return nil, fmt.Errorf("%w: keyFile: %v", ErrConfig, err)
			}
		}
	}
	if len(certPEM) > 0 || len(keyPEM) > 0 {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("%w: client certificate and key: %v", ErrConfig, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Client is a connection to one etcd cluster.
type Client struct {
	c *clientv3.Client
}

// Connect dials etcd and checks that it answers.
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: endpoints: at least one etcd endpoint is needed", ErrConfig)
	}
	tc, err := cfg.TLSConfig()
	if err != nil {
		return nil, err
	}
	dt := cfg.DialTimeout
	if dt == 0 {
		dt = 5 * time.Second
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: dt,
		TLS:         tc,
		Username:    cfg.Username,
		Password:    cfg.Password,
		Logger:      zap.NewNop(),
		Context:     context.Background(),
		// Notice a dead connection and come back quickly (reconnect.go).
		DialKeepAliveTime:    keepAliveTime,
		DialKeepAliveTimeout: keepAliveTimeout,
		// Room for one policy import's transaction (etcd's own limit,
		// --max-request-bytes, still applies).
		MaxCallSendMsgSize: MaxRequestBytes + 1<<20,
		DialOptions:        append(reconnectOptions(), grpc.WithContextDialer(dialControl)),
	})
	if err != nil {
		return nil, fmt.Errorf("kvstore: connect %v: %w", cfg.Endpoints, err)
	}
	sctx, cancel := context.WithTimeout(ctx, dt)
	defer cancel()
	if _, err := c.Status(sctx, cfg.Endpoints[0]); err != nil {
		c.Close()
		if tc != nil {
			if why := tlsProbe(cfg.Endpoints[0], tc, dt); why != nil {
				return nil, fmt.Errorf("kvstore: etcd at %v refused the TLS connection: %w", cfg.Endpoints, why)
			}
		}
		return nil, fmt.Errorf("kvstore: etcd at %v does not answer: %w", cfg.Endpoints, err)
	}
	return &Client{c: c}, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.c.Close() }

// Raw exposes the etcd client for callers that need more than this package offers.
func (c *Client) Raw() *clientv3.Client { return c.c }

// KeyValue is one stored key with its revisions.
type KeyValue struct {
	Key            string
	Value          []byte
	CreateRevision int64
	ModRevision    int64
	Lease          int64
}

func fromKV(kv *mvccpb.KeyValue) KeyValue {
	return KeyValue{
		Key: string(kv.Key), Value: kv.Value,
		CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Lease: kv.Lease,
	}
}

// Get reads one key; ErrNotFound when it is absent.
func (c *Client) Get(ctx context.Context, key string) (KeyValue, error) {
	r, err := c.c.Get(ctx, key)
	if err != nil {
		return KeyValue{}, fmt.Errorf("kvstore: get %s: %w", key, err)
	}
	if len(r.Kvs) == 0 {
		return KeyValue{}, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return fromKV(r.Kvs[0]), nil
}

// Put writes key=value, attached to lease when lease is non-zero.
func (c *Client) Put(ctx context.Context, key string, value []byte, lease int64) error {
	var opts []clientv3.OpOption
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(lease)))
	}
	if _, err := c.c.Put(ctx, key, string(value), opts...); err != nil {
		return fmt.Errorf("kvstore: put %s: %w", key, err)
	}
	return nil
}

// Delete removes key; deleting an absent key is not an error.
func (c *Client) Delete(ctx context.Context, key string) error {
	if _, err := c.c.Delete(ctx, key); err != nil {
		return fmt.Errorf("kvstore: delete %s: %w", key, err)
	}
	return nil
}

// DeletePrefix removes every key under prefix.
func (c *Client) DeletePrefix(ctx context.Context, prefix string) error {
	if _, err := c.c.Delete(ctx, prefix, clientv3.WithPrefix()); err != nil {
		return fmt.Errorf("kvstore: delete prefix %s: %w", prefix, err)
	}
	return nil
}

// CreateIfAbsent writes key=value only if key does not exist, atomically;
// ErrExists otherwise.
func (c *Client) CreateIfAbsent(ctx context.Context, key string, value []byte, lease int64) error {
	var opts []clientv3.OpOption
	if lease != 0 {
		opts = append(opts, clientv3.WithLease(clientv3.LeaseID(lease)))
	}
	r, err := c.c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(value), opts...)).
		Commit()
	if err != nil {
		return fmt.Errorf("kvstore: create %s: %w", key, err)
	}
	if !r.Succeeded {
		return fmt.Errorf("%w: %s", ErrExists, key)
	}
	return nil
}

// Txn runs an etcd transaction and reports whether its conditions held.
func (c *Client) Txn(ctx context.Context, cmps []clientv3.Cmp, then []clientv3.Op) (bool, error) {
	r, err := c.c.Txn(ctx).If(cmps...).Then(then...).Commit()
	if err != nil {
		return false, fmt.Errorf("kvstore: txn: %w", err)
	}
	return r.Succeeded, nil
}

// List reads every key under prefix and the store revision of the read.
func (c *Client) List(ctx context.Context, prefix string) ([]KeyValue, int64, error) {
	r, err := c.c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("kvstore: list %s: %w", prefix, err)
	}
	out := make([]KeyValue, len(r.Kvs))
	for i, kv := range r.Kvs {
		out[i] = fromKV(kv)
	}
	return out, r.Header.Revision, nil
}

// ListPages reads every key under prefix, in key order, in reads of at
// most page keys all at the revision of the first (a consistent list that
// never holds more than a page; page 0: one read of them all), calling
// each for every key until it returns false; it returns that revision.
func (c *Client) ListPages(ctx context.Context, prefix string, page int64, each func(KeyValue) bool) (int64, error) {
	return c.listPages(ctx, prefix, page, func(kv KeyValue, _ int64) bool { return each(kv) })
}

// listPages is ListPages that also passes on how many keys the list holds
// in all, as the server counted them at its first page (a claim, not
// checked: a hint for sizing, never a bound).
func (c *Client) listPages(ctx context.Context, prefix string, page int64, each func(KeyValue, int64) bool) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	from, rev, total := prefix, int64(0), int64(0)
	var r rangePage
	for {
		if err := c.rangeOf(ctx, from, end, page, rev, &r); err != nil {
			return 0, fmt.Errorf("kvstore: list %s: %w", prefix, err)
		}
		if rev == 0 {
			rev, total = r.rev, max(r.count, 0)
		}
		var last string
		for i, v := range r.kvs {
			// The server's answer is checked: each key after the last and
			// inside the prefix (a server that repeated a page or wandered
			// off would make the list endless).
			if v.Key < from || i > 0 && v.Key <= last || !strings.HasPrefix(v.Key, prefix) {
				return 0, fmt.Errorf("%w: list %s: key %q out of order or outside the prefix", ErrBadList, prefix, v.Key)
			}
			if !each(v, total) {
				return rev, nil
			}
			last = v.Key
		}
		if !r.more || len(r.kvs) == 0 {
			return rev, nil
		}
		from = last + "\x00"
	}
}

// ErrBadList: a server's answer to a paged list broke the order of keys.
var ErrBadList = errors.New("kvstore: bad list")

// Compact compacts the store's history up to rev (used by tests and
// maintenance; watchers behind rev resynchronise).
func (c *Client) Compact(ctx context.Context, rev int64) error {
	_, err := c.c.Compact(ctx, rev, clientv3.WithCompactPhysical())
	if err != nil {
		return fmt.Errorf("kvstore: compact %d: %w", rev, err)
	}
	return nil
}

// tlsProbe does one TLS handshake with endpoint to find out why gRPC could
// not connect (gRPC reports only a timeout); nil when the handshake works.
func tlsProbe(endpoint string, tc *tls.Config, timeout time.Duration) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil
	}
	conf := tc.Clone()
	conf.ServerName = u.Hostname()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", u.Host, conf)
	if err != nil {
		return err
	}
	defer conn.Close()
	// TLS 1.3 reports a rejected client certificate only on the first read.
	conn.SetReadDeadline(time.Now().Add(timeout))
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		var ne net.Error
		if !(errors.As(err, &ne) && ne.Timeout()) {
			return err
		}
	}
	return nil
}
