package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// RecordsBinary is the media type of the records stream's binary form,
// which the agent asks for (Accept): a record costs a few hundred
// nanoseconds to encode and decode in it, against microseconds as JSON
// (BenchmarkRecordCodec), and every request through the proxy is one. A
// client that does not ask gets NDJSON, so an agent and a proxy of
// different versions still understand each other.
//
// Each record is a uvarint length and the record's fields in Record's
// order: integers as (zig-zag for signed) varints, the time as Unix
// nanoseconds, strings as a uvarint length and the bytes, addresses as a
// length byte (0, 4 or 16) and the bytes, lists as a uvarint count and the
// elements.
const RecordsBinary = "application/x-filament-records-v1"

// maxRecordBytes bounds one record of the binary stream.
const maxRecordBytes = 1 << 20

// ErrRecord is a record of the binary stream that cannot be read.
var ErrRecord = errors.New("malformed record")

// AppendRecord appends r in the binary form, length first.
func AppendRecord(b []byte, r *Record) []byte {
	start := len(b)
	b = append(b, 0, 0, 0) // room for the length; moved if it needs more or less
	b = binary.AppendVarint(b, r.Time.UnixNano())
	b = appendString(b, r.Direction)
	b = appendAddr(b, r.Endpoint)
	b = appendAddr(b, r.SrcIP)
	b = binary.AppendUvarint(b, uint64(r.SrcPort))
	b = appendAddr(b, r.DstIP)
	b = binary.AppendUvarint(b, uint64(r.DstPort))
	b = binary.AppendUvarint(b, uint64(r.SrcIdentity))
	b = binary.AppendUvarint(b, uint64(r.DstIdentity))
	b = appendString(b, r.Protocol)
	b = appendString(b, r.Method)
	b = appendString(b, r.Host)
	b = appendString(b, r.Path)
	b = binary.AppendVarint(b, int64(r.Status))
	b = appendString(b, r.DNSRcode)
	b = binary.AppendUvarint(b, uint64(len(r.DNSAnswers)))
	for _, a := range r.DNSAnswers {
		b = appendAddr(b, a)
	}
	b = binary.AppendUvarint(b, uint64(r.DNSTTL))
	b = binary.AppendVarint(b, int64(r.DNSHeld))
	b = binary.AppendVarint(b, int64(r.Latency))
	b = appendString(b, r.Verdict)
	b = appendString(b, r.Reason)
	b = binary.AppendUvarint(b, uint64(len(r.Notes)))
	for _, n := range r.Notes {
		b = appendString(b, n)
	}
	body := len(b) - start - 3
	var l [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(l[:], uint64(body))
	if n != 3 {
		b = append(b, l[:n]...) // grow (or shrink) the room in front
		copy(b[start+n:], b[start+3:start+3+body])
		b = b[:start+n+body]
	}
	copy(b[start:], l[:n])
	return b
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func appendAddr(b []byte, a netip.Addr) []byte {
	switch {
	case !a.IsValid():
		return append(b, 0)
	case a.Is4():
		v := a.As4()
		return append(append(b, 4), v[:]...)
	default:
		v := a.As16()
		return append(append(b, 16), v[:]...)
	}
}

// RecordReader reads the binary stream.
type RecordReader struct {
	r    *bufio.Reader
	buf  []byte
	seen map[string]string // interned short strings (verdicts, methods, protocols...)
	// Skipped counts the records over maxRecordBytes, passed over (the
	// proxy bounds its records well below: none is expected).
	Skipped int
}

// NewRecordReader reads records from r.
func NewRecordReader(r io.Reader) *RecordReader {
	return &RecordReader{r: bufio.NewReaderSize(r, 64<<10), seen: map[string]string{}}
}

// Read reads the next record into rec (passing over any longer than
// maxRecordBytes, counted in Skipped); io.EOF at the end of the stream, an
// error wrapping ErrRecord for one that cannot be read (the stream cannot
// be read past it).
func (rr *RecordReader) Read(rec *Record) error {
	n, err := binary.ReadUvarint(rr.r)
	for err == nil && n > maxRecordBytes {
		if _, err = io.CopyN(io.Discard, rr.r, int64(n)); err != nil {
			return fmt.Errorf("%w: %w", ErrRecord, io.ErrUnexpectedEOF)
		}
		rr.Skipped++
		n, err = binary.ReadUvarint(rr.r)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		return fmt.Errorf("%w: length: %w", ErrRecord, err)
	}
	if uint64(cap(rr.buf)) < n {
		rr.buf = make([]byte, n)
	}
	b := rr.buf[:n]
	if _, err := io.ReadFull(rr.r, b); err != nil {
		return fmt.Errorf("%w: %w", ErrRecord, io.ErrUnexpectedEOF)
	}
	return rr.decode(b, rec)
}

// decode reads one record's body.
func (rr *RecordReader) decode(b []byte, rec *Record) error {
	d := recordDecoder{b: b, seen: rr.seen}
	*rec = Record{}
	rec.Time = time.Unix(0, d.varint())
	rec.Direction = d.str(true)
	rec.Endpoint = d.addr()
	rec.SrcIP = d.addr()
	rec.SrcPort = uint16(d.uvarint(1<<16 - 1))
	rec.DstIP = d.addr()
	rec.DstPort = uint16(d.uvarint(1<<16 - 1))
	rec.SrcIdentity = uint32(d.uvarint(1<<32 - 1))
	rec.DstIdentity = uint32(d.uvarint(1<<32 - 1))
	rec.Protocol = d.str(true)
	rec.Method = d.str(true)
	rec.Host = d.str(false)
	rec.Path = d.str(false)
	rec.Status = int(d.varint())
	rec.DNSRcode = d.str(true)
	if n := d.length(); n > maxRecordAnswers {
		d.fail("too many DNS answers")
	} else if n > 0 {
		rec.DNSAnswers = make([]netip.Addr, n)
		for i := range rec.DNSAnswers {
			rec.DNSAnswers[i] = d.addr()
		}
	}
	rec.DNSTTL = uint32(d.uvarint(1<<32 - 1))
	rec.DNSHeld = time.Duration(d.varint())
	rec.Latency = time.Duration(d.varint())
	rec.Verdict = d.str(true)
	rec.Reason = d.str(false)
	if n := d.length(); n > maxRecordNotes {
		d.fail("too many notes")
	} else if n > 0 {
		rec.Notes = make([]string, n)
		for i := range rec.Notes {
			rec.Notes[i] = d.str(false)
		}
	}
	switch {
	case d.err != nil:
		return fmt.Errorf("%w: %w", ErrRecord, d.err)
	case len(d.b) != 0:
		return fmt.Errorf("%w: %d bytes after the last field", ErrRecord, len(d.b))
	}
	return nil
}

// recordDecoder reads fields off b; the first failure sticks in err and
// every later read returns zero.
type recordDecoder struct {
	b    []byte
	err  error
	seen map[string]string
}

func (d *recordDecoder) fail(what string) {
	if d.err == nil {
		d.err = errors.New(what)
	}
	d.b = nil
}

func (d *recordDecoder) uvarint(max uint64) uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 || v > max {
		d.fail("integer out of range")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// length reads a length or count of what follows: each element takes at
// least a byte, so it is at most what is left.
func (d *recordDecoder) length() int {
	v := d.uvarint(maxRecordBytes)
	if v > uint64(len(d.b)) {
		d.fail("length past the record's end")
		return 0
	}
	return int(v)
}

func (d *recordDecoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("integer out of range")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// maxInterned bounds the interned strings of one stream.
const maxInterned = 1024

// str reads a string; intern: one of a few values that recur (a verdict,
// a method), kept so that each is allocated once per stream.
func (d *recordDecoder) str(intern bool) string {
	n := d.length()
	if d.err != nil {
		return ""
	}
	raw := d.b[:n]
	d.b = d.b[n:]
	if !intern || n > 32 {
		return string(raw)
	}
	if s, ok := d.seen[string(raw)]; ok {
		return s
	}
	s := string(raw)
	if len(d.seen) < maxInterned {
		d.seen[s] = s
	}
	return s
}

func (d *recordDecoder) addr() netip.Addr {
	if len(d.b) == 0 {
		d.fail("address missing")
		return netip.Addr{}
	}
	n := int(d.b[0])
	if (n != 0 && n != 4 && n != 16) || len(d.b) < 1+n {
		d.fail("address length")
		return netip.Addr{}
	}
	a := d.b[1 : 1+n]
	d.b = d.b[1+n:]
	switch n {
	case 4:
		return netip.AddrFrom4([4]byte(a))
	case 16:
		return netip.AddrFrom16([16]byte(a))
	}
	return netip.Addr{}
}
