// Command filament-clustermesh-apiserver runs a cluster's etcd: the one
// kvstore every agent of the cluster uses, served with the cluster's
// clustermesh bundle over mutual TLS so that other clusters can read it
// (read-only). Without a bundle it serves plain HTTP with no authentication.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/clustermesh/apiserver"
	"github.com/filament-net/filament/internal/version"
)

func main() {
	var c apiserver.Config
	var maxClusters int
	var quota string
	cmd := &cobra.Command{
		Use:           "filament-clustermesh-apiserver",
		Short:         "The cluster's etcd for Filament agents and remote clusters",
		Version:       version.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := identity.SetMaxClusters(maxClusters); err != nil {
				return err
			}
			q, err := parseQuota(quota)
			if err != nil {
				return err
			}
			c.EtcdQuotaBytes = q
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return apiserver.Run(ctx, c)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Bundle, "bundle", "", "clustermesh bundle directory (from filament clustermesh enable): serve mutual TLS with etcd users")
	f.StringVar(&c.ClusterName, "cluster-name", "default", "cluster name (taken from the bundle when given)")
	f.Uint32Var(&c.ClusterID, "cluster-id", 1, "cluster ID 1-255 (taken from the bundle when given)")
	f.StringVar(&c.DataDir, "data-dir", "/var/lib/filament-clustermesh-apiserver", "embedded etcd data directory")
	f.StringVar(&c.ClientURL, "listen-client-url", "http://127.0.0.1:2379", "client URL to serve (https:// with a bundle)")
	f.StringVar(&c.PeerURL, "listen-peer-url", "http://127.0.0.1:2380", "embedded etcd peer URL")
	f.BoolVar(&c.UnsafeNoFsync, "unsafe-no-fsync", false, "skip fsync (labs and tests only)")
	f.IntVar(&maxClusters, "max-connected-clusters", 255, "identity layout of the mesh: 255 or 511 clusters")
	f.StringVar(&c.PeersFile, "remote-peers", "", "the clusters connected to read this one, each with an etcd user of its own (filament clustermesh connect writes it; default: the bundle's remote-peers)")
	f.BoolVar(&c.RetireSharedRemote, "retire-shared-remote", false, "delete the one etcd user (remote) of clusters connected before 2026-12-06 and end its watches, so that such a cluster disconnected since reads no more (connect the others again first: each then has its own user; keep it set: a start without it makes the user again; with --etcd-endpoints open watches go on until they end)")
	f.StringVar(&c.CacheRemotes, "clustermesh-cache", "", "directory of remote cluster configs (the bundle's remotes/): follow those clusters and re-serve them to this cluster's agents (agents: --clustermesh-cache)")
	f.StringVar(&quota, "etcd-quota", "", "largest database the embedded etcd may hold, e.g. 8Gi (64Mi-8Gi; default etcd's 2Gi); a cache of a large mesh needs about 250 bytes per remote endpoint")
	f.StringSliceVar(&c.EtcdEndpoints, "etcd-endpoints", nil, "use this external etcd cluster instead of the embedded one")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "filament-clustermesh-apiserver:", err)
		os.Exit(1)
	}
}
