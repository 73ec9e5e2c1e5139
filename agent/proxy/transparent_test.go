package proxy

import (
	"net/http"
	"net/netip"
	"testing"

	"github.com/filament-net/filament/internal/testutil"
)

// The upstream keeps the client's address only towards pods (IPv4): the
// host, other nodes, the world and CIDR identities get the node's.
func TestTransparentSourceDecision(t *testing.T) {
	client, pod := netip.MustParseAddr("10.244.0.3"), netip.MustParseAddr("10.244.1.2")
	for _, tc := range []struct {
		name     string
		src, dst netip.Addr
		dstID    uint32
		want     netip.Addr
	}{
		{"pod", client, pod, 65792, client},
		{"pod of another cluster", client, pod, 2<<16 | 300, client},
		{"v4-mapped client", netip.AddrFrom16(client.As16()), pod, 65792, client},
		{"host", client, pod, 1, netip.Addr{}},
		{"world", client, pod, 2, netip.Addr{}},
		{"remote node", client, pod, 6, netip.Addr{}},
		{"highest reserved", client, pod, 255, netip.Addr{}},
		{"CIDR identity", client, pod, 1<<24 | 7, netip.Addr{}},
		{"IPv6 client", netip.MustParseAddr("fd00::3"), pod, 65792, netip.Addr{}},
		{"IPv6 server", client, netip.MustParseAddr("fd00::2"), 65792, netip.Addr{}},
	} {
		if got := transparentSource(tc.src, tc.dst, tc.dstID); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// Off unless asked for.
	c, _ := compile(Config{IPCache: ipcache})
	if got := New(Options{}).upstreamSource(c, clientIP, serverIP); got.IsValid() {
		t.Errorf("without TransparentSource: %v, want none", got)
	}
	if got := New(Options{TransparentSource: true}).upstreamSource(c, clientIP, serverIP); got != clientIP {
		t.Errorf("with TransparentSource, to a pod: %v, want %v", got, clientIP)
	}
}

// As root, on lo (every 127/8 address is local, so the replies come back
// without the datapath): the server sees the client's address with
// TransparentSource, the kernel's choice without.
func TestTransparentUpstream(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		transparent bool
		want        netip.Addr
	}{{true, clientIP}, {false, netip.MustParseAddr("127.0.0.1")}} {
		h := newHarness(t, http.HandlerFunc(echo), Options{UpstreamMark: true, TransparentSource: tc.transparent})
		e := decodeEcho(t, h.curl(h.url("/public/a")))
		remote, err := netip.ParseAddrPort(e.Remote)
		if err != nil {
			t.Fatal(err)
		}
		if remote.Addr() != tc.want {
			t.Errorf("TransparentSource %v: the server saw %v, want %v", tc.transparent, remote, tc.want)
		}
		// The client's address, but never a port its own kernel would
		// pick for a connection of its own (the default ephemeral range).
		if tc.transparent && (remote.Port() < upstreamPortMin || remote.Port() > upstreamPortMax) {
			t.Errorf("transparent upstream port %d, want one in [%d, %d]", remote.Port(), upstreamPortMin, upstreamPortMax)
		}
	}
}
