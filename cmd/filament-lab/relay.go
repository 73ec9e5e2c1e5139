package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/filament-net/filament/lab"
)

// relayCmd starts and stops a cluster's Hubble relay (filament-relay).
func relayCmd(name *string) *cobra.Command {
	relay := &cobra.Command{Use: "relay", Short: "Start and stop a cluster's Hubble relay (the Observer API of the whole mesh, and its web page)"}
	start := &cobra.Command{
		Use: "start CLUSTER", Short: "Start the cluster's relay in its first node's namespace and say how to reach it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Load(*name)
			if err != nil {
				return err
			}
			r, err := l.StartRelay(args[0])
			if err != nil {
				return err
			}
			describeRelay(cmd.OutOrStdout(), *name, args[0], r)
			return nil
		},
	}
	stop := &cobra.Command{
		Use: "stop CLUSTER", Short: "Stop the cluster's relay", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Load(*name)
			if err != nil {
				return err
			}
			if err := l.StopRelay(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "relay of cluster %s stopped\n", args[0])
			return nil
		},
	}
	var listen string
	forward := &cobra.Command{
		Use: "forward CLUSTER", Short: "Forward a loopback port of this machine to the relay's web page (until interrupted)",
		Long: "Listen on a loopback address of this machine and forward each connection to the relay's web page on the\n" +
			"loopback of its node namespace, so a browser here opens the page. The page has no authentication: the\n" +
			"address must be a loopback one.", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Load(*name)
			if err != nil {
				return err
			}
			c, err := l.Cluster(args[0])
			if err != nil {
				return err
			}
			if c.Relay == nil {
				return fmt.Errorf("cluster %s has no relay: filament-lab relay start %s", c.Name, c.Name)
			}
			ln, err := listenLoopback(listen)
			if err != nil {
				return err
			}
			defer ln.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "the page of cluster %s's relay: http://%s/ (Ctrl-C ends the forward)\n", c.Name, ln.Addr())
			r := c.Relay
			return forwardConns(ln, func() (net.Conn, error) { return r.DialWeb(5 * time.Second) })
		},
	}
	forward.Flags().StringVar(&listen, "listen", fmt.Sprintf("127.0.0.1:%d", lab.RelayWebPort), "loopback address:port to listen on")
	relay.AddCommand(start, stop, forward)
	return relay
}

// errNotLoopback: a forward would expose the page beyond this machine.
var errNotLoopback = errors.New("not a loopback address")

// listenLoopback listens on addr, a loopback IP address and port.
func listenLoopback(addr string) (net.Listener, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: want ip:port: %w", addr, err)
	}
	if !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("--listen %q: %w", addr, errNotLoopback)
	}
	return net.Listen("tcp", ap.String())
}

// maxForwards bounds the connections forwarded at a time.
const maxForwards = 64

// forwardConns copies each connection ln accepts to and from one dial
// makes, until ln fails.
func forwardConns(ln net.Listener, dial func() (net.Conn, error)) error {
	slots := make(chan struct{}, maxForwards)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		select {
		case slots <- struct{}{}:
		default:
			c.Close() // too many at a time
			continue
		}
		go func() {
			defer func() { <-slots }()
			defer c.Close()
			up, err := dial()
			if err != nil {
				return
			}
			defer up.Close()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(up, c)
				if tc, ok := up.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
			}()
			io.Copy(c, up)
			c.Close()
			wg.Wait()
		}()
	}
}

// describeRelay says where the relay of cluster serves and how to use it:
// both addresses are on the loopback of the node namespace it runs in.
func describeRelay(w io.Writer, labName, cluster string, r *lab.Relay) {
	fmt.Fprintf(w, `relay of cluster %[2]s: pid %[3]d, in netns %[4]s (node %[5]s), log %[6]s
  Observer API: %[7]s (plaintext, on the loopback of netns %[4]s)
  web page:     http://%[8]s/ (on the loopback of netns %[4]s)
flows of the whole mesh:
  filament-lab exec --name %[1]s %[5]s -- filament observe --server %[7]s --last 20
  ip netns exec %[4]s hubble observe --server %[7]s --last 20   (the hubble CLI: make hubble)
the page's API from the namespace, and the page in a browser of this machine (a loopback port forwarded into the namespace):
  ip netns exec %[4]s curl -s http://%[8]s/api/status
  filament-lab relay forward --name %[1]s %[2]s   then open http://127.0.0.1:%[9]d/
`, labName, cluster, r.PID, r.NetNS, r.Node, r.Log, r.Listen, r.Web, lab.RelayWebPort)
}
