package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
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
		m := new(dns.Msg)
		if err := m.Unpack(out); err != nil {
			t.Fatalf("the answer does not parse: %v", err)
		}
		if m.Id != uint16(query[0])<<8|uint16(query[1]) || !m.Response {
			t.Fatalf("answer ID %d response %v for a query with ID %x%x", m.Id, m.Response, query[0], query[1])
		}
	})
}
