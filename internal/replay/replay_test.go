package replay

import (
	"slices"
	"testing"
)

// What is delivered during the replay comes after it, in order; what is
// delivered after it comes at once.
func TestReplayBeforeChanges(t *testing.T) {
	var got []string
	var s *Sub[string]
	s = New(func(v string, deleted bool) {
		if deleted {
			v = "-" + v
		}
		got = append(got, v)
		if v == "a" { // changes arriving while the replay runs
			s.Deliver("a2", false)
			s.Deliver("b", true)
		}
	})
	s.Replay([]string{"a", "b"})
	s.Deliver("c", false)
	if want := []string{"a", "b", "a2", "-b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("delivered %q, want %q", got, want)
	}
}
