package proxy

// DNS through the proxy. The datapath steers the queries of an endpoint
// whose policy has DNS rules (toPorts[].rules.dns) on UDP or TCP to the
// proxy: UDP datagrams to the transparent UDP socket (ServeDNS), TCP
// connections to the listener, which serves them as DNS when their port's
// policy is DNS. The proxy answers a query no rule allows itself (REFUSED,
// or NXDOMAIN with Options.DNSRejectNXDomain), never drops it, and
// forwards an allowed one to the server the client asked, on an upstream
// socket marked with the client's identity (and from the client's address
// when the server is a pod, as for HTTP). An allowed answer's IPv4
// addresses are handed to the agent (Learned) and the answer is held
// until the agent says they are in the datapath, or Options.DNSHold
// passes, so that the client's first connection to them never races the
// toFQDNs policy that allows it.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/fqdn"
)

const (
	// dnsUpstreamTimeout bounds an upstream exchange (a client retries).
	dnsUpstreamTimeout = 5 * time.Second
	// maxDNSInFlight bounds the UDP queries being answered at once; more
	// are dropped and counted (the client retries).
	maxDNSInFlight = 1024
	// maxDNSInFlightPerSource bounds those of one source (address and
	// identity): a pod whose queries go to a server that never answers
	// (one it runs) holds an eighth of the node's, not all of them. When
	// they are all held, a source with less than its share takes the
	// oldest of the source holding the most, if it has waited
	// minSlotTakeover (slotShare).
	maxDNSInFlightPerSource = maxDNSInFlight / 8
	// maxReplySockets bounds the sockets the proxy answers UDP clients
	// from (one per server address the clients asked).
	maxReplySockets = 256
	// defaultDNSHold is Options.DNSHold's default.
	defaultDNSHold = 2 * time.Second
)

// ListenTransparentUDP opens the proxy's UDP socket on addr with
// IP_TRANSPARENT (the datapath assigns it datagrams for any destination)
// and IP_RECVORIGDSTADDR (each datagram's original destination comes with
// it), marked ListenerMark (the datapath hands datagrams to no other
// socket); it needs CAP_NET_ADMIN.
func ListenTransparentUDP(ctx context.Context, addr string) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return sockopt(rc, func(fd int) error {
			if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
				return fmt.Errorf("IP_TRANSPARENT: %w", err)
			}
			if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1); err != nil {
				return fmt.Errorf("IP_RECVORIGDSTADDR: %w", err)
			}
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(ListenerMark)); err != nil {
				return fmt.Errorf("SO_MARK: %w", err)
			}
			return nil
		})
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// origDst is the original destination in a datagram's control messages
// (IP_ORIGDSTADDR).
func origDst(oob []byte) (netip.AddrPort, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= 8 {
			// struct sockaddr_in: family, port (network order), address.
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port), true
		}
	}
	return netip.AddrPort{}, false
}

// ServeDNS answers the DNS queries the datapath steers to pc (from
// ListenTransparentUDP; with another socket, Options.OriginalDstUDP says
// where queries were going and answers go out from pc itself) until Close.
func (p *Proxy) ServeDNS(pc *net.UDPConn) error {
	p.mu.Lock()
	p.pcs = append(p.pcs, pc)
	closing := p.closing.Load()
	p.mu.Unlock()
	if closing {
		pc.Close()
	}
	slots := newSlotShare(maxDNSInFlight, maxDNSInFlightPerSource)
	buf := make([]byte, dns.MaxMsgSize)
	oob := make([]byte, 128)
	for {
		n, oobn, _, src, err := pc.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if p.closing.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			p.log.Warn("L7 proxy: DNS read", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		dst, ok := origDst(oob[:oobn])
		reply := p.transparentReply
		if p.opts.OriginalDstUDP != nil {
			dst, ok = p.opts.OriginalDstUDP(src), true
			reply = func(b []byte, _, to netip.AddrPort) error {
				_, err := pc.WriteToUDPAddrPort(b, to)
				return err
			}
		}
		if !ok {
			p.log.Debug("L7 proxy: DNS datagram without its original destination", "src", src)
			continue
		}
		srcID, steered := p.sourceIdentity(src, dst)
		if !steered && len(p.cfg.Load().sidesOf(src, dst, srcID, "UDP")) == 0 {
			// Sent to the proxy's port directly, with any source address
			// (UDP needs no handshake): no slot, no wait for a policy (a
			// steered flow's may come a moment after it).
			p.metrics.dnsUnsteered.Inc()
			continue
		}
		who := source{src.Addr(), srcID}
		ctx, shed := context.WithCancelCause(context.Background())
		sl, ok := slots.take(who, 1, shed, time.Now())
		if !ok {
			shed(nil)
			p.metrics.dnsShed.Inc()
			continue
		}
		msg := append([]byte(nil), buf[:n]...)
		go func() {
			defer func() { sl.give(); shed(nil) }()
			ctx, cancel := context.WithTimeout(ctx, dnsUpstreamTimeout+p.opts.DNSHold+policyWait)
			defer cancel()
			out := p.dnsExchange(ctx, src, dst, srcID, "UDP", msg, func(ctx context.Context, q []byte) ([]byte, error) {
				return p.forwardUDP(ctx, src, dst, srcID, q)
			})
			if shedded(ctx) {
				p.metrics.dnsShed.Inc() // its slot went to another source: dropped
				return
			}
			if out == nil {
				return
			}
			if err := reply(out, dst, src); err != nil {
				p.log.Debug("L7 proxy: DNS answer not sent", "src", src, "dst", dst, "err", err)
			}
		}()
	}
}

// sourceIdentity is the identity of a datagram's source, and whether the
// datapath steered it (its origin map knows it; without the map every
// datagram is taken as steered): the datapath's
// word for it, else the ipcache's for its address.
func (p *Proxy) sourceIdentity(src, dst netip.AddrPort) (id uint32, steered bool) {
	if p.opts.Origins == nil {
		return p.cfg.Load().identity(src.Addr()), true // nothing tells: taken as steered
	}
	if id, ok := p.opts.Origins.Origin(src, dst, true); ok {
		return id, true
	}
	return p.cfg.Load().identity(src.Addr()), false
}

// transparentReply sends an answer to the client from the address it
// asked (from), on a transparent socket bound to it.
func (p *Proxy) transparentReply(b []byte, from, to netip.AddrPort) error {
	c, kept, err := p.replySocket(from)
	if err != nil {
		return err
	}
	if !kept {
		defer c.Close()
	}
	_, err = c.WriteToUDPAddrPort(b, to)
	return err
}

// replySocket returns the socket bound to from (IP_TRANSPARENT,
// SO_REUSEADDR) that answers leave from, opened on first use and kept
// (at most maxReplySockets are; beyond, the caller closes it: kept false).
func (p *Proxy) replySocket(from netip.AddrPort) (c *net.UDPConn, kept bool, err error) {
	p.dnsMu.Lock()
	defer p.dnsMu.Unlock()
	if c, ok := p.replies[from]; ok {
		return c, true, nil
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return sockopt(rc, func(fd int) error {
			if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
				return fmt.Errorf("IP_TRANSPARENT: %w", err)
			}
			return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		})
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", from.String())
	if err != nil {
		return nil, false, fmt.Errorf("answer socket %s: %w", from, err)
	}
	if len(p.replies) >= maxReplySockets {
		return pc.(*net.UDPConn), false, nil
	}
	if p.replies == nil {
		p.replies = map[netip.AddrPort]*net.UDPConn{}
	}
	p.replies[from] = pc.(*net.UDPConn)
	return p.replies[from], true, nil
}

// forwardUDP sends an allowed query to the server the client asked and
// returns the server's answer (the first datagram with the query's ID).
// Its socket is one of the pool of the same source, server and mark, or
// a new one, and goes back to the pool after a whole exchange (a late
// answer to an earlier query on it has another ID and is skipped).
func (p *Proxy) forwardUDP(ctx context.Context, src, dst netip.AddrPort, srcID uint32, q []byte) ([]byte, error) {
	key := udpKey{from: p.upstreamSource(p.cfg.Load(), src.Addr(), dst.Addr()), dst: dst, id: srcID}
	conn := p.takeUDP(key)
	if conn == nil {
		var err error
		if conn, err = p.dialUpstream(ctx, "udp4", src.Addr(), dst, srcID); err != nil {
			return nil, err
		}
	}
	conn.SetDeadline(upstreamDeadline(ctx))
	// A cancelled exchange (its slot taken by another source) ends now.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	if _, err := conn.Write(q); err != nil {
		stop()
		conn.Close()
		return nil, err
	}
	bp := udpBuffers.Get().(*[]byte)
	defer udpBuffers.Put(bp)
	buf := *bp
	for {
		n, err := conn.Read(buf)
		if err != nil {
			stop()
			conn.Close()
			return nil, err
		}
		if n >= 2 && buf[0] == q[0] && buf[1] == q[1] {
			if stop() {
				p.putUDP(key, conn)
			} else {
				conn.Close() // its deadline is being moved: not for another exchange
			}
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

// udpBuffers are the upstream answers' read buffers (a datagram of any
// size fits).
var udpBuffers = sync.Pool{New: func() any { b := make([]byte, dns.MaxMsgSize); return &b }}

// udpKey is a pool of upstream UDP sockets: their source (the client's
// address when transparent, else none), server and client identity (the
// mark).
type udpKey struct {
	from netip.Addr
	dst  netip.AddrPort
	id   uint32
}

// The pool keeps, per key, as many idle sockets as a busy resolver keeps
// queries in flight (dnsperf's default is 100): with 8, measured
// 2026-12-01, most queries under load dialled and closed a socket of
// their own (a fifth of the proxy's time) and the proxy answered 26% of
// direct; with 128, 34-35%. A socket idle for maxUDPIdle is closed (the
// pool is swept at most once a second), so that a few busy or departed
// clients cannot keep the whole pool from the others.
const (
	maxIdleUDPPerKey = 128
	maxIdleUDP       = 1024
	maxUDPIdle       = 5 * time.Second
)

// idleUDP is an upstream socket in the pool, and since when.
type idleUDP struct {
	c     net.Conn
	since time.Time
}

func (p *Proxy) takeUDP(k udpKey) net.Conn {
	p.dnsMu.Lock()
	defer p.dnsMu.Unlock()
	p.sweepUDP(time.Now())
	idle := p.idleUDP[k]
	if len(idle) == 0 {
		return nil
	}
	c := idle[len(idle)-1].c
	if len(idle) == 1 {
		delete(p.idleUDP, k)
	} else {
		p.idleUDP[k] = idle[:len(idle)-1]
	}
	p.idleUDPCount--
	return c
}

func (p *Proxy) putUDP(k udpKey, c net.Conn) {
	p.dnsMu.Lock()
	defer p.dnsMu.Unlock()
	now := time.Now()
	p.sweepUDP(now)
	if p.closing.Load() || len(p.idleUDP[k]) >= maxIdleUDPPerKey || p.idleUDPCount >= maxIdleUDP {
		c.Close()
		return
	}
	if p.idleUDP == nil {
		p.idleUDP = map[udpKey][]idleUDP{}
	}
	p.idleUDP[k] = append(p.idleUDP[k], idleUDP{c, now})
	p.idleUDPCount++
}

// sweepUDP closes the pool's sockets idle for maxUDPIdle, at most once a
// second; p.dnsMu is held. Each key's sockets are in the order they came
// back (the oldest first).
func (p *Proxy) sweepUDP(now time.Time) {
	if now.Sub(p.udpSwept) < time.Second {
		return
	}
	p.udpSwept = now
	for k, idle := range p.idleUDP {
		n := 0
		for n < len(idle) && now.Sub(idle[n].since) >= maxUDPIdle {
			idle[n].c.Close()
			n++
		}
		switch {
		case n == len(idle):
			delete(p.idleUDP, k)
		case n > 0:
			p.idleUDP[k] = append(idle[:0], idle[n:]...)
		}
		p.idleUDPCount -= n
	}
}

// upstreamDeadline is the deadline of an upstream exchange: ctx's, at
// most dnsUpstreamTimeout from now.
func upstreamDeadline(ctx context.Context) time.Time {
	d := time.Now().Add(dnsUpstreamTimeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}

// serveDNSTCP serves a TCP connection whose port's policy is DNS: queries
// (two-byte length, message) one after the other, each decided and
// answered or forwarded on the connection's own upstream connection.
func (p *Proxy) serveDNSTCP(dc *downConn) {
	defer dc.Close()
	var up net.Conn
	defer func() {
		if up != nil {
			up.Close()
		}
	}()
	srcID := dc.srcIdentity(p.cfg.Load())
	for {
		// Idle between queries up to IdleTimeout; a query, once begun,
		// within ReadHeaderTimeout (slowloris).
		dc.SetReadDeadline(time.Now().Add(p.opts.IdleTimeout))
		var l [1]byte
		if _, err := io.ReadFull(dc, l[:]); err != nil {
			return
		}
		dc.SetReadDeadline(time.Now().Add(p.opts.ReadHeaderTimeout))
		q, err := readTCPMessage(io.MultiReader(bytes.NewReader(l[:]), dc), maxDNSQuery)
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), dnsUpstreamTimeout+p.opts.DNSHold+policyWait)
		out := p.dnsExchange(ctx, dc.src, dc.dst, srcID, "TCP", q, func(ctx context.Context, q []byte) ([]byte, error) {
			if up == nil {
				if up, err = p.dialUpstream(ctx, "tcp4", dc.src.Addr(), dc.dst, srcID); err != nil {
					return nil, err
				}
			}
			up.SetDeadline(upstreamDeadline(ctx))
			a, err := exchangeTCP(up, q)
			if err != nil { // the next query gets a new connection
				up.Close()
				up = nil
			}
			return a, err
		})
		cancel()
		if out == nil {
			return
		}
		dc.SetWriteDeadline(time.Now().Add(dnsUpstreamTimeout))
		if writeTCPMessage(dc, out) != nil {
			return
		}
	}
}

// exchangeTCP writes q on an upstream DNS connection and reads the
// answer with its ID.
func exchangeTCP(up net.Conn, q []byte) ([]byte, error) {
	if err := writeTCPMessage(up, q); err != nil {
		return nil, err
	}
	for {
		a, err := readTCPMessage(up, dns.MaxMsgSize)
		if err != nil || len(a) >= 2 && a[0] == q[0] && a[1] == q[1] {
			return a, err
		}
	}
}

// maxDNSQuery bounds a query a client sends over TCP: one question, its
// OPT record and padding come to a few hundred bytes. Until 2026-12-04 a
// client's length prefix of 65,535 took a buffer that size, held for the
// read-header timeout, on each of its connections.
const maxDNSQuery = 4 << 10

// errDNSTooLarge: a TCP message announced larger than its bound.
var errDNSTooLarge = errors.New("DNS message too large")

// readTCPMessage reads one length-prefixed message of at most limit bytes.
func readTCPMessage(r io.Reader, limit int) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n > limit {
		return nil, fmt.Errorf("%w: %d bytes", errDNSTooLarge, n)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
}

func writeTCPMessage(w io.Writer, b []byte) error {
	out := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(out, uint16(len(b)))
	copy(out[2:], b)
	_, err := w.Write(out)
	return err
}

// dnsExchange decides one query (raw, as the client sent it) from src to
// dst and returns the answer for the client: the proxy's own for a
// malformed or denied query or a failed upstream, else the server's,
// obtained with forward and held until its addresses are learned. Nil: no
// answer at all (not even a header to answer).
func (p *Proxy) dnsExchange(ctx context.Context, src, dst netip.AddrPort, srcID uint32, proto string, raw []byte,
	forward func(context.Context, []byte) ([]byte, error)) []byte {
	start := time.Now()
	cfg := p.cfg.Load()
	rec := Record{Time: start, SrcIP: src.Addr(), SrcPort: src.Port(), DstIP: dst.Addr(), DstPort: dst.Port(),
		SrcIdentity: srcID, DstIdentity: cfg.identity(dst.Addr()), Protocol: "DNS/" + proto}
	if len(raw) < 12 {
		return nil // not even a header to answer
	}
	// Its shape first (dnswire.go): records no query carries are never
	// parsed, nor a message larger than any query.
	if err := queryShape(raw); err != nil {
		rec.Reason = "malformed query: " + err.Error()
		return p.dnsAnswer(ctx, rec, rawError(raw, dns.RcodeFormatError), Denied)
	}
	q := new(dns.Msg)
	if err := q.Unpack(raw); err != nil {
		rec.Reason = "malformed query: " + err.Error()
		return p.dnsAnswer(ctx, rec, rawError(raw, dns.RcodeFormatError), Denied)
	}
	switch {
	case q.Response || len(q.Question) != 1:
		rec.Reason = "not one question"
		return p.dnsAnswer(ctx, rec, errorReply(q, dns.RcodeFormatError), Denied)
	case q.Opcode != dns.OpcodeQuery:
		rec.Reason = "not a query (opcode " + dns.OpcodeToString[q.Opcode] + ")"
		return p.dnsAnswer(ctx, rec, errorReply(q, dns.RcodeNotImplemented), Denied)
	}
	name := fqdn.Normalize(q.Question[0].Name)
	rec.Host, rec.Method = name, dns.TypeToString[q.Question[0].Qtype]
	if rec.Method == "" {
		rec.Method = fmt.Sprintf("TYPE%d", q.Question[0].Qtype)
	}
	sides := cfg.sidesOf(src, dst, srcID, proto)
	if len(sides) == 0 {
		cfg, sides = p.awaitSides(ctx, src, dst, func(*compiled) uint32 { return srcID }, proto)
	}
	if len(sides) == 0 {
		rec.Reason = "no L7 policy"
		return p.dnsAnswer(ctx, rec, p.rejectReply(q), Denied)
	}
	for _, sd := range sides {
		if sd.kind != KindDNS || !sd.allowDNS(name) {
			rec.Direction, rec.Endpoint = sd.direction, sd.endpoint
			rec.Reason = "no " + sd.direction + " DNS rule matches"
			return p.dnsAnswer(ctx, rec, p.rejectReply(q), Denied)
		}
	}
	rec.Direction, rec.Endpoint = sides[0].direction, sides[0].endpoint
	// The server gets what was decided on, nothing else, with an ID of the
	// proxy's (the client knows its own: an accomplice off the path
	// would have only the port to guess).
	clientID := q.Id
	packed, err := upstreamQuery(q).Pack()
	if err != nil {
		rec.Reason = "query not packed: " + err.Error()
		return p.dnsAnswer(ctx, rec, errorReply(q, dns.RcodeFormatError), Denied)
	}
	out, err := forward(ctx, packed)
	// Read on the wire (dnswire.go), never parsed whole: the answer is the
	// server's, possibly hostile, and is held while its addresses are
	// learned.
	var a dnsReply
	if err == nil {
		a, err = readAnswer(out, packed)
	}
	if err != nil {
		rec.Reason = "upstream: " + err.Error()
		return p.dnsAnswer(ctx, rec, errorReply(q, dns.RcodeServerFailure), Forwarded)
	}
	if a.rcode == dns.RcodeSuccess {
		addrs, ttl := a.addrs, a.ttl
		rec.DNSAnswers, rec.DNSTTL = addrs, ttl
		// Learned for the client only when its own egress DNS rules
		// allowed the query (sides[0], sidesOf's first): a server's
		// ingress rule alone decides nothing of what its clients may
		// reach. Until 2026-12-07 a pod answering with a DNS rule of
		// its own on its ingress (any port) taught any address to a
		// client whose toFQDNs named the question
		// (TestIngressDNSRuleTeachesTheClientNothing).
		clientAsked := sides[0].direction == Egress && sides[0].endpoint == src.Addr().Unmap()
		if len(addrs) > 0 && clientAsked && p.cfg.Load().wantsName(name) {
			held, acked := p.learner.learn(ctx, Learned{Endpoint: src.Addr(), Name: name, Addrs: addrs, TTL: ttl}, p.opts.DNSHold)
			p.metrics.dnsHold.Observe(held.Seconds())
			rec.DNSHeld = held
			if !acked {
				rec.Notes = append(rec.Notes, "released before the agent confirmed the addresses")
			}
		}
	}
	rec.DNSRcode = dns.RcodeToString[a.rcode]
	rec.Status = a.rcode
	binary.BigEndian.PutUint16(out, clientID) // the client's ID back
	return p.finishDNS(ctx, rec, out, Forwarded)
}

// upstreamQuery is what the server is asked for q: its question and query
// flags, an OPT record of the proxy's with the client's UDP size and DO
// bit, and (for IXFR) the SOA that says which version the client has, with
// an ID of the proxy's. Until 2026-12-04 the client's whole message went
// on: records in its other sections and EDNS options (client subnet,
// anything) that no rule had looked at.
func upstreamQuery(q *dns.Msg) *dns.Msg {
	fwd := &dns.Msg{MsgHdr: dns.MsgHdr{Id: dns.Id(), Opcode: dns.OpcodeQuery, RecursionDesired: q.RecursionDesired,
		CheckingDisabled: q.CheckingDisabled, AuthenticatedData: q.AuthenticatedData}, Question: q.Question}
	if q.Question[0].Qtype == dns.TypeIXFR {
		for _, rr := range q.Ns {
			if rr.Header().Rrtype == dns.TypeSOA {
				fwd.Ns = []dns.RR{rr}
				break
			}
		}
	}
	if opt := q.IsEdns0(); opt != nil {
		fwd.SetEdns0(max(opt.UDPSize(), dns.MinMsgSize), opt.Do())
	}
	return fwd
}

// shedded tells whether the query of ctx lost its slot to another source
// (slotShare): it gets no answer and no record, as a query shed on
// arrival.
func shedded(ctx context.Context) bool { return errors.Is(context.Cause(ctx), errShed) }

// dnsAnswer completes the record of an answer the proxy made itself.
func (p *Proxy) dnsAnswer(ctx context.Context, rec Record, m *dns.Msg, verdict string) []byte {
	out, err := m.Pack()
	if err != nil {
		return nil
	}
	rec.Status, rec.DNSRcode = m.Rcode, dns.RcodeToString[m.Rcode]
	return p.finishDNS(ctx, rec, out, verdict)
}

// finishDNS records the answer out and returns it, unless the query lost
// its slot meanwhile (shedded: then neither).
func (p *Proxy) finishDNS(ctx context.Context, rec Record, out []byte, verdict string) []byte {
	if shedded(ctx) {
		return nil
	}
	rec.Verdict, rec.Latency = verdict, time.Since(rec.Time)
	p.metrics.dnsQueries.WithLabelValues(verdict, rcodeLabel(rec.DNSRcode)).Inc()
	p.hub.publish(rec)
	return out
}

// rcodeLabel keeps the label set bounded.
func rcodeLabel(r string) string {
	if r == "" {
		return "other"
	}
	return r
}

// rejectReply is the answer to a denied query: REFUSED, or NXDOMAIN with
// Options.DNSRejectNXDomain.
func (p *Proxy) rejectReply(q *dns.Msg) *dns.Msg {
	if p.opts.DNSRejectNXDomain {
		return errorReply(q, dns.RcodeNameError)
	}
	return errorReply(q, dns.RcodeRefused)
}

// errorReply answers q with rcode and no records.
func errorReply(q *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.Id, m.Response, m.Opcode, m.Rcode = q.Id, true, q.Opcode, rcode
	m.RecursionDesired = q.RecursionDesired
	m.RecursionAvailable = true
	if len(q.Question) == 1 {
		m.Question = q.Question
	}
	return m
}

// rawError answers a query that does not parse, by its header's ID.
func rawError(raw []byte, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.Id, m.Response, m.Rcode = binary.BigEndian.Uint16(raw), true, rcode
	return m
}

// Learned is one allowed answer's addresses, for the agent.
type Learned struct {
	Seq      uint64       `json:"seq"`
	Endpoint netip.Addr   `json:"endpoint"` // the client that asked
	Name     string       `json:"name"`     // lower case, with the trailing dot
	Addrs    []netip.Addr `json:"addrs"`    // IPv4, the name's and its CNAME chain's
	TTL      uint32       `json:"ttl"`      // seconds, the lowest along the chain
}

// maxPendingLearned bounds the answers kept while the agent does not
// follow (it restarts) or lags behind: the oldest go first.
const maxPendingLearned = 4096

// maxGivenLearned bounds the answers handed to the follower and not yet
// acknowledged: two of the agent's batches, so it reads one while it
// applies the other; what waits beyond is in pending, given out fairly.
const maxGivenLearned = 2048

// MaxLearnBatchAddrs bounds the addresses of one batch the agent applies
// (its follower cuts a batch there, whatever its answers), and
// maxGivenLearnedAddrs those given and not acknowledged (two batches): the
// agent's work is per address, and an answer may carry a thousand, so
// until 2026-12-07 one pod's answers of a thousand addresses held another
// pod's behind two million of them, seconds past --dns-hold
// (TestLearnerFloodOfAddressesDoesNotDelayOthers).
const (
	MaxLearnBatchAddrs   = 16 << 10
	maxGivenLearnedAddrs = 2 * MaxLearnBatchAddrs
)

// learner hands learned addresses to the agent (one follower at a time)
// and tells who waits for them when the agent has applied them. At most
// maxGivenLearned are given and not acknowledged; the rest wait in
// pending and go on at the next acknowledgement (the follower is reading
// again), each endpoint's in the order learned and the endpoints' in
// turn (handOn). What a follower was
// given and did not acknowledge goes again, first, to the next one (it
// may never have been read or applied).
type learner struct {
	mu      sync.Mutex
	seq     uint64
	session uint64             // the follower's: acks of another session are not its
	sub     chan Learned       // nil: nobody follows
	pending []*learnItem       // not handed to the follower yet, oldest first
	waiting map[netip.Addr]int // pending's answers by the endpoint that asked
	sent    []*learnItem       // handed to the follower, not acknowledged, in the order given
	// sentAddrs: the addresses of sent (maxGivenLearnedAddrs).
	sentAddrs int
	wake      chan struct{} // closed (and replaced) when a waiter may be done
}

// learnItem is one answer on its way to the agent.
type learnItem struct {
	x       Learned
	acked   bool // the agent applied it
	given   bool // handed to a follower (in sent, not pending)
	dropped bool // pushed out unacknowledged (more than maxPendingLearned waited)
}

// learn hands x to the follower and waits until the agent acknowledges
// it, up to wait. Without a follower it is kept for the next one and not
// waited for: answers are not held while the agent is away.
func (l *learner) learn(ctx context.Context, x Learned, wait time.Duration) (held time.Duration, acked bool) {
	start := time.Now()
	l.mu.Lock()
	l.seq++
	x.Seq = l.seq
	it := &learnItem{x: x}
	l.pending = append(l.pending, it)
	l.count(l.pending[len(l.pending)-1:], 1)
	l.handOn()
	if l.sub == nil {
		l.mu.Unlock()
		return 0, false
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		switch {
		case it.acked:
			l.mu.Unlock()
			return time.Since(start), true
		case it.dropped || l.sub == nil:
			l.mu.Unlock()
			return time.Since(start), false
		}
		if l.wake == nil {
			l.wake = make(chan struct{})
		}
		ch := l.wake
		l.mu.Unlock()
		select {
		case <-ch:
		case <-t.C:
			return time.Since(start), false
		case <-ctx.Done():
			return time.Since(start), false
		}
		l.mu.Lock()
	}
}

// handOn gives what is pending to the follower as far as the answers
// given and not acknowledged stay within maxGivenLearned, fairly: each
// waiting endpoint's oldest first, then each one's second, and so on (of
// one rank, the oldest answers first), so a pod flooding answers while
// the agent lags delays another pod's by one answer, not by its backlog.
// More than maxPendingLearned pending pushes out the busiest endpoints'
// oldest (boundPending). l.mu is held.
func (l *learner) handOn() {
	if room := maxGivenLearned - len(l.sent); l.sub != nil && room > 0 && len(l.pending) > 0 {
		give := l.pending[:min(room, len(l.pending))]
		if len(l.waiting) > 1 {
			give = fairFirst(l.pending, len(give))
		}
		n := 0
	hand:
		for _, it := range give {
			if len(l.sent) > 0 && l.sentAddrs+len(it.x.Addrs) > maxGivenLearnedAddrs {
				break // (one answer alone always goes)
			}
			select {
			case l.sub <- it.x:
				it.given = true
				l.sent = append(l.sent, it)
				l.sentAddrs += len(it.x.Addrs)
				n++
			default: // no room: the follower acknowledged answers it has not read
				break hand
			}
		}
		l.count(give[:n], -1)
		l.pending = slices.DeleteFunc(l.pending, func(it *learnItem) bool { return it.given })
	}
	l.boundPending()
}

// fairFirst returns the first n of q (oldest first) in the order the
// follower gets them: by rank within the item's endpoint (its oldest 0,
// its next 1, ...), then by age.
func fairFirst(q []*learnItem, n int) []*learnItem {
	rank := make([]int, len(q))
	seen := map[netip.Addr]int{}
	for i, it := range q {
		rank[i] = seen[it.x.Endpoint]
		seen[it.x.Endpoint]++
	}
	idx := make([]int, len(q))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return rank[a] - rank[b] })
	out := make([]*learnItem, n)
	for i := range out {
		out[i] = q[idx[i]]
	}
	return out
}

// count adds d to the waiting count of each item's endpoint; l.mu is held.
func (l *learner) count(items []*learnItem, d int) {
	if l.waiting == nil {
		l.waiting = map[netip.Addr]int{}
	}
	for _, it := range items {
		src := it.x.Endpoint
		if l.waiting[src] += d; l.waiting[src] <= 0 {
			delete(l.waiting, src)
		}
	}
}

// boundPending pushes out what waits beyond maxPendingLearned from the
// endpoints with the most waiting, each one's oldest first, levelling the
// largest counts down (ties: the oldest answers go): a pod that floods
// answers while the agent lags loses its own, not other pods'. One pass
// over pending, whatever the excess. l.mu is held.
func (l *learner) boundPending() {
	excess := len(l.pending) - maxPendingLearned
	if excess <= 0 {
		return
	}
	over := func(level int) int { // what levelling every count down to level drops
		n := 0
		for _, c := range l.waiting {
			n += max(c-level, 0)
		}
		return n
	}
	// The highest level that drops at least excess (over(0) is them all).
	lo, hi := 0, len(l.pending)
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if over(mid) >= excess {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	// Each count down to lo+1; then, oldest first, one more from as many
	// of those at lo+1 as excess still asks for.
	extra := excess - over(lo+1)
	must := make(map[netip.Addr]int, len(l.waiting))
	for src, c := range l.waiting {
		must[src] = max(c-(lo+1), 0)
	}
	l.pending = slices.DeleteFunc(l.pending, func(it *learnItem) bool {
		src := it.x.Endpoint
		switch {
		case must[src] > 0:
			must[src]--
		case extra > 0 && must[src] == 0 && l.waiting[src] == lo+1:
			must[src] = -1 // its one more taken
			extra--
		default:
			return false
		}
		it.dropped = true
		if l.waiting[src]--; l.waiting[src] == 0 {
			delete(l.waiting, src)
		}
		return true
	})
	l.wakeAll()
}

// wakeAll wakes every waiter to look at its answer again; l.mu is held.
func (l *learner) wakeAll() {
	if l.wake != nil {
		close(l.wake)
		l.wake = nil
	}
}

// requeue puts what the follower was given and did not acknowledge back
// in front of what is pending, for the next follower; l.mu is held.
func (l *learner) requeue() {
	for _, it := range l.sent {
		it.given = false
	}
	l.count(l.sent, 1)
	l.pending = append(l.sent, l.pending...)
	l.sent, l.sentAddrs = nil, 0
}

// follow makes the caller the follower (ending the previous one's
// stream): the channel gives what the previous follower was given and did
// not acknowledge, what was kept, then each new answer. Its
// acknowledgements must name the session.
func (l *learner) follow() (_ <-chan Learned, session uint64, stop func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sub != nil {
		close(l.sub)
	}
	l.requeue()
	ch := make(chan Learned, maxGivenLearned)
	l.sub = ch
	l.session = rand.Uint64()
	l.handOn()
	return ch, l.session, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.sub == ch {
			close(ch)
			l.sub = nil
			l.requeue()
			l.handOn()
			l.wakeAll() // answers are not held while nobody follows
		}
	}
}

// ack records that the follower of session applied every answer it was
// given up to and including the one numbered seq (the last of its batch;
// answers are given in the order handOn chose, not by number). An ack of
// another session, of an answer not given, or with the follower gone
// changes nothing.
func (l *learner) ack(session, seq uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if session != l.session || l.sub == nil {
		return
	}
	n := slices.IndexFunc(l.sent, func(it *learnItem) bool { return it.x.Seq == seq }) + 1
	for _, it := range l.sent[:n] {
		it.acked = true
		l.sentAddrs -= len(it.x.Addrs)
	}
	clear(l.sent[:n])
	l.sent = l.sent[n:]
	l.handOn() // the follower is reading: what waited goes on
	l.wakeAll()
}
