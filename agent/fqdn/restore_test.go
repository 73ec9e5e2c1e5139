package fqdn

import (
	"path/filepath"
	"testing"
	"time"
)

// A saved cache says when it was saved, and KeptAcrossRestart keeps a
// restored endpoint's names only when the endpoint was made before the
// second of that save: an endpoint made after it may have been given the
// ID of one deleted after it (IDs are reused lowest first), whose names
// the file still lists. Found 2026-12-06 by reading the restore: an agent
// that crashed within the 10 s between saves after a deletion and an ID's
// reuse handed the deleted pod's learned names to the new pod.
func TestSavedTimeDecidesRestoredNames(t *testing.T) {
	clk := newClock()
	path := filepath.Join(t.TempDir(), "fqdn.json")
	c := NewCache(Config{Now: clk.now})
	c.Update(5, "x.corp.test", ips("198.51.100.66"), time.Hour)
	if err := c.Save(path); err != nil {
		t.Fatal(err)
	}
	d := NewCache(Config{Now: clk.now})
	if err := d.Load(path); err != nil {
		t.Fatal(err)
	}
	saved := d.SavedAt()
	if saved.IsZero() || time.Since(saved) > time.Minute {
		t.Fatalf("the loaded cache's save time %v", saved)
	}
	for _, c := range []struct {
		created time.Time
		keep    bool
	}{
		{saved.Add(-time.Hour), true},
		{saved.Truncate(time.Second).Add(-time.Second), true},
		{saved.Truncate(time.Second), false}, // the same second: it may be after
		{saved.Add(time.Second), false},
	} {
		if got := KeptAcrossRestart(saved, c.created); got != c.keep {
			t.Errorf("an endpoint made at %v, the cache saved at %v: kept %v, want %v", c.created, saved, got, c.keep)
		}
	}
	// A file saved before the save time was recorded: kept, as before.
	if !KeptAcrossRestart(time.Time{}, saved) {
		t.Error("names of a file without a save time not kept")
	}
}
