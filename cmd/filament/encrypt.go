package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func (c *cli) encryptCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "encrypt", Aliases: []string{"encryption"}, Short: "Transparent encryption between nodes"}
	status := &cobra.Command{
		Use: "status", Short: "Mode, device, peers with last handshake and bytes, strict-mode drops", Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			st, err := c.client().Encryption(ctx)
			if err != nil {
				return err
			}
			// The agent names its own cluster's nodes bare (n2) and remote
			// ones cluster/node; the table names every node cluster/node.
			local := ""
			if s, err := c.client().Status(ctx); err == nil {
				local = s.ClusterName
			}
			return c.print(st, func(w io.Writer) {
				cellf(w, "Mode:\t%s\n", st.Mode)
				if st.Mode == "none" {
					return
				}
				cellf(w, "Strict:\t%v (drops: %d)\n", st.Strict, st.StrictDrops)
				cellf(w, "Device:\t%s (%s), UDP %d\n", st.Device, st.Type, st.Port)
				cellf(w, "Public key:\t%s\n", st.PublicKey)
				cellf(w, "Node authentication:\t%v (%d refused)\n", st.Authentication, len(st.Refused))
				fmt.Fprintln(w, "\nPEER\tENDPOINT\tALLOWED IPS\tLAST HANDSHAKE\tRX\tTX")
				for _, p := range st.Peers {
					hs := "never"
					if !p.LastHandshake.IsZero() {
						hs = time.Since(p.LastHandshake).Round(time.Second).String() + " ago"
					}
					cellf(w, "%s\t%s\t%v\t%s\t%d\t%d\n", qualifiedNode(local, p.Name), p.Endpoint, p.AllowedIPs, hs, p.RxBytes, p.TxBytes)
				}
				if len(st.Refused) > 0 {
					fmt.Fprintln(w, "\nREFUSED NODE\tSINCE\tREASON")
					for _, r := range st.Refused {
						cellf(w, "%s\t%s\t%s\n", qualifiedNode(local, r.Node), r.Since.Format(time.RFC3339), r.Reason)
					}
				}
			})
		},
	}
	rotate := &cobra.Command{
		Use: "rotate-key", Short: "Make a new key pair for this node and publish it (peers follow; connections stay up)", Args: cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			ctx, cancel := c.ctx()
			defer cancel()
			pub, err := c.client().RotateKey(ctx)
			if err != nil {
				return err
			}
			return c.print(map[string]string{"publicKey": pub}, func(w io.Writer) {
				cellf(w, "New public key: %s\n", pub)
			})
		},
	}
	cmd.AddCommand(status, rotate)
	return cmd
}

// qualifiedNode names a node cluster/node: a bare name is one of the local
// cluster's nodes (left bare when the local cluster is unknown).
func qualifiedNode(localCluster, name string) string {
	if localCluster == "" || name == "" || strings.Contains(name, "/") {
		return name
	}
	return localCluster + "/" + name
}
