// Package proxy owns the node's transparent L7 proxy for HTTP/1.1, HTTP/2
// (prior-knowledge h2c), gRPC, DNS and Kafka: rule matching, forwarding, records and
// metrics. The datapath steers connections that hit an L7 policy entry to
// its listener; the proxy reads the original destination from the
// transparent socket, decides each request against the L7 rules of the
// destination's ingress and the source's egress policy, and forwards the
// allowed ones on an upstream connection of the downstream connection's
// own, marked with the source's identity (UpstreamMark).
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// UpstreamMarkMagic is the top byte of the socket mark of every upstream
// connection the proxy opens. The datapath knows from it that the flow was
// proxied already (it is not steered to the proxy again) and, from the low
// 24 bits, whose it is: the original source's identity, which it keeps for
// policy and carries across nodes and clusters.
const UpstreamMarkMagic uint32 = 0xFA000000

// UpstreamMarkLocalMagic is the top byte of an upstream connection's mark
// on behalf of a source with a node-local CIDR identity (bit 24 set; the
// low 24 bits are the rest): the datapath judges the flow at the pod with
// that identity (until 2026-12-06 it was carried as world, and ingress L7
// from fromCIDR peers was dropped at the pod), and a flow leaving the node
// carries the world.
const UpstreamMarkLocalMagic uint32 = 0xFB000000

// ListenerMark is the socket mark of the proxy's listener and UDP socket
// (bpf/lib/common.h MARK_PROXY_LISTENER): the datapath hands flows only
// to a socket bound to the proxy's port that carries it, so a process
// that binds the port while the proxy is not there gets nothing (setting
// a mark takes CAP_NET_ADMIN or CAP_NET_RAW). Until 2026-12-07 any socket
// bound to the port got the pods' DNS (and NodePort L7 connections).
const ListenerMark uint32 = 0xFD000000

// ListenerMarkHeader is the header of the proxy's health answer saying
// its sockets carry ListenerMark: a proxy of an earlier version, which
// the datapath no longer hands flows to, is started again.
const ListenerMarkHeader = "Filament-Listener-Mark"

// localScopeFlag is agent/identity LocalScopeFlag.
const localScopeFlag = 1 << 24

// UpstreamMark is the socket mark of an upstream connection on behalf of a
// source with identity id; identities beyond 25 bits are carried as world.
func UpstreamMark(id uint32) uint32 {
	switch {
	case id&localScopeFlag != 0 && id < 2*localScopeFlag:
		return UpstreamMarkLocalMagic | id&0xFFFFFF
	case id > 0xFFFFFF:
		id = WorldIdentity
	}
	return UpstreamMarkMagic | id&0xFFFFFF
}

// Options configure a Proxy.
type Options struct {
	// OriginalDst returns where a downstream connection was going. The
	// default, the connection's local address, is right for a transparent
	// listener the datapath assigns connections to.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	// UpstreamMark sets SO_MARK (UpstreamMark of the source's identity)
	// on upstream sockets; it needs CAP_NET_ADMIN.
	UpstreamMark bool
	// TransparentSource gives an upstream connection to a pod the
	// client's address as its source (transparent.go); it needs
	// CAP_NET_ADMIN, and UpstreamMark and the datapath, which return the
	// replies to the proxy.
	TransparentSource bool
	// ReadHeaderTimeout bounds the time a client may take to send a
	// request's headers (slowloris); default 10 s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle that long (downstream
	// and upstream); default 5 minutes.
	IdleTimeout time.Duration
	// DialTimeout bounds the upstream connect; default 10 s.
	DialTimeout time.Duration
	// Origins, when set, gives the source identity the datapath knew for
	// a connection (else the pushed ipcache decides by address).
	Origins Origins
	// Frontends, when set, gives the backend of a NodePort connection
	// the datapath steered here untranslated: the connection is the
	// client's to that backend (policy, records, the upstream dial),
	// answered from the frontend's address (the socket's own).
	Frontends Frontends
	// IPCache, when set, gives a destination's identity as the datapath
	// knows it now (its pinned ipcache), which decides an upstream
	// connection's source before the ipcache the agent pushes, up to a
	// second older.
	IPCache Identities
	// OriginalDstUDP, when set, says where a DNS datagram from src was
	// going, and answers go out from the socket ServeDNS reads (tests;
	// else the datagram's IP_ORIGDSTADDR says, and answers leave from that
	// address).
	OriginalDstUDP func(src netip.AddrPort) netip.AddrPort
	// DNSRejectNXDomain answers denied DNS queries NXDOMAIN instead of
	// REFUSED.
	DNSRejectNXDomain bool
	// DNSHold bounds how long an allowed DNS answer waits for the agent
	// to confirm that its addresses are in the datapath; default 2 s.
	DNSHold time.Duration
	// MaxConnsPerSource bounds the connections one source (address and
	// identity) holds open through the proxy; more are closed at once and
	// counted. Default DefaultMaxConnsPerSource.
	MaxConnsPerSource int
	// MaxConns bounds the connections the proxy holds open, shared
	// fairly between sources (slotShare): when they are all held, a
	// source holding less than its share takes the oldest connection of
	// the source holding the most, else it is closed at once and
	// counted. Default DefaultMaxConns.
	MaxConns int
	// MaxStreamsPerSource bounds the HTTP/2 requests one source has in
	// flight through the proxy at once, over all its connections; more
	// are answered 503 (gRPC: UNAVAILABLE) and counted. Default
	// DefaultMaxStreamsPerSource.
	MaxStreamsPerSource int
	Logger              *slog.Logger
}

// DefaultMaxStreamsPerSource is Options.MaxStreamsPerSource's default.
// Each stream costs the proxy two goroutines and, while its request body
// is copied upstream, a buffer of up to 512 KiB (net/http's HTTP/2
// transport): with only the connections bounded, one pod could hold
// 250 streams on each of its 4,096 connections (found 2026-12-05,
// TestStreamsPerSourceBounded).
const DefaultMaxStreamsPerSource = 1024

// DefaultMaxConnsPerSource is Options.MaxConnsPerSource's default: a
// pod opening connections without end (each costs the proxy two sockets
// and a goroutine) takes its own share, not the node's proxy.
const DefaultMaxConnsPerSource = 4096

// DefaultMaxConns is Options.MaxConns's default: some 850 MiB of the
// proxy's memory at the ~53 KiB a held HTTP/1.x connection costs (a
// goroutine, buffers, the upstream's socket). Until 2026-12-07 only each
// source's connections were bounded, and a tenant's many pods, each
// within its bound, could take the node's proxy down for every tenant
// (TestConnsNodeBounded).
const DefaultMaxConns = 16384

// Proxy is the L7 proxy. Its zero value is not usable; use New.
type Proxy struct {
	opts Options
	log  *slog.Logger
	cfg  atomic.Pointer[compiled]
	// cfgMu guards newCfg, closed (and replaced) when a config is stored.
	cfgMu   sync.Mutex
	newCfg  chan struct{}
	h2      *http.Server // HTTP/1.x is served by serveH1
	rp      *httputil.ReverseProxy
	hub     hub
	metrics *metrics

	closing   atomic.Bool
	mu        sync.Mutex
	conns     map[*downConn]struct{}
	connShare *slotShare     // the conns' (MaxConns, MaxConnsPerSource)
	streams   map[source]int // HTTP/2 requests in flight by their source
	lns       []net.Listener // Serve's
	pcs       []*net.UDPConn // ServeDNS's

	learner learner
	dnsMu   sync.Mutex
	replies map[netip.AddrPort]*net.UDPConn // replySocket's
	// idle upstream UDP sockets (forwardUDP), idleUDPCount in all, the
	// last sweep of those idle too long
	idleUDP      map[udpKey][]idleUDP
	idleUDPCount int
	udpSwept     time.Time

	kafkaIDs kafkaTopicIDs // topic names of IDs, from Metadata responses
}

// New returns a proxy with an empty config: every request is denied until
// SetConfig.
func New(o Options) *Proxy {
	if o.OriginalDst == nil {
		o.OriginalDst = LocalAddr
	}
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 5 * time.Minute
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.DNSHold <= 0 {
		o.DNSHold = defaultDNSHold
	}
	if o.MaxConnsPerSource <= 0 {
		o.MaxConnsPerSource = DefaultMaxConnsPerSource
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.MaxStreamsPerSource <= 0 {
		o.MaxStreamsPerSource = DefaultMaxStreamsPerSource
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	p := &Proxy{opts: o, log: o.Logger, metrics: newMetrics(), conns: map[*downConn]struct{}{},
		connShare: newSlotShare(int64(o.MaxConns), int64(o.MaxConnsPerSource)), streams: map[source]int{}}
	p.hub = hub{subs: map[chan Record]struct{}{}, dropped: p.metrics.dropped}
	empty, _ := compile(Config{})
	p.cfg.Store(empty)
	// Connections are sniffed (sniff): HTTP/2 ones go to net/http's
	// server, HTTP/1.x ones to serveH1.
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	p.h2 = p.server(&h2)
	p.rp = &httputil.ReverseProxy{
		Rewrite:       rewrite,
		Transport:     roundTripper{},
		FlushInterval: 0, // responses of unknown length (gRPC, chunked, event streams) are still flushed per write
		ModifyResponse: func(r *http.Response) error {
			s := stateOf(r.Request)
			s.status = r.StatusCode
			if s.body != nil {
				s.body.answered()
			}
			if r.Request.Method != http.MethodConnect || r.StatusCode/100 != 2 {
				// The response's head is in: the request's is no longer
				// held. A CONNECT's stream answered 2xx is a tunnel, which
				// keeps it counted until it ends, as HTTP/1.x's (until
				// 2026-12-07 given back here, TestTunnelKeepsItsHeadCounted).
				s.headDone()
			}
			return nil
		},
		BufferPool:   copyBuffers{}, // else a new 32 KiB buffer per response
		ErrorHandler: p.upstreamError,
		ErrorLog:     slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug),
	}
	return p
}

func (p *Proxy) server(protocols *http.Protocols) *http.Server {
	h2 := h2Bounds()
	// A connection quiet for the read-header timeout is pinged, and closed
	// when the answer does not come within as long again. A client in the
	// middle of a header block may send only CONTINUATION frames (which
	// net/http reads as the block's one frame, not as frames received):
	// it cannot answer, and what it sent of the block goes with the
	// connection. Until 2026-12-07 a block left unfinished held its
	// decoded fields, up to 1 MiB, for the idle timeout, from a pod
	// allowed nothing (TestH2StalledHeaderBlockHeld).
	h2.SendPingTimeout = p.opts.ReadHeaderTimeout
	h2.PingTimeout = p.opts.ReadHeaderTimeout
	return &http.Server{
		Handler:           p,
		ReadHeaderTimeout: p.opts.ReadHeaderTimeout,
		IdleTimeout:       p.opts.IdleTimeout,
		Protocols:         protocols,
		HTTP2:             h2,
		// OPTIONS * is a request like any other: decided by the rules,
		// not answered 200 by net/http.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c.(*downConn))
		},
	}
}

// h2Bounds are the HTTP/2 settings of both sides of the proxy: frames
// of 16 KiB at most (net/http's server allocates a frame whole from its
// header and keeps the buffer with the connection: at its default of
// 1 MiB, a client's 9 bytes held a megabyte, TestH2FrameHeaderHoldsNoMegabyte),
// and 64 KiB received ahead a stream, 1 MiB a connection (the defaults,
// 4 MiB a stream for the transport and 1 MiB for the server, let a client
// that keeps its window shut have the proxy hold 4 MiB of each answer,
// TestH2ShutWindowHoldsLittleOfEachAnswer): a source's streams
// (MaxStreamsPerSource) hold 64 KiB each of bodies or answers at most.
func h2Bounds() *http.HTTP2Config {
	return &http.HTTP2Config{
		MaxReadFrameSize:              16 << 10,
		MaxReceiveBufferPerStream:     64 << 10,
		MaxReceiveBufferPerConnection: 1 << 20,
	}
}

// copyBuffers pools the reverse proxy's body copy buffers.
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (copyBuffers) Get() []byte  { return *copyBufferPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyBufferPool.Put(&b) }

// LocalAddr is the default OriginalDst: the connection's local address.
func LocalAddr(c net.Conn) (netip.AddrPort, error) {
	return addrPort(c.LocalAddr())
}

func addrPort(a net.Addr) (netip.AddrPort, error) {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return ap, fmt.Errorf("address %s: %w", a, err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// ListenTransparent listens on addr (TCP) with IP_TRANSPARENT (and
// IPV6_TRANSPARENT) set, so that the datapath may assign it connections
// to any destination; it needs CAP_NET_ADMIN.
func ListenTransparent(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(network, _ string, rc syscall.RawConn) error {
		return sockopt(rc, func(fd int) error {
			if strings.HasSuffix(network, "6") {
				if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
					return fmt.Errorf("IPV6_TRANSPARENT: %w", err)
				}
			}
			if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil && !strings.HasSuffix(network, "6") {
				return fmt.Errorf("IP_TRANSPARENT: %w", err)
			}
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(ListenerMark)); err != nil {
				return fmt.Errorf("SO_MARK: %w", err)
			}
			return nil
		})
	}}
	return lc.Listen(ctx, "tcp", addr)
}

func sockopt(rc syscall.RawConn, f func(fd int) error) error {
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// SetConfig validates cfg and, when it is valid, replaces the config in
// force for every request from now on (existing connections included).
// An invalid config changes nothing; the error names the field.
func (p *Proxy) SetConfig(cfg Config) error {
	c, err := compile(cfg)
	if err != nil {
		return err
	}
	p.store(c)
	return nil
}

// store puts c in force, wakes those waiting for a config, and closes the
// Kafka connections whose port policy changed (what a client set up on
// one, a fetch session, must not outlive the policy it was allowed by;
// the client connects again and is decided anew).
func (p *Proxy) store(c *compiled) {
	old := p.cfg.Swap(c)
	p.cfgMu.Lock()
	if p.newCfg != nil {
		close(p.newCfg)
		p.newCfg = nil
	}
	p.cfgMu.Unlock()
	if old == nil {
		return
	}
	for _, dc := range p.connections() {
		dc.mu.Lock()
		kafka := dc.kafka
		dc.mu.Unlock()
		if kafka && !slices.Equal(old.portPolicies(dc.src, dc.dst), c.portPolicies(dc.src, dc.dst)) {
			p.log.Debug("L7 proxy: Kafka connection closed: its policy changed", "src", dc.src, "dst", dc.dst)
			dc.Close()
			continue
		}
		p.endRevoked(c, dc)
	}
}

// nextConfig is closed when the next config is stored.
func (p *Proxy) nextConfig() <-chan struct{} {
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	if p.newCfg == nil {
		p.newCfg = make(chan struct{})
	}
	return p.newCfg
}

// policyWait is how long a request with no policy waits for the next
// config: the datapath may steer a flow to the proxy a moment before the
// agent pushes the policy that made it do so.
const policyWait = 2 * time.Second

// awaitPolicy waits up to policyWait for a config with a policy for dc's
// flow, and returns the config in force and the flow's policy sides.
func (p *Proxy) awaitPolicy(ctx context.Context, dc *downConn) (*compiled, []side) {
	return p.awaitSides(ctx, dc.src, dc.dst, dc.srcIdentity, "TCP")
}

// awaitSides is awaitPolicy for a flow of protocol from src to dst whose
// source has the identity srcID says under a config.
func (p *Proxy) awaitSides(ctx context.Context, src, dst netip.AddrPort, srcID func(*compiled) uint32, protocol string) (*compiled, []side) {
	deadline := time.NewTimer(policyWait)
	defer deadline.Stop()
	for {
		next := p.nextConfig()
		cfg := p.cfg.Load()
		if sides := cfg.sidesOf(src, dst, srcID(cfg), protocol); len(sides) > 0 {
			return cfg, sides
		}
		select {
		case <-next:
		case <-deadline.C:
			return cfg, nil
		case <-ctx.Done():
			return cfg, nil
		}
	}
}

// Config returns the config in force.
func (p *Proxy) Config() Config { return p.cfg.Load().cfg }

// Serve accepts connections on ln until Close (then it returns
// http.ErrServerClosed) or ln fails. Serve may be called once.
func (p *Proxy) Serve(ln net.Listener) error {
	h2 := &chanListener{addr: ln.Addr(), ch: make(chan net.Conn), done: make(chan struct{})}
	p.mu.Lock()
	p.lns = append(p.lns, ln)
	p.mu.Unlock()
	if p.closing.Load() {
		ln.Close()
	}
	go p.h2.Serve(h2)
	defer h2.Close()
	var tempDelay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if p.closing.Load() {
				return http.ErrServerClosed
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				p.log.Warn("L7 proxy: accept", "err", err, "retry in", tempDelay)
				time.Sleep(tempDelay)
				continue
			}
			return err
		}
		tempDelay = 0
		go p.accept(c, h2)
	}
}

// accept finds a connection's tuple and protocol, and serves an HTTP/1.x
// connection or hands an HTTP/2 one to the HTTP/2 server.
func (p *Proxy) accept(c net.Conn, h2 *chanListener) {
	dst, err := p.opts.OriginalDst(c)
	var src netip.AddrPort
	if err == nil {
		src, err = addrPort(c.RemoteAddr())
	}
	if err != nil {
		p.log.Warn("L7 proxy: connection dropped", "remote", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	var srcID uint32
	var hasSrcID bool
	if p.opts.Origins != nil {
		srcID, hasSrcID = p.opts.Origins.Origin(src, dst, false)
	}
	// The datapath's map is read (a system call) only for a connection
	// no policy names: a NodePort one's tuple has the frontend in it.
	if p.opts.Frontends != nil && !p.cfg.Load().hasPolicy(src, dst) {
		if b, ok := p.opts.Frontends.Backend(src, dst); ok {
			dst = b
		}
	}
	dc := &downConn{Conn: c, p: p, src: src, dst: dst, srcID: srcID, hasSrcID: hasSrcID}
	dc.who = source{src.Addr(), dc.srcIdentity(p.cfg.Load())}
	p.mu.Lock()
	closing := p.closing.Load()
	full := false
	if !closing {
		// Shed (its source held the most of a full pool): closed in a
		// goroutine of its own, as take holds the share's lock.
		dc.slot, full = p.connShare.take(dc.who, 1, func(error) { p.metrics.connsShed.Inc(); go dc.Close() }, time.Now())
		full = !full
		if !full {
			p.conns[dc] = struct{}{}
		}
	}
	p.mu.Unlock()
	if full && !closing {
		p.metrics.connsRefused.Inc()
		p.log.Debug("L7 proxy: connection refused: its source holds the most it may, or the proxy holds all it may", "src", src, "identity", dc.who.id,
			"max per source", p.opts.MaxConnsPerSource, "max", p.opts.MaxConns)
	}
	if closing || full {
		c.Close()
		return
	}
	// A DNS (Kafka) port's connections carry DNS (Kafka); the policy may
	// come a moment after the flow.
	if _, sides := p.awaitPolicy(context.Background(), dc); len(sides) > 0 {
		switch sides[0].kind {
		case KindDNS:
			p.serveDNSTCP(dc)
			return
		case KindKafka:
			p.serveKafka(dc)
			return
		}
	}
	// The server's own read-header timeout starts again after this one.
	isH2, err := dc.sniff(p.opts.ReadHeaderTimeout)
	if err != nil {
		dc.Close()
		return
	}
	if !isH2 {
		p.serveH1(dc)
		return
	}
	dc.mu.Lock()
	dc.http2 = true // the HTTP/2 server's to shut down
	dc.mu.Unlock()
	select {
	case h2.ch <- dc:
	case <-h2.done:
		dc.Close()
	}
}

// h2Preface starts every prior-knowledge HTTP/2 connection.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// sniff reads the first bytes (kept for the server) until they either are
// the HTTP/2 preface or cannot be, within timeout.
func (c *downConn) sniff(timeout time.Duration) (h2 bool, err error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, len(h2Preface))
	got := 0
	for got < len(buf) {
		n, err := c.Conn.Read(buf[got:])
		got += n
		c.prefix = buf[:got]
		if !strings.HasPrefix(h2Preface, string(buf[:got])) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
	return true, nil
}

// chanListener hands a server the connections of its protocol.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// Shutdown stops accepting, lets requests in flight finish until ctx ends,
// then closes every connection left (upgraded ones included).
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.closing.Store(true)
	p.closeListeners()
	h2 := make(chan error, 1)
	go func() { h2 <- p.h2.Shutdown(ctx) }()
	err := p.drainH1(ctx)
	err = errors.Join(err, <-h2)
	p.closeConns()
	return err
}

// drainH1 closes the connections that are not in an HTTP/1.x request
// until none is left in one, or ctx ends.
func (p *Proxy) drainH1(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		busy := false
		for _, c := range p.connections() {
			busy = c.closeIfIdle() || busy
		}
		if !busy {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Close stops accepting and closes every connection at once.
func (p *Proxy) Close() {
	p.closing.Store(true)
	p.closeListeners()
	p.h2.Close()
	p.closeConns()
}

func (p *Proxy) closeListeners() {
	p.mu.Lock()
	p.closing.Store(true) // under mu: accept registers no connection after this
	lns, pcs := p.lns, p.pcs
	p.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	for _, pc := range pcs {
		pc.Close()
	}
	p.dnsMu.Lock()
	for k, c := range p.replies {
		c.Close()
		delete(p.replies, k)
	}
	for k, cs := range p.idleUDP {
		for _, c := range cs {
			c.c.Close()
		}
		delete(p.idleUDP, k)
	}
	p.idleUDPCount = 0
	p.dnsMu.Unlock()
}

func (p *Proxy) closeConns() {
	for _, c := range p.connections() {
		c.Close()
	}
}

// connections returns the open downstream connections.
func (p *Proxy) connections() []*downConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	conns := make([]*downConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	return conns
}

// downConn is a downstream connection: its original tuple and its own
// upstream connection (HTTP/1.x) or transport (HTTP/2), never shared with
// another client.
type downConn struct {
	net.Conn
	p        *Proxy
	src, dst netip.AddrPort
	// srcID is the source's identity from the datapath, when it told.
	srcID    uint32
	hasSrcID bool
	// who is the source counted against MaxConnsPerSource: the address
	// and the datapath's identity, else the pushed ipcache's.
	who source
	// slot is its place among the proxy's connections (connShare).
	slot *slot

	prefix []byte // read by sniff, not yet by the server

	mu sync.Mutex
	// dialing ends the HTTP/1.x upstream's dial in progress when the
	// connection closes (nil: none).
	dialing context.CancelFunc
	up      *h1Upstream     // HTTP/1.x
	h2      *http.Transport // HTTP/2
	// h2Ups are the transport's upstream connections, closed with this
	// one (the transport pools a connection that a dial cancelled with
	// its request still makes, after the last CloseIdleConnections).
	h2Ups  map[*h2Upstream]struct{}
	busy   bool // in an HTTP/1.x request
	http2  bool // served by the HTTP/2 server
	kafka  bool // served as Kafka
	closed bool
	// live are the allowed HTTP requests in flight (a tunnel's upgrade
	// request until the tunnel ends), each with what ends it: judged
	// again when a config is stored (endRevoked).
	live map[*http.Request]func()
}

// holdLive notes r, an allowed request (not changed after this call),
// in flight until release; end ends it should a later config deny it.
func (c *downConn) holdLive(r *http.Request, end func()) (release func()) {
	c.mu.Lock()
	if c.live == nil {
		c.live = map[*http.Request]func(){}
	}
	c.live[r] = end
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.live, r)
		c.mu.Unlock()
	}
}

// judgedCopy is what endRevoked judges again of request r with header h:
// r's method, target, host, protocol and h, no body or trailers (the
// server goroutine writes a request's trailers as they come).
func judgedCopy(r *http.Request, h http.Header) *http.Request {
	return &http.Request{Method: r.Method, URL: r.URL, Host: r.Host, Header: h,
		Proto: r.Proto, ProtoMajor: r.ProtoMajor, ProtoMinor: r.ProtoMinor}
}

// endRevoked ends the requests in flight on dc that cfg's L7 policy for
// their flow now denies: an allow lasts as long as the policy that gave
// it, as the datapath ends an L4 flow a change denies. A flow with no L7
// policy left is the datapath's to judge (an L4 allow, or none). Until
// 2026-12-05 only Kafka connections were closed on a change, and a
// tunnel (WebSocket) or a streamed response allowed under a rule since
// removed ran on (TestRevokedPolicyEndsRequestsInFlight).
func (p *Proxy) endRevoked(cfg *compiled, dc *downConn) {
	dc.mu.Lock()
	if len(dc.live) == 0 {
		dc.mu.Unlock()
		return
	}
	type held struct {
		r   *http.Request
		end func()
	}
	live := make([]held, 0, len(dc.live))
	for r, end := range dc.live {
		live = append(live, held{r, end})
	}
	dc.mu.Unlock()
	sides := cfg.sides(dc.src, dc.dst, dc.srcIdentity(cfg))
	for _, h := range live {
		if direction, denied := deniedBy(sides, h.r); denied {
			p.log.Debug("L7 proxy: request in flight ended: the policy no longer allows it", "src", dc.src, "dst", dc.dst, "method", h.r.Method, "path", requestPath(h.r), "direction", direction)
			h.end()
		}
	}
}

// deniedBy judges again r, an allowed request's judged copy, by a flow's
// sides, and tells the direction of the first that denies it. A flow with
// no L7 policy left is the datapath's to judge (an L4 allow, or none).
func deniedBy(sides []side, r *http.Request) (direction string, denied bool) {
	if len(sides) == 0 {
		return "", false
	}
	r = r.Clone(context.Background()) // the side's actions change it
	for _, sd := range sides {
		ok, acts := sd.allow(r)
		if !ok {
			return sd.direction, true
		}
		Apply(r, acts)
	}
	return "", false
}

// srcIdentity is the identity of the connection's source: the datapath's
// word for it, else the ipcache's for its address.
func (c *downConn) srcIdentity(cfg *compiled) uint32 {
	if c.hasSrcID {
		return c.srcID
	}
	return cfg.identity(c.src.Addr())
}

func (c *downConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

func (c *downConn) Close() error {
	c.mu.Lock()
	c.closed = true
	up, h2, ups, dialing := c.up, c.h2, c.h2Ups, c.dialing
	c.h2Ups = nil
	c.mu.Unlock()
	if dialing != nil {
		dialing()
	}
	if up != nil {
		up.conn.Close() // its reader is serveH1's (dropUpstream gives it back)
	}
	if h2 != nil {
		h2.CloseIdleConnections()
	}
	for u := range ups {
		u.Conn.Close()
	}
	c.p.mu.Lock()
	if _, ok := c.p.conns[c]; ok {
		delete(c.p.conns, c)
		c.slot.give()
	}
	c.p.mu.Unlock()
	return c.Conn.Close()
}

// closeIfIdle closes a connection that is not in an HTTP/1.x request
// (between requests, or not sniffed yet) and tells whether it is in one.
// HTTP/2 connections are left to the HTTP/2 server's shutdown.
func (c *downConn) closeIfIdle() (busy bool) {
	c.mu.Lock()
	busy, http2 := c.busy, c.http2
	c.mu.Unlock()
	if !busy && !http2 {
		c.Close()
	}
	return busy
}

// transport returns the connection's upstream HTTP/2 transport, made on
// first use.
func (c *downConn) transport() (*http.Transport, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, net.ErrClosed
	}
	if c.h2 == nil {
		var protocols http.Protocols
		protocols.SetUnencryptedHTTP2(true)
		c.h2 = &http.Transport{
			DialContext:         c.dial,
			Protocols:           &protocols,
			DisableCompression:  true, // pass bodies as they are
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     c.p.opts.IdleTimeout,
			// As HTTP/1.x's (headLimit): net/http's default is 10 MiB a
			// response, for each of a connection's streams.
			MaxResponseHeaderBytes: maxHeaderBytes,
			HTTP2:                  h2Bounds(),
		}
	}
	return c.h2, nil
}

// dialUp connects to the original destination, whatever address the
// transport asks for, marked with the source's identity, from the
// source's address when transparent (upstreamSource).
func (c *downConn) dialUp(ctx context.Context) (net.Conn, error) {
	return c.p.dialUpstream(ctx, "tcp", c.src.Addr(), c.dst, c.srcIdentity(c.p.cfg.Load()))
}

// dial is the HTTP/2 transport's dialUp: its connections are kept in
// h2Ups and closed with this one.
func (c *downConn) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	conn, err := c.dialUp(ctx)
	if err != nil {
		return nil, err
	}
	u := &h2Upstream{Conn: conn, dc: c}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		// Until 2026-12-07 such a connection stayed open for the idle
		// timeout, counted nowhere (TestH2UpstreamConnsCloseWithTheClient).
		conn.Close()
		return nil, net.ErrClosed
	}
	if c.h2Ups == nil {
		c.h2Ups = map[*h2Upstream]struct{}{}
	}
	c.h2Ups[u] = struct{}{}
	return u, nil
}

// h2Upstream is an upstream connection of a client connection's HTTP/2
// transport, known to the client connection until it closes.
type h2Upstream struct {
	net.Conn
	dc *downConn
}

func (u *h2Upstream) Close() error {
	u.dc.mu.Lock()
	delete(u.dc.h2Ups, u)
	u.dc.mu.Unlock()
	return u.Conn.Close()
}

// statusClientGone is the records' status of a request whose client went
// away before its response (nginx's 499).
const statusClientGone = 499

type connKey struct{}
type stateKey struct{}

// reqState follows one HTTP/2 request through the reverse proxy.
type reqState struct {
	conn   *downConn
	status int
	failed bool // the upstream could not be reached: the proxy answered
	// hold is the request's hold of headBudget until its response's head
	// is in (headDone).
	hold *slot
	// body: an HTTP/2 stream's body, timed until the response's head is
	// in (nil for others).
	body *streamBody
}

// headDone gives back the request's hold of headBudget (once).
func (s *reqState) headDone() {
	if s.hold != nil {
		s.hold.give()
		s.hold = nil
	}
}

// grpcBodyIdle: a gRPC call's body may wait that many idle timeouts.
const grpcBodyIdle = 4

// streamBody is an HTTP/2 stream's request body, cut off when a read
// waits idle without a byte from the client (the stream's read deadline,
// set for each read and cleared after it: an upstream that stops reading
// a while cuts nothing), until the upstream has answered the head; from
// then on the stream is a live exchange and is not timed. A gRPC call's
// body waits grpcBodyIdle times as long: a server answers a client
// stream's head with its first message, which may come long after (the
// content type is the client's word, so it is bounded all the same).
// net/http's server has no per-stream timeout of its own.
type streamBody struct {
	io.ReadCloser
	rc *http.ResponseController
	mu sync.Mutex // idle: a read, the answer and the handler's end race
	// idle 0: answered, or the handler returned (the controller is no
	// longer the stream's): not timed.
	idle time.Duration
}

func (b *streamBody) Read(p []byte) (int, error) {
	b.arm(true)
	n, err := b.ReadCloser.Read(p)
	b.arm(false)
	return n, err
}

// arm sets the read deadline for a read (on) or clears it after one.
func (b *streamBody) arm(on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.idle == 0 {
		return
	}
	var d time.Time
	if on {
		d = time.Now().Add(b.idle)
	}
	b.rc.SetReadDeadline(d)
}

// answered stops timing the body (a read may be waiting: its deadline
// goes too).
func (b *streamBody) answered() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.idle != 0 {
		b.rc.SetReadDeadline(time.Time{})
		b.idle = 0
	}
}

// stop stops timing the body without touching the stream.
func (b *streamBody) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.idle = 0
}

func stateOf(r *http.Request) *reqState {
	s, _ := r.Context().Value(stateKey{}).(*reqState)
	return s
}

// roundTripper sends a request on its downstream connection's transport.
type roundTripper struct{}

func (roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	s := stateOf(r)
	t, err := s.conn.transport()
	if err != nil {
		return nil, err
	}
	// Interim (1xx) heads are bounded together, as over HTTP/1.x: with
	// the reverse proxy's hook that passes them on, the HTTP/2 transport
	// bounds none of them, and a pod's server could send them without
	// end (until 2026-12-04). Past the bound the request is cancelled
	// (a composed hook's error is not the transport's to see).
	ctx, cancel := context.WithCancelCause(r.Context())
	interim := 0
	trace := &httptrace.ClientTrace{Got1xxResponse: func(_ int, h textproto.MIMEHeader) error {
		for k, vv := range h {
			for _, v := range vv {
				interim += len(k) + len(v) + 4
			}
		}
		if interim > maxHeaderBytes {
			cancel(errInterimTooLarge)
		}
		return nil
	}}
	resp, err := t.RoundTrip(r.WithContext(httptrace.WithClientTrace(ctx, trace)))
	if err != nil {
		cancel(err)
		return nil, err
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

// errInterimTooLarge: a response's interim heads passed maxHeaderBytes.
var errInterimTooLarge = errors.New("interim response heads too large")

// cancelOnClose ends a round trip's context with its response body.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelCauseFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel(nil)
	return err
}

// rewrite sends the request to the original destination unchanged: the
// reverse proxy's removal of forwarding headers and of unparsable query
// parameters is undone; hop-by-hop headers stay removed (Upgrade is kept).
func rewrite(pr *httputil.ProxyRequest) {
	s := stateOf(pr.In)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = s.conn.dst.String()
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery
	pr.Out.Trailer = nil // request trailers are not judged (as in h1Request)
	for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v, ok := pr.In.Header[h]; ok {
			pr.Out.Header[h] = v
		}
	}
}

// ServeHTTP decides an HTTP/2 request and forwards or denies it.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	dc, _ := r.Context().Value(connKey{}).(*downConn)
	if dc == nil { // not from Serve's listener
		http.Error(w, "no connection", http.StatusInternalServerError)
		return
	}
	if err := requestTarget(r); err != nil {
		p.log.Debug("L7 proxy: bad request", "src", dc.src, "err", err)
		http.Error(w, "Bad Request", http.StatusBadRequest)
		return
	}
	if err := NormalizePath(r); err != nil {
		p.log.Debug("L7 proxy: bad request", "src", dc.src, "err", err)
		http.Error(w, "Bad Request", http.StatusBadRequest)
		return
	}
	// A host header beside :authority must say the same (RFC 9113 8.3.1):
	// :authority (r.Host) is what rules judge and what goes upstream. Until
	// 2026-12-06 a host header of another name was judged by Host rules
	// (TestHostRulesJudgeTheHostSent).
	if hv, ok := r.Header["Host"]; ok {
		if len(hv) != 1 || !strings.EqualFold(hv[0], r.Host) {
			p.log.Debug("L7 proxy: bad request: a host header other than :authority", "src", dc.src, "host", hv, "authority", r.Host)
			http.Error(w, "Bad Request", http.StatusBadRequest)
			return
		}
		delete(r.Header, "Host")
	}
	if !p.takeStream(dc.who) {
		p.metrics.streamsRefused.Inc()
		p.log.Debug("L7 proxy: request refused: its source has the most HTTP/2 requests in flight it may", "src", dc.src, "identity", dc.who.id, "max", p.opts.MaxStreamsPerSource)
		if isGRPC(r) {
			grpcError(w, 14, "too many requests in flight from this source") // UNAVAILABLE
		} else {
			http.Error(w, "Too many requests in flight", http.StatusServiceUnavailable)
		}
		return
	}
	defer p.giveStream(dc.who)
	// What is judged is held as it came, before the rules' header actions
	// (as h1Request does), not r, whose trailers the server writes as
	// they come.
	judged := judgedCopy(r, r.Header.Clone())
	recs, cfg, denied := p.judge(dc, r, start)
	if denied {
		p.finish(recs, start, p.deny(w, r, recs[len(recs)-1].Reason), Denied)
		return
	}
	// Another source may take the head over (headBudget): the stream is
	// reset, as a revoked one is, and the request recorded 503 (cutStatus).
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	hold, ok := holdHead(dc.who, r, cancel)
	if !ok {
		p.log.Debug("L7 proxy: request refused: its source holds its share of request heads", "src", dc.src, "identity", dc.who.id)
		status := http.StatusServiceUnavailable
		if isGRPC(r) {
			status = grpcError(w, 14, "too many requests in flight from this source") // UNAVAILABLE
		} else {
			http.Error(w, "Too many requests in flight", status)
		}
		p.finish(recs, start, status, Error)
		return
	}
	s := &reqState{conn: dc, hold: hold}
	defer s.headDone()
	// A later config may deny it: the stream is reset.
	defer dc.holdLive(judged, func() { cancel(nil) })()
	if p.deniedSince(cfg, dc, judged, recs) {
		p.finish(recs, start, p.deny(w, r, recs[0].Reason), Denied)
		return
	}
	out := r.WithContext(context.WithValue(ctx, stateKey{}, s))
	out.RemoteAddr = "" // the client's address is not added to X-Forwarded-For
	if r.Body != nil && r.Body != http.NoBody && p.opts.IdleTimeout > 0 {
		idle := p.opts.IdleTimeout
		if isGRPC(r) {
			idle *= grpcBodyIdle
		}
		s.body = &streamBody{ReadCloser: r.Body, rc: http.NewResponseController(w), idle: idle}
		out.Body = s.body
		defer s.body.stop() // the stream is the server's again: a late read leaves it alone
	}
	served := false
	defer func() {
		if !served {
			// ReverseProxy ends a handler whose answer's copy was cut
			// (the client or the server reset the stream, a new config
			// ended it) with a panic, going on past this: the request is
			// recorded still, as one whose client went, as HTTP/1.x's
			// is. Until 2026-12-07 it left no record and no metric
			// (TestH2CutAnswerRecorded).
			status, verdict := cutStatus(ctx)
			p.finish(recs, start, status, verdict)
		}
	}()
	p.rp.ServeHTTP(w, out)
	served = true
	status, verdict := s.status, Forwarded
	switch {
	case s.status == statusClientGone:
		status, verdict = cutStatus(ctx)
	case s.failed:
		verdict = Error
	}
	p.finish(recs, start, status, verdict)
	if s.status == statusClientGone {
		// Nothing was written: the stream is reset rather than answered
		// with an empty 200 for a request that never reached the upstream.
		panic(http.ErrAbortHandler)
	}
}

// cutStatus is the record's status and verdict of an HTTP/2 request of
// context ctx cut short: 503 when another source took its head over
// (headBudget), else that of a request whose client went.
func cutStatus(ctx context.Context) (int, string) {
	if errors.Is(context.Cause(ctx), errShed) {
		return http.StatusServiceUnavailable, Error
	}
	return statusClientGone, Forwarded
}

// takeStream counts an HTTP/2 request of source who in flight, unless
// who has MaxStreamsPerSource in flight already; giveStream ends it.
func (p *Proxy) takeStream(who source) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.streams[who] >= p.opts.MaxStreamsPerSource {
		return false
	}
	p.streams[who]++
	return true
}

func (p *Proxy) giveStream(who source) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.streams[who]--; p.streams[who] <= 0 {
		delete(p.streams, who)
	}
}

// judge decides a request against the policies of its flow's sides (the
// destination's ingress, the source's egress) and applies the header
// actions of the rules that allow it. It returns a record per side, the
// config it decided by (deniedSince) and whether the request is denied
// (the last record says why).
func (p *Proxy) judge(dc *downConn, r *http.Request, start time.Time) (recs []Record, cfg *compiled, denied bool) {
	cfg = p.cfg.Load()
	base := Record{
		Time:  start,
		SrcIP: dc.src.Addr(), SrcPort: dc.src.Port(), DstIP: dc.dst.Addr(), DstPort: dc.dst.Port(),
		SrcIdentity: dc.srcIdentity(cfg), DstIdentity: cfg.identity(dc.dst.Addr()),
		Protocol: protocolOf(r), Method: r.Method, Host: r.Host, Path: requestPath(r),
	}
	sides := cfg.sides(dc.src, dc.dst, dc.srcIdentity(cfg))
	if len(sides) == 0 {
		cfg, sides = p.awaitPolicy(r.Context(), dc)
	}
	if len(sides) == 0 {
		base.Reason = "no L7 policy"
		return []Record{base}, cfg, true
	}
	for _, sd := range sides {
		rec := base
		rec.Direction, rec.Endpoint = sd.direction, sd.endpoint
		ok, acts := sd.allow(r)
		if !ok {
			for i := range recs {
				recs[i].Reason = "denied by " + sd.direction + " policy"
			}
			rec.Reason = "no " + sd.direction + " rule matches"
			return append(recs, rec), cfg, true
		}
		rec.Notes = Apply(r, acts)
		recs = append(recs, rec)
	}
	return recs, cfg, false
}

// deniedSince tells whether a config stored since cfg, the one an allowed
// request was decided by, denies it (judged: what was decided of it, in
// flight already, holdLive), and then says so in its records. store()
// swaps the config before it judges again the requests in flight, so a
// request that joined them before this call is judged by one of the two.
// Until 2026-12-07 a config stored between the decision and holdLive
// revoked nothing, and an upgrade so decided was a tunnel no config ended
// (TestRevocationRacesTheDecision).
func (p *Proxy) deniedSince(cfg *compiled, dc *downConn, judged *http.Request, recs []Record) bool {
	now := p.cfg.Load()
	if now == cfg {
		return false
	}
	direction, denied := deniedBy(now.sides(dc.src, dc.dst, dc.srcIdentity(now)), judged)
	if denied {
		for i := range recs {
			recs[i].Reason = "denied by " + direction + " policy stored while deciding"
		}
	}
	return denied
}

// finish completes a request's records and publishes them.
func (p *Proxy) finish(recs []Record, start time.Time, status int, verdict string) {
	for _, rec := range recs {
		rec.Status, rec.Verdict, rec.Latency = status, verdict, time.Since(start)
		p.observe(rec)
	}
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

func protocolOf(r *http.Request) string {
	switch {
	case r.ProtoMajor == 2 && isGRPC(r):
		return "gRPC"
	case r.ProtoMajor == 2:
		return "HTTP/2"
	}
	return r.Proto
}

// deny answers a denied HTTP/2 request: 403, or for a gRPC call a
// trailers-only response with status PERMISSION_DENIED. It returns the
// HTTP status.
func (p *Proxy) deny(w http.ResponseWriter, r *http.Request, reason string) int {
	if isGRPC(r) {
		return grpcError(w, 7, "request denied by L7 policy: "+reason) // PERMISSION_DENIED
	}
	http.Error(w, "Access denied", http.StatusForbidden)
	return http.StatusForbidden
}

// grpcError writes a trailers-only gRPC response.
func grpcError(w http.ResponseWriter, code int, msg string) int {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", fmt.Sprint(code))
	h.Set("Grpc-Message", msg)
	w.WriteHeader(http.StatusOK)
	return http.StatusOK
}

// upstreamError answers a request the upstream did not: 502, or for gRPC
// UNAVAILABLE.
func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	s := stateOf(r)
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		s.status = statusClientGone
		return
	}
	p.log.Debug("L7 proxy: upstream failed", "dst", s.conn.dst, "err", err)
	s.failed = true
	if isGRPC(r) {
		s.status = grpcError(w, 14, "upstream unavailable") // UNAVAILABLE
		return
	}
	s.status = http.StatusBadGateway
	http.Error(w, "Upstream unreachable", http.StatusBadGateway)
}
