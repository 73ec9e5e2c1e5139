package ipcache

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strconv"

	"github.com/filament-net/filament/agent/identity"
)

// DecodeEntry decodes a stored entry exactly as json.Unmarshal into a zero
// Entry would: the same Entry for every value json.Unmarshal accepts, an
// error for every value it refuses. Values in the form the agents write
// (json.Marshal of an Entry whose strings are printable ASCII other than
// ", \, <, > and &, which it escapes) are read by
// a scanner of that one form, which a cluster mesh of millions of entries
// needs (encoding/json's reflection was a third of an agent's initial
// sync); anything else — other key order, spaces, escapes, other bytes —
// goes to json.Unmarshal. FuzzDecodeEntry holds the two equal.
func DecodeEntry(data []byte) (Entry, error) {
	return DecodeEntryAt(data, "", netip.Addr{})
}

// DecodeEntryAt is DecodeEntry for a value stored under the key of addr,
// text being the address as the key spells it (netip.ParseAddr(text) is
// addr): an entry whose "ip" is that same text takes addr rather than
// parsing it again (a cluster mesh's initial sync reads millions).
func DecodeEntryAt(data []byte, text string, addr netip.Addr) (Entry, error) {
	if e, ok := decodeCanonical(data, text, addr); ok {
		return e, nil
	}
	var e Entry
	err := json.Unmarshal(data, &e)
	return e, err
}

// decodeCanonical reads {"ip":S,"identity":N,"hostIP":S,"node":S} with
// optional ,"namespace":S and ,"pod":S after it, in that order, nothing
// else; ok is false for anything else, and for a value json.Unmarshal
// would refuse (so the caller's fallback reports the error).
func decodeCanonical(data []byte, text string, addr netip.Addr) (e Entry, ok bool) {
	d := canon{b: data}
	if !d.lit(`{"ip":`) {
		return Entry{}, false
	}
	ip, ok := d.str()
	if !ok {
		return Entry{}, false
	}
	if text != "" && string(ip) == text {
		e.IP = addr
	} else if e.IP.UnmarshalText(ip) != nil {
		return Entry{}, false
	}
	if !d.lit(`,"identity":`) {
		return Entry{}, false
	}
	id, ok := d.uint32()
	if !ok || !d.lit(`,"hostIP":`) {
		return Entry{}, false
	}
	e.Identity = identity.NumericIdentity(id)
	host, ok := d.str()
	if !ok || e.HostIP.UnmarshalText(host) != nil || !d.lit(`,"node":`) {
		return Entry{}, false
	}
	node, ok := d.str()
	if !ok {
		return Entry{}, false
	}
	e.Node = string(node)
	if d.lit(`,"namespace":`) {
		ns, ok := d.str()
		if !ok {
			return Entry{}, false
		}
		e.Namespace = string(ns)
	}
	if d.lit(`,"pod":`) {
		pod, ok := d.str()
		if !ok {
			return Entry{}, false
		}
		e.Pod = string(pod)
	}
	if !d.lit("}") || len(d.b) != 0 {
		return Entry{}, false
	}
	return e, true
}

// canon scans the canonical form; each method consumes what it read.
type canon struct{ b []byte }

func (d *canon) lit(s string) bool {
	if len(d.b) < len(s) || string(d.b[:len(s)]) != s {
		return false
	}
	d.b = d.b[len(s):]
	return true
}

// str reads a string of printable ASCII without escapes (what JSON
// decodes to itself).
func (d *canon) str() ([]byte, bool) {
	if len(d.b) == 0 || d.b[0] != '"' {
		return nil, false
	}
	end := bytes.IndexByte(d.b[1:], '"')
	if end < 0 {
		return nil, false
	}
	s := d.b[1 : 1+end]
	for _, c := range s {
		if c < 0x20 || c > 0x7e || c == '\\' {
			return nil, false
		}
	}
	d.b = d.b[2+end:]
	return s, true
}

// uint32 reads a JSON integer without sign, fraction, exponent or leading
// zero that fits 32 bits.
func (d *canon) uint32() (uint32, bool) {
	n := 0
	for n < len(d.b) && d.b[n] >= '0' && d.b[n] <= '9' {
		n++
	}
	if n == 0 || n > 10 || (d.b[0] == '0' && n > 1) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(d.b[:n]), 10, 32)
	if err != nil {
		return 0, false
	}
	d.b = d.b[n:]
	return uint32(v), true
}
