package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/filament-net/filament/agent/fqdn"
	"github.com/filament-net/filament/agent/policy/api"
)

// FuzzDNSExchange decides a hostile query and, when it is forwarded, a
// hostile answer: the proxy never panics, answers every query with at
// least a header by its ID, forwards only queries for names the rules
// allow (*.allowed.test), re-packed, and hands the agent only IPv4
// addresses from an answer to the question asked.
func FuzzDNSExchange(f *testing.F) {
	pack := func(m *dns.Msg) []byte { b, _ := m.Pack(); return b }
	q := new(dns.Msg)
	q.SetQuestion("www.allowed.test.", dns.TypeA)
	a := new(dns.Msg)
	a.SetReply(q)
	a.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "www.allowed.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 1}}}
	f.Add(pack(q), pack(a))
	d := new(dns.Msg)
	d.SetQuestion("evil.other.test.", dns.TypeANY)
	f.Add(pack(d), pack(a))
	f.Add([]byte{0xbe, 0xef, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0}, []byte{})
	f.Add(pack(q), []byte{0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0})
	allowed, err := fqdn.Compile(api.FQDNSelector{MatchPattern: "*.allowed.test"})
	if err != nil {
		f.Fatal(err)
	}
	src, dst := netip.AddrPortFrom(clientIP, 40000), netip.AddrPortFrom(serverIP, 53)
	f.Fuzz(func(t *testing.T, query, answer []byte) {
		p := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err := p.SetConfig(Config{IPCache: ipcache, FQDNs: []DNSRule{{MatchPattern: "*"}}, Policies: []PortPolicy{{Endpoint: clientIP, Direction: Egress, Port: 53, Protocol: "UDP", Kind: KindDNS,
			Rules: []PeerRules{{DNS: []DNSRule{{MatchPattern: "*.allowed.test"}}}}}}}); err != nil {
			t.Fatal(err)
		}
		learned, session, stop := p.learner.follow()
		var got []Learned
		followed := make(chan struct{})
		go func() { // the agent: acknowledges at once
			defer close(followed)
			for x := range learned {
				got = append(got, x)
				p.learner.ack(session, x.Seq)
			}
		}()
		forwarded := false
		out := p.dnsExchange(context.Background(), src, dst, clientID, "UDP", query, func(_ context.Context, fq []byte) ([]byte, error) {
			forwarded = true
			m := new(dns.Msg)
			if err := m.Unpack(fq); err != nil {
				t.Fatalf("forwarded a query that does not parse: %v", err)
			}
			if len(m.Question) != 1 || !allowed.Match(m.Question[0].Name) {
				t.Fatalf("forwarded a query the rules do not allow: %v", m.Question)
			}
			if len(answer) >= 2 { // an answer with the query's ID, else it is dropped
				answer = append([]byte{fq[0], fq[1]}, answer[2:]...)
			}
			return answer, nil
		})
		stop()
		<-followed
		for _, x := range got {
			if !forwarded {
				t.Fatal("learned without forwarding")
			}
			for _, a := range x.Addrs {
				if !a.Is4() {
					t.Fatalf("learned a non-IPv4 address %v", a)
				}
			}
			if !allowed.Match(x.Name) {
				t.Fatalf("learned a name the rules do not allow: %q", x.Name)
			}
		}
		if out == nil {
			if len(query) >= 12 {
				t.Fatalf("a %d-byte query got no answer", len(query))
			}
			return
		}
		// The proxy's own answers parse; a server's is passed on as it
		// came, its framing read (readAnswer), the data of records other
		// than A and CNAME not looked at.
		var h dns.MsgHdr
		if forwarded && len(out) >= 12 {
			h.Id, h.Response = binary.BigEndian.Uint16(out), out[2]&0x80 != 0
		} else {
			m := new(dns.Msg)
			if err := m.Unpack(out); err != nil {
				t.Fatalf("the proxy's answer does not parse: %v", err)
			}
			h = m.MsgHdr
		}
		if h.Id != uint16(query[0])<<8|uint16(query[1]) || !h.Response {
			t.Fatalf("answer ID %d response %v for a query with ID %x%x", h.Id, h.Response, query[0], query[1])
		}
	})
}

// FuzzReadAnswer checks readAnswer, which reads an upstream's answer on
// the wire, against miekg/dns's parse of the same bytes (the way answers
// were read until 2026-12-06): where both read the message, they agree on
// whether it answers the query, its rcode, and the addresses and TTL it
// gives the question's name through its CNAME chain.
func FuzzReadAnswer(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("www.allowed.test.", dns.TypeA)
	query, err := q.Pack()
	if err != nil {
		f.Fatal(err)
	}
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			f.Fatal(err)
		}
		return r
	}
	for _, answer := range [][]dns.RR{
		{rr("www.allowed.test. 60 IN A 192.0.2.1")},
		{rr("WWW.allowed.test. 50 IN CNAME b.test."), rr("b.test. 40 IN CNAME c.test."), rr("c.test. 30 IN A 192.0.2.2"), rr("x.test. 5 IN A 192.0.2.3")},
		{rr("www.allowed.test. 50 IN CNAME www.allowed.test."), rr("www.allowed.test. 10 IN A 192.0.2.4"), rr("www.allowed.test. 10 IN A 192.0.2.4")},
	} {
		a := new(dns.Msg)
		a.SetReply(q)
		a.Answer = answer
		a.Ns = []dns.RR{rr("allowed.test. 60 IN SOA ns.test. host.test. 1 2 3 4 5")}
		a.SetEdns0(1232, false)
		for _, compress := range []bool{false, true} {
			a.Compress = compress
			b, err := a.Pack()
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, out []byte) {
		if len(out) > 4096 {
			return // miekg/dns's parse of a large message can take long (TestDNSPointerBombsStaySmall)
		}
		if len(out) >= 2 {
			out[0], out[1] = query[0], query[1]
		}
		got, err := readAnswer(out, query)
		a := new(dns.Msg)
		if a.Unpack(out) != nil || err != nil && !errors.Is(err, errNotForQuery) {
			return // one of them does not read it
		}
		notFor := !a.Response || len(a.Question) > 1 || len(a.Question) == 0 && a.Rcode == dns.RcodeSuccess ||
			len(a.Question) == 1 && (!strings.EqualFold(a.Question[0].Name, q.Question[0].Name) || a.Question[0].Qtype != q.Question[0].Qtype)
		if notFor != errors.Is(err, errNotForQuery) {
			t.Fatalf("not for the query: readAnswer %v, miekg/dns %v (%v)", err, notFor, a)
		}
		if notFor {
			return
		}
		if got.rcode != a.Rcode {
			t.Fatalf("rcode %d, miekg/dns %d", got.rcode, a.Rcode)
		}
		if a.Rcode != dns.RcodeSuccess {
			return
		}
		addrs, ttl := miekgAnswerAddrs(a, q.Question[0].Name)
		if !slices.Equal(got.addrs, addrs) || len(addrs) > 0 && got.ttl != ttl {
			t.Fatalf("addresses %v TTL %d, miekg/dns %v %d (%v)", got.addrs, got.ttl, addrs, ttl, a)
		}
	})
}

// miekgAnswerAddrs is how the addresses were read from an answer parsed
// with miekg/dns until 2026-12-06 (readAnswer's reference).
func miekgAnswerAddrs(a *dns.Msg, name string) ([]netip.Addr, uint32) {
	var ttl uint32
	first := true
	lower := func(t uint32) {
		if first || t < ttl {
			ttl, first = t, false
		}
	}
	type link struct {
		target string
		ttl    uint32
	}
	cnames := map[string]link{}
	for _, rr := range a.Answer {
		if c, ok := rr.(*dns.CNAME); ok {
			owner := strings.ToLower(c.Hdr.Name)
			if _, had := cnames[owner]; !had {
				cnames[owner] = link{strings.ToLower(c.Target), c.Hdr.Ttl}
			}
		}
	}
	names := map[string]bool{}
	for n := strings.ToLower(dns.Fqdn(name)); !names[n]; {
		names[n] = true
		l, ok := cnames[n]
		if !ok {
			break
		}
		lower(l.ttl)
		n = l.target
	}
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, rr := range a.Answer {
		if len(out) == fqdn.DefaultMaxAddrsPerName {
			break
		}
		if r, ok := rr.(*dns.A); ok && names[strings.ToLower(r.Hdr.Name)] {
			if ip, ok := netip.AddrFromSlice(r.A.To4()); ok {
				lower(r.Hdr.Ttl)
				if !seen[ip] {
					seen[ip] = true
					out = append(out, ip)
				}
			}
		}
	}
	return out, ttl
}
