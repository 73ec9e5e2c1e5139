package bpf

import (
	"testing"
	"time"
)

const (
	ctStateEstablished = 1 // CT_STATE_ESTABLISHED
	ctStateClosing     = 2 // CT_STATE_CLOSING
)

// A FIN closes one direction: the connection lives on, half closed, as
// long as the other side keeps talking (ssh host cmd </dev/null: the
// client's FIN comes first, the output may follow minutes later). Until
// 2026-12-06 any FIN cut the entry's life to CT_TIMEOUT_CLOSE (10 s), and
// a half-closed connection idle longer lost its entry, its next segment
// then dropped where the direction is enforced. The entry closes when
// both sides have sent their FIN (or at an RST).
func TestHalfClosedConnectionKeepsItsEntry(t *testing.T) {
	for _, c := range []struct {
		name        string
		first, then string // who sends a FIN first, then
	}{{"pod closes first", "pod", "peer"}, {"peer closes first", "peer", "pod"}} {
		t.Run(c.name, func(t *testing.T) {
			f := load(t)
			f.rule(dirEgress, peerID, 6, 80, 24, false)
			// Each side's next sequence number after the handshake (the
			// pod's from 100, the peer's from 7000).
			seq := map[string]uint32{"pod": 101, "peer": 7001}
			// send is side's segment of n bytes at its number, with FIN
			// when fin, acknowledging all the other side sent.
			send := func(side string, n int, fin bool) (hop, []byte) {
				h := hop{side + "'s segment", f.objs.FromContainer, nil}
				var pkt []byte
				if side == "pod" {
					pkt = tcpData(t, podIP, peerIP, 40000, 80, seq["pod"], seq["peer"], n, fin)
				} else {
					h.prog = f.objs.ToContainer
					pkt = tcpData(t, peerIP, podIP, 80, 40000, seq["peer"], seq["pod"], n, fin)
				}
				seq[side] += uint32(n)
				if fin {
					seq[side]++
				}
				return h, pkt
			}
			for i, h := range []hop{
				{"SYN", f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 40000, 80, true, false, 100, 0)},
				{"SYN-ACK", f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 80, 40000, true, true, 7000, 101)},
				{"ACK", f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 40000, 80, false, true, 101, 7001)},
			} {
				if r := f.run(h.prog, h.pkt); r != actOK {
					t.Fatalf("handshake step %d (%s): %d", i, h.what, r)
				}
			}
			state := func() uint8 { return f.ctEntry(podIP, peerIP, 40000, 80, 6, dirEgress, podEP).State }
			step := func(what, side string, n int, fin bool) {
				h, pkt := send(side, n, fin)
				if r := f.run(h.prog, pkt); r != actOK {
					t.Fatalf("%s (%s): %d", what, h.what, r)
				}
			}
			step("the first FIN", c.first, 0, true)
			if s := state(); s != ctStateEstablished {
				t.Errorf("after the %s's FIN alone the entry is in state %d, want established (%d): half closed, not over", c.first, s, ctStateEstablished)
			}
			// The other side goes on sending, then closes too.
			step("data after the other side's FIN", c.then, 10, false)
			step("the second FIN", c.then, 0, true)
			if s := state(); s != ctStateClosing {
				t.Errorf("after both FINs the entry is in state %d, want closing (%d)", s, ctStateClosing)
			}
		})
	}
}

// A FIN from outside the pod counts (closes the peer's side) only at
// exactly the number the pod expects next, as far as this node saw (the
// pod's last acknowledgement moved past the peer's data that starts
// there: CT_ACK_KNOWN); the pod's own FIN at any number. The attack: a
// pod half-closes its connection (its FIN sent, the answer still to come,
// perhaps minutes later); anyone able to send a segment with the flow's
// tuple, knowing no number, sent a FIN, the entry turned closing (10 s),
// and the idle connection's next segment was dropped where its direction
// is enforced. Likewise a blind FIN first, then the pod's own half-close
// (found 2026-12-06 by reading; listed open in docs/architecture.md).
func TestConntrackBlindFINLeavesHalfClosedConnectionsOpen(t *testing.T) {
	const established = 6*time.Hour - 2*time.Second
	// The pod's FIN on a connection it opened (ctOpened: its data sent,
	// its next number 111, the peer's 7001) or accepted (ctAccepted: the
	// pod's next 9001, the peer's 11).
	podFINOpened := func(f *fixture) {
		f.run(f.objs.FromContainer, tcpData(t, podIP, peerIP, 40000, 443, 111, 7001, 0, true))
	}
	peerOpened := func(f *fixture, seq uint32, n int) {
		f.run(f.objs.ToContainer, tcpData(t, peerIP, podIP, 443, 40000, seq, 112, n, true))
	}
	for _, c := range []struct {
		name string
		run  func(f *fixture) time.Duration // the entry's life after it
		want time.Duration                  // more than this (established), or 0: at most closing
	}{
		{"the pod half-closed: blind FINs from the peer", func(f *fixture) time.Duration {
			ctOpened(t, f, 40000)
			podFINOpened(f)
			peerOpened(f, 0x12345678, 0)
			peerOpened(f, 7002, 0)
			peerOpened(f, 7000, 0)
			return f.ctLife(podIP, peerIP, 40000, 443, dirEgress)
		}, established},
		{"a blind FIN from the peer, then the pod half-closes", func(f *fixture) time.Duration {
			ctOpened(t, f, 40000)
			peerOpened(f, 0x12345678, 0)
			podFINOpened(f)
			return f.ctLife(podIP, peerIP, 40000, 443, dirEgress)
		}, established},
		{"the pod half-closed: forged data with a FIN away from the number", func(f *fixture) time.Duration {
			ctOpened(t, f, 40000)
			podFINOpened(f)
			peerOpened(f, 5000, 100)
			return f.ctLife(podIP, peerIP, 40000, 443, dirEgress)
		}, established},
		{"the peer opened it, the pod half-closed: a blind FIN from the peer", func(f *fixture) time.Duration {
			ctAccepted(t, f, 50000)
			f.run(f.objs.FromContainer, tcpData(t, podIP, peerIP, 80, 50000, 9001, 11, 0, true))
			f.run(f.objs.ToContainer, tcpData(t, peerIP, podIP, 50000, 80, 0x5555, 9002, 0, true))
			return f.ctLife(peerIP, podIP, 50000, 80, dirIngress)
		}, established},
		{"a FIN not counted left the entry established: a new connection on its tuple starts with no side's FIN", func(f *fixture) time.Duration {
			ctOpened(t, f, 40000)
			podFINOpened(f)
			peerOpened(f, 7050, 0) // the peer's FIN ahead of data this node did not see: not counted
			// The pod opens a new connection on the tuple (the entry is
			// kept: established, same verdict), and the peer half-closes
			// it at once.
			f.run(f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 40000, 443, true, false, 50000, 0))
			f.run(f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 443, 40000, true, true, 0x90000000, 50001))
			f.run(f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 40000, 443, false, true, 50001, 0x90000001))
			f.run(f.objs.ToContainer, tcpData(t, peerIP, podIP, 443, 40000, 0x90000001, 50001, 0, true))
			return f.ctLife(podIP, peerIP, 40000, 443, dirEgress)
		}, established},
		{"a blind FIN while the pod opens a new connection on the tuple", func(f *fixture) time.Duration {
			ctOpened(t, f, 40000)
			f.run(f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 40000, 443, true, false, 50000, 0))
			peerOpened(f, 7001, 0) // the old connection's number: the new one's is not known yet
			if e := f.ctEntry(podIP, peerIP, 40000, 443, 6, dirEgress, podEP); e.Fin&3 != 0 {
				t.Errorf("a FIN from outside while the pod's new SYN waits for its answer counted: fin %#x", e.Fin)
			}
			return f.ctLife(podIP, peerIP, 40000, 443, dirEgress)
		}, established},
		{"the pod's FIN on its first ACK of a new connection on the tuple (Fast Open), then the peer's", func(f *fixture) time.Duration {
			ctOpened(t, f, 40000)
			f.run(f.objs.FromContainer, tcpSeq(t, podIP, peerIP, 40000, 443, true, false, 50000, 0))
			f.run(f.objs.ToContainer, tcpSeq(t, peerIP, podIP, 443, 40000, true, true, 0x90000000, 50001))
			f.run(f.objs.FromContainer, tcpData(t, podIP, peerIP, 40000, 443, 50001, 0x90000001, 5, true))
			f.run(f.objs.ToContainer, tcpData(t, peerIP, podIP, 443, 40000, 0x90000001, 50007, 0, true))
			return f.ctLife(podIP, peerIP, 40000, 443, dirEgress)
		}, 0},
		{"the pod half-closed, then the peer's FIN at the number", func(f *fixture) time.Duration {
			ctOpened(t, f, 40000)
			podFINOpened(f)
			peerOpened(f, 7001, 0)
			return f.ctLife(podIP, peerIP, 40000, 443, dirEgress)
		}, 0},
		{"the pod half-closed, then the peer's data and its FIN after it, not yet acknowledged", func(f *fixture) time.Duration {
			ctOpened(t, f, 40000)
			podFINOpened(f)
			f.run(f.objs.ToContainer, tcpData(t, peerIP, podIP, 443, 40000, 7001, 112, 100, false))
			peerOpened(f, 7101, 50)
			return f.ctLife(podIP, peerIP, 40000, 443, dirEgress)
		}, 0},
		{"the peer's FIN at the number, then the pod's at any", func(f *fixture) time.Duration {
			ctOpened(t, f, 40000)
			peerOpened(f, 7001, 0)
			f.run(f.objs.FromContainer, tcpData(t, podIP, peerIP, 40000, 443, 0x777, 7002, 0, true))
			return f.ctLife(podIP, peerIP, 40000, 443, dirEgress)
		}, 0},
		{"the peer opened it: its FIN at the number, then the pod's", func(f *fixture) time.Duration {
			ctAccepted(t, f, 50000)
			f.run(f.objs.ToContainer, tcpData(t, peerIP, podIP, 50000, 80, 11, 9001, 0, true))
			f.run(f.objs.FromContainer, tcpData(t, podIP, peerIP, 80, 50000, 9001, 12, 0, true))
			return f.ctLife(peerIP, podIP, 50000, 80, dirIngress)
		}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			wantCTLife(t, c.run(ctFixture(t)), c.want, "FIN")
		})
	}
}
