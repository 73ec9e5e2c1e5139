package encryption

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/crypto/ipsec"
)

// A node whose address shares its low 28 bits with a peer's (the wire
// SPI's sender tag) is refused as an IPsec peer, and its removal leaves
// the peer's states: both would have the same inbound states at every
// node (dst this node, SPI keySPI<<28 | tag), so its record's change or
// delete deleted the peer's (review, 2026-12-04). The peer's own removal,
// and a third node of another tag, are unaffected; once the peer is gone
// the tag is free.
func TestIPsecPeerTagCollisionRefused(t *testing.T) {
	var installed []string
	x := newIPsecPeers(ipsec.Local{IP: netip.MustParseAddr("10.0.0.1")}, nil)
	x.install = func(_ ipsec.Local, p ipsec.Peer, _ []ipsec.Key) error {
		installed = append(installed, p.IP.String())
		return nil
	}
	x.uninstall = func(_ ipsec.Local, p ipsec.Peer, _ []ipsec.Key) {
		installed = slices.DeleteFunc(installed, func(s string) bool { return s == p.IP.String() })
	}
	a, b, c := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("26.0.0.5"), netip.MustParseAddr("10.0.0.6")
	if ipsec.Tag(a) != ipsec.Tag(b) {
		t.Fatal("the test's addresses do not share a tag")
	}
	if err := x.AddPeer(node.Node{Name: "a"}, a); err != nil {
		t.Fatal(err)
	}
	err := x.AddPeer(node.Node{Name: "b"}, b)
	if !errors.Is(err, ErrTagTaken) {
		t.Fatalf("a node of a peer's tag: %v", err)
	}
	x.RemovePeer(node.Node{Name: "b"}, b)
	if !slices.Contains(installed, a.String()) {
		t.Fatal("the refused node's removal deleted the peer's states")
	}
	if err := x.AddPeer(node.Node{Name: "c"}, c); err != nil {
		t.Fatal(err)
	}
	if err := x.AddPeer(node.Node{Name: "a"}, a); err != nil {
		t.Errorf("the peer's own record again: %v", err)
	}
	x.RemovePeer(node.Node{Name: "a"}, a)
	if slices.Contains(installed, a.String()) {
		t.Error("the peer's removal left its states")
	}
	if err := x.AddPeer(node.Node{Name: "b"}, b); err != nil {
		t.Errorf("the tag once free: %v", err)
	}
	if !slices.Equal(installed, []string{c.String(), b.String()}) {
		t.Errorf("installed %v", installed)
	}
}
