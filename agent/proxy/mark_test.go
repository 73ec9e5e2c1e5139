package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/internal/testutil"
)

// As root: the listener is transparent and the upstream socket carries the
// source's identity in its mark (as ss shows it).
func TestTransparentListenerAndUpstreamMark(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("ss (iproute2) not installed")
	}
	ln, err := ListenTransparent(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, _ := ln.(*net.TCPListener).SyscallConn()
	var v int
	sockopt(rc, func(fd int) (err error) { v, err = unix.GetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT); return })
	if v != 1 {
		t.Errorf("IP_TRANSPARENT = %d", v)
	}
	// Its mark, and the UDP socket's, is the one the datapath hands flows
	// to (bpf/lib/proxy.h to_proxy).
	sockopt(rc, func(fd int) (err error) { v, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); return })
	if uint32(v) != ListenerMark {
		t.Errorf("the listener's SO_MARK = %#x, want %#x", v, ListenerMark)
	}
	udp, err := ListenTransparentUDP(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	urc, _ := udp.SyscallConn()
	v = 0
	sockopt(urc, func(fd int) (err error) { v, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); return })
	if uint32(v) != ListenerMark {
		t.Errorf("the UDP socket's SO_MARK = %#x, want %#x", v, ListenerMark)
	}

	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The proxy's side of this connection, seen by ss.
		out, err := exec.Command("ss", "-tnHe", "src", r.RemoteAddr, "dst", r.Host).CombinedOutput()
		fmt.Fprintf(w, "%s %v", out, err)
	}), Options{UpstreamMark: true})
	upstream := h.upstream.String()
	h.ingress(PeerRules{}) // every request of any peer
	req, _ := http.NewRequest("GET", h.url("/"), nil)
	req.Host = upstream
	resp, err := h.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	want := fmt.Sprintf("fwmark:%#x", UpstreamMark(clientID))
	if !strings.Contains(string(b), want) {
		t.Fatalf("upstream socket: %q, want %s", b, want)
	}
}
