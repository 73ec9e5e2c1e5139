// Package wireguard owns the node's WireGuard device for transparent
// encryption: the node's key pair (private key only on the node, 0600), the
// device (kernel WireGuard through netlink where the module exists, else the
// embedded userspace implementation with its UAPI socket), and its peers —
// always configured through wgctrl, whichever implementation runs.
package wireguard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/filament-net/filament/crypto/keyfile"
	"github.com/filament-net/filament/internal/atomicfile"
)

// Device name, port and the MTU WireGuard takes from the underlay's
// (outer IPv4 20 + UDP 8 + WireGuard header 16 + tag 16 = 60; 80 leaves room
// for IPv6 underlays, as wg-quick does).
const (
	DeviceName = "filament_wg0"
	Port       = 51871
	Overhead   = 80
)

// Keepalive is each peer's persistent keepalive: it keeps a session (and
// any NAT mapping on the way) warm, and the first one after a peer is
// added starts the handshake before any packet needs it.
const Keepalive = 25 * time.Second

// PassiveDelay is how long the node that is not a pair's initiator (see
// initiates) waits after adding the peer before it turns its keepalive on.
// When both turned it on as they added each other, which they do within
// milliseconds (the same kvstore event), their two initiations crossed
// whenever each arrived after the other had sent its own: each side
// answered the other's and refused the answer to its own, and no session
// existed until WireGuard's retry 5 s later (2 of 30 lab starts on a
// loaded machine). Waiting lets the initiator's handshake be answered;
// when that one was lost (the peer was not yet added here), this node's
// keepalive starts the handshake PassiveDelay later, where the initiator
// would retry only after 5 s. It is longer than the usual gap between the
// two nodes' adds (tens of milliseconds), so the two seldom coincide.
const PassiveDelay = 250 * time.Millisecond

// initiates reports whether the node whose public key is local turns its
// keepalive on for remote as soon as it adds it: the lower of the two keys,
// so exactly one of the pair does.
func initiates(local, remote wgtypes.Key) bool { return bytes.Compare(local[:], remote[:]) < 0 }

// ErrKey: the key file cannot be read or written safely.
var ErrKey = errors.New("wireguard key")

// LoadOrCreateKey reads the private key at path, creating one (mode 0600)
// when there is none. A key file readable by others is refused.
func LoadOrCreateKey(path string) (wgtypes.Key, error) {
	data, err := keyfile.Read(path)
	if errors.Is(err, os.ErrNotExist) {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return wgtypes.Key{}, err
		}
		if err := writeKey(path, k); err != nil {
			return wgtypes.Key{}, err
		}
		return k, nil
	}
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("%w: %w", ErrKey, err)
	}
	k, err := wgtypes.ParseKey(string(trimSpace(data)))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("%w: %s: %v", ErrKey, path, err)
	}
	return k, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// writeKey replaces the key file atomically, 0600: through a temporary
// file of its own (until 2026-12-06 a fixed "<key>.tmp", whose existing
// mode was kept: TestKeyWrittenPrivately).
func writeKey(path string, k wgtypes.Key) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("%w: %v", ErrKey, err)
	}
	if err := atomicfile.Write(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("%w: %v", ErrKey, err)
	}
	return nil
}

// Peer is another node this one encrypts to.
type Peer struct {
	Name       string
	PublicKey  wgtypes.Key
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
}

// Config of the device.
type Config struct {
	Name    string // DeviceName when empty
	Port    int    // Port when 0
	MTU     int
	KeyPath string
	// PrivateRunDir mounts a private tmpfs on the UAPI socket directory
	// (labs running several agents, each in its own mount namespace, on
	// one machine); never on a real node.
	PrivateRunDir bool
	// DeviceCommand, when set, runs the userspace device in a process of
	// its own (argv; the device's name and MTU are appended; it must call
	// RunDevice): its goroutines then share no scheduler, heap or GC with
	// the caller's. The process is in the caller's network and mount
	// namespaces, is stopped by Close and killed if the caller dies.
	// Empty: the device runs in this process, which must then be in the
	// device's network namespace as a whole: wireguard-go opens its UDP
	// socket again, on whatever thread runs its goroutine, when the link
	// goes down and up (the agent always sets a command).
	DeviceCommand []string
}

// Device is the node's WireGuard device.
type Device struct {
	cfg  Config
	Type string // "kernel" or "userspace"

	mu      sync.Mutex
	key     wgtypes.Key
	peers   map[wgtypes.Key]Peer
	arming  map[wgtypes.Key]*arm // passive peers whose keepalive is not on yet
	closed  bool
	wg      *wgctrl.Client
	user    *device.Device
	uapi    net.Listener
	child   *deviceProcess
	died    <-chan struct{}
	ifindex int
}

const runDir = "/var/run/wireguard"

// Open creates (or takes over) the device with the node's key and port.
func Open(cfg Config) (*Device, error) {
	if cfg.Name == "" {
		cfg.Name = DeviceName
	}
	if cfg.Port == 0 {
		cfg.Port = Port
	}
	key, err := LoadOrCreateKey(cfg.KeyPath)
	if err != nil {
		return nil, err
	}
	d := &Device{cfg: cfg, key: key, peers: map[wgtypes.Key]Peer{}, arming: map[wgtypes.Key]*arm{}}
	if l, err := netlink.LinkByName(cfg.Name); err == nil {
		// A device left by an earlier agent: a kernel one is reused, a
		// userspace one died with its process and is recreated.
		if l.Type() == "wireguard" {
			d.Type = "kernel"
		} else {
			netlink.LinkDel(l)
		}
	}
	if d.Type == "" {
		err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: cfg.Name, MTU: cfg.MTU}})
		switch {
		case err == nil:
			d.Type = "kernel"
		case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTSUP):
			slog.Info("no WireGuard kernel module; using the embedded userspace implementation", "device", cfg.Name)
			if err := d.openUserspace(); err != nil {
				return nil, err
			}
			d.Type = "userspace"
		default:
			return nil, fmt.Errorf("create %s: %w", cfg.Name, err)
		}
	}
	l, err := netlink.LinkByName(cfg.Name)
	if err != nil {
		d.Close()
		return nil, err
	}
	d.ifindex = l.Attrs().Index
	if err := netlink.LinkSetMTU(l, cfg.MTU); err != nil {
		d.Close()
		return nil, fmt.Errorf("%s mtu: %w", cfg.Name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		d.Close()
		return nil, fmt.Errorf("%s up: %w", cfg.Name, err)
	}
	if d.wg, err = wgctrl.New(); err != nil {
		d.Close()
		return nil, err
	}
	port := cfg.Port
	if err := d.wg.ConfigureDevice(cfg.Name, wgtypes.Config{PrivateKey: &key, ListenPort: &port, ReplacePeers: true}); err != nil {
		d.Close()
		return nil, fmt.Errorf("configure %s: %w", cfg.Name, err)
	}
	return d, nil
}

func (d *Device) openUserspace() error {
	if d.cfg.PrivateRunDir {
		if err := os.MkdirAll(runDir, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("tmpfs", runDir, "tmpfs", 0, "mode=0755"); err != nil {
			return fmt.Errorf("private %s: %w", runDir, err)
		}
	}
	if len(d.cfg.DeviceCommand) > 0 {
		c, err := startDeviceProcess(d.cfg.DeviceCommand, d.cfg.Name, d.cfg.MTU)
		if err != nil {
			return err
		}
		d.child, d.died = c, c.died()
		return nil
	}
	var err error
	d.user, d.uapi, err = startUserspace(d.cfg.Name, d.cfg.MTU)
	return err
}

// startUserspace creates the TUN device name, wireguard-go's device on it
// and its UAPI socket, and brings the device up.
func startUserspace(name string, mtu int) (*device.Device, net.Listener, error) {
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, nil, fmt.Errorf("create TUN %s: %w", name, err)
	}
	// wireguard-go's own lines (handshakes sent, received, refused) at
	// debug level: a session that takes long to form is explained there.
	logf := func(f string, a ...any) { slog.Debug("wireguard-go: " + fmt.Sprintf(f, a...)) }
	logger := &device.Logger{Verbosef: device.DiscardLogf, Errorf: logf}
	if slog.Default().Enabled(context.Background(), slog.LevelDebug) {
		logger.Verbosef = logf
	}
	dev := device.NewDevice(t, conn.NewDefaultBind(), logger)
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		dev.Close()
		return nil, nil, fmt.Errorf("UAPI socket of %s: %w", name, err)
	}
	uapi, err := ipc.UAPIListen(name, f)
	if err != nil {
		dev.Close()
		return nil, nil, fmt.Errorf("UAPI listen %s: %w", name, err)
	}
	// Configuration through the UAPI socket may open the device's UDP
	// socket again (a new listen port), so it is handled on a thread in the
	// device's network namespace, which need not be the process's.
	here, err := netns.Get()
	if err != nil {
		uapi.Close()
		dev.Close()
		return nil, nil, err
	}
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the loop
		defer here.Close()
		if err := netns.Set(here); err != nil {
			slog.Error("wireguard UAPI: enter the device's network namespace", "err", err)
			return
		}
		for {
			c, err := uapi.Accept()
			if err != nil {
				return
			}
			dev.IpcHandle(c)
		}
	}()
	if err := dev.Up(); err != nil {
		uapi.Close()
		dev.Close()
		return nil, nil, err
	}
	return dev, uapi, nil
}

// Close removes the device (a kernel one stays for the next agent).
func (d *Device) Close() {
	d.mu.Lock()
	d.closed = true
	for k, a := range d.arming {
		a.t.Stop()
		delete(d.arming, k)
	}
	d.mu.Unlock()
	if d.wg != nil {
		d.wg.Close()
	}
	if d.uapi != nil {
		d.uapi.Close()
	}
	if d.user != nil {
		d.user.Close()
	}
	if d.child != nil {
		d.child.stop()
	}
}

// Died is closed when the device's own process (Config.DeviceCommand)
// ends while the device is open: the device and the routes through it are
// gone. It is nil (never ready) for a kernel or in-process device.
func (d *Device) Died() <-chan struct{} { return d.died }

// PublicKey is the node's current public key.
func (d *Device) PublicKey() wgtypes.Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.key.PublicKey()
}

// IfIndex is the device's interface index.
func (d *Device) IfIndex() int { return d.ifindex }

// Name is the device's name.
func (d *Device) Name() string { return d.cfg.Name }

// Port is the UDP port the device listens on.
func (d *Device) Port() int { return d.cfg.Port }

func prefixes(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(ps))
	for _, p := range ps {
		out = append(out, net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
	}
	return out
}

// SetPeer adds or updates one peer (its allowed IPs replaced); a peer with
// the same name and another key (a rotation) is replaced. A new peer gets
// its keepalive (Keepalive) at once when this node initiates (initiates),
// else PassiveDelay later; an update sets it again unless it is still
// waiting for that (no-op when it is on).
func (d *Device) SetPeer(p Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var cfg wgtypes.Config
	for k, old := range d.peers {
		if old.Name == p.Name && k != p.PublicKey {
			cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: k, Remove: true})
			d.forget(k)
		}
	}
	_, known := d.peers[p.PublicKey]
	_, waiting := d.arming[p.PublicKey]
	pc := wgtypes.PeerConfig{PublicKey: p.PublicKey, Endpoint: net.UDPAddrFromAddrPort(p.Endpoint), ReplaceAllowedIPs: true,
		AllowedIPs: prefixes(p.AllowedIPs)}
	first := !known && initiates(d.key.PublicKey(), p.PublicKey)
	// The keepalive is set again on each update of a peer not waiting for
	// it (both implementations send a keepalive only when it goes from
	// off to on), so one that keepaliveOn failed to set is set later.
	if first || known && !waiting {
		keepalive := Keepalive
		pc.PersistentKeepaliveInterval = &keepalive
	}
	cfg.Peers = append(cfg.Peers, pc)
	if err := d.wg.ConfigureDevice(d.cfg.Name, cfg); err != nil {
		return fmt.Errorf("wireguard peer %s: %w", p.Name, err)
	}
	if !known {
		slog.Info("wireguard peer added", "peer", p.Name, "endpoint", p.Endpoint, "initiator", first)
		if !first {
			k, a := p.PublicKey, &arm{}
			a.t = time.AfterFunc(PassiveDelay, func() { d.keepaliveOn(k, a) })
			d.arming[k] = a
		}
	}
	d.peers[p.PublicKey] = p
	return nil
}

// arm is a passive peer's pending keepaliveOn.
type arm struct{ t *time.Timer }

// keepaliveOn turns a passive peer's keepalive on (PassiveDelay after
// SetPeer added it), unless it was removed (or removed and added again:
// another arm) or the device closed since.
func (d *Device) keepaliveOn(k wgtypes.Key, a *arm) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.arming[k] != a || d.closed {
		return
	}
	delete(d.arming, k)
	keepalive := Keepalive
	err := d.wg.ConfigureDevice(d.cfg.Name, wgtypes.Config{Peers: []wgtypes.PeerConfig{
		{PublicKey: k, UpdateOnly: true, PersistentKeepaliveInterval: &keepalive}}})
	if err != nil {
		slog.Warn("wireguard peer keepalive (set again with the peer's next update)", "peer", d.peers[k].Name, "err", err)
	}
}

// forget drops peer k from d's books (d.mu held).
func (d *Device) forget(k wgtypes.Key) {
	delete(d.peers, k)
	if a, ok := d.arming[k]; ok {
		a.t.Stop()
		delete(d.arming, k)
	}
}

// RemovePeer removes the peer of that name.
func (d *Device) RemovePeer(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var cfg wgtypes.Config
	for k, p := range d.peers {
		if p.Name == name {
			cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: k, Remove: true})
			d.forget(k)
		}
	}
	if len(cfg.Peers) == 0 {
		return nil
	}
	if err := d.wg.ConfigureDevice(d.cfg.Name, cfg); err != nil {
		return err
	}
	slog.Info("wireguard peer removed", "peer", name)
	return nil
}

// Rotate makes a new key pair, writes it and configures the device with it;
// the caller publishes the new public key so peers follow.
func (d *Device) Rotate() (wgtypes.Key, error) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, err
	}
	// The file and the device change in the same order as rotations do.
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := writeKey(d.cfg.KeyPath, k); err != nil {
		return wgtypes.Key{}, err
	}
	if err := d.wg.ConfigureDevice(d.cfg.Name, wgtypes.Config{PrivateKey: &k}); err != nil {
		return wgtypes.Key{}, fmt.Errorf("rotate %s key: %w", d.cfg.Name, err)
	}
	d.key = k
	return k.PublicKey(), nil
}

// PeerStatus is one peer as the device reports it.
type PeerStatus struct {
	Name          string    `json:"name"`
	PublicKey     string    `json:"publicKey"`
	Endpoint      string    `json:"endpoint"`
	AllowedIPs    []string  `json:"allowedIPs"`
	LastHandshake time.Time `json:"lastHandshake,omitzero"`
	RxBytes       int64     `json:"rxBytes"`
	TxBytes       int64     `json:"txBytes"`
}

// Peers reads the peers from the device.
func (d *Device) Peers() ([]PeerStatus, error) {
	dev, err := d.wg.Device(d.cfg.Name)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	names := map[wgtypes.Key]string{}
	for k, p := range d.peers {
		names[k] = p.Name
	}
	d.mu.Unlock()
	var out []PeerStatus
	for _, p := range dev.Peers {
		ps := PeerStatus{Name: names[p.PublicKey], PublicKey: p.PublicKey.String(), LastHandshake: p.LastHandshakeTime,
			RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes}
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.String()
		}
		for _, a := range p.AllowedIPs {
			ps.AllowedIPs = append(ps.AllowedIPs, a.String())
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b PeerStatus) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out, nil
}
