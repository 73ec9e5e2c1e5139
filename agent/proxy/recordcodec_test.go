package proxy

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// fullRecord has every field set, an IPv6 address among them.
func fullRecord() Record {
	return Record{
		Time: time.Unix(1764547200, 123456789), Direction: Ingress, Endpoint: netip.MustParseAddr("10.0.0.2"),
		SrcIP: netip.MustParseAddr("10.0.1.7"), SrcPort: 40000, DstIP: netip.MustParseAddr("10.0.0.2"), DstPort: 53,
		SrcIdentity: 1 << 24, DstIdentity: 4294967295, Protocol: "DNS/UDP", Method: "A", Host: "www.example.com.",
		Path: "/a\x00b\"c", Status: -1, DNSRcode: "NOERROR",
		DNSAnswers: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")},
		DNSTTL:     300, DNSHeld: 1500 * time.Microsecond, Latency: 2 * time.Millisecond, Verdict: Forwarded,
		Reason: strings.Repeat("r", 300), Notes: []string{"one", "", "three"},
	}
}

// TestRecordCodecRoundTrip: records come back as they went, the empty one
// and one with every field set; several in a row, read one at a time.
func TestRecordCodecRoundTrip(t *testing.T) {
	in := []Record{{Time: time.Unix(0, 1)}, fullRecord(), {Time: time.Unix(5, 0), Verdict: Denied, Notes: []string{"x"}}}
	var stream []byte
	for i := range in {
		stream = AppendRecord(stream, &in[i])
	}
	rr := NewRecordReader(bytes.NewReader(stream))
	readRecords(t, rr, in)
	if err := rr.Read(new(Record)); err != io.EOF {
		t.Fatalf("after the last record: %v, want EOF", err)
	}
}

// readRecords reads len(want) records off rr and checks each is want's
// (times compared as instants).
func readRecords(t *testing.T, rr *RecordReader, want []Record) {
	t.Helper()
	for i, w := range want {
		var got Record
		if err := rr.Read(&got); err != nil {
			t.Fatalf("record %d: %v", i+1, err)
		}
		if !got.Time.Equal(w.Time) {
			t.Errorf("record %d: time %v, want %v", i+1, got.Time, w.Time)
		}
		got.Time, w.Time = time.Time{}, time.Time{}
		if !reflect.DeepEqual(got, w) {
			t.Errorf("record %d:\n%+v\nwant\n%+v", i+1, got, w)
		}
	}
}

// TestRecordCodecHostile: a stream cut short, a length past the bound
// with nothing after it, fields that do not fit their record, counts
// larger than what is left or than the bounds, an address of another
// length, trailing bytes: each is an ErrRecord, never a panic.
func TestRecordCodecHostile(t *testing.T) {
	r := fullRecord()
	good := AppendRecord(nil, &r)
	_, n := binary.Uvarint(good)
	body := good[n:]
	frame := func(b []byte) []byte { return append(binary.AppendUvarint(nil, uint64(len(b))), b...) }
	for name, stream := range map[string][]byte{
		"cut short":         good[:len(good)-1],
		"cut in the length": {0x80},
		"too long":          binary.AppendUvarint(nil, maxRecordBytes+1),
		"short body":        frame(body[:len(body)/2]),
		"trailing bytes":    frame(append(append([]byte(nil), body...), 7)),
		"unfinished varint": frame(append(binary.AppendVarint(nil, 1), bytes.Repeat([]byte{0xff}, 9)...)),
		"too many answers":  frame(append(append(append(binary.AppendVarint(nil, 1), make([]byte, 14)...), binary.AppendUvarint(nil, maxRecordAnswers+1)...), make([]byte, maxRecordAnswers+1)...)),
		"string past end":   frame(append(binary.AppendVarint(nil, 1), 100, 'a')),
		"string one past":   frame(append(binary.AppendVarint(nil, 1), 2, 'a')),                            // found by FuzzRecordReader: a panic
		"list past end":     frame(append(append(binary.AppendVarint(nil, 1), make([]byte, 14)...), 5, 0)), // 5 answers, 1 byte
		"address length 5":  frame(append(binary.AppendVarint(nil, 1), 0, 5, 1, 2, 3, 4, 5)),
		"port out of range": frame(append(binary.AppendVarint(nil, 1), 0, 0, 0, 0xff, 0xff, 0x04)),
	} {
		err := NewRecordReader(bytes.NewReader(stream)).Read(new(Record))
		if !errors.Is(err, ErrRecord) {
			t.Errorf("%s: %v, want %v", name, err, ErrRecord)
		}
	}
}

// A record longer than a reader takes is passed over, counted, and the
// stream goes on; the proxy's records are bounded well below that: a
// request naming megabytes of topics gives a record cut to its bounds.
func TestRecordBounds(t *testing.T) {
	good := fullRecord()
	stream := append(binary.AppendUvarint(nil, maxRecordBytes+1), make([]byte, maxRecordBytes+1)...)
	stream = AppendRecord(stream, &good)
	rr := NewRecordReader(bytes.NewReader(stream))
	readRecords(t, rr, []Record{good})
	if rr.Skipped != 1 {
		t.Fatalf("skipped %d records, want 1", rr.Skipped)
	}

	huge := fullRecord()
	huge.Path = strings.Repeat("topic,", 1<<20)
	huge.Notes = slices.Repeat([]string{strings.Repeat("n", 1<<20)}, 100)
	huge.DNSAnswers = slices.Repeat([]netip.Addr{netip.MustParseAddr("192.0.2.1")}, 10000)
	b := huge.bounded()
	if n := len(AppendRecord(nil, &b)); n > maxRecordBytes {
		t.Fatalf("bounded record of %d bytes (a reader takes %d)", n, maxRecordBytes)
	}
	if !strings.HasSuffix(b.Path, "…") || len(b.Notes) != maxRecordNotes || len(b.DNSAnswers) != maxRecordAnswers || !strings.HasPrefix(huge.Path, b.Path[:100]) {
		t.Fatalf("bounded: path of %d bytes, %d notes, %d answers", len(b.Path), len(b.Notes), len(b.DNSAnswers))
	}
	if len(huge.Notes[0]) != 1<<20 || len(huge.Notes) != 100 {
		t.Fatal("bounding changed the record's own notes")
	}
	if small := fullRecord().bounded(); !reflect.DeepEqual(small, fullRecord()) {
		t.Fatalf("a record within bounds changed:\n%+v", small)
	}
}

// FuzzRecordReader: any bytes are read without panicking; what is read
// encodes back to a record that reads the same.
func FuzzRecordReader(f *testing.F) {
	r := fullRecord()
	f.Add(AppendRecord(nil, &r))
	f.Add(AppendRecord(nil, &Record{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		rr := NewRecordReader(bytes.NewReader(b))
		for range 4 {
			var rec Record
			if err := rr.Read(&rec); err != nil {
				return
			}
			var again Record
			if err := NewRecordReader(bytes.NewReader(AppendRecord(nil, &rec))).Read(&again); err != nil {
				t.Fatalf("re-encoded record does not read: %v", err)
			}
			if !again.Time.Equal(rec.Time) {
				t.Fatalf("time %v, was %v", again.Time, rec.Time)
			}
			again.Time, rec.Time = time.Time{}, time.Time{}
			if !reflect.DeepEqual(again, rec) {
				t.Fatalf("re-encoded\n%+v\nwas\n%+v", again, rec)
			}
		}
	})
}

// BenchmarkRecordCodec: a DNS record written and read in the binary form
// and as NDJSON (the stream's two forms), side by side.
func BenchmarkRecordCodec(b *testing.B) {
	r := fullRecord()
	r.Reason, r.Notes = "", nil
	b.Run("binary", func(b *testing.B) {
		var buf []byte
		var out Record
		src := bytes.NewReader(nil)
		rr := NewRecordReader(src)
		for range b.N {
			buf = AppendRecord(buf[:0], &r)
			src.Reset(buf)
			if err := rr.Read(&out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ndjson", func(b *testing.B) {
		var buf bytes.Buffer
		var out Record
		enc := json.NewEncoder(&buf)
		for range b.N {
			buf.Reset()
			if err := enc.Encode(&r); err != nil {
				b.Fatal(err)
			}
			if err := json.Unmarshal(bytes.TrimSuffix(buf.Bytes(), []byte("\n")), &out); err != nil {
				b.Fatal(err)
			}
		}
	})
}
