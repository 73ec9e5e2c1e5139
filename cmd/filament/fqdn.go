package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// fqdnCmd is `filament fqdn`: the DNS names the node learned for toFQDNs.
func (c *cli) fqdnCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "fqdn", Short: "DNS names learned from the answers the L7 proxy allowed (toFQDNs)"}
	cache := &cobra.Command{Use: "cache", Short: "The node's DNS name cache"}
	cache.AddCommand(&cobra.Command{
		Use: "list", Short: "List learned names: address, TTL left, the endpoints that asked", Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			es, err := c.client().FQDNCache(ctx)
			if err != nil {
				return err
			}
			return c.print(es, func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tADDRESS\tTTL LEFT\tENDPOINTS")
				for _, e := range es {
					ttl := fmt.Sprintf("%ds", e.TTLLeft)
					if e.TTLLeft < 0 {
						ttl = "expired, in use"
					}
					eps := make([]string, len(e.Endpoints))
					for i, id := range e.Endpoints {
						eps[i] = fmt.Sprint(id)
					}
					cellf(w, "%s\t%s\t%s\t%s\n", e.Name, e.Addr, ttl, strings.Join(eps, ","))
				}
			})
		},
	})
	cmd.AddCommand(cache)
	return cmd
}
