package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/filament-net/filament/agent/fqdn"
	"github.com/miekg/dns"
)

// dnsHarness is a proxy whose UDP socket and TCP listener are on
// 127.0.0.1, every query "going" to a DNS server on serverIP that answers
// *.allowed.test and *.other.test with 192.0.2.x (x from the name's
// length), a CNAME for alias.allowed.test, and NXDOMAIN for the rest.
type dnsHarness struct {
	t       *testing.T
	p       *Proxy
	udp     string // the proxy's UDP socket
	tcp     string // the proxy's TCP listener
	server  netip.AddrPort
	queries chan string // what the server was asked
	// last is the last query the server got, whole.
	last atomic.Pointer[dns.Msg]
	// stalled counts the queries for stall*. names the server holds
	// unanswered until the test ends.
	stalled atomic.Int64
}

func newDNSHarness(t *testing.T, o Options) *dnsHarness {
	t.Helper()
	h := &dnsHarness{t: t, queries: make(chan string, 100)}
	stall := make(chan struct{})
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		name := q.Question[0].Name
		h.last.Store(q.Copy())
		if strings.HasPrefix(name, "stall") {
			h.stalled.Add(1)
			<-stall
			return
		}
		select {
		case h.queries <- name:
		default:
		}
		a := new(dns.Msg)
		a.SetReply(q)
		switch {
		case name == "alias.allowed.test.":
			a.Answer = append(a.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 30}, Target: "real.other.test."},
				&dns.A{Hdr: dns.RR_Header{Name: "real.other.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 99)},
				&dns.A{Hdr: dns.RR_Header{Name: "unrelated.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 98)})
		case dns.IsSubDomain("allowed.test.", name) || dns.IsSubDomain("other.test.", name):
			a.Answer = append(a.Answer, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 120}, A: net.IPv4(192, 0, 2, byte(len(name)))})
		default:
			a.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(a)
	})
	pc, err := net.ListenPacket("udp4", netip.AddrPortFrom(serverIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	h.server = netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.(*net.UDPConn).SetReadBuffer(4 << 20)         // floods of queries are not lost before they are read
	ln, err := net.Listen("tcp4", h.server.String()) // the same port over TCP
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}} {
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
	t.Cleanup(func() { close(stall) }) // before the servers' shutdown
	o.OriginalDstUDP = func(netip.AddrPort) netip.AddrPort { return h.server }
	o.OriginalDst = func(net.Conn) (netip.AddrPort, error) { return h.server, nil }
	h.p = New(o)
	upc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	tln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upc.SetReadBuffer(4 << 20)
	h.udp, h.tcp = upc.LocalAddr().String(), tln.Addr().String()
	done := make(chan error, 2)
	go func() { done <- h.p.ServeDNS(upc) }()
	go func() { done <- h.p.Serve(tln) }()
	t.Cleanup(func() {
		h.p.Close()
		for range 2 {
			if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("serve: %v", err)
			}
		}
	})
	// The client's egress policy: lookups of *.allowed.test only.
	rules := []PeerRules{{DNS: []DNSRule{{MatchPattern: "*.allowed.test"}}}}
	if err := h.p.SetConfig(Config{Revision: 1, IPCache: ipcache, FQDNs: []DNSRule{{MatchPattern: "*.allowed.test"}}, Policies: []PortPolicy{
		{Endpoint: clientIP, Direction: Egress, Port: h.server.Port(), Protocol: "UDP", Kind: KindDNS, Rules: rules},
		{Endpoint: clientIP, Direction: Egress, Port: h.server.Port(), Protocol: "TCP", Kind: KindDNS, Rules: rules},
	}}); err != nil {
		t.Fatal(err)
	}
	return h
}

// ask sends one query for name from the client's address over net
// ("udp" or "tcp") to the proxy.
func (h *dnsHarness) ask(network, name string) *dns.Msg {
	h.t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	addr := h.udp
	if network == "tcp" {
		addr = h.tcp
		c.Dialer = &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0))}
	} else {
		c.Dialer = &net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0))}
	}
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	a, _, err := c.Exchange(q, addr)
	if err != nil {
		h.t.Fatalf("%s query for %s: %v", network, name, err)
	}
	if a.Id != q.Id {
		h.t.Fatalf("answer ID %d, query ID %d", a.Id, q.Id)
	}
	return a
}

// An allowed query is answered by the server; a denied one REFUSED by the
// proxy (the server never sees it); over UDP and TCP alike; the allowed
// answer's addresses (with its CNAME chain's, not the unrelated ones) are
// handed to a follower, which acknowledges them.
func TestDNSAllowDenyAndLearn(t *testing.T) {
	h := newDNSHarness(t, Options{})
	learned, session, stop := h.p.learner.follow()
	defer stop()
	go func() {
		for x := range learned {
			h.p.learner.ack(session, x.Seq)
		}
	}()
	for _, network := range []string{"udp", "tcp"} {
		a := h.ask(network, "www.Allowed.test.")
		if a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 {
			t.Fatalf("%s: allowed query answered %s with %v", network, dns.RcodeToString[a.Rcode], a.Answer)
		}
		if got := <-h.queries; got != "www.Allowed.test." { // as asked (0x20 case randomisation survives)
			t.Errorf("%s: the server was asked %q", network, got)
		}
		a = h.ask(network, "evil.other.test.")
		if a.Rcode != dns.RcodeRefused || len(a.Answer) != 0 {
			t.Fatalf("%s: denied query answered %s with %v, want REFUSED and nothing", network, dns.RcodeToString[a.Rcode], a.Answer)
		}
		select {
		case got := <-h.queries:
			t.Errorf("%s: the server saw the denied query (%q)", network, got)
		default:
		}
		a = h.ask(network, "nothing.allowed.test.nope.")
		if a.Rcode != dns.RcodeRefused {
			t.Errorf("%s: a name outside the pattern answered %s", network, dns.RcodeToString[a.Rcode])
		}
	}
	// The CNAME chain's addresses count, unrelated records do not.
	sub, cancel := h.p.Subscribe()
	defer cancel()
	a := h.ask("udp", "alias.allowed.test.")
	if a.Rcode != dns.RcodeSuccess {
		t.Fatalf("alias: %s", dns.RcodeToString[a.Rcode])
	}
	rec := <-sub
	if want := []netip.Addr{netip.MustParseAddr("192.0.2.99")}; !slices.Equal(rec.DNSAnswers, want) || rec.DNSTTL != 30 {
		t.Errorf("record answers %v TTL %d, want %v and 30 (the chain's lowest)", rec.DNSAnswers, rec.DNSTTL, want)
	}
	if rec.Verdict != Forwarded || rec.Host != "alias.allowed.test." || rec.Method != "A" || rec.DNSRcode != "NOERROR" {
		t.Errorf("record %+v", rec)
	}
}

// The attack: a pod floods the node's proxy with allowed queries to a
// server that never answers (one it runs). Each holds one of the UDP
// slots shared by every pod of the node until the upstream timeout; the
// pod must not get them all: another source's query is still answered.
func TestDNSOneSourceCannotTakeEverySlot(t *testing.T) {
	h := newDNSHarness(t, Options{})
	victim := netip.MustParseAddr("127.0.0.3")
	cfg := h.p.Config()
	cfg.Revision++
	for _, pp := range slices.Clone(cfg.Policies) {
		pp.Endpoint = victim
		cfg.Policies = append(cfg.Policies, pp)
	}
	if err := h.p.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	h.flood(clientIP)
	t.Logf("%d of the flood's queries at the server, %v shed", h.stalled.Load(), h.shed())
	// Another pod of the node, with the same DNS rules.
	h.answeredFrom(victim, "while one source floods")
}

// shed is the proxy's count of dropped queries.
func (h *dnsHarness) shed() float64 {
	var m dto.Metric
	h.p.metrics.dnsShed.Write(&m)
	return m.GetCounter().GetValue()
}

// flood sends, from addr, queries the server never answers until the
// proxy sheds one: addr then holds what it may.
func (h *dnsHarness) flood(addr netip.Addr) {
	h.t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.Close()
	to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(h.udp))
	shed := h.shed()
	sent := 0
	for ; sent < 4*maxDNSInFlight && h.shed() == shed; sent++ {
		q := new(dns.Msg)
		q.SetQuestion(fmt.Sprintf("stall%d-%s.allowed.test.", sent, strings.ReplaceAll(addr.String(), ".", "-")), dns.TypeA)
		b, _ := q.Pack()
		if _, err := c.WriteToUDP(b, to); err != nil {
			h.t.Fatal(err)
		}
		if sent%32 == 31 { // let the proxy read them
			time.Sleep(2 * time.Millisecond)
		}
	}
	if h.shed() == shed {
		h.t.Fatalf("a flood of %d queries from %s shed none (%d at the server)", sent, addr, h.stalled.Load())
	}
	// The queries sent after the first shed are shed too, as the proxy
	// reads them: wait until it has, so that a flood from another address
	// after this one does not take them for its own.
	for last := h.shed(); ; {
		time.Sleep(50 * time.Millisecond)
		if now := h.shed(); now == last {
			break
		} else {
			last = now
		}
	}
}

// answeredFrom checks that an allowed query from addr, during what
// happens, is answered.
func (h *dnsHarness) answeredFrom(addr netip.Addr, during string) {
	h.t.Helper()
	other := &dns.Client{Net: "udp", Timeout: 2 * time.Second,
		Dialer: &net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0))}}
	q := new(dns.Msg)
	q.SetQuestion("www.allowed.test.", dns.TypeA)
	a, _, err := other.Exchange(q, h.udp)
	if err != nil {
		h.t.Fatalf("another source's query %s: %v (the flood holds every slot)", during, err)
	}
	if a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 {
		h.t.Errorf("another source's allowed query: %s %v", dns.RcodeToString[a.Rcode], a.Answer)
	}
}

// The attack of TestDNSOneSourceCannotTakeEverySlot by several pods at
// once: eight sources, each within its own bound, hold every UDP slot of
// the node with queries a server never answers. A ninth source's query
// is still answered: it takes the oldest slot of the source holding the
// most, whose query is dropped.
func TestDNSSourcesShareTheSlots(t *testing.T) {
	h := newDNSHarness(t, Options{})
	victim := netip.MustParseAddr("127.0.0.3")
	var flooders []netip.Addr
	for i := range maxDNSInFlight / maxDNSInFlightPerSource {
		flooders = append(flooders, netip.AddrFrom4([4]byte{127, 0, 0, byte(10 + i)}))
	}
	cfg := h.p.Config()
	cfg.Revision++
	for _, pp := range slices.Clone(cfg.Policies) {
		for _, a := range append([]netip.Addr{victim}, flooders...) {
			pp.Endpoint = a
			cfg.Policies = append(cfg.Policies, pp)
		}
	}
	if err := h.p.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, a := range flooders {
		h.flood(a) // each then holds its bound: together, every slot
	}
	// Every slot held: the server has as many stalled queries.
	for h.stalled.Load() < maxDNSInFlight && time.Since(start) < dnsUpstreamTimeout/2 {
		time.Sleep(10 * time.Millisecond)
	}
	if n := h.stalled.Load(); n < maxDNSInFlight || time.Since(start) > dnsUpstreamTimeout/2 {
		t.Skipf("machine too busy: after %v the flood holds %d of the %d slots (its first queries time out at %v)", time.Since(start), n, maxDNSInFlight, dnsUpstreamTimeout)
	}
	// The flood's slots may be taken once held for minSlotTakeover (before
	// the upstream timeout frees them).
	time.Sleep(time.Until(start.Add(minSlotTakeover + 100*time.Millisecond)))
	shed := h.shed()
	h.answeredFrom(victim, "while eight sources flood")
	// The query whose slot was taken is dropped, not answered nor
	// recorded as one.
	deadline := time.Now().Add(2 * time.Second)
	for h.shed() == shed && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if h.shed() == shed {
		t.Error("no query was counted as shed when the victim's took its slot")
	}
	var servfail dto.Metric
	h.p.metrics.dnsQueries.WithLabelValues(Forwarded, "SERVFAIL").Write(&servfail)
	if n := servfail.GetCounter().GetValue(); n != 0 {
		t.Errorf("%v queries recorded as answered SERVFAIL: the one whose slot was taken must not be", n)
	}
}

// Answers are held until the follower acknowledges their addresses, and
// the follower gets each allowed answer's addresses with the endpoint
// that asked.
func TestDNSAnswerHeldUntilLearned(t *testing.T) {
	h := newDNSHarness(t, Options{DNSHold: 10 * time.Second})
	learned, session, stop := h.p.learner.follow()
	defer stop()
	answered := make(chan *dns.Msg, 1)
	go func() { answered <- h.ask("udp", "held.allowed.test.") }()
	var x Learned
	select {
	case x = <-learned:
	case <-time.After(5 * time.Second):
		t.Fatal("nothing learned")
	}
	if x.Endpoint != clientIP || x.Name != "held.allowed.test." || len(x.Addrs) != 1 || x.TTL != 120 {
		t.Errorf("learned %+v", x)
	}
	select {
	case <-answered:
		t.Fatal("the answer was released before the addresses were acknowledged")
	case <-time.After(300 * time.Millisecond):
	}
	h.p.learner.ack(session+1, x.Seq) // another session's ack (an old agent's) releases nothing
	select {
	case <-answered:
		t.Fatal("an acknowledgement of another session released the answer")
	case <-time.After(300 * time.Millisecond):
	}
	h.p.learner.ack(session, x.Seq)
	select {
	case a := <-answered:
		if a.Rcode != dns.RcodeSuccess {
			t.Errorf("answer %s", dns.RcodeToString[a.Rcode])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the answer was not released after the acknowledgement")
	}
}

// Without a follower (the agent restarts) answers are not held, and what
// was learned meanwhile reaches the next follower.
func TestDNSLearnedKeptForNextFollower(t *testing.T) {
	h := newDNSHarness(t, Options{DNSHold: time.Hour})
	if a := h.ask("udp", "early.allowed.test."); a.Rcode != dns.RcodeSuccess {
		t.Fatalf("answer %s", dns.RcodeToString[a.Rcode])
	}
	learned, _, stop := h.p.learner.follow()
	defer stop()
	select {
	case x := <-learned:
		if x.Name != "early.allowed.test." {
			t.Errorf("learned %+v", x)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the answer given without a follower was not kept for the next one")
	}
}

// A follower that falls behind by more than it is given at once (the
// agent lags) gets the rest, in the order learned, once it reads and
// acknowledges again; before, they waited for the next follower.
func TestLearnerLaggingFollowerLosesNothing(t *testing.T) {
	var l learner
	ch, session, stop := l.follow()
	defer stop()
	total := maxPendingLearned + 100
	for i := range total {
		l.learn(context.Background(), Learned{Name: strconv.Itoa(i)}, 0)
	}
	readAll(t, &l, ch, session, 0, uint64(total))
}

// readAll reads a follower's answers after the one numbered from up to
// total, failing on a gap, acknowledging every 512 as the agent does in
// batches.
func readAll(t *testing.T, l *learner, ch <-chan Learned, session, from, total uint64) {
	t.Helper()
	for last := from; last < total; {
		select {
		case x := <-ch:
			if x.Seq != last+1 || x.Name != "" && x.Name != strconv.Itoa(int(x.Seq)-1) {
				t.Fatalf("after %d came %d (%s): answers lost or out of order", last, x.Seq, x.Name)
			}
			if last = x.Seq; last%512 == 0 {
				l.ack(session, last)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%d of %d learned answers reached the follower that read them all", last, total)
		}
	}
}

// An answer learned while the follower holds as many as it is given is
// held until it has reached the follower and been acknowledged itself: an
// earlier one's acknowledgement, or room, does not release it.
func TestLearnerHoldsUntilItsOwnAck(t *testing.T) {
	var l learner
	ch, session, stop := l.follow()
	defer stop()
	for range maxGivenLearned {
		l.learn(context.Background(), Learned{}, 0)
	}
	done := make(chan bool, 1)
	go func() {
		_, acked := l.learn(context.Background(), Learned{Name: "late."}, 10*time.Second)
		done <- acked
	}()
	waitNot := func(why string) {
		t.Helper()
		select {
		case <-done:
			t.Fatal(why)
		case <-time.After(200 * time.Millisecond):
		}
	}
	waitNot("released while it waited for room")
	l.ack(session, maxGivenLearned) // every earlier answer, none read yet
	waitNot("released by the acknowledgement of the answers before it")
	<-ch // room: it goes on at the next acknowledgement
	l.ack(session, 1)
	waitNot("released when it reached the follower, before its acknowledgement")
	l.ack(session, maxGivenLearned+1)
	select {
	case acked := <-done:
		if !acked {
			t.Fatal("its own acknowledgement did not count")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not released after its own acknowledgement")
	}
}

// With as many waiting as are kept, room made by the follower's
// acknowledgement takes the oldest on before anything is pushed out:
// nothing is lost that the follower had room for.
func TestLearnerFullQueueUsesRoomFirst(t *testing.T) {
	var l learner
	ch, session, stop := l.follow()
	defer stop()
	total := maxGivenLearned + maxPendingLearned + 10
	for range maxGivenLearned + maxPendingLearned { // as many given as may be, and as many waiting
		l.learn(context.Background(), Learned{}, 0)
	}
	for range 9 {
		<-ch
	}
	l.ack(session, (<-ch).Seq) // ten read and applied
	for range 10 {
		l.learn(context.Background(), Learned{}, 0)
	}
	readAll(t, &l, ch, session, 10, uint64(total))
}

// What a follower was given and did not acknowledge (it went away with
// answers read or unread) goes again, first and in order, to the next.
func TestLearnerResendsUnacknowledged(t *testing.T) {
	var l learner
	a, _, stopA := l.follow()
	l.learn(context.Background(), Learned{Name: "read."}, 0)
	l.learn(context.Background(), Learned{Name: "unread."}, 0)
	<-a // read, never acknowledged
	stopA()
	l.learn(context.Background(), Learned{Name: "away."}, 0)
	b, session, stopB := l.follow()
	defer stopB()
	for _, want := range []string{"read.", "unread.", "away."} {
		select {
		case x := <-b:
			if x.Name != want {
				t.Fatalf("the next follower got %q, want %q", x.Name, want)
			}
			l.ack(session, x.Seq)
		case <-time.After(2 * time.Second):
			t.Fatalf("%q not given to the next follower", want)
		}
	}
}

// NXDOMAIN instead of REFUSED when configured; hostile datagrams: garbage
// is dropped, a header without a valid body answered FORMERR, several
// questions FORMERR, a response or a non-query opcode not forwarded.
func TestDNSRejectsAndHostileQueries(t *testing.T) {
	h := newDNSHarness(t, Options{DNSRejectNXDomain: true})
	if a := h.ask("udp", "x.other.test."); a.Rcode != dns.RcodeNameError {
		t.Errorf("denied query answered %s, want NXDOMAIN", dns.RcodeToString[a.Rcode])
	}
	conn, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0)), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(h.udp)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	exchange := func(b []byte) *dns.Msg {
		t.Helper()
		conn.Write(b)
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 65535)
		n, err := conn.Read(buf)
		if err != nil {
			return nil
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil {
			t.Fatalf("the proxy's answer does not parse: %v", err)
		}
		return m
	}
	if m := exchange([]byte{1, 2, 3}); m != nil {
		t.Errorf("3 bytes answered: %v", m)
	}
	bad := make([]byte, 12)
	binary.BigEndian.PutUint16(bad, 0xbeef)
	binary.BigEndian.PutUint16(bad[4:], 5) // five questions that are not there
	if m := exchange(bad); m == nil || m.Id != 0xbeef || m.Rcode != dns.RcodeFormatError {
		t.Errorf("truncated query answered %v, want FORMERR with its ID", m)
	}
	two := new(dns.Msg)
	two.Question = []dns.Question{{Name: "a.allowed.test.", Qtype: dns.TypeA, Qclass: dns.ClassINET}, {Name: "b.other.test.", Qtype: dns.TypeA, Qclass: dns.ClassINET}}
	b, _ := two.Pack()
	if m := exchange(b); m == nil || m.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions answered %v, want FORMERR", m)
	}
	upd := new(dns.Msg)
	upd.SetUpdate("allowed.test.")
	upd.Question[0].Name = "www.allowed.test."
	b, _ = upd.Pack()
	if m := exchange(b); m == nil || m.Rcode != dns.RcodeNotImplemented {
		t.Errorf("an UPDATE answered %v, want NOTIMP", m)
	}
	resp := new(dns.Msg)
	resp.SetQuestion("www.allowed.test.", dns.TypeA)
	resp.Response = true
	b, _ = resp.Pack()
	if m := exchange(b); m == nil || m.Rcode != dns.RcodeFormatError {
		t.Errorf("a response sent as a query answered %v, want FORMERR", m)
	}
	select {
	case got := <-h.queries:
		t.Errorf("the server saw %q", got)
	default:
	}
}

// A TCP DNS connection carries several queries; one over the size a
// client announced is cut, not read past.
func TestDNSTCPSeveralQueries(t *testing.T) {
	h := newDNSHarness(t, Options{})
	c, err := (&net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0))}).DialContext(context.Background(), "tcp", h.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dc := &dns.Conn{Conn: c}
	for i, name := range []string{"a.allowed.test.", "b.other.test.", "c.allowed.test."} {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := dc.WriteMsg(q); err != nil {
			t.Fatal(err)
		}
		a, err := dc.ReadMsg()
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		want := dns.RcodeSuccess
		if i == 1 {
			want = dns.RcodeRefused
		}
		if a.Id != q.Id || a.Rcode != want {
			t.Errorf("query %d (%s): ID %d rcode %s, want %s", i, name, a.Id, dns.RcodeToString[a.Rcode], dns.RcodeToString[want])
		}
	}
}

// answerAddrs is readAnswer's addresses and TTL for a successful answer
// with records rrs to a query for name (type A).
func answerAddrs(t *testing.T, rrs []dns.RR, name string) ([]netip.Addr, uint32) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeA)
	a := new(dns.Msg)
	a.SetReply(q)
	a.Answer = rrs
	query, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	out, err := a.Pack()
	if err != nil {
		t.Fatal(err)
	}
	r, err := readAnswer(out, query)
	if err != nil || r.rcode != dns.RcodeSuccess {
		t.Fatalf("readAnswer: %v, rcode %d", err, r.rcode)
	}
	return r.addrs, r.ttl
}

func TestAnswerAddrsFollowsChainOnly(t *testing.T) {
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	answer := []dns.RR{
		rr("b.test. 50 IN CNAME c.test."),
		rr("a.test. 100 IN CNAME b.test."),
		rr("C.test. 200 IN A 192.0.2.1"),
		rr("c.test. 10 IN AAAA 2001:db8::1"),
		rr("x.test. 5 IN A 192.0.2.2"),
		rr("c.test. 300 IN CNAME a.test."), // a loop
	}
	got, ttl := answerAddrs(t, answer, "A.test.")
	if !slices.Equal(got, []netip.Addr{netip.MustParseAddr("192.0.2.1")}) || ttl != 50 {
		t.Errorf("answerAddrs = %v, %d; want [192.0.2.1], 50", got, ttl)
	}
}

// A hostile upstream's answer hands on each address once and at most the
// cache's cap per name: 64 KiB of A records repeating one address were
// each handed to the agent (one ipcache lookup each), and distinct ones
// beyond the cap only to be dropped there. A chain listed backwards is
// followed to its end.
func TestAnswerAddrsBounded(t *testing.T) {
	var answer []dns.RR
	for range 4000 {
		answer = append(answer, &dns.A{Hdr: dns.RR_Header{Name: "a.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
	}
	if got, _ := answerAddrs(t, answer, "a.test."); len(got) != 1 {
		t.Errorf("4,000 records of one address: %d addresses handed on, want 1", len(got))
	}
	answer = nil
	for i := range 3000 {
		answer = append(answer, &dns.A{Hdr: dns.RR_Header{Name: "a.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(10, 0, byte(i>>8), byte(i))})
	}
	if got, _ := answerAddrs(t, answer, "a.test."); len(got) != fqdn.DefaultMaxAddrsPerName {
		t.Errorf("3,000 distinct addresses: %d handed on, want the cap %d", len(got), fqdn.DefaultMaxAddrsPerName)
	}
	answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "n2000.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 9)}}
	for i := 1999; i >= 0; i-- { // listed from the far end
		answer = append(answer, &dns.CNAME{Hdr: dns.RR_Header{Name: fmt.Sprintf("n%d.test.", i), Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: uint32(100 + i)}, Target: fmt.Sprintf("n%d.test.", i+1)})
	}
	if got, ttl := answerAddrs(t, answer, "n0.test."); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("192.0.2.9")}) || ttl != 60 {
		t.Errorf("a chain of 2,000 listed backwards: %v, TTL %d; want [192.0.2.9], 60", got, ttl)
	}
}

// An allowed answer for a name no toFQDNs selector matches is neither
// reported nor held.
func TestDNSAnswerNotHeldWithoutSelector(t *testing.T) {
	h := newDNSHarness(t, Options{DNSHold: time.Hour})
	cfg := h.p.Config()
	cfg.FQDNs = []DNSRule{{MatchName: "only.allowed.test"}}
	if err := h.p.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	learned, _, stop := h.p.learner.follow()
	defer stop()
	if a := h.ask("udp", "other.allowed.test."); a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 {
		t.Fatalf("answer %s %v", dns.RcodeToString[a.Rcode], a.Answer)
	}
	select {
	case x := <-learned:
		t.Errorf("reported %+v though no selector matches it", x)
	default:
	}
}

// Idle upstream sockets leave the pool after maxUDPIdle: a few clients
// that once had many queries in flight do not keep the pool from others.
func TestUDPPoolSweep(t *testing.T) {
	p := New(Options{})
	t.Cleanup(p.Close)
	dial := func() net.Conn {
		c, err := net.Dial("udp4", "127.0.0.1:9")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	old, fresh := udpKey{dst: netip.MustParseAddrPort("127.0.0.1:53")}, udpKey{dst: netip.MustParseAddrPort("127.0.0.2:53")}
	for range 3 {
		p.putUDP(old, dial())
	}
	p.dnsMu.Lock()
	for i := range p.idleUDP[old] {
		p.idleUDP[old][i].since = time.Now().Add(-2 * maxUDPIdle)
	}
	p.udpSwept = time.Time{}
	p.dnsMu.Unlock()
	keep := dial()
	p.putUDP(fresh, keep) // sweeps
	p.dnsMu.Lock()
	n, count := len(p.idleUDP[old]), p.idleUDPCount
	p.dnsMu.Unlock()
	if n != 0 || count != 1 {
		t.Fatalf("after a sweep: %d idle for the old key, %d in all; want 0 and 1", n, count)
	}
	if got := p.takeUDP(fresh); got != keep {
		t.Fatalf("the fresh socket: %v", got)
	}
}

// While the agent lags, a pod that floods answers pushes out its own
// oldest waiting answers, not another pod's: the full queue takes from
// the endpoint with the most waiting (the queue was one for all pods
// before, oldest first).
func TestLearnerFullQueueTakesFromTheBusiestSource(t *testing.T) {
	var l learner
	ch, session, stop := l.follow()
	defer stop()
	hog, quiet := netip.MustParseAddr("10.0.0.66"), netip.MustParseAddr("10.0.0.7")
	for range maxGivenLearned + maxPendingLearned { // as many given as may be and as many waiting, nothing read
		l.learn(context.Background(), Learned{Endpoint: hog}, 0)
	}
	l.learn(context.Background(), Learned{Endpoint: quiet, Name: "quiet."}, 0)
	for range 10 {
		l.learn(context.Background(), Learned{Endpoint: hog}, 0)
	}
	want := maxGivenLearned + maxPendingLearned
	got, quietSeen, last := 0, false, uint64(0)
	seen := map[uint64]bool{}
	for got < want {
		select {
		case x := <-ch:
			got++
			seen[x.Seq] = true
			if x.Endpoint == quiet {
				quietSeen = true
			} else if x.Seq <= last {
				t.Fatalf("%d after %d: one pod's answers out of order", x.Seq, last)
			} else {
				last = x.Seq
			}
			if got%512 == 0 {
				l.ack(session, x.Seq)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%d answers reached the follower, want %d (the bounds)", got, want)
		}
	}
	if !quietSeen {
		t.Fatal("the quiet pod's answer was pushed out by the flooding pod's")
	}
	// The flooding pod's oldest waiting answers went (2,049 to 2,059).
	for seq := uint64(maxGivenLearned + 1); seq < maxGivenLearned+12; seq++ {
		if seen[seq] {
			t.Fatalf("answer %d kept: the flooding pod's oldest waiting ones must go", seq)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.waiting) != 0 || len(l.pending) != 0 {
		t.Fatalf("after everything was read: waiting %v, %d pending", l.waiting, len(l.pending))
	}
}

// checkWaiting: the learner's counts by endpoint are those of pending.
func checkWaiting(t *testing.T, l *learner) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	want := map[netip.Addr]int{}
	for _, it := range l.pending {
		want[it.x.Endpoint]++
	}
	if !maps.Equal(want, l.waiting) {
		t.Fatalf("waiting %v, pending holds %v", l.waiting, want)
	}
}

// With every endpoint tied (one answer each), a full queue pushes out the
// oldest answer, not the newest endpoint's by its address; what the
// follower was given and did not acknowledge comes back into the counts
// when it goes.
func TestLearnerFullQueueTiesGoOldestFirst(t *testing.T) {
	var l learner
	ep := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}) }
	for i := range maxPendingLearned { // nobody follows: all wait
		l.learn(context.Background(), Learned{Endpoint: ep(i + 1)}, 0)
	}
	l.learn(context.Background(), Learned{Endpoint: netip.MustParseAddr("10.0.0.1"), Name: "low."}, 0)
	checkWaiting(t, &l)
	l.mu.Lock()
	first, n := l.pending[0].x, len(l.pending)
	lowKept := slices.ContainsFunc(l.pending, func(it *learnItem) bool { return it.x.Name == "low." })
	l.mu.Unlock()
	if n != maxPendingLearned || first.Seq != 2 || !lowKept {
		t.Fatalf("%d waiting, the oldest now %d, the newest kept %v: want %d, 2 (answer 1 pushed out), true", n, first.Seq, lowKept, maxPendingLearned)
	}
	ch, _, stop := l.follow()
	<-ch // read, never acknowledged
	checkWaiting(t, &l)
	stop()
	checkWaiting(t, &l)
	for range 3 * maxPendingLearned {
		l.learn(context.Background(), Learned{Endpoint: ep(7)}, 0)
	}
	checkWaiting(t, &l)
}

// A TCP query announced larger than any query (the length prefix
// 0xffff, then nothing) took a 64 KiB buffer held for the read-header
// timeout: 4,096 such connections a pod held 256 MiB of the node's proxy.
// Such a connection is closed at once, with nothing allocated.
func TestDNSTCPQueryTooLargeClosed(t *testing.T) {
	h := newDNSHarness(t, Options{ReadHeaderTimeout: time.Minute})
	c, err := (&net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0))}).DialContext(context.Background(), "tcp", h.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{0xff, 0xff, 0, 1}); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("a TCP query announced at 65,535 bytes was waited for, its buffer held")
	}
}

// The client's query went on whole: records in its answer, authority and
// additional sections and its EDNS options (client subnet, anything)
// reached the server, though only the question was decided on. The
// server now gets the question, the header's query flags and an OPT
// record of the proxy's (UDP size and DO bit only). Since 2026-12-06 a
// query with records no query carries (answers, an authority record but
// IXFR's SOA, additional ones but an OPT and a signature) is refused
// before it is parsed (FORMERR, as Unbound answers them:
// TestDNSPointerBombsStaySmall).
func TestDNSForwardsOnlyTheQuestion(t *testing.T) {
	h := newDNSHarness(t, Options{})
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second,
		Dialer: &net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0))}}
	txt := func(s string) []dns.RR {
		rr, err := dns.NewRR("smuggled.example. 60 IN TXT \"" + s + "\"")
		if err != nil {
			t.Fatal(err)
		}
		return []dns.RR{rr}
	}
	for _, sec := range []string{"answer", "authority", "additional"} {
		q := new(dns.Msg)
		q.SetQuestion("sections.allowed.test.", dns.TypeA)
		switch sec {
		case "answer":
			q.Answer = txt(sec)
		case "authority":
			q.Ns = txt(sec)
		default:
			q.Extra = txt(sec)
		}
		a, _, err := c.Exchange(q, h.udp)
		if err != nil || a.Rcode != dns.RcodeFormatError {
			t.Errorf("a query with a TXT record in its %s section: %v %v, want FORMERR", sec, a, err)
		}
	}
	if got := h.last.Load(); got != nil {
		t.Fatalf("the server got %v", got)
	}
	q := new(dns.Msg)
	q.SetQuestion("sections.allowed.test.", dns.TypeA)
	q.CheckingDisabled = true
	q.SetEdns0(1232, true)
	opt := q.IsEdns0()
	opt.Option = append(opt.Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.ParseIP("203.0.113.0").To4()},
		&dns.EDNS0_LOCAL{Code: 65001, Data: []byte("exfiltrated")})
	a, _, err := c.Exchange(q, h.udp)
	if err != nil || a.Rcode != dns.RcodeSuccess {
		t.Fatalf("query: %v %v", a, err)
	}
	got := h.last.Load()
	if got == nil || len(got.Question) != 1 || got.Question[0].Name != "sections.allowed.test." {
		t.Fatalf("the server got %v", got)
	}
	if len(got.Answer) != 0 || len(got.Ns) != 0 {
		t.Errorf("the server got the client's answer/authority records: %v %v", got.Answer, got.Ns)
	}
	extra := 0
	for _, rr := range got.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra++
		}
	}
	if extra != 0 {
		t.Errorf("the server got the client's additional records: %v", got.Extra)
	}
	o := got.IsEdns0()
	if o == nil || o.UDPSize() != 1232 || !o.Do() || len(o.Option) != 0 {
		t.Errorf("the server's OPT: %v, want UDP size 1232, DO, no options", o)
	}
	if !got.RecursionDesired || !got.CheckingDisabled {
		t.Errorf("the query's flags were not kept: RD %v CD %v", got.RecursionDesired, got.CheckingDisabled)
	}
}

// A pod flooding allowed answers while the agent lags must not make
// another pod's answer wait behind all of its own: the agent applies
// answers in batches, and a quiet pod's one answer waited behind the
// 4,096 of the flood's in the follower's channel (and every one of the
// flood's waiting before it), past --dns-hold (its first connection then
// raced the datapath). It is now given after at most what the agent
// holds already and one answer of each other waiting pod.
func TestLearnerFloodDoesNotDelayOthers(t *testing.T) {
	var l learner
	ch, session, stop := l.follow()
	defer stop()
	hog, quiet := netip.MustParseAddr("10.0.0.66"), netip.MustParseAddr("10.0.0.7")
	for range 3000 { // the agent lags: nothing read yet
		l.learn(context.Background(), Learned{Endpoint: hog}, 0)
	}
	l.learn(context.Background(), Learned{Endpoint: quiet, Name: "quiet."}, 0)
	got, lastHog := 0, uint64(0)
	for {
		// The agent reads a batch of up to 1,024 and acknowledges its last.
		var batch []Learned
		for len(batch) < 1024 {
			select {
			case x := <-ch:
				batch = append(batch, x)
				continue
			case <-time.After(100 * time.Millisecond):
			}
			break
		}
		if len(batch) == 0 {
			t.Fatalf("the quiet pod's answer never reached the follower (%d did)", got)
		}
		for _, x := range batch {
			got++
			if x.Endpoint == quiet {
				if got > maxGivenLearned+2 {
					t.Fatalf("the quiet pod's answer came %dth, behind the flood's; want within the %d given before it and one of the flood's", got, maxGivenLearned)
				}
				return
			}
			if x.Seq <= lastHog {
				t.Fatalf("the flooding pod's answer %d after its %d: one pod's answers out of order", x.Seq, lastHog)
			}
			lastHog = x.Seq
		}
		l.ack(session, batch[len(batch)-1].Seq)
	}
}

// steeredOnly is the datapath's origin map holding the flows of one
// source address.
type steeredOnly struct{ addr netip.Addr }

func (s steeredOnly) Origin(src, _ netip.AddrPort, _ bool) (uint32, bool) {
	return clientID, src.Addr() == s.addr
}

// Datagrams sent to the proxy's port directly (from the underlay, any
// source address: UDP needs no handshake), not steered to it by the
// datapath, get no slot and no wait for a policy: before, each one held
// a slot for the 2 s a steered flow may wait for its policy, and a
// little more than a thousand spoofed sources shed every pod's DNS on
// the node.
func TestDNSUnsteeredDatagramsHoldNoSlot(t *testing.T) {
	h := newDNSHarness(t, Options{Origins: steeredOnly{clientIP}})
	to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(h.udp))
	q := new(dns.Msg)
	q.SetQuestion("www.allowed.test.", dns.TypeA)
	b, _ := q.Pack()
	n := maxDNSInFlight + 200
	for i := range n {
		a := netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)})
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
		if err != nil {
			t.Fatal(err)
		}
		c.WriteToUDP(b, to)
		c.Close()
	}
	h.answeredFrom(clientIP, "after datagrams the datapath did not steer")
	var m dto.Metric
	h.p.metrics.dnsUnsteered.Write(&m)
	if got := m.GetCounter().GetValue(); got == 0 {
		t.Errorf("unsteered datagrams counted %v", got)
	}
}

// tupleOrigins is the datapath's origin map as the proxy reads it: one
// entry per tuple, gone after a connection's read.
type tupleOrigins struct {
	mu sync.Mutex
	m  map[[2]netip.AddrPort]uint32
}

func (o *tupleOrigins) Origin(src, dst netip.AddrPort, datagram bool) (uint32, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	id, ok := o.m[[2]netip.AddrPort{src, dst}]
	if !datagram {
		delete(o.m, [2]netip.AddrPort{src, dst})
	}
	return id, ok
}

// glibc and musl send a name's A and AAAA queries from one socket at
// once; the datapath writes the tuple's origin for each, the second write
// landing on the first. When the proxy's policy lags the datapath's, both
// wait for it: before, the first read took the entry, and the second
// query, found unsteered with no policy, was dropped (the resolver waited
// its timeout, 5 s).
func TestDNSParallelQueriesOfOneSocketBothSteered(t *testing.T) {
	o := &tupleOrigins{m: map[[2]netip.AddrPort]uint32{}}
	h := newDNSHarness(t, Options{Origins: o})
	cfg := h.p.Config()
	lagging := cfg
	lagging.Revision, lagging.Policies = 2, nil
	if err := h.p.SetConfig(lagging); err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := netip.MustParseAddrPort(c.LocalAddr().String())
	o.mu.Lock()
	o.m[[2]netip.AddrPort{src, h.server}] = clientID
	o.mu.Unlock()
	to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(h.udp))
	for _, typ := range []uint16{dns.TypeA, dns.TypeAAAA} {
		q := new(dns.Msg)
		q.SetQuestion("www.allowed.test.", typ)
		b, _ := q.Pack()
		if _, err := c.WriteToUDP(b, to); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // the agent's config follows
	cfg.Revision = 3
	if err := h.p.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := map[uint16]bool{}
	buf := make([]byte, dns.MaxMsgSize)
	for len(got) < 2 {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("answers %v, then: %v", got, err)
		}
		a := new(dns.Msg)
		if err := a.Unpack(buf[:n]); err != nil {
			t.Fatal(err)
		}
		got[a.Question[0].Qtype] = true
	}
}

// dnsBomb is m packed, then, in its section sec (1 answer, 3
// additional), a TXT record owned by a 255-octet name of \001 bytes and a
// HIP record whose rendezvous servers are pointers to that name, up to
// about size bytes: miekg/dns writes each pointer out as 1,020 characters
// of text, so the message grows about 500-fold when parsed whole. m has
// no records after section sec.
func dnsBomb(t *testing.T, m *dns.Msg, sec, size int) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint16(b[4+2*sec:], binary.BigEndian.Uint16(b[4+2*sec:])+2)
	name := len(b)
	for _, n := range []int{63, 63, 63, 61} {
		b = append(b, byte(n))
		b = append(b, bytes.Repeat([]byte{1}, n)...)
	}
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, dns.TypeTXT)
	b = append(b, 0, 1, 0, 0, 0, 60, 0, 1, 0) // IN, TTL 60, an empty string
	b = append(b, 0xC0|byte(name>>8), byte(name))
	b = binary.BigEndian.AppendUint16(b, dns.TypeHIP)
	b = append(b, 0, 1, 0, 0, 0, 60)
	n := (size - len(b) - 2 - 5) / 2
	b = binary.BigEndian.AppendUint16(b, uint16(5+2*n))
	b = append(b, 1, 2, 0, 0, 0xAA) // a HIT of one byte, algorithm 2, no key
	for range n {
		b = append(b, 0xC0|byte(name>>8), byte(name))
	}
	return b
}

// A query or an answer made of compression pointers to a long name of
// escaped bytes is never parsed whole: a client's 64 KiB datagram (or 4
// KiB over TCP) took 34 MB (2 MB) of the proxy's memory parsed, held
// while the query waited for its server, and a server's 64 KiB answer 34
// MB, held while the agent learned its addresses (found 2026-12-06 by a
// review). Such a query is refused (FORMERR: its records are none a query
// carries); such an answer is read for its addresses only.
func TestDNSPointerBombsStaySmall(t *testing.T) {
	p := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := p.SetConfig(Config{IPCache: ipcache, FQDNs: []DNSRule{{MatchPattern: "*.allowed.test"}}, Policies: []PortPolicy{{Endpoint: clientIP, Direction: Egress, Port: 53, Protocol: "UDP", Kind: KindDNS,
		Rules: []PeerRules{{DNS: []DNSRule{{MatchPattern: "*.allowed.test"}}}}}}}); err != nil {
		t.Fatal(err)
	}
	learned, session, stop := p.learner.follow()
	defer stop()
	var got atomic.Pointer[Learned]
	go func() {
		for x := range learned {
			got.Store(&x)
			p.learner.ack(session, x.Seq)
		}
	}()
	src, dst := netip.AddrPortFrom(clientIP, 40000), netip.AddrPortFrom(serverIP, 53)
	// exchange is the bytes the proxy allocates for one exchange of query,
	// answered by the server with answer (nil: no server), and its answer's
	// ID and rcode.
	exchange := func(query, answer []byte) (uint64, uint16, int) {
		t.Helper()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		out := p.dnsExchange(context.Background(), src, dst, clientID, "UDP", query, func(_ context.Context, fq []byte) ([]byte, error) {
			if answer == nil {
				return nil, errors.New("no server")
			}
			return append([]byte{fq[0], fq[1]}, answer[2:]...), nil
		})
		runtime.ReadMemStats(&after)
		if len(out) < 12 {
			t.Fatalf("an answer of %d bytes", len(out))
		}
		return after.TotalAlloc - before.TotalAlloc, binary.BigEndian.Uint16(out), int(out[3] & 0x0F)
	}
	const most = 1 << 20
	q := new(dns.Msg)
	q.SetQuestion("www.allowed.test.", dns.TypeA)
	q.Id = 0xb0b
	for _, size := range []int{4 << 10, 65000} {
		used, id, rcode := exchange(dnsBomb(t, q, 3, size), nil)
		if used > most || id != 0xb0b || rcode != dns.RcodeFormatError {
			t.Errorf("a query of %d bytes of pointers: %d bytes allocated, answered ID %#x %s; want at most %d, FORMERR", size, used, id, dns.RcodeToString[rcode], most)
		}
	}
	// The answer: the address of www.allowed.test, then the bomb.
	query, _ := q.Pack()
	a := new(dns.Msg)
	a.SetReply(q)
	a.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "www.allowed.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)}}
	used, _, rcode := exchange(query, dnsBomb(t, a, 1, 65000))
	if used > most || rcode != dns.RcodeSuccess {
		t.Errorf("an answer of 65,000 bytes of pointers: %d bytes allocated, %s; want at most %d, NOERROR", used, dns.RcodeToString[rcode], most)
	}
	if x := got.Load(); x == nil || !slices.Equal(x.Addrs, []netip.Addr{netip.MustParseAddr("192.0.2.7")}) {
		t.Errorf("learned %+v, want 192.0.2.7 for www.allowed.test", x)
	}
}

// readAnswer's edges, from the review of the wire reader: an answer's
// counts larger than the records that follow are read as miekg/dns reads
// them (a header-only REFUSED that counts its question, a truncated
// answer cut at a record: until the mend both were SERVFAIL), and a name
// of more than 126 compression pointers is refused (a chain of 16,000,
// read for each of thousands of records, took 117 ms of the proxy's CPU).
func TestReadAnswerEdges(t *testing.T) {
	q := new(dns.Msg)
	q.SetQuestion("www.allowed.test.", dns.TypeA)
	query, _ := q.Pack()
	refused := []byte{query[0], query[1], 0x81, 0x85, 0, 1, 0, 0, 0, 0, 0, 0} // QR RD RA, REFUSED, 1 question, none there
	if r, err := readAnswer(refused, query); err != nil || r.rcode != dns.RcodeRefused {
		t.Errorf("a header-only REFUSED counting its question: %v, rcode %d; want REFUSED", err, r.rcode)
	}
	a := new(dns.Msg)
	a.SetReply(q)
	a.Truncated = true
	a.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "www.allowed.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
	full, _ := a.Pack()
	binary.BigEndian.PutUint16(full[6:], 5) // five answers counted, one there
	if r, err := readAnswer(full, query); err != nil || !slices.Equal(r.addrs, []netip.Addr{netip.MustParseAddr("192.0.2.1")}) {
		t.Errorf("a truncated answer cut at a record: %v, %v; want 192.0.2.1", err, r.addrs)
	}
	// chain is an answer whose one A record is owned by a name reached
	// through n pointers, each to the one before, down to the question's
	// name.
	chain := func(n int) []byte {
		a := new(dns.Msg)
		a.SetReply(q)
		b, _ := a.Pack()
		binary.BigEndian.PutUint16(b[6:], 2) // a TXT record holding the chain, then the A record
		b = append(b, 0xC0, 12)              // the TXT record's owner: the question's name
		b = binary.BigEndian.AppendUint16(b, dns.TypeTXT)
		b = append(b, 0, 1, 0, 0, 0, 60)
		b = binary.BigEndian.AppendUint16(b, uint16(2*n))
		prev := 12
		for range n {
			at := len(b)
			b = append(b, 0xC0|byte(prev>>8), byte(prev))
			prev = at
		}
		b = append(b, 0xC0|byte(prev>>8), byte(prev))
		b = binary.BigEndian.AppendUint16(b, dns.TypeA)
		b = append(b, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 9)
		return b
	}
	if r, err := readAnswer(chain(125), query); err != nil || len(r.addrs) != 1 {
		t.Errorf("a name of 126 pointers: %v, %v; want its address", err, r.addrs)
	}
	if _, err := readAnswer(chain(126), query); !errors.Is(err, errDNSWire) {
		t.Errorf("a name of 127 pointers: %v, want refused", err)
	}
	two := new(dns.Msg)
	two.Question = []dns.Question{q.Question[0], q.Question[0]}
	b, _ := two.Pack()
	if err := queryShape(b); !errors.Is(err, errDNSWire) {
		t.Errorf("a query of two questions: %v, want refused before it is parsed", err)
	}
}

// The flood's answers count by their addresses, not one each: an answer
// may carry up to a thousand, and the agent's work is per address. Until
// 2026-12-07 a quiet pod's answer waited behind the 2,048 of the flood's
// given before it (two million addresses, seconds of the agent's work,
// far past --dns-hold; found by a review). It now waits behind at most
// maxGivenLearnedAddrs of them, and the agent's batches are cut at
// MaxLearnBatchAddrs.
func TestLearnerFloodOfAddressesDoesNotDelayOthers(t *testing.T) {
	var l learner
	ch, session, stop := l.follow()
	defer stop()
	hog, quiet := netip.MustParseAddr("10.0.0.66"), netip.MustParseAddr("10.0.0.7")
	many := make([]netip.Addr, 1000)
	for i := range many {
		many[i] = netip.AddrFrom4([4]byte{20, 0, byte(i >> 8), byte(i)})
	}
	for range 3000 { // the agent lags: nothing read yet
		l.learn(context.Background(), Learned{Endpoint: hog, Addrs: many}, 0)
	}
	l.learn(context.Background(), Learned{Endpoint: quiet, Name: "quiet.", Addrs: many[:1]}, 0)
	addrs := 0
	for {
		// The agent reads a batch of up to MaxLearnBatchAddrs addresses
		// and acknowledges its last.
		var batch []Learned
		n := 0
		for n < MaxLearnBatchAddrs {
			select {
			case x := <-ch:
				batch = append(batch, x)
				n += len(x.Addrs)
				continue
			case <-time.After(100 * time.Millisecond):
			}
			break
		}
		if len(batch) == 0 {
			t.Fatalf("the quiet pod's answer never reached the follower (%d addresses did)", addrs)
		}
		for _, x := range batch {
			if x.Endpoint == quiet {
				// Two of the agent's batches given before it, and one answer.
				if want := 2*MaxLearnBatchAddrs + len(many); addrs > want {
					t.Fatalf("the quiet pod's answer came behind %d of the flood's addresses; want at most %d", addrs, want)
				}
				return
			}
			addrs += len(x.Addrs)
		}
		l.ack(session, batch[len(batch)-1].Seq)
	}
}
