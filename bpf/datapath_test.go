package bpf

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/filament-net/filament/internal/testutil"
)

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v %s", args, err, out)
	}
}

// The skeleton programs load into this kernel, attach with tcx to the host
// side of a veth, and count a real ping in both directions.
func TestSkeletonCountsRealPackets(t *testing.T) {
	testutil.RequireRoot(t)
	suffix := fmt.Sprintf("%x", rand.Uint32())
	host, pod := "fbpf-h-"+suffix, "fbpf-p-"+suffix
	for _, n := range []string{host, pod} {
		ip(t, "netns", "add", n)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
	}
	ip(t, "-n", host, "link", "add", "vh", "type", "veth", "peer", "name", "vp", "netns", pod)
	ip(t, "-n", host, "addr", "add", "10.99.0.1/24", "dev", "vh")
	ip(t, "-n", pod, "addr", "add", "10.99.0.2/24", "dev", "vp")
	ip(t, "-n", host, "link", "set", "vh", "up")
	ip(t, "-n", pod, "link", "set", "vp", "up")

	var objs DatapathObjects
	if err := LoadDatapathObjects(&objs, nil); err != nil {
		t.Fatalf("load: %v", err)
	}
	defer objs.Close()
	hostNS, err := ns.GetNS("/var/run/netns/" + host)
	if err != nil {
		t.Fatal(err)
	}
	defer hostNS.Close()
	var links []link.Link
	err = hostNS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("vh")
		if err != nil {
			return err
		}
		for _, a := range []struct {
			prog   *ebpf.Program
			attach ebpf.AttachType
		}{{objs.FromContainer, ebpf.AttachTCXIngress}, {objs.ToContainer, ebpf.AttachTCXEgress}} {
			lk, err := link.AttachTCX(link.TCXOptions{Interface: l.Attrs().Index, Program: a.prog, Attach: a.attach})
			if err != nil {
				return err
			}
			links = append(links, lk)
		}
		return nil
	})
	if errors.Is(err, ebpf.ErrNotSupported) {
		testutil.SkipMissingFeature(t, "tcx", err)
	}
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	defer func() {
		for _, l := range links {
			l.Close()
		}
	}()
	if out, err := exec.Command("ip", "netns", "exec", pod, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.1").CombinedOutput(); err != nil {
		t.Fatalf("ping through the attached programs: %v %s", err, out)
	}
	sum := func(key uint32) (pk uint64) {
		var per []DatapathCounter
		if err := objs.Counters.Lookup(key, &per); err != nil {
			t.Fatal(err)
		}
		for _, c := range per {
			pk += c.Packets
		}
		return pk
	}
	// key = direction*2 + verdict; forwarded = 0.
	if eg, in := sum(0), sum(2); eg < 3 || in < 3 {
		t.Fatalf("counted %d packets from the pod and %d to it; want at least 3 each", eg, in)
	}
	if dropped := sum(1) + sum(3); dropped != 0 {
		t.Fatalf("skeleton dropped %d packets", dropped)
	}
}
