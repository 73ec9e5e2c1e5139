package datapath

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Attachment says how an endpoint's programs are attached.
type Attachment string

const (
	AttachTCX Attachment = "tcx"
	AttachTC  Attachment = "tc"
)

func (d *Datapath) linkPin(ifName, dir string) string {
	return filepath.Join(d.pinDir, "links", ifName+"-"+dir)
}

// Attach puts from_container on the tc ingress and to_container on the tc
// egress of the endpoint's host-side veth. With tcx the links are pinned, so
// a restarted agent replaces the programs atomically instead of detaching
// them; with classic tc the filters are replaced in place.
func (d *Datapath) Attach(ifName string, ifIndex int) (Attachment, error) {
	if d.attach != "tc" {
		err := d.attachTCX(ifName, ifIndex)
		if err == nil {
			return AttachTCX, nil
		}
		if d.attach == "tcx" || !errors.Is(err, ebpf.ErrNotSupported) {
			return "", err
		}
		slog.Warn("tcx is not supported by this kernel; attaching with classic tc clsact", "err", err)
	}
	if err := d.attachTC(ifName, ifIndex); err != nil {
		return "", err
	}
	return AttachTC, nil
}

type attachPoint struct {
	dir  string
	prog *ebpf.Program
	typ  ebpf.AttachType
}

// AttachHost puts from_host on the tc ingress of the peer of the node's
// gateway device: the node's own traffic to other nodes' pods is
// encapsulated there (tunnel mode).
func (d *Datapath) AttachHost(ifName string, ifIndex int) (Attachment, error) {
	return d.attachNodeDev(ifName, ifIndex, d.objs.FromHost, "from_host")
}

// AttachOverlay puts from_overlay on the tc ingress of the VXLAN device.
func (d *Datapath) AttachOverlay(ifName string, ifIndex int) (Attachment, error) {
	return d.attachNodeDev(ifName, ifIndex, d.objs.FromOverlay, "from_overlay")
}

// AttachWireGuard puts from_wireguard on the tc ingress of the encryption
// device (NodePort replies from backends on peers are translated back there).
func (d *Datapath) AttachWireGuard(ifName string, ifIndex int) (Attachment, error) {
	return d.attachNodeDev(ifName, ifIndex, d.objs.FromWireguard, "from_wireguard")
}

// attachNodeDev puts prog on the tc ingress of one of the node's own
// devices (never taken for an endpoint's by the reconcile): tcx, else tc.
func (d *Datapath) attachNodeDev(ifName string, ifIndex int, prog *ebpf.Program, name string) (Attachment, error) {
	d.mu.Lock()
	d.nodeDevs[ifName] = true
	d.mu.Unlock()
	if d.attach != "tc" {
		err := d.attachTCXPoints(ifName, ifIndex, []attachPoint{{"ingress", prog, ebpf.AttachTCXIngress}})
		if err == nil {
			return AttachTCX, nil
		}
		if d.attach == "tcx" || !errors.Is(err, ebpf.ErrNotSupported) {
			return "", err
		}
	}
	return AttachTC, d.attachTCFilters(ifName, ifIndex, []tcFilter{{netlink.HANDLE_MIN_INGRESS, prog, name}})
}

func (d *Datapath) attachTCX(ifName string, ifIndex int) error {
	return d.attachTCXPoints(ifName, ifIndex, []attachPoint{
		{"ingress", d.objs.FromContainer, ebpf.AttachTCXIngress}, {"egress", d.objs.ToContainer, ebpf.AttachTCXEgress}})
}

func (d *Datapath) attachTCXPoints(ifName string, ifIndex int, points []attachPoint) error {
	for _, a := range points {
		pin := d.linkPin(ifName, a.dir)
		if old, err := link.LoadPinnedLink(pin, nil); err == nil {
			info, ierr := old.Info()
			if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifIndex {
				err := old.Update(a.prog)
				old.Close()
				if err != nil {
					return fmt.Errorf("tcx %s of %s: replace program: %w", a.dir, ifName, err)
				}
				continue
			}
			// A pin of a device that was recreated: drop it.
			old.Unpin()
			old.Close()
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifIndex, Program: a.prog, Attach: a.typ})
		if err != nil {
			return fmt.Errorf("tcx %s of %s: %w", a.dir, ifName, err)
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("tcx %s of %s: pin: %w", a.dir, ifName, err)
		}
		l.Close() // the pin keeps it attached
	}
	return nil
}

type tcFilter struct {
	parent uint32
	prog   *ebpf.Program
	name   string
}

func (d *Datapath) attachTC(ifName string, ifIndex int) error {
	return d.attachTCFilters(ifName, ifIndex, []tcFilter{
		{netlink.HANDLE_MIN_INGRESS, d.objs.FromContainer, "from_container"}, {netlink.HANDLE_MIN_EGRESS, d.objs.ToContainer, "to_container"}})
}

func (d *Datapath) attachTCFilters(ifName string, ifIndex int, filters []tcFilter) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifIndex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("tc clsact on %s: %w", ifName, err)
	}
	for _, a := range filters {
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: ifIndex, Parent: a.parent, Handle: 1, Priority: 1, Protocol: unix.ETH_P_ALL},
			Fd:          a.prog.FD(), Name: a.name, DirectAction: true,
		}
		if err := netlink.FilterReplace(f); err != nil {
			return fmt.Errorf("tc filter %s on %s: %w", a.name, ifName, err)
		}
	}
	return nil
}

// Detach removes the endpoint's link pins (the links go with the device).
func (d *Datapath) Detach(ifName string) {
	for _, dir := range []string{"ingress", "egress"} {
		pin := d.linkPin(ifName, dir)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			l.Unpin()
			l.Close()
		} else {
			os.Remove(pin)
		}
	}
}

// PinnedLinks lists the endpoint interfaces that have pinned links (the
// node's own devices are left out).
func (d *Datapath) PinnedLinks() []string {
	ents, _ := os.ReadDir(filepath.Join(d.pinDir, "links"))
	d.mu.Lock()
	seen := maps.Clone(d.nodeDevs)
	d.mu.Unlock()
	var out []string
	for _, e := range ents {
		name := e.Name()
		for _, suf := range []string{"-ingress", "-egress"} {
			if len(name) > len(suf) && name[len(name)-len(suf):] == suf {
				name = name[:len(name)-len(suf)]
			}
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out
}
