package datapath

import (
	"fmt"
	"sync"
)

// The datapath revision (the revision map, one number) tells the programs
// that what their conntrack entries cached may be stale: an established
// packet whose entry was checked at another revision has its policy
// checked again and its forwarding decided afresh (bpf/lib/fastpath.h).
// Every change to the endpoints, ipcache, policy, config, nodes and
// encryption peers maps bumps it, after the change: the next packet of
// every flow sees the change.
type revision struct {
	mu  sync.Mutex
	cur uint32
}

// readRevision continues from the pinned map's revision (a new agent takes
// over the flows of the last one).
func (d *Datapath) readRevision() error {
	var zero, v uint32
	if err := d.objs.Revision.Lookup(&zero, &v); err != nil {
		return fmt.Errorf("revision map: %w", err)
	}
	d.rev.mu.Lock()
	d.rev.cur = v
	d.rev.mu.Unlock()
	return nil
}

// bump increments the datapath revision. It is called after the change it
// publishes, so a packet that reads the new revision sees the change.
func (d *Datapath) bump() error {
	d.rev.mu.Lock()
	defer d.rev.mu.Unlock()
	next, zero := d.rev.cur+1, uint32(0)
	if err := d.objs.Revision.Put(&zero, &next); err != nil {
		return fmt.Errorf("revision map: %w", err)
	}
	d.rev.cur = next
	return nil
}

// bumpAfter bumps the revision when err (the change's result) is nil.
func (d *Datapath) bumpAfter(err error) error {
	if err != nil {
		return err
	}
	return d.bump()
}

// Revision is the datapath revision last published (tests).
func (d *Datapath) Revision() uint32 {
	d.rev.mu.Lock()
	defer d.rev.mu.Unlock()
	return d.rev.cur
}
