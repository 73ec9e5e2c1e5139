package kvstore

import (
	"context"
	"net"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ControlMark is the socket mark (SO_MARK) of the agent's connections to
// the kvstore. The socket load balancer never translates a socket with this
// mark (bpf/progs/socket.h CONTROL_MARK), so no service frontend, however it got into
// the datapath, can take the agent's control plane away.
const ControlMark = 0x0f1a0000

// dialControl dials addr (host:port, or unix:path) with ControlMark set.
// Setting the mark needs CAP_NET_ADMIN; without it (tests as a user, the
// CLI) the connection is made unmarked.
func dialControl(ctx context.Context, addr string) (net.Conn, error) {
	network := "tcp"
	if rest, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, addr = "unix", rest
	} else if rest, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, addr = "unix", rest
	}
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		if network != "tcp" {
			return nil
		}
		return c.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, ControlMark)
		})
	}}
	return d.DialContext(ctx, network, addr)
}
