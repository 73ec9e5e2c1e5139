package node

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/filament-net/filament/crypto/gossipkey"
	"github.com/filament-net/filament/internal/attack"
)

type seen struct {
	mu    sync.Mutex
	alive map[string]bool
}

func (s *seen) notify(name string, alive bool) {
	s.mu.Lock()
	s.alive[name] = alive
	s.mu.Unlock()
}

func (s *seen) get(name string) (alive, known bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	alive, known = s.alive[name]
	return
}

// detectors starts one detector per name on 127.0.0.<i+1>, all on one port
// as in a cluster; keys[i] are node i's gossip keys.
func detectors(t *testing.T, names []string, keys [][][]byte) ([]*Detector, []*seen) {
	t.Helper()
	var lastErr error
	for try := 0; try < 20; try++ {
		port := 20000 + int(time.Now().UnixNano()%20000)
		var ds []*Detector
		var ss []*seen
		for i, name := range names {
			s := &seen{alive: map[string]bool{}}
			d, err := NewDetector(name, addr(i), port, keys[i], s.notify)
			if err != nil {
				lastErr = err
				break
			}
			ds, ss = append(ds, d), append(ss, s)
		}
		if len(ds) == len(names) {
			for _, d := range ds {
				t.Cleanup(d.Close)
			}
			return ds, ss
		}
		for _, d := range ds {
			d.Close()
		}
	}
	t.Fatalf("detectors: %v", lastErr)
	return nil, nil
}

func addr(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A forged, unauthenticated "dead" message about n2 (what a pod can send
// to a node's gossip port) must change nothing: gossip is sealed with the
// cluster's key and the forgery is dropped.
func TestForgedGossipIgnored(t *testing.T) {
	k, _ := gossipkey.New()
	keys := [][]byte{k}
	ds, ss := detectors(t, []string{"n1", "n2"}, [][][]byte{keys, keys})
	n1, s1, s2 := ds[0], ss[0], ss[1]
	n1.Join("n2", addr(1), true)
	waitFor(t, "n1 and n2 to see each other", func() bool {
		a, _ := s1.get("n2")
		b, _ := s2.get("n1")
		return a && b
	})
	// Five forged deaths of n2, the last at the highest incarnation.
	var forged [][]byte
	for _, inc := range []uint32{1, 2, 100, 1 << 20, 0xFFFFFFFF} {
		forged = append(forged, attack.GossipDead("n2", "n1", inc))
	}
	if err := attack.SendUDP(netip.AddrPortFrom(addr(0), uint16(n1.port)).String(), forged...); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // several probe and gossip rounds
	if alive, _ := s1.get("n2"); !alive {
		t.Fatal("n1 declared n2 dead after forged gossip")
	}
}

// A node without the cluster's key is not admitted, and a rotation
// (add, use, drop on every node) keeps the members together.
func TestGossipKeyRotation(t *testing.T) {
	k1, _ := gossipkey.New()
	k2, _ := gossipkey.New()
	ds, ss := detectors(t, []string{"n1", "n2", "n3"}, [][][]byte{{k1}, {k1}, {k2}})
	n1, n2, s1, s2, s3 := ds[0], ds[1], ss[0], ss[1], ss[2]
	n1.Join("n2", addr(1), true)
	waitFor(t, "n1 and n2 to see each other", func() bool {
		a, _ := s1.get("n2")
		b, _ := s2.get("n1")
		return a && b
	})
	n1.Join("n3", addr(2), true)
	time.Sleep(time.Second)
	if _, known := s1.get("n3"); known {
		t.Error("n1 admitted n3, which has another key")
	}
	if _, known := s3.get("n1"); known {
		t.Error("n3 admitted n1, which has another key")
	}
	for _, step := range [][][]byte{{k1, k2}, {k2, k1}, {k2}} {
		for _, d := range []*Detector{n1, n2} {
			if err := d.SetKeys(step); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(500 * time.Millisecond)
		if a, _ := s1.get("n2"); !a {
			t.Fatalf("n1 lost n2 during rotation step %d keys", len(step))
		}
	}
	if got := n1.keys.GetPrimaryKey(); string(got) != string(k2) {
		t.Error("k2 is not primary after the rotation")
	}
}

// A partition of the gossip shorter than the registry's leases (no record
// changes, so nothing asks for a join) heals: each detector joins again,
// every rejoinInterval, the nodes it was asked to join that are not alive
// members. Found 2026-12-06 by reading the detector: once both sides had
// declared each other dead, memberlist probed them no more, and Join was
// once per address for good, so a few seconds' outage (a link flap, a
// flood of the gossip port) kept the nodes' routes and backends
// withdrawn until an agent restarted.
func TestShortPartitionHeals(t *testing.T) {
	defer func(d time.Duration) { rejoinInterval = d }(rejoinInterval)
	rejoinInterval = 500 * time.Millisecond
	k, other := mustKey(t), mustKey(t)
	ds, ss := detectors(t, []string{"n1", "n2"}, [][][]byte{{k}, {k}})
	ds[0].Join("n2", addr(1), true)
	both := func(alive bool) func() bool {
		return func() bool {
			a, _ := ss[0].get("n2")
			b, _ := ss[1].get("n1")
			return a == alive && b == alive
		}
	}
	waitFor(t, "n1 and n2 to see each other", both(true))
	if err := ds[1].SetKeys([][]byte{other}); err != nil { // n2 cut off from the gossip
		t.Fatal(err)
	}
	waitFor(t, "n1 and n2 to declare each other dead", both(false))
	time.Sleep(3 * time.Second)                        // the news of the deaths told and done
	if err := ds[1].SetKeys([][]byte{k}); err != nil { // healed
		t.Fatal(err)
	}
	waitFor(t, "n1 and n2 to see each other again", both(true))
}

func mustKey(t *testing.T) []byte {
	t.Helper()
	k, err := gossipkey.New()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A node failure detection never saw alive (its agent down already when
// this one started) is declared dead once it did not answer for
// firstContactTimeout, and alive when it comes: until 2026-12-06 it
// counted as alive for good (its backends usable, its routes kept, its
// record held as a reachable node's), since memberlist reports only
// members it has known.
func TestNeverSeenNodeDeclaredDead(t *testing.T) {
	defer func(r, f time.Duration) { rejoinInterval, firstContactTimeout = r, f }(rejoinInterval, firstContactTimeout)
	rejoinInterval, firstContactTimeout = 200*time.Millisecond, time.Second
	k := mustKey(t)
	ds, ss := detectors(t, []string{"n1"}, [][][]byte{{k}})
	port := ds[0].port
	ds[0].Join("n2", addr(1), true) // nothing listens there yet
	waitFor(t, "n1 to declare the silent n2 dead", func() bool {
		alive, known := ss[0].get("n2")
		return known && !alive
	})
	// n2's agent starts: seen alive.
	s2 := &seen{alive: map[string]bool{}}
	d2, err := NewDetector("n2", addr(1), port, [][]byte{k}, s2.notify)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d2.Close)
	waitFor(t, "n1 to see n2 alive once it answers", func() bool {
		alive, _ := ss[0].get("n2")
		return alive
	})
	// A node forgotten and asked for again is given its time anew.
	ds[0].Forget("n3")
	ds[0].Join("n3", addr(2), true)
	if _, known := ss[0].get("n3"); known {
		t.Error("n3 declared at once, before its first contact could answer")
	}
	// A node whose record does not say it runs detection (detection off
	// there, or an agent from before the record said it: turning
	// detection on rolls out node by node) is never declared for its
	// silence.
	ds[0].Join("n4", addr(3), false)
	time.Sleep(3 * firstContactTimeout)
	if alive, known := ss[0].get("n4"); known && !alive {
		t.Error("n4, whose record does not say it runs detection, was declared dead for its silence")
	}
	// n3, declared dead for its silence, turns detection off (its record
	// says so now): it counts as alive again. Turned on again, silent:
	// declared dead again.
	waitFor(t, "the silent n3 declared dead", func() bool {
		alive, known := ss[0].get("n3")
		return known && !alive
	})
	ds[0].Join("n3", addr(2), false)
	waitFor(t, "n3, detection off, counted alive again", func() bool {
		alive, _ := ss[0].get("n3")
		return alive
	})
	ds[0].Join("n3", addr(2), true)
	waitFor(t, "n3, detection on and silent, declared dead again", func() bool {
		alive, known := ss[0].get("n3")
		return known && !alive
	})
}
