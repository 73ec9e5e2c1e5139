package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// A library without a detected license gets its reviewed one only while
// its license file is the reviewed text; a changed text and a module
// nobody reviewed are errors naming the module.
func TestCompleteLicenses(t *testing.T) {
	cache := t.TempDir()
	dir := filepath.Join(cache, "example.com/m@v1.0.0")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	text := []byte("Permission is hereby granted...\n")
	if err := os.WriteFile(filepath.Join(dir, "LICENSE"), text, 0o644); err != nil {
		t.Fatal(err)
	}
	reviewed := map[string]reviewedLicense{"example.com/m@v1.0.0": {ID: "MIT", File: "LICENSE",
		SHA256: "0b1fca0a1cff2ed8a4bdb15a39dc3c4a82ba68d6b8a8b23a8f0e5b0b7a8f7c6d"}}
	bom := func(names ...string) *cdx.BOM {
		cs := []cdx.Component{{Type: cdx.ComponentTypeApplication, Name: "ours", Version: "v0"},
			{Type: cdx.ComponentTypeLibrary, Name: "example.com/detected", Version: "v2.0.0",
				Licenses: &cdx.Licenses{{License: &cdx.License{ID: "Apache-2.0"}}}}}
		for _, n := range names {
			cs = append(cs, cdx.Component{Type: cdx.ComponentTypeLibrary, Name: n, Version: "v1.0.0"})
		}
		return &cdx.BOM{Components: &cs}
	}
	// The text differs from the pinned hash: refused.
	if err := completeLicenses(bom("example.com/m"), cache, reviewed); err == nil || !strings.Contains(err.Error(), "example.com/m@v1.0.0") {
		t.Fatalf("changed license text: want an error naming the module, got %v", err)
	}
	r := reviewed["example.com/m@v1.0.0"]
	r.SHA256 = sha256Hex(text)
	reviewed["example.com/m@v1.0.0"] = r
	b := bom("example.com/m")
	if err := completeLicenses(b, cache, reviewed); err != nil {
		t.Fatal(err)
	}
	for _, c := range *b.Components {
		if c.Type == cdx.ComponentTypeLibrary && !hasLicense(&c) {
			t.Errorf("%s still has no license", c.Name)
		}
		if c.Name == "example.com/m" && (*c.Licenses)[0].License.ID != "MIT" {
			t.Errorf("example.com/m: license %+v", (*c.Licenses)[0].License)
		}
	}
	// Nobody reviewed this one.
	err := completeLicenses(bom("example.com/m", "example.com/unknown"), cache, reviewed)
	if !errors.Is(err, ErrNoLicense) || !strings.Contains(err.Error(), "example.com/unknown@v1.0.0") {
		t.Fatalf("unreviewed module: want ErrNoLicense naming it, got %v", err)
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
