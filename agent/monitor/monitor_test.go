package monitor

import (
	"testing"

	"github.com/filament-net/filament/agent/identity"
)

func TestFiltersAndLabels(t *testing.T) {
	h := NewHub(func(id identity.NumericIdentity) []string { return []string{"id=" + id.String()} })
	all, stopAll := h.Subscribe(Filter{})
	drops, stopDrops := h.Subscribe(Filter{Type: "drop"})
	ep7, stopEP := h.Subscribe(Filter{Endpoint: 7})
	defer stopAll()
	defer stopDrops()
	defer stopEP()
	h.Publish(Event{Type: "drop", Endpoint: 7, SrcIdentity: 300, DstIdentity: 2})
	h.Publish(Event{Type: "policy-verdict", Endpoint: 8, PeerEP: 7})
	h.Publish(Event{Type: "policy-verdict", Endpoint: 9})
	if len(all) != 3 || len(drops) != 1 || len(ep7) != 2 {
		t.Fatalf("all %d drops %d ep7 %d", len(all), len(drops), len(ep7))
	}
	ev := <-drops
	if len(ev.SrcLabels) != 1 || ev.SrcLabels[0] != "id=300" || ev.DstLabels[0] != "id=2 (reserved:world)" {
		t.Fatalf("labels: %+v", ev)
	}
}

func TestSlowSubscriberLosesEvents(t *testing.T) {
	h := NewHub(nil)
	_, stop := h.Subscribe(Filter{})
	for i := 0; i < 1100; i++ {
		h.Publish(Event{Type: "drop"})
	}
	if h.Lost() != 76 {
		t.Fatalf("lost %d, want 76", h.Lost())
	}
	stop()
	stop() // idempotent
}
