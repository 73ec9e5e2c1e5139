package ipcache_test

import (
	"encoding/json"
	"testing"

	"github.com/filament-net/filament/agent/ipcache"
)

// FuzzEntryDecode feeds arbitrary kvstore values to the ipcache entry
// decoding the watch does (ipcache.DecodeEntry). It must
// never panic and must refuse what is not JSON, and an entry it accepts must come back equal through the form it is
// published in.
func FuzzEntryDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, value []byte) {
		e, err := ipcache.DecodeEntry(value)
		if err != nil {
			return
		}
		if !json.Valid(value) {
			t.Fatalf("invalid JSON decoded as an ipcache entry: %q", value)
		}
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("a decoded entry does not marshal: %v", err)
		}
		back, err := ipcache.DecodeEntry(b)
		if err != nil || back != e {
			t.Fatalf("entry changes when published again (%v):\n got %#v\nwant %#v\n%s", err, back, e, b)
		}
	})
}
