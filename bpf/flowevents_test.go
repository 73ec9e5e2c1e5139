package bpf

import (
	"net"
	"testing"
)

// Event flags and TCP flags as struct event carries them.
const (
	eventDrop      = 1
	eventVerdict   = 2
	eventFlagReply = 1 // EVENT_F_REPLY
	tcpFlagSYN     = 0x02
	tcpFlagACK     = 0x10
)

// setFlowEvents writes the node config's flow_events.
func (f *fixture) setFlowEvents(mode DatapathFlowEvents) {
	f.t.Helper()
	v := DatapathNodeConfig{FlowEvents: uint32(mode)}
	putConfig(f.t, f.objs.Config, v)
}

// unenforce makes the pod's endpoint enforce neither direction.
func (f *fixture) unenforce() {
	f.t.Helper()
	k := ip4(podIP)
	var v DatapathEndpointInfo
	if err := f.objs.Endpoints.Lookup(&k, &v); err != nil {
		f.t.Fatal(err)
	}
	v.Flags = 0
	if err := f.objs.Endpoints.Put(&k, &v); err != nil {
		f.t.Fatal(err)
	}
}

// eventsUntil reads the events ring up to and including the first drop
// of reason marker: a packet dropped last bounds what the packets before
// it reported, with no waiting for events that may not come.
func (f *fixture) eventsUntil(r *ringReader, marker uint8) []DatapathEvent {
	f.t.Helper()
	var evs []DatapathEvent
	for {
		ev, err := r.next()
		if err != nil {
			f.t.Fatalf("events ring after %d events: %v", len(evs), err)
		}
		evs = append(evs, ev)
		if ev.Type == eventDrop && ev.Reason == marker {
			return evs
		}
	}
}

// Forwarded-flow events per connection: with flow_events connections (the
// zero value), a new TCP connection at an endpoint that enforces nothing
// is reported once, with its SYN, and its later packets (the pod's
// segments, the peer's replies) are not; with enforced, such an endpoint
// reports none; with off, none at all. Drops are reported in every mode
// (a deny rule applies unenforced too: the marker).
func TestFlowEventsPerConnection(t *testing.T) {
	modes := []struct {
		name      string
		mode      DatapathFlowEvents
		forwarded int
	}{
		{"connections", DatapathFlowEventsFLOW_EVENTS_CONNECTIONS, 1},
		{"enforced", DatapathFlowEventsFLOW_EVENTS_ENFORCED, 0},
		{"off", DatapathFlowEventsFLOW_EVENTS_OFF, 0},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			f := load(t)
			f.unenforce()
			f.setFlowEvents(m.mode)
			f.rule(dirEgress, peerID, 6, 81, 24, true) // deny TCP 81 to the peer
			r, err := newRingReader(f.objs.Events)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if ret := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43000, 80, true, false)); ret != actOK {
				t.Fatalf("SYN: %d", ret)
			}
			for i := 0; i < 3; i++ {
				if ret := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43000, 80, false, true)); ret != actOK {
					t.Fatalf("established segment %d: %d", i, ret)
				}
				if ret := f.run(f.objs.ToContainer, tcp(t, peerIP, podIP, 80, 43000, i == 0, true)); ret != actOK {
					t.Fatalf("reply %d: %d", i, ret)
				}
			}
			if ret := f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43001, 81, true, false)); ret != actShot {
				t.Fatalf("SYN to a denied port: %d", ret)
			}
			evs := f.eventsUntil(r, reasonDenyRule)
			forwarded := 0
			for _, ev := range evs[:len(evs)-1] {
				if ev.Type != eventVerdict || ev.Reason != reasonForwarded {
					t.Fatalf("unexpected event %+v", ev)
				}
				forwarded++
				if ev.Sport != 43000 || ev.Dport != 80 || ev.EpId != podEP || ev.Dir != dirEgress {
					t.Errorf("forwarded event %+v: want the connection's first packet at the pod, egress", ev)
				}
				if ev.TcpFlags != tcpFlagSYN || ev.Flags&eventFlagReply != 0 {
					t.Errorf("forwarded event: TCP flags %#x, flags %#x; want SYN, not a reply", ev.TcpFlags, ev.Flags)
				}
			}
			if forwarded != m.forwarded {
				t.Fatalf("%d forwarded events, want %d", forwarded, m.forwarded)
			}
			drop := evs[len(evs)-1]
			if drop.Dport != 81 || drop.TcpFlags != tcpFlagSYN || drop.Flags&eventFlagReply != 0 {
				t.Fatalf("drop event %+v: want the SYN to port 81, not a reply", drop)
			}
		})
	}
}

// With the enforced mode, a connection at an enforcing endpoint is
// reported as before flow_events existed.
func TestFlowEventsEnforcedEndpoint(t *testing.T) {
	f := load(t)
	f.setFlowEvents(DatapathFlowEventsFLOW_EVENTS_ENFORCED)
	f.rule(dirEgress, peerID, 6, 80, 24, false)
	r, err := newRingReader(f.objs.Events)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43000, 80, true, false))
	f.run(f.objs.FromContainer, tcp(t, podIP, peerIP, 43000, 80, false, true))
	other := net.IPv4(192, 168, 7, 10).To4() // world, no rule: default deny
	f.run(f.objs.FromContainer, tcp(t, podIP, other, 43001, 80, true, false))
	evs := f.eventsUntil(r, reasonDenied)
	if len(evs) != 2 || evs[0].Type != eventVerdict || evs[0].Sport != 43000 {
		t.Fatalf("events %+v: want one forwarded connection, then the drop", evs)
	}
}
