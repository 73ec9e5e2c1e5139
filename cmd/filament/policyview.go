package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/filament-net/filament/agent/api/types"
)

// policyTable lists policies: the key to get or delete each by, its
// namespace ("(cluster-wide)" for a CiliumClusterwideNetworkPolicy), kind
// and number of rules.
func policyTable(w *tabwriter.Writer, ps []types.Policy) {
	fmt.Fprintln(w, "POLICY\tNAMESPACE\tKIND\tRULES")
	for _, p := range ps {
		ns := p.Namespace
		if p.Clusterwide() {
			ns = "(cluster-wide)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", p.Key(), ns, p.Kind, len(p.Rules))
	}
}
