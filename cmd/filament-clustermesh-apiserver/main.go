// Command filament-clustermesh-apiserver runs a cluster's etcd: the one
// kvstore every agent of the cluster uses (and, with the cluster mesh
// issue, the one other clusters read over mutual TLS). Today it serves the
// embedded etcd on the given client URL.
package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/filament-net/filament/agent/kvstore/embedded"
	"github.com/filament-net/filament/internal/version"
)

func main() {
	var c embedded.Config
	cmd := &cobra.Command{
		Use:           "filament-clustermesh-apiserver",
		Short:         "The cluster's etcd for Filament agents",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			s, err := embedded.Start(c)
			if err != nil {
				return err
			}
			defer s.Close()
			slog.Info("cluster etcd serving", "endpoints", s.Endpoints(), "dir", c.Dir)
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
			<-sig
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Dir, "data-dir", "/var/lib/filament-clustermesh-apiserver", "etcd data directory")
	f.StringVar(&c.Name, "name", "filament", "etcd member name")
	f.StringVar(&c.ClientURL, "listen-client-url", "http://127.0.0.1:2379", "client URL to serve")
	f.StringVar(&c.PeerURL, "listen-peer-url", "http://127.0.0.1:2380", "peer URL")
	f.BoolVar(&c.UnsafeNoFsync, "unsafe-no-fsync", false, "skip fsync (labs and tests only)")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "filament-clustermesh-apiserver:", err)
		os.Exit(1)
	}
}
