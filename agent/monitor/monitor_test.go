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
	fast, lost, stopFast := h.SubscribeCounted(Filter{})
	for i := 0; i < 1100; i++ {
		h.Publish(Event{Type: "drop"})
		<-fast // keeps up
	}
	if h.Lost() != 76 || lost() != 0 {
		t.Fatalf("lost %d in all, %d by the subscriber keeping up; want 76 and 0", h.Lost(), lost())
	}
	stopFast()
	stop()
	stop() // idempotent
}

// A drop before the endpoint is known (a spoofed source address) carries
// endpoint 0 and the interface it came in on: the hub names the endpoint
// whose host interface that is, as the side the packet left or entered.
func TestEndpointFromInterface(t *testing.T) {
	h := NewHub(func(id identity.NumericIdentity) []string { return []string{"id=" + id.String()} })
	h.SetInterfaces(func(ifindex uint32) (uint16, identity.NumericIdentity, bool) {
		if ifindex == 42 {
			return 7, 300, true
		}
		return 0, 0, false
	})
	ep7, stop := h.Subscribe(Filter{Endpoint: 7})
	defer stop()
	all, stopAll := h.Subscribe(Filter{})
	defer stopAll()
	h.Publish(Event{Type: "drop", Reason: "source address not of the endpoint", Direction: "egress", IfIndex: 42})
	h.Publish(Event{Type: "drop", Direction: "ingress", IfIndex: 42})
	h.Publish(Event{Type: "drop", Direction: "egress", IfIndex: 3})                                 // not an endpoint's interface
	h.Publish(Event{Type: "drop", Direction: "egress", Endpoint: 9, SrcIdentity: 500, IfIndex: 42}) // already named
	if len(ep7) != 2 || len(all) != 4 {
		t.Fatalf("endpoint 7 got %d events, all %d", len(ep7), len(all))
	}
	ev := <-ep7
	if ev.Endpoint != 7 || ev.SrcIdentity != 300 || ev.DstIdentity != 0 || len(ev.SrcLabels) != 1 || ev.SrcLabels[0] != "id=300" {
		t.Fatalf("egress drop: %+v", ev)
	}
	ev = <-ep7
	if ev.Endpoint != 7 || ev.DstIdentity != 300 || ev.SrcIdentity != 0 {
		t.Fatalf("ingress drop: %+v", ev)
	}
	<-all
	<-all
	if ev = <-all; ev.Endpoint != 0 || ev.SrcIdentity != 0 {
		t.Fatalf("foreign interface: %+v", ev)
	}
	if ev = <-all; ev.Endpoint != 9 || ev.SrcIdentity != 500 {
		t.Fatalf("named event changed: %+v", ev)
	}
}
