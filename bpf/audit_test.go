package bpf

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

const eventFlagAudit = 4 // EVENT_F_AUDIT

// setPolicyAudit turns the node config's policy audit mode on or off,
// keeping its other settings.
func (f *fixture) setPolicyAudit(on bool) {
	f.t.Helper()
	k := uint32(0)
	var v DatapathNodeConfig
	if err := f.objs.Config.Lookup(&k, &v); err != nil {
		f.t.Fatal(err)
	}
	v.PolicyAudit = 0
	if on {
		v.PolicyAudit = 1
	}
	putConfig(f.t, f.objs.Config, v)
}

// Policy audit mode: at an endpoint enforcing both directions with no
// allowing rule, a new connection (egress, ingress) and one a deny rule
// matches pass and are reported once each, as audited verdicts with the
// reason they would have been dropped for; their later packets pass
// without events, and a drop that is not policy's (a segment of no known
// connection: the marker) still drops. Without audit mode the same
// connections are dropped as before.
func TestPolicyAuditMode(t *testing.T) {
	for _, audit := range []bool{true, false} {
		name := map[bool]string{true: "on", false: "off"}[audit]
		t.Run(name, func(t *testing.T) {
			f := load(t)
			f.setPolicyAudit(audit)
			f.rule(dirEgress, peerID, 6, 81, 24, true) // deny TCP 81 to the peer
			r, err := newRingReader(f.objs.Events)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			want := uint32(actShot)
			if audit {
				want = actOK
			}
			if ret := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43000, 80, true, false)); ret != want {
				t.Fatalf("SYN with no allowing rule: %d, want %d", ret, want)
			}
			if audit {
				for i := 0; i < 3; i++ {
					if ret := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 80, 43000, i == 0, true)); ret != actOK {
						t.Fatalf("reply %d: %d", i, ret)
					}
					if ret := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43000, 80, false, true)); ret != actOK {
						t.Fatalf("established segment %d: %d", i, ret)
					}
				}
			}
			if ret := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 44000, 8080, true, false)); ret != want {
				t.Fatalf("ingress SYN with no allowing rule: %d, want %d", ret, want)
			}
			if ret := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43001, 81, true, false)); ret != want {
				t.Fatalf("SYN a deny rule matches: %d, want %d", ret, want)
			}
			if ret := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43002, 80, false, true)); ret != actShot {
				t.Fatalf("segment of no known connection: %d, want dropped in any mode", ret)
			}
			evs := f.eventsUntil(r, reasonCTMissing)
			wantEvs := []struct {
				reason, dir uint8
				dport       uint16
			}{{reasonDenied, dirEgress, 80}, {reasonDenied, dirIngress, 8080}, {reasonDenyRule, dirEgress, 81}}
			if len(evs) != len(wantEvs)+1 {
				t.Fatalf("events %+v: want %d and the marker", evs, len(wantEvs))
			}
			for i, w := range wantEvs {
				ev := evs[i]
				typ, flags := uint8(eventDrop), uint8(0)
				if audit {
					typ, flags = eventVerdict, eventFlagAudit
				}
				if ev.Type != typ || ev.Flags != flags || ev.Reason != w.reason || ev.Dir != w.dir || ev.Dport != w.dport ||
					ev.EpId != podEP || ev.TcpFlags != tcpFlagSYN {
					t.Errorf("event %d %+v: want type %d flags %#x reason %d dir %d port %d, the SYN", i, ev, typ, flags, w.reason, w.dir, w.dport)
				}
			}
			drops := f.count(reasonDenied, dirEgress) + f.count(reasonDenied, dirIngress) + f.count(reasonDenyRule, dirEgress)
			if audit && drops != 0 || !audit && drops != 3 {
				t.Errorf("%d policy drops counted", drops)
			}
		})
	}
}

// eventLosses sums the event_losses counter over the CPUs.
func (f *fixture) eventLosses() uint64 {
	f.t.Helper()
	var per []uint64
	if err := f.objs.EventLosses.Lookup(uint32(0), &per); err != nil {
		f.t.Fatal(err)
	}
	var n uint64
	for _, x := range per {
		n += x
	}
	return n
}

// An event that finds the ring full is counted as lost: with nobody
// reading, more drops than the ring holds are each either on the ring or
// counted, and once the ring is read, events are reported again.
func TestEventLossesCounted(t *testing.T) {
	f := load(t)
	pkt := tcp(t, podIP, peerIP, 45000, 80, true, false) // no allowing rule: dropped and reported
	const runs = 30000                                   // more 48-byte events than the 1 MiB ring holds
	ret, err := f.objs.FromContainer.Run(&ebpf.RunOptions{Data: pkt, Repeat: runs})
	if err != nil {
		t.Fatal(err)
	}
	if ret != actShot {
		t.Fatalf("SYN with no allowing rule: %d", ret)
	}
	lost := f.eventLosses()
	if lost == 0 {
		t.Fatal("no events counted as lost with the ring full")
	}
	r, err := newRingReader(f.objs.Events)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Every event is on the ring already (the runs are over): read them
	// all; the deadline only ends the read of an empty ring.
	delivered := uint64(0)
	for {
		if _, err := r.next(); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
		delivered++
		r.r.SetDeadline(time.Now().Add(time.Second))
	}
	if delivered+lost != runs {
		t.Fatalf("%d events delivered, %d lost, want %d in all", delivered, lost, runs)
	}
	r.r.SetDeadline(time.Now().Add(5 * time.Second))
	other := net.IPv4(192, 168, 7, 10).To4()
	f.run(f.objs.FromContainer, tcp(t, podIP, other, 45001, 80, true, false))
	if ev, err := r.next(); err != nil || ev.Dport != 80 || ev.Sport != 45001 {
		t.Fatalf("after reading: event %+v, %v", ev, err)
	}
	if n := f.eventLosses(); n != lost {
		t.Fatalf("losses grew from %d to %d with room on the ring", lost, n)
	}
}
