package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/filament-net/filament/lab"
)

// A lab without pods (or hosts) lists them as [], not null.
func TestStatusJSONListsAreNeverNull(t *testing.T) {
	var out bytes.Buffer
	if err := writeStatusJSON(&out, &lab.Lab{Name: "x", Nodes: []lab.Node{{Name: "n1"}}}); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if strings.Contains(s, "null") || !strings.Contains(s, `"pods": []`) || !strings.Contains(s, `"clusters": []`) {
		t.Fatalf("status:\n%s", s)
	}
}
