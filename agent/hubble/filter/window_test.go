package filter

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

// A request's window as a node's server and the relay both apply it:
// both ends included, nil or the zero time unbounded.
func TestInWindow(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	at := timestamppb.New
	zero := timestamppb.New(time.Time{})
	for _, tc := range []struct {
		since, until *timestamppb.Timestamp
		t            time.Time
		want         bool
	}{
		{nil, nil, t0, true},
		{at(t0), nil, t0, true},
		{at(t0), nil, t0.Add(-time.Nanosecond), false},
		{nil, at(t0), t0, true},
		{nil, at(t0), t0.Add(time.Nanosecond), false},
		{zero, zero, t0, true},
		{at(t0.Add(time.Second)), at(t0.Add(2 * time.Second)), t0, false},
	} {
		if got := InWindow(tc.t, tc.since, tc.until); got != tc.want {
			t.Errorf("InWindow(%v, %v, %v) = %v, want %v", tc.t, tc.since, tc.until, got, tc.want)
		}
	}
}
