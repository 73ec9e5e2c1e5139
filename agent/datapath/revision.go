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
//
// A multi-map change (a policy change: policy entries, enforcement flags,
// CIDR identities) holds the revision (HoldRevision) so that established
// flows see it whole: the bumps its writes ask for become one at the
// release.
type revision struct {
	mu      sync.Mutex
	cur     uint32
	held    int  // holds not yet released
	pending bool // a bump was asked for while held
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
	if d.rev.held > 0 {
		d.rev.pending = true
		return nil
	}
	return d.publish()
}

// publish writes the next revision; d.rev.mu is held.
func (d *Datapath) publish() error {
	next, zero := d.rev.cur+1, uint32(0)
	if err := d.objs.Revision.Put(&zero, &next); err != nil {
		return fmt.Errorf("revision map: %w", err)
	}
	d.rev.cur = next
	return nil
}

// HoldRevision defers the revision bumps of the changes made until the
// returned release is called, which bumps once if any change asked for
// it. Holds nest; every hold must be released.
func (d *Datapath) HoldRevision() (release func() error) {
	d.rev.mu.Lock()
	d.rev.held++
	d.rev.mu.Unlock()
	var once sync.Once
	return func() error {
		var err error
		once.Do(func() {
			d.rev.mu.Lock()
			defer d.rev.mu.Unlock()
			d.rev.held--
			if d.rev.held == 0 && d.rev.pending {
				d.rev.pending = false
				err = d.publish()
			}
		})
		return err
	}
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
