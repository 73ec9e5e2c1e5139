// Command filament-relay is a cluster's Hubble relay: it reads the flows of
// every node of the cluster and of the clusters connected to it (found
// through the local node's Peer service, read over mutual TLS with the
// cluster's clustermesh bundle) and serves Hubble's Observer API over all
// of them, so the real `hubble observe --server <relay>` sees the whole
// mesh, and the web page (service map, flows, mesh status) over HTTP.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"github.com/filament-net/filament/clustermesh/relay"
	"github.com/filament-net/filament/clustermesh/relay/web"
	"github.com/filament-net/filament/internal/version"
)

type options struct {
	bundle, peer, peerName, listen, webListen, agentSocket string
}

func main() {
	var o options
	cmd := &cobra.Command{
		Use:           "filament-relay",
		Short:         "Hubble relay: the flows of every node of the cluster mesh behind one Observer API, and a web page",
		Version:       version.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return run(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.bundle, "bundle", "", "the cluster's clustermesh bundle (filament clustermesh enable): CA, hubble-relay.pem, remotes/")
	f.StringVar(&o.peer, "peer-server", "unix://"+config.Default().HubbleSocketPath(), "a node's Hubble API to find the nodes from: unix:///path (the local agent's) or host:port (mutual TLS)")
	f.StringVar(&o.peerName, "peer-tls-server-name", "", "the TLS server name of a host:port --peer-server (<node>.<cluster>.hubble-grpc.filament.io)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:4245", "where to serve the Observer API: a loopback host:port or unix:///path")
	f.StringVar(&o.webListen, "web-listen", "127.0.0.1:4246", "where to serve the web page: a loopback host:port; empty: no page")
	f.StringVar(&o.agentSocket, "agent-socket", config.DefaultAPISocket, "the local agent's API socket, for the page's mesh status (clusters' sync, encryption peers); empty: nodes only")
	cmd.MarkFlagRequired("bundle")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "filament-relay:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	cluster, creds, err := relay.BundleCredentials(o.bundle)
	if err != nil {
		return err
	}
	r, err := relay.New(relay.Config{PeerTarget: o.peer, PeerServerName: o.peerName, Cluster: cluster, Credentials: creds})
	if err != nil {
		return err
	}
	ln, err := relay.Listen("--listen", o.listen)
	if err != nil {
		return err
	}
	var webLn net.Listener
	if o.webListen != "" {
		if strings.HasPrefix(o.webListen, "unix://") {
			return fmt.Errorf("%w: --web-listen %q: want a loopback host:port", relay.ErrConfig, o.webListen)
		}
		if webLn, err = relay.Listen("--web-listen", o.webListen); err != nil {
			ln.Close()
			return err
		}
	}
	go r.Run(ctx)
	errs := make(chan error, 2)
	go func() { errs <- r.Serve(ctx, ln) }()
	slog.Info("relay serving", "cluster", cluster, "address", ln.Addr().String(), "peers from", o.peer)
	if webLn != nil {
		go func() { errs <- serveWeb(ctx, r, webLn, ln.Addr(), o.agentSocket) }()
		slog.Info("relay web page", "url", "http://"+webLn.Addr().String()+"/")
	}
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
		return nil
	}
}

// serveWeb serves the page on ln, reading flows from the relay's own
// Observer API at api.
func serveWeb(ctx context.Context, r *relay.Relay, ln net.Listener, api net.Addr, agentSocket string) error {
	target := api.String()
	if api.Network() == "unix" {
		target = "unix://" + target
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	var agent *client.Client
	if agentSocket != "" {
		agent = client.New(agentSocket)
	}
	srv := &http.Server{
		Handler: relay.LoopbackHosts(web.Handler(web.Config{
			Observer: observer.NewObserverClient(conn),
			Status:   func(ctx context.Context) (any, error) { return r.Status(ctx, agent) },
		})),
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10,
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
