package lab

// Partitions between clusters: the router drops what passes between two
// clusters' underlays.

import (
	"fmt"
	"slices"
	"strconv"
)

// partitionPref is the priority of the router's partition rules (before
// its local and main tables).
const partitionPref = 100

// Partition cuts the underlay between clusters a and b: the router drops,
// silently and both ways, every packet between their underlays (their
// nodes, pods' tunnelled traffic, kvstores), as a partition of the network
// would; established connections see nothing but loss. Heal restores it.
func (l *Lab) Partition(a, b string) error { return l.partition(a, b, true) }

// Heal removes the partition between clusters a and b.
func (l *Lab) Heal(a, b string) error { return l.partition(a, b, false) }

func (l *Lab) partition(a, b string, cut bool) error {
	unlock, err := l.reload()
	if err != nil {
		return err
	}
	defer unlock()
	if len(l.Clusters) < 2 {
		return fmt.Errorf("%w: lab %q has one cluster: nothing to partition", ErrInvalid, l.Name)
	}
	if a == b {
		return fmt.Errorf("%w: partition of cluster %q from itself", ErrInvalid, a)
	}
	ca, err := l.Cluster(a)
	if err != nil {
		return err
	}
	cb, err := l.Cluster(b)
	if err != nil {
		return err
	}
	pair := partitionName(a, b)
	has := slices.Contains(l.Partitions, pair)
	switch {
	case cut && has:
		return fmt.Errorf("%w: clusters %s and %s are already partitioned", ErrExists, a, b)
	case !cut && !has:
		return fmt.Errorf("%w: no partition between clusters %s and %s", ErrNotFound, a, b)
	}
	op := "add"
	if !cut {
		op = "del"
	}
	for _, d := range [][2]*Cluster{{ca, cb}, {cb, ca}} {
		from, to := underlayIP(d[0], 0)+"/24", underlayIP(d[1], 0)+"/24"
		if err := run("ip", "-n", l.routerNS(), "rule", op, "from", from, "to", to, "blackhole", "pref", strconv.Itoa(partitionPref)); err != nil {
			if cut { // nothing half-applied
				run("ip", "-n", l.routerNS(), "rule", "del", "from", underlayIP(ca, 0)+"/24", "to", underlayIP(cb, 0)+"/24", "blackhole", "pref", strconv.Itoa(partitionPref))
			}
			return err
		}
	}
	if cut {
		l.Partitions = append(l.Partitions, pair)
	} else {
		l.Partitions = slices.DeleteFunc(l.Partitions, func(p string) bool { return p == pair })
	}
	return l.save()
}

// partitionName names the partition between two clusters (in name order).
func partitionName(a, b string) string {
	if b < a {
		a, b = b, a
	}
	return a + "|" + b
}
