package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/agent/labels"
)

// identityCluster is the cluster an identity's labels name ("-" for none:
// reserved and CIDR identities belong to no cluster).
func identityCluster(id types.IdentityView) string {
	for _, l := range id.Labels {
		if i := strings.Index(l, labels.KeyCluster+"="); i >= 0 && (i == 0 || l[i-1] == ':') {
			return l[i+len(labels.KeyCluster)+1:]
		}
	}
	return "-"
}

// clusterIdentityTable is `identity list --all-clusters`.
func clusterIdentityTable(ids []types.IdentityView) func(w io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintln(w, "ID\tCLUSTER\tLABELS")
		for _, id := range ids {
			cellf(w, "%d\t%s\t%s\n", uint32(id.ID), identityCluster(id), strings.Join(id.Labels, ","))
		}
	}
}
