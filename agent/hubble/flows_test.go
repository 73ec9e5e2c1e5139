package hubble

import (
	"errors"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/hubble/filter"
	"github.com/filament-net/filament/agent/hubble/pb/flow"
)

// Config.OnFlow sees every flow recorded, the one the ring holds.
func TestOnFlow(t *testing.T) {
	var seen []*flow.Flow
	s, err := New(Config{Meta: Meta{NodeName: "n1"}, OnFlow: func(f *flow.Flow) { seen = append(seen, f) }})
	if err != nil {
		t.Fatal(err)
	}
	evs := events(time.Unix(1000, 0))
	for _, ev := range evs {
		s.Record(ev)
	}
	if len(seen) != len(evs) {
		t.Fatalf("OnFlow saw %d flows, want %d", len(seen), len(evs))
	}
	rd := s.Flows().Reader(0, false)
	for i, want := range seen {
		if f, _, ok := rd.Next(); !ok || f != want {
			t.Errorf("flow %d: ring holds %v, OnFlow saw %v", i, f, want)
		}
	}
}

func TestParseAndCompileFilters(t *testing.T) {
	evs := events(time.Unix(1000, 0))
	flows := make([]*flow.Flow, len(evs))
	for i, ev := range evs {
		flows[i] = Meta{NodeName: "n1"}.Flow(ev)
	}
	passing := func(allow, deny string) (n int) {
		t.Helper()
		a, err := filter.Parse(allow)
		if err != nil {
			t.Fatal(err)
		}
		d, err := filter.Parse(deny)
		if err != nil {
			t.Fatal(err)
		}
		set, err := filter.Compile(a, d)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range flows {
			if set.Pass(f) {
				n++
			}
		}
		return n
	}
	for _, c := range []struct {
		allow, deny string
		want        int
	}{
		{"", "", 5},
		{`{"verdict":["DROPPED"]}`, "", 2}, // the drop and the denied request
		{`{"verdict":["DROPPED"]} {"protocol":["UDP"]}`, "", 3},
		{`{"verdict":["DROPPED"]},{"protocol":["UDP"]}`, "", 3},
		{`[{"verdict":["DROPPED"]},{"protocol":["UDP"]}]`, "", 3},
		{"", `{"event_type":[{"type":129}]}`, 2}, // no L7 record
		{`{"verdict":["DROPPED"]}`, `{"http_status_code":["403"]}`, 1},
		{`{"destinationLabel":["k8s:app=dns"]}`, "", 1}, // JSON names too
	} {
		if got := passing(c.allow, c.deny); got != c.want {
			t.Errorf("allow %s deny %s: %d flows pass, want %d", c.allow, c.deny, got, c.want)
		}
	}
	for _, bad := range []string{`{"verdict":["NOPE"]}`, `{"no_such_field":[1]}`, `{"verdict":`, `[{]`, `"x"`} {
		if _, err := filter.Parse(bad); !errors.Is(err, filter.ErrInvalid) {
			t.Errorf("filter.Parse(%s): %v, want filter.ErrInvalid", bad, err)
		}
	}
	ff, err := filter.Parse(`{"http_status_code":["abc"]}`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := filter.Compile(ff, nil); !errors.Is(err, filter.ErrInvalid) {
		t.Errorf("a filter that does not compile: %v, want filter.ErrInvalid", err)
	}
}
