package veth

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/filament-net/filament/agent/endpoint"
	"github.com/filament-net/filament/internal/testutil"
)

// A device held down and set up again has the node's route to its pod
// back (setting a device down removes its routes): until 2026-12-07 a
// held endpoint set up again by a later start had none, and the node and
// its host-network clients could not reach the pod (found by a review).
// A missing device is endpoint.ErrNoDevice.
func TestSetUpRestoresTheRoute(t *testing.T) {
	testutil.InNewNetNS(t)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "filtest0"}, PeerName: "filtest1"}); err != nil {
		t.Fatal(err)
	}
	pod := netip.MustParseAddr("10.9.9.9")
	routed := func() bool {
		rs, err := netlink.RouteGet(pod.AsSlice())
		return err == nil && len(rs) == 1 && rs[0].LinkIndex != 0 && func() bool {
			l, err := netlink.LinkByIndex(rs[0].LinkIndex)
			return err == nil && l.Attrs().Name == "filtest0"
		}()
	}
	var p Plumber
	if err := p.SetUp("filtest0", pod, true); err != nil {
		t.Fatal(err)
	}
	if !routed() {
		t.Fatal("no route to the pod after SetUp")
	}
	if err := p.SetUp("filtest0", pod, false); err != nil {
		t.Fatal(err)
	}
	if routed() {
		t.Fatal("a route to the pod through a device held down")
	}
	if err := p.SetUp("filtest0", pod, true); err != nil {
		t.Fatal(err)
	}
	if !routed() {
		t.Error("no route to the pod once its device is set up again")
	}
	if err := p.SetUp("nosuchdev", pod, false); !errors.Is(err, endpoint.ErrNoDevice) {
		t.Errorf("a missing device: %v, want ErrNoDevice", err)
	}
}
