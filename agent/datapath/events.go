package datapath

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/monitor"
	"github.com/filament-net/filament/agent/policy"
	"github.com/filament-net/filament/bpf"
)

// Event types (bpf/lib/reasons.h enum event_type, from the generated bindings).
const (
	EventDrop          = uint8(bpf.DatapathEventTypeEVENT_DROP)
	EventPolicyVerdict = uint8(bpf.DatapathEventTypeEVENT_POLICY_VERDICT)
	EventTranslated    = uint8(bpf.DatapathEventTypeEVENT_TRANSLATED)
)

// Event flags (bpf/lib/maps.h EVENT_F_*).
const (
	// eventFlagReply: the packet is in its connection's reply direction.
	eventFlagReply = 1
	// eventFlagProxy: a new connection's verdict sends it to the L7 proxy.
	eventFlagProxy = 2
	// eventFlagAudit: policy audit mode let through a new connection
	// that policy would have dropped for the event's reason.
	eventFlagAudit = 4
)

// ProtoName names an IP protocol number.
func ProtoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "TCP"
	case unix.IPPROTO_UDP:
		return "UDP"
	case unix.IPPROTO_ICMP:
		return "ICMP"
	case unix.IPPROTO_SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", p)
}

// monotonicOffset converts CLOCK_MONOTONIC ns (bpf_ktime_get_ns) to wall time.
func monotonicNow() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

func decodeEvent(raw []byte) (monitor.Event, error) {
	var e bpf.DatapathEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		return monitor.Event{}, err
	}
	now := monotonicNow()
	ev := monitor.Event{
		Time:        time.Now().Add(-time.Duration(now - e.Ts)),
		ReasonCode:  e.Reason,
		Reason:      ReasonName(e.Reason),
		Endpoint:    e.EpId,
		PeerEP:      e.PeerEp,
		SrcIdentity: identity.NumericIdentity(e.SrcIdentity),
		DstIdentity: identity.NumericIdentity(e.DstIdentity),
		Src:         netip.AddrPortFrom(addrFrom(e.Saddr), e.Sport),
		Dst:         netip.AddrPortFrom(addrFrom(e.Daddr), e.Dport),
		Protocol:    ProtoName(e.Proto),
		IfIndex:     e.Ifindex,
		Length:      e.Len,
		TCPFlags:    e.TcpFlags,
		IsReply:     e.Flags&eventFlagReply != 0,
	}
	switch e.Type {
	case EventPolicyVerdict:
		ev.Type = "policy-verdict"
		ev.Redirected = e.Flags&eventFlagProxy != 0
		ev.Audit = e.Flags&eventFlagAudit != 0
	case EventTranslated:
		// The frontend takes the place of the interface and length
		// (struct event's svc_addr and svc_port): a translation has
		// neither.
		ev.Type = "translated"
		ev.Service = netip.AddrPortFrom(addrFrom(e.Ifindex), uint16(e.Len))
		ev.IfIndex, ev.Length = 0, 0
	default:
		ev.Type = "drop"
	}
	ev.Direction = "egress"
	if policy.Direction(e.Dir) == policy.Ingress {
		ev.Direction = "ingress"
	}
	return ev, nil
}

// lossesEvery bounds how long the loss count (EventsLost) may go unread
// while the events ring never runs empty.
const lossesEvery = time.Second

// EventsLost is how many events the programs could not report because the
// events ring was full, as ReadEvents last read it: whenever it has read
// the ring empty (the programs lose events only while it is full, so no
// loss goes unread for long), and at least every second while it has not.
func (d *Datapath) EventsLost() uint64 { return d.lost.Load() }

// updateLosses reads the loss count into EventsLost.
func (d *Datapath) updateLosses() {
	n, err := d.eventLosses()
	if err != nil {
		slog.Warn("datapath event losses", "err", err)
		return
	}
	d.lost.Store(n)
}

// ReadEvents reads the events ring buffer until ctx ends, calling f for
// each, and keeps EventsLost up to date.
func (d *Datapath) ReadEvents(ctx context.Context, f func(monitor.Event)) error {
	r, err := ringbuf.NewReader(d.objs.Events)
	if err != nil {
		return fmt.Errorf("events ring buffer: %w", err)
	}
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	d.updateLosses()
	lossesRead := time.Now()
	for {
		rec, err := r.Read()
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("events ring buffer: %w", err)
		}
		if r.AvailableBytes() == 0 || time.Since(lossesRead) >= lossesEvery {
			d.updateLosses()
			lossesRead = time.Now()
		}
		ev, err := decodeEvent(rec.RawSample)
		if err != nil {
			slog.Warn("undecodable datapath event", "err", err)
			continue
		}
		f(ev)
	}
}

// GCConntrack deletes the expired conntrack entries, established
// (conntrack) and not yet (conntrack_new), and returns how many.
func (d *Datapath) GCConntrack() (int, error) {
	expires := func(v *bpf.DatapathCtEntry) uint64 { return v.Expires }
	n, err := gcExpired[bpf.DatapathCtKey]("conntrack", d.objs.Conntrack, expires)
	m, err2 := gcExpired[bpf.DatapathCtKey]("conntrack_new", d.objs.ConntrackNew, expires)
	return n + m, errors.Join(err, err2)
}

// ctTables are the two conntrack tables: the entries of flows not
// established yet, then established flows' (bpf/lib/conntrack.h,
// ct_settle). In that order, the one an entry moves in: a flow that moves
// between the two walks is seen twice rather than missed.
func (d *Datapath) ctTables() []*ebpf.Map { return []*ebpf.Map{d.objs.ConntrackNew, d.objs.Conntrack} }

// GCLBNAT deletes the expired NodePort translations, of established flows
// (lb_nats) and not yet (lb_nats_new), and returns how many. The datapath
// ignores an expired one and takes its tuple over (lb_nat_claim); without
// this they would stay until the LRU needs room.
func (d *Datapath) GCLBNAT() (int, error) {
	expires := func(v *bpf.DatapathLbNat) uint64 { return v.Expires }
	n, err := gcExpired[bpf.DatapathLbNatKey]("lb_nats", d.objs.LbNats, expires)
	m, err2 := gcExpired[bpf.DatapathLbNatKey]("lb_nats_new", d.objs.LbNatsNew, expires)
	return n + m, errors.Join(err, err2)
}

// natTables are the two NodePort translation tables: flows not
// established yet, then established flows' (bpf/lib/lb.h,
// lb_nat_settle). In that order, the one an entry moves in: a flow that
// moves between the two walks is seen twice rather than missed.
func (d *Datapath) natTables() []*ebpf.Map { return []*ebpf.Map{d.objs.LbNatsNew, d.objs.LbNats} }

// gcExpired deletes the entries of map name (m) whose expiry (read from
// an entry's value by expires) has passed on the monotonic clock, and
// returns how many.
func gcExpired[K, V any](name string, m *ebpf.Map, expires func(*V) uint64) (int, error) {
	now := monotonicNow()
	expired, err := listExpired[K](m, expires, now)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	n, err := deleteExpired(m, expired, expires, now)
	if err != nil {
		return n, fmt.Errorf("%s: delete: %w", name, err)
	}
	return n, nil
}

// listExpired lists the keys of m whose entries expired by now.
func listExpired[K, V any](m *ebpf.Map, expires func(*V) uint64, now uint64) ([]K, error) {
	var expired []K
	err := eachEntry(m, func(k *K, v *V) {
		if expires(v) <= now {
			expired = append(expired, *k)
		}
	})
	return expired, err
}

// deleteExpired deletes the entries of keys that are still expired by
// now. The datapath may have put a new flow under a key since the listing
// (a NodePort translation takes an expired tuple over at once): looked up
// again, a live entry stays. That narrows the window to the lookup and
// the delete; it does not close it.
func deleteExpired[K, V any](m *ebpf.Map, keys []K, expires func(*V) uint64, now uint64) (int, error) {
	n := 0
	var v V
	for i := range keys {
		if err := m.Lookup(&keys[i], &v); err == nil && expires(&v) > now {
			continue
		}
		if err := m.Delete(&keys[i]); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, err
		}
	}
	return n, nil
}

// ctRevoked is bpf/lib/conntrack.h CT_F_REVOKED: the entry of a flow the
// policy revoked, kept so that its packets stay judged; no live flow.
const ctRevoked = 16

// live says whether v is a live flow's entry at now.
func live(v *bpf.DatapathCtEntry, now uint64) bool {
	return v.Expires > now && v.Flags&ctRevoked == 0
}

// ConntrackEntries counts live conntrack entries.
func (d *Datapath) ConntrackEntries() int {
	now := monotonicNow()
	n := 0
	for _, m := range d.ctTables() {
		eachEntry(m, func(_ *bpf.DatapathCtKey, v *bpf.DatapathCtEntry) {
			if live(v, now) {
				n++
			}
		})
	}
	return n
}

// Flow is one conntrack entry's tuple and scope.
type Flow struct {
	Src, Dst netip.AddrPort
	Proto    uint8
	Endpoint uint16
}

// EgressFlows returns the live conntrack entries of endpoints' egress
// flows by destination address (to tell which learned DNS addresses
// connections still use).
func (d *Datapath) EgressFlows() (map[netip.Addr][]Flow, error) {
	now := monotonicNow()
	out := map[netip.Addr][]Flow{}
	for _, m := range d.ctTables() {
		err := eachEntry(m, func(k *bpf.DatapathCtKey, v *bpf.DatapathCtEntry) {
			if live(v, now) && k.Dir == 0 { // DIR_EGRESS (a revoked flow uses no address)
				dst := addrFrom(k.Daddr)
				out[dst] = append(out[dst], Flow{Src: netip.AddrPortFrom(addrFrom(k.Saddr), k.Sport), Dst: netip.AddrPortFrom(dst, k.Dport),
					Proto: k.Proto, Endpoint: k.EpId})
			}
		})
		if err != nil {
			return nil, fmt.Errorf("conntrack: %w", err)
		}
	}
	return out, nil
}
