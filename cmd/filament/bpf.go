package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/filament-net/filament/agent/api/types"
)

// parseEndpointID reads an endpoint ID argument.
func parseEndpointID(s string) (uint16, error) {
	id, err := strconv.ParseUint(s, 10, 16)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("endpoint ID %q: want a number 1-65535", s)
	}
	return uint16(id), nil
}

func (c *cli) bpfCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bpf", Short: "Show the node's BPF maps as the kernel holds them"}
	pol := &cobra.Command{Use: "policy", Short: "Endpoints' policy map entries"}
	pol.AddCommand(&cobra.Command{
		Use: "get ENDPOINT_ID", Short: "List an endpoint's policy map entries: direction, peer identity, protocol and ports, verdict", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			id, err := parseEndpointID(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := c.ctx()
			defer cancel()
			es, err := c.client().BPFPolicy(ctx, id)
			if err != nil {
				return err
			}
			return c.print(es, func(w io.Writer) { bpfPolicyTable(w, es) })
		},
	})
	ipc := &cobra.Command{Use: "ipcache", Short: "The ipcache: the identity of each address prefix"}
	ipc.AddCommand(&cobra.Command{
		Use: "list", Short: "List the ipcache's prefixes with their identity and its labels", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			es, err := c.client().BPFIPCache(ctx)
			if err != nil {
				return err
			}
			return c.print(es, func(w io.Writer) {
				fmt.Fprintln(w, "PREFIX\tIDENTITY\tLABELS")
				for _, e := range es {
					cellf(w, "%s\t%d\t%s\n", e.Prefix, uint32(e.Identity), strings.Join(e.Labels, ","))
				}
			})
		},
	})
	cmd.AddCommand(pol, ipc)
	return cmd
}

// bpfPolicyTable prints policy map entries, one a line.
func bpfPolicyTable(w io.Writer, es []types.BPFPolicyEntry) {
	fmt.Fprintln(w, "DIRECTION\tIDENTITY\tLABELS\tPROTOCOL\tPORTS\tVERDICT")
	for _, e := range es {
		peer, ls := strconv.FormatUint(uint64(e.Identity), 10), strings.Join(e.Labels, ",")
		if e.Identity == 0 {
			peer, ls = "ANY", "(any peer)"
		}
		cellf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Direction, peer, ls, e.Protocol, portRange(e.PortLow, e.PortHigh), e.Verdict)
	}
}

// portRange shows a block of ports: ANY, one port, or low-high.
func portRange(lo, hi uint16) string {
	switch {
	case lo == 0 && hi == 65535:
		return "ANY"
	case lo == hi:
		return strconv.Itoa(int(lo))
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}

// enforcementText says in which directions an endpoint's policy is
// enforced.
func enforcementText(e *types.Enforcement) string {
	if e == nil {
		return "unknown (not in the datapath)"
	}
	word := func(on bool) string {
		if on {
			return "enforced"
		}
		return "not enforced"
	}
	return "ingress " + word(e.Ingress) + ", egress " + word(e.Egress)
}
