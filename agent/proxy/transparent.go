package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Transparent upstream connections: the upstream socket has the client's
// address as its source (IP_TRANSPARENT, bound to it), so the server sees
// its client and, across nodes without a tunnel, the destination's
// datapath knows the client's identity by its address. The datapath hands
// the server's replies back to the proxy's socket (bpf/lib/proxy.h).

// upstreamSource is the source address of an upstream connection for a
// downstream one from src to dst: src itself when the proxy is told to
// (Options.TransparentSource) and dst is a workload (a pod of some
// cluster, by the pushed ipcache), whose replies the datapath returns to
// the proxy; else none, and the kernel chooses the node's address. A
// destination outside the pods (the host, another node, the world) would
// send its replies to the client's address through the node's own stack
// or a masquerade, past the datapath's steering: it gets the node's.
//
// The destination's identity is the datapath's own (Options.IPCache) when
// the proxy has it: until 2026-12-06 only the pushed ipcache, up to a
// second old, decided, and a new pod it did not hold yet was dialled from
// the node's address, which its node judges (native routing: identity by
// source address) as remote-node, a peer policies often allow, instead of
// the client (TestUpstreamSourceFromTheDatapathsIPCache).
func (p *Proxy) upstreamSource(cfg *compiled, src, dst netip.Addr) netip.Addr {
	if !p.opts.TransparentSource {
		return netip.Addr{}
	}
	id := cfg.identity(dst)
	if p.opts.IPCache != nil {
		if live, ok := p.opts.IPCache.Identity(dst); ok {
			id = live
		}
	}
	return transparentSource(src, dst, id)
}

// transparentSource is upstreamSource's decision for a destination of
// identity dstID.
func transparentSource(src, dst netip.Addr, dstID uint32) netip.Addr {
	src, dst = src.Unmap(), dst.Unmap()
	if !src.Is4() || !dst.Is4() || !isWorkload(dstID) {
		return netip.Addr{}
	}
	return src
}

// isWorkload tells whether id is a pod's identity (of any cluster): not a
// reserved one, nor a node-local CIDR one.
func isWorkload(id uint32) bool {
	return id > maxReservedIdentity && id < localScopeIdentity
}

const (
	maxReservedIdentity = 255     // agent/identity MaxReserved
	localScopeIdentity  = 1 << 24 // agent/identity LocalScopeFlag
)

// Upstream ports of transparent upstream connections: below Linux's
// default ephemeral range (32768–60999), from which a client pod's kernel
// picks the ports of its own connections, knowing nothing of the proxy's
// sockets in the node's namespace. Had an upstream connection the port of
// a new connection of its client to the same server, that connection's
// SYN would meet the proxy's upstream socket (same tuple) instead of the
// listener. A pod that widens its ephemeral range into this one, or binds
// its own ports in it, can still meet that.
const (
	upstreamPortMin   = 20000
	upstreamPortMax   = 32767
	upstreamPortTries = 8 // random ports tried before giving up (EADDRINUSE)
)

// upstreamPort is a random port for a transparent upstream connection.
func upstreamPort() uint16 {
	return uint16(upstreamPortMin + rand.IntN(upstreamPortMax-upstreamPortMin+1))
}

// upstreamControl is the socket setup of an upstream connection: SO_MARK
// mark when it is not 0, and IP_TRANSPARENT when transparent (the source
// is the client's address, not this host's; the dialer binds a port of
// upstreamPort's, never the client's own). Both need CAP_NET_ADMIN. Nil
// when there is nothing to set.
func upstreamControl(mark uint32, transparent bool) func(network, address string, rc syscall.RawConn) error {
	if mark == 0 && !transparent {
		return nil
	}
	return func(_, _ string, rc syscall.RawConn) error {
		return sockopt(rc, func(fd int) error {
			if mark != 0 {
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
					return fmt.Errorf("SO_MARK: %w", err)
				}
			}
			if transparent {
				if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
					return fmt.Errorf("IP_TRANSPARENT: %w", err)
				}
			}
			return nil
		})
	}
}

// CheckTransparent tells whether this process may open transparent
// upstream sockets (IP_TRANSPARENT needs CAP_NET_ADMIN).
func CheckTransparent() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("transparent upstream: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
		return fmt.Errorf("transparent upstream: IP_TRANSPARENT: %w", err)
	}
	return nil
}

// dialUpstream connects to dst for a client at src with identity srcID:
// marked with the identity, from the client's address when transparent
// (upstreamSource), from a port of upstreamPort's.
func (p *Proxy) dialUpstream(ctx context.Context, network string, src netip.Addr, dst netip.AddrPort, srcID uint32) (net.Conn, error) {
	d := net.Dialer{Timeout: p.opts.DialTimeout}
	var mark uint32
	if p.opts.UpstreamMark {
		mark = UpstreamMark(srcID)
	}
	from := p.upstreamSource(p.cfg.Load(), src, dst.Addr())
	d.Control = upstreamControl(mark, from.IsValid())
	if !from.IsValid() {
		return d.DialContext(ctx, network, dst.String())
	}
	for attempt := 1; ; attempt++ {
		local := netip.AddrPortFrom(from, upstreamPort())
		if strings.HasPrefix(network, "udp") {
			d.LocalAddr = net.UDPAddrFromAddrPort(local)
		} else {
			d.LocalAddr = net.TCPAddrFromAddrPort(local)
		}
		conn, err := d.DialContext(ctx, network, dst.String())
		if err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				// With the client's address as its source, the upstream
				// socket's tuple is one the client might use itself once
				// it is gone: closed with a reset, it leaves no TIME_WAIT
				// behind in the node's namespace to catch the client's
				// SYN from that port. The proxy closes an upstream
				// connection only after a whole exchange, or on an error.
				tc.SetLinger(0)
			}
			return conn, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || attempt == upstreamPortTries {
			return nil, err
		}
	}
}
