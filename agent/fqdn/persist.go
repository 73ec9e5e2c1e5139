package fqdn

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/filament-net/filament/internal/atomicfile"
)

// ErrCorrupt is wrapped by Load's error for a file that is not a saved
// cache.
var ErrCorrupt = errors.New("corrupt fqdn cache file")

// fileVersion is the version of the saved form.
const fileVersion = 1

type savedCache struct {
	Version int `json:"version"`
	// Saved is when the file was written (wall clock; absent in files of
	// agents before 2026-12-06): KeptAcrossRestart.
	Saved   time.Time `json:"saved,omitzero"`
	Entries []Entry   `json:"entries"`
}

// KeptAcrossRestart says whether a restored cache's names of an endpoint
// made at created stay its own: only when it was made before the second
// of the save (saved; zero: not recorded, kept). An endpoint made after
// may have the ID of one deleted after the save (IDs are reused lowest
// first), whose names the file still lists; until 2026-12-06 an agent
// that crashed in the 10 s between saves handed them to it.
func KeptAcrossRestart(saved, created time.Time) bool {
	return saved.IsZero() || created.Before(saved.Truncate(time.Second))
}

// SavedAt is when the file Load read was saved (zero if not recorded, or
// nothing was loaded).
func (c *Cache) SavedAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.savedAt
}

// Save writes the cache's entries to path (JSON, mode 0600) atomically: a
// temporary file in the same directory, synced, then renamed over path.
func (c *Cache) Save(path string) error {
	b, err := json.Marshal(savedCache{Version: fileVersion, Saved: time.Now().UTC(), Entries: c.List()})
	if err != nil {
		return fmt.Errorf("fqdn cache: %w", err)
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("fqdn cache: saving %s: %w", path, err)
	}
	return nil
}

// Load replaces the cache's entries with those saved in path, dropping the
// expired ones and applying the cache's bounds (MaxAddrsPerName,
// MaxEntries) as Update does. The selectors stay; read their Addrs after
// Load (it reports no changes). A missing file is no error and leaves the
// cache empty; a file that is not a saved cache (bad JSON, unknown version,
// a bad name, address or endpoint list) returns an error wrapping ErrCorrupt
// and leaves the cache empty.
func (c *Cache) Load(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		c.reset()
		return nil
	}
	if err != nil {
		c.reset()
		return fmt.Errorf("fqdn cache: %w", err)
	}
	var sc savedCache
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sc); err != nil {
		c.reset()
		return fmt.Errorf("%w %s: %v", ErrCorrupt, path, err)
	}
	if dec.More() {
		c.reset()
		return fmt.Errorf("%w %s: data after the cache", ErrCorrupt, path)
	}
	if sc.Version != fileVersion {
		c.reset()
		return fmt.Errorf("%w %s: version %d, want %d", ErrCorrupt, path, sc.Version, fileVersion)
	}
	for i, e := range sc.Entries {
		if n := Normalize(e.Name); n != e.Name || !validName(n, false) {
			c.reset()
			return fmt.Errorf("%w %s: entry %d: name %q is not a normalized DNS name", ErrCorrupt, path, i, e.Name)
		}
		if !e.Addr.Is4() {
			c.reset()
			return fmt.Errorf("%w %s: entry %d: address %v is not IPv4", ErrCorrupt, path, i, e.Addr)
		}
		if len(e.Endpoints) == 0 {
			c.reset()
			return fmt.Errorf("%w %s: entry %d: no endpoints", ErrCorrupt, path, i)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resetLocked()
	c.savedAt = sc.Saved
	now := c.cfg.Now().UnixNano()
	ch := changes{}
	for _, e := range sc.Entries {
		exp := e.Expires.UnixNano()
		if exp <= now || !Learnable(e.Addr) {
			continue // expired, or saved before special addresses were refused
		}
		c.add(c.nameFor(e.Name), e.Addr.As4(), exp, e.Endpoints, ch)
	}
	for _, n := range c.names {
		eps := map[uint16]bool{}
		for _, e := range n.entries {
			for _, ep := range e.eps {
				eps[ep] = true
			}
		}
		for _, ep := range slices.Sorted(maps.Keys(eps)) {
			c.capName(n, ep, ch)
		}
	}
	c.capEntries(ch)
	return nil
}

// reset empties the cache, keeping its selectors.
func (c *Cache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resetLocked()
}

func (c *Cache) resetLocked() {
	c.writes++
	c.names = map[string]*name{}
	c.byAddr = map[[4]byte][]*entry{}
	c.live, c.held, c.entries = askHeap{}, askHeap{}, 0
	c.byEP = map[uint16]map[*entry]struct{}{}
	for _, s := range c.sels {
		s.names = map[*name]struct{}{}
		s.addrs = map[[4]byte]int32{}
		s.eps = map[[4]byte]map[uint16]int32{}
		s.dirty = map[[4]byte]struct{}{}
	}
}
