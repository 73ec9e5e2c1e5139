package hostaddrs

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/internal/testutil"
)

func TestSelect(t *testing.T) {
	a := netip.MustParseAddr
	ex := Exclude{NodeIPs: []netip.Addr{a("172.30.0.1")}, PodCIDR: netip.MustParsePrefix("10.244.0.0/24")}
	got, dropped := Select([]Addr{
		{"eth0", a("172.30.0.1")},                           // the node's underlay address: in its record's IPs
		{"eth1", a("192.168.7.5")},                          // a second interface's
		{"lo", a("127.0.0.1")},                              // every node's
		{"lo", a("198.18.7.2")},                             // a loopback address (a router's)
		{"docker0", a("172.17.0.1")},                        // a bridge's
		{"docker0", a("172.17.0.1")},                        // twice
		{"eth1", a("169.254.10.1")},                         // link-local
		{"filament_host", a("10.244.0.1")},                  // the pods' gateway
		{"eth2", a("10.244.0.9")},                           // in the pod CIDR
		{"filament_wg0", a("192.0.2.9")},                    // Filament's own device
		{"kube-ipvs0", a("10.96.0.10")},                     // a ClusterIP (kube-proxy's IPVS)
		{"eth3", netip.MustParseAddr("::ffff:192.168.8.8")}, // a mapped form
	}, ex)
	want := []netip.Addr{a("172.17.0.1"), a("192.168.7.5"), a("192.168.8.8"), a("198.18.7.2")}
	if !slices.Equal(got, want) || dropped != 0 {
		t.Fatalf("Select = %v (%d dropped), want %v", got, dropped, want)
	}
	// More than a record holds: the lowest, and how many were left out.
	var many []Addr
	for i := 40; i > 0; i-- {
		many = append(many, Addr{"eth1", a(fmt.Sprintf("192.168.9.%d", i))})
	}
	got, dropped = Select(many, Exclude{})
	if len(got) != node.MaxLocalAddrs || dropped != 40-node.MaxLocalAddrs || got[0] != a("192.168.9.1") {
		t.Fatalf("Select of 40 = %v (%d dropped)", got, dropped)
	}
	n := node.Node{Name: "n1", IPs: []string{"172.30.0.1"}, LocalAddrs: Strings(got)}
	if err := n.Check(); err != nil {
		t.Fatalf("a record with what Select gives is refused: %v", err)
	}
}

// Follow publishes an address added to the node, and its removal, at the
// kernel's event (not at the next interval, an hour here), in a network
// namespace of the test's own.
func TestFollow(t *testing.T) {
	testutil.RequireRoot(t)
	runtime.LockOSThread() // never unlocked: the thread ends with the test
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("unshare a network namespace: %v", err)
	}
	ns, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns) // for the other goroutine, whose thread is elsewhere
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("198.18.7.2/32")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	got := make(chan []netip.Addr, 16)
	go func() {
		time.Sleep(200 * time.Millisecond)
		if err := h.AddrAdd(lo, addr); err != nil {
			t.Errorf("add: %v", err)
			cancel()
			return
		}
		select {
		case <-got:
		case <-ctx.Done():
			return
		}
		if err := h.AddrDel(lo, addr); err != nil {
			t.Errorf("del: %v", err)
		}
	}()
	var published [][]netip.Addr
	Follow(ctx, Exclude{}, time.Hour, func(a []netip.Addr) {
		published = append(published, a)
		if len(published) == 1 {
			got <- a
		} else {
			cancel()
		}
	})
	want := [][]netip.Addr{{netip.MustParseAddr("198.18.7.2")}, {}}
	if len(published) != 2 || !slices.Equal(published[0], want[0]) || len(published[1]) != 0 {
		t.Fatalf("published %v, want %v", published, want)
	}
}

// Draining a closed events channel (netlink closes it when the context
// ends) ends: a closed channel is always ready, and before 2026-12-05
// the drain read it forever, so an agent stopping while an address
// event was being handled never finished its shutdown (a lab run's
// TestWireGuardDeviceProcessFollowsAgent).
func TestDrainStopsAtClose(t *testing.T) {
	ch := make(chan netlink.AddrUpdate, 4)
	ch <- netlink.AddrUpdate{}
	ch <- netlink.AddrUpdate{}
	done := make(chan chan netlink.AddrUpdate)
	go func() { done <- drain(ch) }()
	select {
	case got := <-done:
		if got == nil || len(ch) != 0 {
			t.Fatalf("drain of an open channel: %v, %d left", got, len(ch))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("drain of an open channel did not return")
	}
	ch <- netlink.AddrUpdate{}
	close(ch)
	go func() { done <- drain(ch) }()
	select {
	case got := <-done:
		if got != nil {
			t.Fatal("drain of a closed channel kept it")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("drain of a closed channel spins")
	}
}
