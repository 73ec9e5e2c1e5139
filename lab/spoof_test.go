package lab_test

import (
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/lab"
	"github.com/filament-net/filament/lab/labtest"
)

// A packet a pod sends from an address that is not its own is dropped, and
// the drop event names the pod's endpoint (the program knows only the
// interface it came in on). Issue 13, item 13.
func TestSpoofedSourceDropNamesEndpoint(t *testing.T) {
	l := labtest.Up(t, 1, 24)
	a := labtest.Pod(t, l, "n1", "spoofer", "app=spoofer")
	b := labtest.Pod(t, l, "n1", "victim", "app=victim")
	var epID uint16
	var epIdentity uint32
	for _, e := range labtest.Endpoints(t, l, "n1") {
		if e.IPv4.String() == a.IP {
			epID, epIdentity = e.ID, uint32(e.Identity)
		}
	}
	if epID == 0 {
		t.Fatalf("no endpoint with the pod's address %s", a.IP)
	}
	const spoofed = "10.250.0.9"
	if out, err := exec.Command("ip", "-n", a.NetNS, "addr", "add", spoofed+"/32", "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("add the spoofed address: %v %s", err, out)
	}

	events := make(chan types.Event, 256)
	labtest.Monitor(t, l, "n1", "drop", func(ev types.Event) {
		select {
		case events <- ev:
		default:
		}
	})

	send := func() {
		inNS(t, lab.NetNSPath(a.NetNS), func() error {
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(spoofed)}, &net.UDPAddr{IP: net.ParseIP(b.IP), Port: 9})
			if err != nil {
				t.Errorf("dial from the spoofed address: %v", err)
				return nil
			}
			defer c.Close()
			c.Write([]byte("spoofed"))
			return nil
		})
	}
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	send()
	for {
		select {
		case ev := <-events:
			if ev.Reason != "source address not of the endpoint" || ev.Src.Addr().String() != spoofed {
				continue
			}
			if ev.Endpoint != epID || uint32(ev.SrcIdentity) != epIdentity || len(ev.SrcLabels) == 0 {
				t.Fatalf("spoofed drop names endpoint %d identity %d labels %v, want endpoint %d identity %d with labels",
					ev.Endpoint, ev.SrcIdentity, ev.SrcLabels, epID, epIdentity)
			}
			return
		case <-tick.C:
			send()
		case <-deadline:
			t.Fatal("no drop event for the spoofed source")
		}
	}
}
