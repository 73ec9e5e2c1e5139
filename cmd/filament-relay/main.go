// Command filament-relay is a cluster's Hubble relay: it reads the flows of
// every node of the cluster and of the clusters connected to it (found
// through the local node's Peer service, read over mutual TLS with the
// cluster's clustermesh bundle) and serves Hubble's Observer API over all
// of them, so the real `hubble observe --server <relay>` sees the whole
// mesh.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/clustermesh/relay"
	"github.com/filament-net/filament/internal/version"
)

func main() {
	var (
		bundle, peer, peerName, listen string
	)
	cmd := &cobra.Command{
		Use:           "filament-relay",
		Short:         "Hubble relay: the flows of every node of the cluster mesh behind one Observer API",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cluster, creds, err := relay.BundleCredentials(bundle)
			if err != nil {
				return err
			}
			r, err := relay.New(relay.Config{PeerTarget: peer, PeerServerName: peerName, Cluster: cluster, Credentials: creds})
			if err != nil {
				return err
			}
			ln, err := relay.Listen("--listen", listen)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			go r.Run(ctx)
			slog.Info("relay serving", "cluster", cluster, "address", ln.Addr().String(), "peers from", peer)
			return r.Serve(ctx, ln)
		},
	}
	f := cmd.Flags()
	f.StringVar(&bundle, "bundle", "", "the cluster's clustermesh bundle (filament clustermesh enable): CA, hubble-relay.pem, remotes/")
	f.StringVar(&peer, "peer-server", "unix://"+config.Default().HubbleSocketPath(), "a node's Hubble API to find the nodes from: unix:///path (the local agent's) or host:port (mutual TLS)")
	f.StringVar(&peerName, "peer-tls-server-name", "", "the TLS server name of a host:port --peer-server (<node>.<cluster>.hubble-grpc.filament.io)")
	f.StringVar(&listen, "listen", "127.0.0.1:4245", "where to serve the Observer API: a loopback host:port or unix:///path")
	cmd.MarkFlagRequired("bundle")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "filament-relay:", err)
		os.Exit(1)
	}
}
