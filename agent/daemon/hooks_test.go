package daemon

import (
	"context"
	"testing"

	"github.com/filament-net/filament/agent/endpoint"
)

// engineCalls records an engine's hook calls.
type engineCalls struct{ up, down int }

func (e *engineCalls) EndpointUp(context.Context, endpoint.Endpoint) error { e.up++; return nil }
func (e *engineCalls) EndpointDown(endpoint.Endpoint)                      { e.down++ }

// A failed load-balancer step leaves the engine's programs on the pod's
// device: its caller takes the endpoint down itself, after setting the
// device down (a restore) or before removing it (a create). Until
// 2026-12-07 the hooks took the programs off first, so a restore held a
// pod's device up without them until it was set down, and for good if
// that failed (found by a review).
func TestHooksLeaveTheEngineUpOnFailure(t *testing.T) {
	e := &engineCalls{}
	h := hooks{engine: e, lb: &lbNetNS{enabled: true, cookies: map[uint16]uint64{}}, changed: func() {}, gone: func(uint16) {}}
	err := h.EndpointUp(context.Background(), endpoint.Endpoint{ID: 7, NetNS: "/nonexistent/netns"})
	if err == nil {
		t.Fatal("the load balancer's step did not fail")
	}
	if e.down != 0 {
		t.Errorf("the engine was taken down %d times by the hooks themselves", e.down)
	}
}
