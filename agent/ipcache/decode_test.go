package ipcache

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/filament-net/filament/agent/identity"
)

// FuzzDecodeEntry holds DecodeEntry equal to json.Unmarshal into a zero
// Entry on any value a remote may have written: the same entry, or an
// error where it errs.
func FuzzDecodeEntry(f *testing.F) {
	for _, s := range []string{
		`{"ip":"10.0.0.1","identity":70000,"hostIP":"192.168.1.2","node":"n1","namespace":"default","pod":"web-1"}`,
		`{"ip":"10.0.0.1","identity":70000,"hostIP":"","node":"n1"}`,
		`{"ip":"10.0.0.1","identity":4294967296,"hostIP":"","node":"n1"}`,
		`{"ip":"10.0.0.1","identity":007,"hostIP":"","node":"n1"}`,
		`{"ip":"10.0.0.1","identity":7,"hostIP":"","node":"n\u00e9"}`,
		`{"ip":"10.0.0.1","identity":7,"hostIP":"","node":"n1"} `,
		`{"ip":"10.0.0.1","identity":7,"hostIP":"","node":"n1"}x`,
		`{"ip":"10.0.0.1","identity":7,"hostIP":"","node":"n1","pod":"a","pod":"b"}`,
		`{"IP":"10.0.0.1","identity":7,"hostIP":"","node":"n1"}`,
		`{"ip":"fe80::1%eth0","identity":7.0,"hostIP":null,"node":"n1"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		var want Entry
		werr := json.Unmarshal(value, &want)
		got, err := DecodeEntry(value)
		if (err != nil) != (werr != nil) || got != want && werr == nil {
			t.Fatalf("DecodeEntry(%q) = %#v, %v; json.Unmarshal: %#v, %v", value, got, err, want, werr)
		}
		if _, ok := decodeCanonical(value, "", netip.Addr{}); ok && werr != nil {
			t.Fatalf("the canonical scanner took %q, which json.Unmarshal refuses: %v", value, werr)
		}
		// Under a key (the seeds' address and another): the same.
		for _, k := range []string{"10.0.0.1", "10.0.0.2"} {
			at, aerr := DecodeEntryAt(value, k, netip.MustParseAddr(k))
			if (aerr != nil) != (werr != nil) || at != want && werr == nil {
				t.Fatalf("DecodeEntryAt(%q, %s) = %#v, %v; json.Unmarshal: %#v, %v", value, k, at, aerr, want, werr)
			}
		}
	})
}

// TestDecodeEntryCanonical: what agents publish (json.Marshal of an entry
// with printable ASCII names) takes the scanner, not the fallback, and
// decodes to itself.
func TestDecodeEntryCanonical(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	name := func() string {
		b := make([]byte, rng.IntN(20))
		for i := range b {
			for {
				b[i] = byte(0x20 + rng.IntN(0x5f))
				// json.Marshal escapes these.
				if b[i] != '"' && b[i] != '\\' && b[i] != '<' && b[i] != '>' && b[i] != '&' {
					break
				}
			}
		}
		return string(b)
	}
	for i := range 10000 {
		e := Entry{
			IP:        netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), byte(rng.IntN(256))}),
			Identity:  identity.NumericIdentity(rng.Uint32()),
			Node:      name(),
			Namespace: name(),
			Pod:       name(),
		}
		if i%2 == 0 {
			e.HostIP = netip.AddrFrom4([4]byte{192, 168, byte(i), 1})
		}
		if i%3 == 0 {
			e.Identity = identity.NumericIdentity(i % 10)
		}
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := decodeCanonical(b, "", netip.Addr{})
		if !ok || got != e {
			t.Fatalf("decodeCanonical(%s) = %#v, %v; want %#v", b, got, ok, e)
		}
		if got, ok := decodeCanonical(b, e.IP.String(), e.IP); !ok || got != e {
			t.Fatalf("decodeCanonical(%s) under its key = %#v, %v; want %#v", b, got, ok, e)
		}
	}
}

// BenchmarkDecodeEntry: the scanner against json.Unmarshal (the baseline)
// on the form agents publish.
func BenchmarkDecodeEntry(b *testing.B) {
	v := []byte(`{"ip":"10.4.13.200","identity":131074,"hostIP":"172.16.4.13","node":"node-13","namespace":"default","pod":"pod-5096"}`)
	b.Run("DecodeEntry", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeEntry(v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json.Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var e Entry
			if err := json.Unmarshal(v, &e); err != nil {
				b.Fatal(err)
			}
		}
	})
}
