package main

import (
	"encoding/json"
	"io"

	"github.com/filament-net/filament/lab"
)

// writeStatusJSON prints the lab as `status -o json` does: indented, and
// with every list present ([] rather than null when empty).
func writeStatusJSON(w io.Writer, l *lab.Lab) error {
	v := *l
	if v.Clusters == nil {
		v.Clusters = []lab.Cluster{}
	}
	if v.Nodes == nil {
		v.Nodes = []lab.Node{}
	}
	if v.Pods == nil {
		v.Pods = []lab.Pod{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(&v)
}
