package proxy

// Reading DNS messages on the wire for what the proxy needs of them: the
// shape of a client's query before it is parsed, and an upstream's
// answer's rcode, question and the addresses it gives a name. Nothing
// else of a message is materialized. miekg/dns's Unpack writes each name
// and each record's data out as text, so a message of compression
// pointers to a name of escaped bytes grows about 500-fold (a 64 KiB
// datagram to 34 MB, a 4 KiB TCP query to 2 MB), and the proxy held a
// client's parsed query and an upstream's parsed answer for as long as
// the exchange waited (found 2026-12-06 by a review:
// TestDNSPointerBombsStaySmall).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"

	"github.com/miekg/dns"

	"github.com/filament-net/filament/agent/fqdn"
)

// errDNSWire: a message that does not read as DNS, or a query with
// records no query carries.
var errDNSWire = errors.New("malformed DNS message")

// dnsName reads the name at off in msg: its wire form (length-prefixed
// labels, ending with the root's 0), ASCII lower-cased, pointers followed,
// appended to dst[:0]; and the offset after the name where it appears.
// A name is at most 255 octets and follows at most maxDNSPointers
// pointers, each strictly backwards, so neither a loop nor a chain of
// pointers makes it longer or slower to read than that (a chain of
// 16,000 pointers, read for each of 2,800 records, took 117 ms until the
// bound, found by the review of this reader).
func dnsName(msg []byte, off int, dst []byte) ([]byte, int, error) {
	dst = dst[:0]
	next := -1
	limit := off // a pointer must point before the label it is in
	hops := 0
	for {
		if off >= len(msg) {
			return nil, 0, fmt.Errorf("%w: a name runs past the end", errDNSWire)
		}
		c := int(msg[off])
		switch c & 0xC0 {
		case 0x00:
			if off+1+c > len(msg) {
				return nil, 0, fmt.Errorf("%w: a label runs past the end", errDNSWire)
			}
			if len(dst)+1+c > 255 {
				return nil, 0, fmt.Errorf("%w: a name over 255 octets", errDNSWire)
			}
			dst = append(dst, byte(c))
			for _, b := range msg[off+1 : off+1+c] {
				if 'A' <= b && b <= 'Z' {
					b += 'a' - 'A'
				}
				dst = append(dst, b)
			}
			off += 1 + c
			if c == 0 {
				if next < 0 {
					next = off
				}
				return dst, next, nil
			}
		case 0xC0:
			if off+2 > len(msg) {
				return nil, 0, fmt.Errorf("%w: a pointer runs past the end", errDNSWire)
			}
			to := int(binary.BigEndian.Uint16(msg[off:]) & 0x3FFF)
			if next < 0 {
				next = off + 2
			}
			if to >= limit {
				return nil, 0, fmt.Errorf("%w: a pointer that does not point backwards", errDNSWire)
			}
			if hops++; hops > maxDNSPointers {
				return nil, 0, fmt.Errorf("%w: a name of more than %d pointers", errDNSWire, maxDNSPointers)
			}
			off, limit = to, to
		default:
			return nil, 0, fmt.Errorf("%w: a label of reserved type", errDNSWire)
		}
	}
}

// maxDNSPointers bounds the compression pointers one name follows: a
// name of 255 octets has at most 127 labels, each of which a pointer may
// start (miekg/dns allows 126).
const maxDNSPointers = 126

// dnsRecord is a resource record's fixed part: its owner name (at the
// offset it starts), type, TTL, and its data's bounds in the message.
type dnsRecord struct {
	owner      int
	rtype      uint16
	ttl        uint32
	data, next int
}

// dnsRecordAt reads the record at off of msg (its owner name skipped, not
// read: see dnsName for that).
func dnsRecordAt(msg []byte, off int, buf []byte) (dnsRecord, error) {
	_, end, err := dnsName(msg, off, buf)
	if err != nil {
		return dnsRecord{}, err
	}
	if end+10 > len(msg) {
		return dnsRecord{}, fmt.Errorf("%w: a record runs past the end", errDNSWire)
	}
	r := dnsRecord{owner: off, rtype: binary.BigEndian.Uint16(msg[end:]), ttl: binary.BigEndian.Uint32(msg[end+4:]), data: end + 10}
	r.next = r.data + int(binary.BigEndian.Uint16(msg[end+8:]))
	if r.next > len(msg) {
		return dnsRecord{}, fmt.Errorf("%w: a record's data runs past the end", errDNSWire)
	}
	return r, nil
}

// dnsQuestionAt reads the question at off (past the header): its name
// into buf, its type, and the offset after it.
func dnsQuestionAt(msg []byte, off int, buf []byte) ([]byte, uint16, int, error) {
	name, end, err := dnsName(msg, off, buf)
	if err != nil {
		return nil, 0, 0, err
	}
	if end+4 > len(msg) {
		return nil, 0, 0, fmt.Errorf("%w: a question runs past the end", errDNSWire)
	}
	return name, binary.BigEndian.Uint16(msg[end:]), end + 4, nil
}

// dnsCounts are a message's section counts (question, answer, authority,
// additional).
func dnsCounts(msg []byte) (qd, an, ns, ar int) {
	c := func(i int) int { return int(binary.BigEndian.Uint16(msg[i:])) }
	return c(4), c(6), c(8), c(10)
}

// queryShape checks raw (12 bytes or more), a client's query, before it
// is parsed: at most maxDNSQuery bytes, one question, no answers, in authority at most
// an SOA (IXFR says with it which version the client has) and in
// additional at most an OPT and a signature (TSIG, SIG(0)), each readable.
// upstreamQuery passes on nothing else of a query anyway.
func queryShape(raw []byte) error {
	if len(raw) > maxDNSQuery {
		return fmt.Errorf("%w: a query of %d bytes (at most %d)", errDNSWire, len(raw), maxDNSQuery)
	}
	qd, an, ns, ar := dnsCounts(raw)
	switch {
	case qd != 1:
		return fmt.Errorf("%w: a query of %d questions", errDNSWire, qd)
	case an > 0:
		return fmt.Errorf("%w: a query with %d answer records", errDNSWire, an)
	case ns > 1 || ar > 2:
		return fmt.Errorf("%w: a query with %d authority and %d additional records", errDNSWire, ns, ar)
	}
	var buf [256]byte
	off := 12
	for range qd {
		_, _, end, err := dnsQuestionAt(raw, off, buf[:])
		if err != nil {
			return err
		}
		off = end
	}
	for i := range ns + ar {
		r, err := dnsRecordAt(raw, off, buf[:])
		if err != nil {
			return err
		}
		if i < ns && r.rtype != dns.TypeSOA || i >= ns && r.rtype != dns.TypeOPT && r.rtype != dns.TypeTSIG && r.rtype != dns.TypeSIG {
			return fmt.Errorf("%w: a query with a %s record", errDNSWire, dns.Type(r.rtype))
		}
		off = r.next
	}
	return nil
}

// nameSeed keys the hashes readAnswer keeps names by: a server cannot
// choose names that collide.
var nameSeed = maphash.MakeSeed()

// dnsReply is what the proxy reads of an upstream's answer.
type dnsReply struct {
	rcode int          // with an OPT record's extended bits
	addrs []netip.Addr // the question's name's IPv4 addresses (answerAddrs)
	ttl   uint32       // the lowest TTL along the way to them
}

// errNotForQuery: an answer that is no answer to the query asked.
var errNotForQuery = errors.New("the answer is not for the query")

// readAnswer reads out, an upstream's answer to query (the proxy's own,
// one question), as the server sent it, possibly hostile: a response,
// with that question (the name in any case) or none when it is an error,
// its rcode, and the IPv4 addresses it gives the question's name
// following its CNAME chain, with the lowest TTL along the way: each
// address once, at most fqdn.DefaultMaxAddrsPerName of them (the cache's
// own cap per name). 64 KiB of records repeating one address, or a long
// chain listed backwards, must cost neither the proxy's CPU (two passes
// over the answers, each owner name read once per pass) nor the agent's
// (which looks up every address it is handed). A name has one CNAME: the
// first one listed counts.
func readAnswer(out, query []byte) (dnsReply, error) {
	var r dnsReply
	if len(out) < 12 || len(query) < 12 {
		return r, fmt.Errorf("%w: shorter than a header", errDNSWire)
	}
	var qbuf, buf [256]byte
	qname, qtype, _, err := dnsQuestionAt(query, 12, qbuf[:])
	if err != nil {
		return r, err
	}
	// The header's counts are read as miekg/dns reads them: as many as
	// follow, up to the count. A section ends at the message's end (a
	// truncated answer cut at a record, an error answer of a header only
	// that still counts its question).
	qd, an, ns, ar := dnsCounts(out)
	rcode := int(out[3] & 0x0F)
	r.rcode = rcode
	if out[2]&0x80 == 0 {
		return r, errNotForQuery
	}
	off, questions := 12, 0
	for ; questions < qd && off < len(out); questions++ {
		name, typ, end, err := dnsQuestionAt(out, off, buf[:])
		if err != nil {
			return r, err
		}
		if questions > 0 || string(name) != string(qname) || typ != qtype {
			return r, errNotForQuery
		}
		off = end
	}
	answers := off
	// First pass: the records' bounds, the CNAME links, the OPT's rcode.
	// Names are kept by a keyed hash of their wire form (nameSeed), 8
	// bytes each, whatever their length.
	type link struct {
		target uint64
		ttl    uint32
	}
	cnames := map[uint64]link{}
	read := 0 // records read
	for ; read < an+ns+ar && off < len(out); read++ {
		i := read
		rec, err := dnsRecordAt(out, off, buf[:])
		if err != nil {
			return r, err
		}
		switch {
		case i < an && rec.rtype == dns.TypeCNAME:
			owner, _, err := dnsName(out, rec.owner, buf[:])
			if err != nil {
				return r, err
			}
			if _, had := cnames[maphash.Bytes(nameSeed, owner)]; !had {
				var tbuf [256]byte
				target, end, err := dnsName(out, rec.data, tbuf[:])
				if err != nil || end != rec.next {
					return r, fmt.Errorf("%w: a CNAME's target", errDNSWire)
				}
				cnames[maphash.Bytes(nameSeed, owner)] = link{maphash.Bytes(nameSeed, target), rec.ttl}
			}
		case i >= an+ns && rec.rtype == dns.TypeOPT:
			r.rcode = rcode | int(rec.ttl>>24)<<4 // the last OPT's, as miekg/dns reads it
		}
		off = rec.next
	}
	if questions == 0 && r.rcode == dns.RcodeSuccess {
		return r, errNotForQuery
	}
	if r.rcode != dns.RcodeSuccess {
		return r, nil
	}
	first := true
	lower := func(t uint32) {
		if first || t < r.ttl {
			r.ttl, first = t, false
		}
	}
	names := map[uint64]bool{}
	for n := maphash.Bytes(nameSeed, qname); !names[n]; {
		names[n] = true
		l, ok := cnames[n]
		if !ok {
			break
		}
		lower(l.ttl)
		n = l.target
	}
	// Second pass: the chain's A records.
	seen := map[netip.Addr]bool{}
	off = answers
	for range min(an, read) {
		if len(r.addrs) == fqdn.DefaultMaxAddrsPerName {
			break
		}
		rec, err := dnsRecordAt(out, off, buf[:])
		if err != nil {
			return r, err
		}
		off = rec.next
		if rec.rtype != dns.TypeA || rec.next-rec.data != 4 {
			continue
		}
		owner, _, err := dnsName(out, rec.owner, buf[:])
		if err != nil || !names[maphash.Bytes(nameSeed, owner)] {
			continue
		}
		ip := netip.AddrFrom4([4]byte(out[rec.data:rec.next]))
		lower(rec.ttl)
		if !seen[ip] {
			seen[ip] = true
			r.addrs = append(r.addrs, ip)
		}
	}
	return r, nil
}
