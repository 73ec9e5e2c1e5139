package clustermesh

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// Heartbeats written by another cluster are hostile: anything but a
// canonical decimal uint64 of at most 20 bytes is refused, naming the value.
func TestParseHeartbeat(t *testing.T) {
	for _, ok := range []struct {
		in   string
		want uint64
	}{{"0", 0}, {"1", 1}, {"42", 42}, {"18446744073709551615", 1<<64 - 1}} {
		got, err := ParseHeartbeat([]byte(ok.in))
		if err != nil || got != ok.want {
			t.Errorf("%q: got %d, %v; want %d", ok.in, got, err, ok.want)
		}
		if s := string(FormatHeartbeat(got)); s != ok.in {
			t.Errorf("%q formats back as %q", ok.in, s)
		}
	}
	for _, bad := range []string{"", "01", "+1", "-1", " 1", "1 ", "0x10", "1e3", "18446744073709551616", "184467440737095516150",
		"2026-12-01T10:00:00Z", strings.Repeat("9", 4096), "1\x00", "\xff"} {
		if _, err := ParseHeartbeat([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%.40q accepted (err %v)", bad, err)
		} else if len(bad) <= maxHeartbeatLen && bad != "" && !strings.Contains(err.Error(), "heartbeat") {
			t.Errorf("%q: error %q does not name the heartbeat", bad, err)
		}
	}
}

// FuzzParseHeartbeat: no value panics; an accepted one is canonical (it
// formats back to the same bytes) and short.
func FuzzParseHeartbeat(f *testing.F) {
	for _, s := range []string{"0", "7", "18446744073709551615", "01", "-1", "x"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, err := ParseHeartbeat(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%q: error %v does not wrap ErrInvalid", b, err)
			}
			return
		}
		if len(b) > maxHeartbeatLen || !bytes.Equal(FormatHeartbeat(seq), b) {
			t.Fatalf("%q accepted as %d", b, seq)
		}
	})
}
