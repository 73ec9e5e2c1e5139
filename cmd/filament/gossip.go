package main

import (
	"io"

	"github.com/spf13/cobra"

	"github.com/filament-net/filament/clustermesh"
	"github.com/filament-net/filament/crypto/gossipkey"
)

// rotateGossipKeyCmd is `filament clustermesh rotate-gossip-key`: one step
// of a rotation of the bundle's gossip key file.
func (c *cli) rotateGossipKeyCmd(need func() (string, error)) *cobra.Command {
	var step string
	cmd := &cobra.Command{
		Use:   "rotate-gossip-key --step add|use|drop",
		Short: "One step of a rotation of the cluster's gossip key (bundle gossip.key): add a key, use it, drop the old one; apply each step on every node first",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			dir, err := need()
			if err != nil {
				return err
			}
			path := clustermesh.GossipKeyFile(dir)
			if err := gossipkey.Ensure(path); err != nil {
				return err
			}
			ks, err := gossipkey.Rotate(path, step)
			if err != nil {
				return err
			}
			return c.print(map[string]any{"file": path, "step": step, "keys": len(ks)}, func(w io.Writer) {
				cellf(w, "%s: step %s done, %d key(s); copy the file to every node (agents re-read it every 3 s) before the next step\n", path, step, len(ks))
			})
		},
	}
	cmd.Flags().StringVar(&step, "step", "", "add (a new key, accepted), use (the newest key becomes primary) or drop (keep only the primary)")
	return cmd
}
