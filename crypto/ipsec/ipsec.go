// Package ipsec owns the IPsec mode of transparent encryption: the key file,
// the XFRM states and policies between this node and each peer node, SPI
// rotation with a grace period, and the detection of kernel ESP support.
//
// The package only computes what to install (States, Policies) and checks
// what the kernel can do (Probe); installing and removing the states and
// policies is the caller's job.
//
// # SPIs on the wire
//
// The key file carries a key SPI of 1..15. The kernel finds an inbound state
// by (destination, SPI, protocol) only, so the inbound states of one node for
// different peers must not share an SPI. The SPI on the wire for traffic sent
// by node S therefore combines the key SPI with a tag of S:
//
//	wire SPI = keySPI<<28 | tag(S)
//
// where tag(S) is the low 28 bits of S's address for IPv4 (unique for any
// underlay inside a /4) and the first 28 bits of SHA-256 of the address for
// IPv6. Both ends compute the same wire SPI for one direction, the high nibble
// still tells the key apart during a rotation, and every wire SPI is at least
// 0x10000000, clear of the range IANA reserves.
//
// # Rotation
//
// A key file with two keys is a rotation: the last key is the current one,
// the first is kept for a grace period. During the grace period States
// returns the states of both keys, so packets still sent with the old key are
// accepted, while the outbound policy template names the current key's SPI
// so this node already sends with the new key. Inbound and forward templates
// accept any SPI for the same reason.
package ipsec

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrKeyFile is wrapped by every error of ParseKeyFile.
var ErrKeyFile = errors.New("invalid IPsec key file")

// ErrNoESP is wrapped by Probe's error when the kernel cannot hold an ESP state.
var ErrNoESP = errors.New("kernel has no IPsec ESP support")

// AlgoGCM is the only algorithm supported: AES-GCM as used by ESP (RFC 4106).
const AlgoGCM = "rfc4106(gcm(aes))"

// PolicyPriority is the priority of every policy returned by Policies. XFRM
// prefers lower values; 100 leaves room for more specific policies before
// ours and catch-alls after them.
const PolicyPriority = 100

// reqID ties the states to the policy templates.
const reqID = 1

// saltLen is the length of the salt that follows the AES key in an RFC 4106 key.
const saltLen = 4

// Key is one line of the key file: "<spi>[+] <algo> <key> <bits>", e.g.
//
//	3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128
type Key struct {
	// SPI is the key's SPI, 1..15 (see the package comment for the SPI on
	// the wire).
	SPI uint8
	// PerNode is set by a '+' after the SPI: every ordered pair of nodes
	// uses its own key derived from Key and the two nodes' addresses.
	PerNode bool
	// Algo is the AEAD algorithm, always AlgoGCM.
	Algo string
	// Key is the AES key followed by the 4-byte salt: 20, 28 or 36 bytes.
	Key []byte
	// ICVBits is the length of the integrity check value: 64, 96 or 128.
	ICVBits int
}

// ParseKeyFile parses the content of a key file. Blank lines and lines
// starting with '#' are ignored. The file holds one key, or two during a
// rotation: then the last one is the current key and the first is kept for
// the grace period. The keys' SPIs must differ. Errors wrap ErrKeyFile and
// name the line and the bad field; they never quote key material.
func ParseKeyFile(data []byte) ([]Key, error) {
	var keys []Key
	seen := map[uint8]int{} // SPI -> line
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := parseKey(line)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %s", ErrKeyFile, n, err)
		}
		if prev, ok := seen[k.SPI]; ok {
			return nil, fmt.Errorf("%w: line %d: spi %d already used on line %d", ErrKeyFile, n, k.SPI, prev)
		}
		if len(keys) == 2 {
			return nil, fmt.Errorf("%w: line %d: a third key (spi %d); at most two keys, the old and the current one", ErrKeyFile, n, k.SPI)
		}
		seen[k.SPI] = n
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no key line found", ErrKeyFile)
	}
	return keys, nil
}

// parseKey parses one non-blank, non-comment line; its errors name the field.
func parseKey(line string) (Key, error) {
	const format = `"<spi>[+] <algo> <key> <bits>"`
	f := strings.Fields(line)
	if len(f) < 2 {
		return Key{}, fmt.Errorf("%d field(s), want 4: %s", len(f), format)
	}
	var k Key
	spi := f[0]
	if s, ok := strings.CutSuffix(spi, "+"); ok {
		spi, k.PerNode = s, true
	}
	v, err := strconv.ParseUint(spi, 10, 8)
	if err != nil || v < 1 || v > 15 {
		return Key{}, fmt.Errorf("spi %q: want a decimal number 1..15, optionally followed by '+'", f[0])
	}
	k.SPI = uint8(v)
	if f[1] != AlgoGCM {
		return Key{}, fmt.Errorf("algo %q: only %s is supported", f[1], AlgoGCM)
	}
	k.Algo = f[1]
	if len(f) != 4 {
		return Key{}, fmt.Errorf("%d fields, want 4: %s", len(f), format)
	}
	hexKey := strings.TrimPrefix(f[2], "0x")
	if j := strings.IndexFunc(hexKey, func(r rune) bool { return !strings.ContainsRune("0123456789abcdefABCDEF", r) }); j >= 0 {
		r, _ := utf8.DecodeRuneInString(hexKey[j:])
		return Key{}, fmt.Errorf("key: not hex: invalid character %q at offset %d", r, j)
	}
	switch len(hexKey) {
	case 2 * (16 + saltLen), 2 * (24 + saltLen), 2 * (32 + saltLen):
	default:
		return Key{}, fmt.Errorf("key: %d hex characters, want 40, 56 or 72 (a 16, 24 or 32 byte AES key and a 4 byte salt) for %s", len(hexKey), AlgoGCM)
	}
	k.Key, _ = hex.DecodeString(hexKey) // checked above
	bits, err := strconv.Atoi(f[3])
	if err != nil || (bits != 64 && bits != 96 && bits != 128) {
		return Key{}, fmt.Errorf("bits %q: want the ICV length 64, 96 or 128", f[3])
	}
	k.ICVBits = bits
	return k, nil
}

// Peer is another node: its underlay IP and its pod CIDRs.
type Peer struct {
	Name     string
	IP       netip.Addr
	PodCIDRs []netip.Prefix
}

// Local is this node: its underlay IP and its pod CIDRs.
type Local struct {
	IP       netip.Addr
	PodCIDRs []netip.Prefix
}

// States returns the XFRM states for the traffic between local and peer, for
// each key in keys in order (the old key and the current one during a grace
// period): first the outbound state (local.IP to peer.IP), then the inbound
// one (peer.IP to local.IP). They are ESP tunnel-mode states with the AEAD
// from the key and the wire SPI of the package comment. With a PerNode key
// each direction gets its own key, HMAC-SHA256 of the file's key over both
// addresses in sending order, so the sender and the receiver derive the same
// bytes. The result is deterministic.
func States(local Local, peer Peer, keys []Key) []*netlink.XfrmState {
	states := make([]*netlink.XfrmState, 0, 2*len(keys))
	for _, k := range keys {
		states = append(states,
			state(local.IP, peer.IP, k),
			state(peer.IP, local.IP, k))
	}
	return states
}

// state is the state for traffic from src to dst with key k.
func state(src, dst netip.Addr, k Key) *netlink.XfrmState {
	return &netlink.XfrmState{
		Src:   ipOf(src),
		Dst:   ipOf(dst),
		Proto: netlink.XFRM_PROTO_ESP,
		Mode:  netlink.XFRM_MODE_TUNNEL,
		Spi:   int(wireSPI(k.SPI, src)),
		Reqid: reqID,
		Aead: &netlink.XfrmStateAlgo{
			Name:   k.Algo,
			Key:    directionKey(k, src, dst),
			ICVLen: k.ICVBits,
		},
	}
}

// wireSPI is the SPI on the wire for traffic sent by src with key SPI spi.
func wireSPI(spi uint8, src netip.Addr) uint32 {
	return uint32(spi)<<28 | Tag(src)
}

// Tag is the 28-bit sender tag of the node at src in its wire SPIs: the
// low 28 bits of an IPv4 address, 28 bits of a hash of an IPv6 one. Two
// peers of one tag would share their inbound states at every node (the
// agent refuses the second).
func Tag(src netip.Addr) uint32 {
	src = src.Unmap()
	var tag uint32
	if src.Is4() {
		b := src.As4()
		tag = binary.BigEndian.Uint32(b[:])
	} else {
		b := src.As16()
		sum := sha256.Sum256(b[:])
		tag = binary.BigEndian.Uint32(sum[:4]) >> 4
	}
	return tag & (1<<28 - 1)
}

// directionKey returns the key bytes for traffic from src to dst: a copy of
// k.Key, or for a PerNode key as many bytes of
// HMAC-SHA256(k.Key, label | src | dst | counter) blocks as k.Key has.
func directionKey(k Key, src, dst netip.Addr) []byte {
	if !k.PerNode {
		return append([]byte(nil), k.Key...)
	}
	s, d := src.Unmap().As16(), dst.Unmap().As16()
	out := make([]byte, 0, len(k.Key)+sha256.Size)
	for counter := byte(1); len(out) < len(k.Key); counter++ {
		m := hmac.New(sha256.New, k.Key)
		m.Write([]byte("filament ipsec per-node key"))
		m.Write(s[:])
		m.Write(d[:])
		m.Write([]byte{counter})
		out = m.Sum(out)
	}
	return out[:len(k.Key)]
}

// Policies returns the XFRM policies for the traffic between local's and
// peer's pod CIDRs, for each pair of pod CIDRs of the same family in order:
//   - out: local pod CIDR to peer pod CIDR, template local.IP to peer.IP with
//     the current key's wire SPI, so this node sends with the current key;
//   - in and fwd: peer pod CIDR to local pod CIDR, template peer.IP to
//     local.IP with any SPI, so the old key is accepted during a grace period.
//
// All templates are ESP in tunnel mode; all policies have PolicyPriority.
func Policies(local Local, peer Peer, current Key) []*netlink.XfrmPolicy {
	var policies []*netlink.XfrmPolicy
	for _, lc := range local.PodCIDRs {
		for _, pc := range peer.PodCIDRs {
			if lc.Addr().Is4() != pc.Addr().Is4() {
				continue
			}
			out := policy(netlink.XFRM_DIR_OUT, lc, pc, local.IP, peer.IP, wireSPI(current.SPI, local.IP))
			in := policy(netlink.XFRM_DIR_IN, pc, lc, peer.IP, local.IP, 0)
			fwd := policy(netlink.XFRM_DIR_FWD, pc, lc, peer.IP, local.IP, 0)
			policies = append(policies, out, in, fwd)
		}
	}
	return policies
}

// policy is the policy for dir selecting src to dst, sent through a tunnel
// from tsrc to tdst with SPI spi (0: any).
func policy(dir netlink.Dir, src, dst netip.Prefix, tsrc, tdst netip.Addr, spi uint32) *netlink.XfrmPolicy {
	return &netlink.XfrmPolicy{
		Src:      ipNetOf(src),
		Dst:      ipNetOf(dst),
		Dir:      dir,
		Priority: PolicyPriority,
		Tmpls: []netlink.XfrmPolicyTmpl{{
			Src:   ipOf(tsrc),
			Dst:   ipOf(tdst),
			Proto: netlink.XFRM_PROTO_ESP,
			Mode:  netlink.XFRM_MODE_TUNNEL,
			Spi:   int(spi),
			Reqid: reqID,
		}},
	}
}

func ipOf(a netip.Addr) net.IP { return net.IP(a.Unmap().AsSlice()) }

func ipNetOf(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: ipOf(p.Addr()), Mask: net.CIDRMask(p.Bits(), p.Addr().Unmap().BitLen())}
}

// probeNetNSHook, when set by a test, is called with the inode of Probe's
// temporary network namespace.
var probeNetNSHook func(inode uint64)

// Probe checks whether the kernel can hold an ESP state with AlgoGCM: it adds
// one with a random key, and deletes it, inside a temporary anonymous network
// namespace that only a locked OS thread enters for the duration of the
// probe, so nothing is left on the host. It returns nil when that works, an
// error wrapping ErrNoESP that says in one line what is missing when the
// kernel lacks it, and another error when the probe itself cannot run (e.g.
// without CAP_SYS_ADMIN and CAP_NET_ADMIN).
func Probe() error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err, restored := probeInTempNetNS()
		if restored {
			runtime.UnlockOSThread()
		}
		// Otherwise the thread stays locked, and the runtime ends it
		// with this goroutine rather than reuse it in the wrong namespace.
		done <- err
	}()
	return <-done
}

// probeInTempNetNS moves the calling, locked thread to a new network
// namespace, probes there and moves the thread back. restored reports
// whether the thread is in its original namespace again.
func probeInTempNetNS() (err error, restored bool) {
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("ipsec probe: opening the current network namespace: %w", err), true
	}
	defer unix.Close(orig)
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("ipsec probe: creating a temporary network namespace: %w", err), true
	}
	err = probeHere()
	return err, unix.Setns(orig, unix.CLONE_NEWNET) == nil
}

// probeHere probes in the calling thread's (temporary) network namespace.
func probeHere() error {
	if probeNetNSHook != nil {
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err == nil {
			probeNetNSHook(st.Ino)
		}
	}
	h, err := netlink.NewHandle(unix.NETLINK_XFRM)
	if err != nil {
		if errors.Is(err, unix.EPROTONOSUPPORT) {
			return fmt.Errorf("%w: opening an XFRM netlink socket failed: %v (needs CONFIG_XFRM_USER)", ErrNoESP, err)
		}
		return fmt.Errorf("ipsec probe: opening an XFRM netlink socket: %w", err)
	}
	defer h.Close()

	key := make([]byte, 16+saltLen)
	rand.Read(key)
	err, delErr := addAndDelete(h, &netlink.XfrmStateAlgo{Name: AlgoGCM, Key: key, ICVLen: 128}, nil, nil)
	switch {
	case err == nil && delErr != nil:
		return fmt.Errorf("ipsec probe: deleting the probe state: %w", delErr)
	case err == nil:
		return nil
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("ipsec probe: adding an ESP state: %w", err)
	case errors.Is(err, unix.EPROTONOSUPPORT):
		return fmt.Errorf("%w: adding an ESP state failed: %v (needs CONFIG_INET_ESP / esp4)", ErrNoESP, err)
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.ENOENT):
		// The AEAD is missing; tell whether ESP itself is too, with
		// the null algorithms every XFRM kernel has.
		null := &netlink.XfrmStateAlgo{Name: "ecb(cipher_null)"}
		nullAuth := &netlink.XfrmStateAlgo{Name: "digest_null"}
		if nullErr, _ := addAndDelete(h, nil, null, nullAuth); errors.Is(nullErr, unix.EPROTONOSUPPORT) {
			return fmt.Errorf("%w: adding an ESP state with %s failed: %v (needs CONFIG_INET_ESP / esp4 and CONFIG_CRYPTO_GCM)", ErrNoESP, AlgoGCM, err)
		}
		return fmt.Errorf("%w: adding an ESP state with %s failed: %v (needs CONFIG_CRYPTO_GCM)", ErrNoESP, AlgoGCM, err)
	default:
		return fmt.Errorf("%w: adding an ESP state failed: %v (needs CONFIG_INET_ESP / esp4 and CONFIG_CRYPTO_GCM)", ErrNoESP, err)
	}
}

// addAndDelete adds an ESP tunnel state with the given algorithms through h
// and deletes it again, returning the error of each step.
func addAndDelete(h *netlink.Handle, aead, crypt, auth *netlink.XfrmStateAlgo) (addErr, delErr error) {
	st := &netlink.XfrmState{
		Src:   net.IPv4(192, 0, 2, 1),
		Dst:   net.IPv4(192, 0, 2, 2),
		Proto: netlink.XFRM_PROTO_ESP,
		Mode:  netlink.XFRM_MODE_TUNNEL,
		Spi:   0x10000001,
		Aead:  aead,
		Crypt: crypt,
		Auth:  auth,
	}
	if err := h.XfrmStateAdd(st); err != nil {
		return err, nil
	}
	return nil, h.XfrmStateDel(st)
}

// Install writes (or updates) the states for keys and the policies for
// the current (last) key between local and peer.
func Install(local Local, peer Peer, keys []Key) error {
	if len(keys) == 0 {
		return fmt.Errorf("%w: no key", ErrKeyFile)
	}
	for _, s := range States(local, peer, keys) {
		if err := netlink.XfrmStateUpdate(s); err != nil {
			return fmt.Errorf("xfrm state to %s (spi %#x): %w", peer.Name, s.Spi, err)
		}
	}
	for _, p := range Policies(local, peer, keys[len(keys)-1]) {
		if err := netlink.XfrmPolicyUpdate(p); err != nil {
			return fmt.Errorf("xfrm policy to %s: %w", peer.Name, err)
		}
	}
	return nil
}

// Uninstall removes what Install wrote for peer; missing entries are fine.
func Uninstall(local Local, peer Peer, keys []Key) {
	if len(keys) == 0 {
		return
	}
	for _, p := range Policies(local, peer, keys[len(keys)-1]) {
		netlink.XfrmPolicyDel(p)
	}
	for _, s := range States(local, peer, keys) {
		netlink.XfrmStateDel(s)
	}
}
