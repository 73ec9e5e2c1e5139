package lab

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// HubblePort is where every lab agent serves the Hubble API to the relay
// (its node address, mutual TLS).
const HubblePort = 4244

// RelayPort and RelayWebPort are where a cluster's relay serves the
// Observer API and the web page, on the loopback of the node namespace it
// runs in.
const (
	RelayPort    = 4245
	RelayWebPort = 4246
)

// StartRelay starts the cluster's Hubble relay (filament-relay) in the
// namespace of the cluster's first node, finding the nodes through that
// node's agent, and waits until it serves.
func (l *Lab) StartRelay(cluster string) (*Relay, error) {
	c, err := l.Cluster(cluster)
	if err != nil {
		return nil, err
	}
	if c.Relay != nil && running(c.Relay.PID) {
		return c.Relay, nil
	}
	var n *Node
	for i := range l.Nodes {
		if l.Nodes[i].Cluster == c.Name {
			n = &l.Nodes[i]
			break
		}
	}
	if n == nil {
		return nil, fmt.Errorf("%w: cluster %s has no node to run its relay", ErrNotFound, c.Name)
	}
	r := &Relay{Node: n.Name, NetNS: n.NetNS, Listen: net.JoinHostPort("127.0.0.1", fmt.Sprint(RelayPort)),
		Web: net.JoinHostPort("127.0.0.1", fmt.Sprint(RelayWebPort)), Log: filepath.Join(l.dir, c.Name, "relay.log")}
	logf, err := os.OpenFile(r.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := netnsCommand(n.NetNS, filepath.Join(l.BinDir, "filament-relay"), "--bundle", c.Bundle,
		"--peer-server", "unix://"+filepath.Join(filepath.Dir(n.Socket), "hubble.sock"), "--listen", r.Listen,
		"--web-listen", r.Web, "--agent-socket", n.Socket)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the relay of cluster %s: %w", c.Name, err)
	}
	r.PID = cmd.Process.Pid
	go cmd.Wait()
	if err := waitServing(n.NetNS, r.Listen, r.Log, "relay serving", 20*time.Second, func() bool { return running(r.PID) }); err != nil {
		stopPID(r.PID)
		return nil, fmt.Errorf("relay of cluster %s: %w", c.Name, err)
	}
	c.Relay = r
	return r, l.save()
}

// StopRelay stops the cluster's relay.
func (l *Lab) StopRelay(cluster string) error {
	c, err := l.Cluster(cluster)
	if err != nil {
		return err
	}
	if c.Relay != nil {
		stopPID(c.Relay.PID)
		c.Relay = nil
	}
	return l.save()
}

// DialWeb connects to the relay's web page on the loopback of the
// namespace it runs in (from a thread in that namespace), for a local
// port forward.
func (r *Relay) DialWeb(timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := ns.WithNetNSPath(NetNSPath(r.NetNS), func(ns.NetNS) (err error) {
		conn, err = net.DialTimeout("tcp4", r.Web, timeout)
		return err
	})
	return conn, err
}
