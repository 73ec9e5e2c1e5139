// Command filament-proxy is the node's transparent L7 proxy (agent/proxy):
// the agent starts and supervises it and pushes its config over the
// control socket. It is a process of its own so that an agent restart
// touches neither proxied connections nor new requests. This command is
// flags and signals; SIGINT or SIGTERM close it gracefully.
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
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/filament-net/filament/agent/proxy"
	"github.com/filament-net/filament/internal/version"
)

type options struct {
	listen, controlSocket, stateDir, logLevel        string
	transparent, upstreamMark                        bool
	transparentSource                                bool
	readHeaderTimeout, idleTimeout                   time.Duration
	originMap, ipcacheMap, frontendMap               string
	dnsReject                                        string
	dnsHold                                          time.Duration
	maxConnsPerSource, maxConns, maxStreamsPerSource int
}

func main() {
	if err := newCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "filament-proxy:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:           "filament-proxy",
		Short:         "Filament's per-node transparent L7 proxy (HTTP/1.1, HTTP/2, gRPC)",
		Version:       version.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE:          func(*cobra.Command, []string) error { return run(o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "0.0.0.0:15001", "proxy listener (it accepts any original destination)")
	f.BoolVar(&o.transparent, "transparent", true, "set IP_TRANSPARENT on the listener (needed for connections the datapath assigns to it)")
	f.BoolVar(&o.upstreamMark, "upstream-mark", true, "mark upstream sockets with the source identity (0xFA000000|identity)")
	f.BoolVar(&o.transparentSource, "transparent-source", false, "upstream connections to pods keep the client's address as their source (needs --upstream-mark, CAP_NET_ADMIN and the datapath, which returns their replies to the proxy)")
	f.StringVar(&o.controlSocket, "control-socket", "/run/filament/proxy.sock", "unix socket of the control API")
	f.StringVar(&o.stateDir, "state-dir", "/var/lib/filament/proxy", "where the last config is kept")
	f.DurationVar(&o.readHeaderTimeout, "read-header-timeout", 10*time.Second, "time a client may take to send request headers")
	f.DurationVar(&o.idleTimeout, "idle-timeout", 5*time.Minute, "keep-alive connections idle this long are closed")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.frontendMap, "frontend-map", "", "the datapath's pinned proxy_frontends map: the backend of each NodePort connection steered here untranslated (without it, such a connection is taken as going to the frontend)")
	f.StringVar(&o.ipcacheMap, "ipcache-map", "", "the datapath's pinned ipcache: a destination's identity as the datapath knows it now, which decides an upstream connection's source (without it, the ipcache the agent pushes)")
	f.StringVar(&o.originMap, "origin-map", "", "the datapath's pinned proxy_origin map: the source identity of each connection steered here (without it, the address decides)")
	f.StringVar(&o.dnsReject, "dns-reject", "refused", "the answer to a DNS query no rule allows: refused or nxdomain")
	f.DurationVar(&o.dnsHold, "dns-hold", 2*time.Second, "longest an allowed DNS answer waits for the agent to put its addresses in the datapath")
	f.IntVar(&o.maxConnsPerSource, "max-conns-per-source", proxy.DefaultMaxConnsPerSource, "connections one source (address and identity) may hold open through the proxy; more are closed at once")
	f.IntVar(&o.maxConns, "max-conns", proxy.DefaultMaxConns, "connections the proxy holds open, shared fairly: when all are held, a source holding less than its share takes the oldest connection of the source holding the most (held a second), else its connection is closed at once")
	f.IntVar(&o.maxStreamsPerSource, "max-streams-per-source", proxy.DefaultMaxStreamsPerSource, "HTTP/2 requests one source (address and identity) may have in flight through the proxy; more are answered 503 (gRPC: UNAVAILABLE)")
	return cmd
}

func run(o options) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	popts := proxy.Options{
		UpstreamMark: o.upstreamMark, ReadHeaderTimeout: o.readHeaderTimeout, IdleTimeout: o.idleTimeout, Logger: log,
		DNSHold: o.dnsHold, MaxConnsPerSource: o.maxConnsPerSource, MaxConns: o.maxConns, MaxStreamsPerSource: o.maxStreamsPerSource,
	}
	switch o.dnsReject {
	case "refused":
	case "nxdomain":
		popts.DNSRejectNXDomain = true
	default:
		return fmt.Errorf("--dns-reject %q: want refused or nxdomain", o.dnsReject)
	}
	if o.transparentSource {
		if !o.upstreamMark {
			return errors.New("--transparent-source needs --upstream-mark (the datapath finds the replies by it)")
		}
		// Without the capability upstreams keep the node's address, as
		// before, rather than failing every connection.
		if err := proxy.CheckTransparent(); err != nil {
			log.Warn("upstream connections keep the node's address", "err", err)
		} else {
			popts.TransparentSource = true
		}
	}
	if o.ipcacheMap != "" {
		im, err := proxy.OpenIPCacheMap(o.ipcacheMap)
		if err != nil {
			return fmt.Errorf("--ipcache-map: %w", err)
		}
		defer im.Close()
		popts.IPCache = im
	}
	if o.frontendMap != "" {
		fm, err := proxy.OpenFrontendMap(o.frontendMap)
		if err != nil {
			return fmt.Errorf("--frontend-map: %w", err)
		}
		defer fm.Close()
		popts.Frontends = fm
	}
	if o.originMap != "" {
		om, err := proxy.OpenOriginMap(o.originMap)
		if err != nil {
			return fmt.Errorf("--origin-map: %w", err)
		}
		defer om.Close()
		popts.Origins = om
	}
	// One proxy per state dir: a second one exits here, before it binds
	// or touches the control socket; the agent finds the running one by
	// the lock to stop it before it starts another.
	if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	release, err := proxy.Lock(o.stateDir)
	if err != nil {
		return err
	}
	defer release()
	p := proxy.New(popts)
	control, err := proxy.NewControl(p, o.stateDir)
	if err != nil {
		return err
	}
	var ln net.Listener
	var dnsConn *net.UDPConn // DNS over UDP, on the same port
	if o.transparent {
		ln, err = proxy.ListenTransparent(ctx, o.listen)
		if err == nil {
			if dnsConn, err = proxy.ListenTransparentUDP(ctx, o.listen); err != nil {
				ln.Close()
			}
		}
	} else {
		ln, err = (&net.ListenConfig{}).Listen(ctx, "tcp", o.listen)
	}
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	control.SetListenerMarked(o.transparent) // ListenTransparent's sockets carry the mark
	if err := os.MkdirAll(filepath.Dir(o.controlSocket), 0o755); err != nil {
		return fmt.Errorf("--control-socket: %w", err)
	}
	os.Remove(o.controlSocket) // a previous run's
	cln, err := net.Listen("unix", o.controlSocket)
	if err != nil {
		ln.Close()
		return fmt.Errorf("--control-socket: %w", err)
	}
	os.Chmod(o.controlSocket, 0o600)
	log.Info("filament-proxy running", "listen", ln.Addr(), "control", o.controlSocket, "revision", p.Config().Revision)

	errc := make(chan error, 3)
	go func() { errc <- p.Serve(ln) }()
	if dnsConn != nil {
		go func() { errc <- p.ServeDNS(dnsConn) }()
	}
	go func() { errc <- control.Serve(cln) }()
	select {
	case <-ctx.Done():
		err = nil
	case err = <-errc:
	}
	log.Info("filament-proxy stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.Shutdown(sctx)
	control.Close()
	os.Remove(o.controlSocket)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
