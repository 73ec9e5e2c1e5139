package wireguard

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/filament-net/filament/internal/testutil"
)

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wg", "private.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %o, want 0600", st.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || k1 != k2 {
		t.Fatalf("reloaded a different key (%v)", err)
	}
	os.Chmod(path, 0o644)
	if _, err := LoadOrCreateKey(path); !errors.Is(err, ErrKey) {
		t.Fatalf("a world-readable key was accepted: %v", err)
	}
	os.Chmod(path, 0o600)
	os.WriteFile(path, []byte("not a key\n"), 0o600)
	if _, err := LoadOrCreateKey(path); !errors.Is(err, ErrKey) {
		t.Fatalf("garbage accepted as a key: %v", err)
	}
}

// A key is written through a temporary file of its own, 0600 whatever
// lies beside the key: found 2026-12-06, writeKey used one fixed
// "<key>.tmp" name, whose existing mode os.WriteFile kept, so a stale
// world-readable one made the rotated key file readable (and the agent
// then refused it at its next start), and two rotations at once shared
// the file.
func TestKeyWrittenPrivately(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wg", "private.key")
	if _, err := LoadOrCreateKey(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".tmp", []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path+".tmp", 0o644)
	k, _ := wgtypes.GeneratePrivateKey()
	if err := writeKey(path, k); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file after a write: %v, mode %o, want 0600", err, st.Mode().Perm())
	}
	if got, err := LoadOrCreateKey(path); err != nil || got != k {
		t.Fatalf("the written key reads back as %v (%v)", got, err)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v %s", args, err, out)
	}
}

// Two namespaces joined by a veth, each with a device configured through
// wgctrl (the embedded implementation here, kernel where present): traffic
// between their inner addresses flows through the tunnel, the peers report
// a handshake and bytes, and a key rotation followed by the peer's update
// keeps it flowing.
// TestMain: the test binary is also the device process of the
// own-process case (Config.DeviceCommand runs it again with this
// variable set, the device's name and MTU last).
func TestMain(m *testing.M) {
	if os.Getenv("FILAMENT_WG_DEVICE_TEST") == "1" {
		a := os.Args
		if err := RunDevice(a[len(a)-2], a[len(a)-1], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// lab is two namespaces joined by a veth (192.0.2.1 and .2), each with a
// device opened as the agent opens it, with an inner address (10.99.0.1
// and .2) routed through it.
type lab struct {
	nsA, nsB string
	a, b     *Device
	dir      string
}

// newLab: two devices in two namespaces, the userspace device (where the kernel
// has no WireGuard module) in a process of its own (Config.DeviceCommand),
// as the agent runs it. Not in this process: two in-process devices in two
// namespaces of one process, which is in neither, is not a set-up an
// in-process device supports (Config.DeviceCommand); that variant failed
// once in a clean-clone run (no handshake in 10 s).
func newLab(t *testing.T) *lab {
	testutil.RequireRoot(t)
	if _, err := os.Stat(runDir); errors.Is(err, os.ErrNotExist) {
		t.Cleanup(func() { os.Remove(runDir) }) // the UAPI socket directory this test made (if empty)
	}
	suffix := fmt.Sprintf("%06x", rand.Uint32()&0xffffff)
	nsA, nsB := "wgt-a-"+suffix, "wgt-b-"+suffix
	for _, n := range []string{nsA, nsB} {
		run(t, "netns", "add", n)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
	}
	run(t, "-n", nsA, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", nsB)
	for i, n := range []string{nsA, nsB} {
		run(t, "-n", n, "addr", "add", fmt.Sprintf("192.0.2.%d/24", i+1), "dev", "eth0")
		run(t, "-n", n, "link", "set", "eth0", "up")
		run(t, "-n", n, "link", "set", "lo", "up")
	}
	dir := t.TempDir()
	open := func(nsName, dev string) *Device {
		var d *Device
		err := ns.WithNetNSPath("/var/run/netns/"+nsName, func(ns.NetNS) error {
			var err error
			d, err = Open(Config{Name: dev, Port: Port, MTU: 1420, KeyPath: filepath.Join(dir, dev+".key"),
				DeviceCommand: []string{os.Args[0], "-test.run=^$"}})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		if d.Type == "userspace" && d.child == nil {
			t.Fatal("the device runs in this process, not its own")
		}
		return d
	}
	t.Setenv("FILAMENT_WG_DEVICE_TEST", "1")
	a, b := open(nsA, "fwa"+suffix), open(nsB, "fwb"+suffix)
	if a.Type != "userspace" && a.Type != "kernel" {
		t.Fatalf("device type %q", a.Type)
	}
	t.Logf("device type: %s", a.Type)
	run(t, "-n", nsA, "addr", "add", "10.99.0.1/32", "dev", a.Name())
	run(t, "-n", nsB, "addr", "add", "10.99.0.2/32", "dev", b.Name())
	run(t, "-n", nsA, "route", "add", "10.99.0.2/32", "dev", a.Name())
	run(t, "-n", nsB, "route", "add", "10.99.0.1/32", "dev", b.Name())
	return &lab{nsA: nsA, nsB: nsB, a: a, b: b, dir: dir}
}

// peerOf is d as a peer: its key, underlay address ip, inner prefix.
func peerOf(d *Device, name, ip, inner string) Peer {
	return Peer{Name: name, PublicKey: d.PublicKey(), Endpoint: netip.AddrPortFrom(netip.MustParseAddr(ip), Port),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix(inner)}}
}

// ping sends one echo from a to b's inner address a try, retried for up
// to 10 s: a single packet (or the handshake behind it) may be lost or
// late on a busy machine.
func (l *lab) ping() error {
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		var out []byte
		if out, err = exec.Command("ip", "netns", "exec", l.nsA, "ping", "-c", "1", "-W", "1", "10.99.0.2").CombinedOutput(); err == nil {
			return nil
		}
		err = fmt.Errorf("%v %s", err, out)
		if time.Now().After(deadline) {
			return err
		}
	}
}

// Traffic between the devices' inner addresses flows through the tunnel,
// the peers report a handshake and bytes, and a key rotation followed by
// the peer's update keeps it flowing.
func TestDevicesTalk(t *testing.T) {
	l := newLab(t)
	a, b, nsA, dir := l.a, l.b, l.nsA, l.dir
	if err := a.SetPeer(peerOf(b, "b", "192.0.2.2", "10.99.0.2/32")); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeer(peerOf(a, "a", "192.0.2.1", "10.99.0.1/32")); err != nil {
		t.Fatal(err)
	}
	ping := l.ping
	if err := ping(); err != nil {
		t.Fatalf("ping through the tunnel: %v", err)
	}
	ps, err := a.Peers()
	if err != nil || len(ps) != 1 || ps[0].Name != "b" || ps[0].LastHandshake.IsZero() || ps[0].TxBytes == 0 || ps[0].RxBytes == 0 {
		t.Fatalf("peer status %+v %v", ps, err)
	}
	// Rotation: a's new public key reaches b; traffic flows again.
	old := a.PublicKey()
	pub, err := a.Rotate()
	if err != nil || pub == old || pub != a.PublicKey() {
		t.Fatalf("rotate: %v", err)
	}
	if k, _ := LoadOrCreateKey(filepath.Join(dir, a.Name()+".key")); k.PublicKey() != pub {
		t.Fatal("the rotated key was not written")
	}
	if err := b.SetPeer(peerOf(a, "a", "192.0.2.1", "10.99.0.1/32")); err != nil {
		t.Fatal(err)
	}
	if ps, _ := b.Peers(); len(ps) != 1 || ps[0].PublicKey != pub.String() {
		t.Fatalf("b's peers after a's rotation: %+v", ps)
	}
	if err := ping(); err != nil {
		t.Fatalf("no traffic after the key rotation: %v", err)
	}
	if err := a.RemovePeer("b"); err != nil {
		t.Fatal(err)
	}
	if ps, _ := a.Peers(); len(ps) != 0 {
		t.Fatalf("peer not removed: %+v", ps)
	}
	// Closed, the device goes (with its own process).
	child := a.child
	a.Close()
	if err := exec.Command("ip", "-n", nsA, "link", "show", a.Name()).Run(); err == nil && a.Type == "userspace" {
		t.Fatalf("%s still there after Close", a.Name())
	}
	if child != nil {
		select {
		case <-child.done:
		default:
			t.Fatal("the device's process still runs after Close")
		}
		// Closed on purpose: not reported as died.
		select {
		case <-a.Died():
			t.Fatal("Died reported a device that was closed")
		case <-time.After(200 * time.Millisecond):
		}
		// b's process killed behind its back: Died says so.
		if err := b.child.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-b.Died():
		case <-time.After(10 * time.Second):
			t.Fatal("Died not closed 10 s after the device's process was killed")
		}
	}
}

// Of two nodes adding each other, only the initiator (the lower public
// key) starts a handshake as it adds the peer; the other turns its
// keepalive on PassiveDelay later. When both started at once, the two
// initiations crossed and no session formed for 5 s (WireGuard's retry).
func TestOneInitiatorPerPair(t *testing.T) {
	l := newLab(t)
	active, passive, activeIP, passiveIP, activeIn, passiveIn := l.a, l.b, "192.0.2.1", "192.0.2.2", "10.99.0.1/32", "10.99.0.2/32"
	if !initiates(l.a.PublicKey(), l.b.PublicKey()) {
		active, passive, activeIP, passiveIP, activeIn, passiveIn = l.b, l.a, "192.0.2.2", "192.0.2.1", "10.99.0.2/32", "10.99.0.1/32"
	}
	if initiates(passive.PublicKey(), active.PublicKey()) || !initiates(active.PublicKey(), passive.PublicKey()) {
		t.Fatal("initiates does not pick exactly one of the pair")
	}
	peer := func(d *Device) wgtypes.Peer {
		t.Helper()
		dev, err := d.wg.Device(d.Name())
		if err != nil || len(dev.Peers) != 1 {
			t.Fatalf("%s: %v, peers %+v", d.Name(), err, dev)
		}
		return dev.Peers[0]
	}
	// The passive side adds its peer first (the other does not know it
	// yet): no keepalive and nothing sent, so no initiation of its own.
	if err := passive.SetPeer(peerOf(active, "active", activeIP, activeIn)); err != nil {
		t.Fatal(err)
	}
	if p := peer(passive); p.PersistentKeepaliveInterval != 0 || p.TransmitBytes != 0 {
		t.Fatalf("the passive side started at once: keepalive %v, %d bytes sent", p.PersistentKeepaliveInterval, p.TransmitBytes)
	}
	// PassiveDelay later its keepalive is on, and its initiation sent.
	deadline := time.Now().Add(10 * time.Second)
	for p := peer(passive); p.PersistentKeepaliveInterval != Keepalive || p.TransmitBytes == 0; p = peer(passive) {
		if time.Now().After(deadline) {
			t.Fatalf("the passive side's keepalive not on 10 s later: %v, %d bytes sent", p.PersistentKeepaliveInterval, p.TransmitBytes)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The initiator starts as it adds the peer.
	if err := active.SetPeer(peerOf(passive, "passive", passiveIP, passiveIn)); err != nil {
		t.Fatal(err)
	}
	// (The kernel's device sends it from a work queue: polled, well
	// before the passive side's delay could have started a handshake.)
	if p := peer(active); p.PersistentKeepaliveInterval != Keepalive {
		t.Fatalf("the initiator's keepalive is not on as it added its peer: %v", p.PersistentKeepaliveInterval)
	}
	deadline = time.Now().Add(5 * time.Second)
	for p := peer(active); p.TransmitBytes == 0; p = peer(active) {
		if time.Now().After(deadline) {
			t.Fatal("the initiator sent nothing 5 s after adding its peer")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := l.ping(); err != nil {
		t.Fatalf("ping through the tunnel: %v", err)
	}
	// A keepalive that is off (as when keepaliveOn's call failed) is set
	// by the peer's next update.
	off := time.Duration(0)
	if err := passive.wg.ConfigureDevice(passive.Name(), wgtypes.Config{Peers: []wgtypes.PeerConfig{
		{PublicKey: active.PublicKey(), UpdateOnly: true, PersistentKeepaliveInterval: &off}}}); err != nil {
		t.Fatal(err)
	}
	if err := passive.SetPeer(peerOf(active, "active", activeIP, activeIn)); err != nil {
		t.Fatal(err)
	}
	if p := peer(passive); p.PersistentKeepaliveInterval != Keepalive {
		t.Fatalf("an update left the passive side's keepalive at %v", p.PersistentKeepaliveInterval)
	}
	// A passive peer removed before its keepalive was turned on is
	// forgotten: nothing is configured for it later.
	if err := passive.RemovePeer("active"); err != nil {
		t.Fatal(err)
	}
	if err := passive.SetPeer(peerOf(active, "active", activeIP, activeIn)); err != nil {
		t.Fatal(err)
	}
	if err := passive.RemovePeer("active"); err != nil {
		t.Fatal(err)
	}
	passive.mu.Lock()
	pending := len(passive.arming)
	passive.mu.Unlock()
	if pending != 0 {
		t.Fatalf("%d keepalives pending for removed peers", pending)
	}
}
