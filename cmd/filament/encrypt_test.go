package main

import "testing"

// encrypt status names every peer cluster/node, local ones included.
func TestQualifiedNode(t *testing.T) {
	for _, c := range []struct{ local, name, want string }{
		{"c1", "n2", "c1/n2"},
		{"c1", "c2/n1", "c2/n1"},
		{"", "n2", "n2"},
		{"c1", "", ""},
	} {
		if got := qualifiedNode(c.local, c.name); got != c.want {
			t.Errorf("qualifiedNode(%q, %q) = %q, want %q", c.local, c.name, got, c.want)
		}
	}
}
