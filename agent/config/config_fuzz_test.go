package config_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/filament-net/filament/agent/config"
)

// FuzzLoadFile feeds arbitrary files to Config.LoadFile and Validate, as
// the agent does at start. Neither may panic; a refused file changes
// nothing and the error wraps ErrInvalid; a configuration that validates
// comes back equal, and still valid, through its JSON form.
func FuzzLoadFile(f *testing.F) {
	dir := f.TempDir()
	path := filepath.Join(dir, "config.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c := config.Default()
		if err := c.LoadFile(path); err != nil {
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("LoadFile error does not wrap ErrInvalid: %v", err)
			}
			if !reflect.DeepEqual(c, config.Default()) {
				t.Fatalf("a refused file changed the configuration: %#v", c)
			}
			return
		}
		if err := c.Validate(); err != nil {
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("Validate error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("marshal a valid configuration: %v", err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		back := config.Default()
		if err := back.LoadFile(path); err != nil {
			t.Fatalf("a valid configuration does not load from its JSON form: %v\n%s", err, b)
		}
		if !reflect.DeepEqual(back, c) {
			t.Fatalf("a valid configuration changes through JSON:\n got %#v\nwant %#v\n%s", back, c, b)
		}
		if err := back.Validate(); err != nil {
			t.Fatalf("a valid configuration is refused after a round trip: %v", err)
		}
	})
}
