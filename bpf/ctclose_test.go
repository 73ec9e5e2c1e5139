package bpf

import "testing"

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
			out := func(syn, ack, fin bool) []byte { return tcpFlags(t, podIP, peerIP, 40000, 80, syn, ack, fin) }
			in := func(syn, ack, fin bool) []byte { return tcpFlags(t, peerIP, podIP, 80, 40000, syn, ack, fin) }
			for i, h := range []hop{
				{"SYN", f.objs.FromContainer, out(true, false, false)},
				{"SYN-ACK", f.objs.ToContainer, in(true, true, false)},
				{"ACK", f.objs.FromContainer, out(false, true, false)},
			} {
				if r := f.run(h.prog, h.pkt); r != actOK {
					t.Fatalf("handshake step %d (%s): %d", i, h.what, r)
				}
			}
			fin := map[string]hop{
				"pod":  {"the pod's FIN", f.objs.FromContainer, out(false, true, true)},
				"peer": {"the peer's FIN", f.objs.ToContainer, in(false, true, true)},
			}
			state := func() uint8 { return f.ctEntry(podIP, peerIP, 40000, 80, 6, dirEgress, podEP).State }
			if r := f.run(fin[c.first].prog, fin[c.first].pkt); r != actOK {
				t.Fatalf("%s: %d", fin[c.first].what, r)
			}
			if s := state(); s != ctStateEstablished {
				t.Errorf("after %s alone the entry is in state %d, want established (%d): half closed, not over", fin[c.first].what, s, ctStateEstablished)
			}
			// The other side goes on sending, then closes too.
			data := map[string]hop{"pod": {"data", f.objs.FromContainer, out(false, true, false)}, "peer": {"data", f.objs.ToContainer, in(false, true, false)}}
			if r := f.run(data[c.then].prog, data[c.then].pkt); r != actOK {
				t.Fatalf("the %s's data after the other side's FIN: %d", c.then, r)
			}
			if r := f.run(fin[c.then].prog, fin[c.then].pkt); r != actOK {
				t.Fatalf("%s: %d", fin[c.then].what, r)
			}
			if s := state(); s != ctStateClosing {
				t.Errorf("after both FINs the entry is in state %d, want closing (%d)", s, ctStateClosing)
			}
		})
	}
}
