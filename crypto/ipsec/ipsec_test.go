package ipsec

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/filament-net/filament/internal/testutil"
)

const (
	hex128 = "0123456789abcdef0123456789abcdef01234567"
	hex256 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff01020304"
)

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseKeyFileSingle(t *testing.T) {
	keys, err := ParseKeyFile([]byte("3+ rfc4106(gcm(aes)) " + hex128 + " 128\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Key{{SPI: 3, PerNode: true, Algo: AlgoGCM, Key: mustHex(t, hex128), ICVBits: 128}}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("got %+v, want %+v", keys, want)
	}
}

func TestParseKeyFileRotationAndComments(t *testing.T) {
	data := "# old key, kept for the grace period\n\n  1 rfc4106(gcm(aes)) " + hex128 + " 96  \r\n" +
		"\t# current key\n" +
		"2 rfc4106(gcm(aes)) 0x" + hex256 + " 64\n\n"
	keys, err := ParseKeyFile([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := []Key{
		{SPI: 1, Algo: AlgoGCM, Key: mustHex(t, hex128), ICVBits: 96},
		{SPI: 2, Algo: AlgoGCM, Key: mustHex(t, hex256), ICVBits: 64},
	}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("got %+v, want %+v", keys, want)
	}
}

func TestParseKeyFileErrors(t *testing.T) {
	good := "1 rfc4106(gcm(aes)) " + hex128 + " 128"
	for _, tc := range []struct {
		name, data string
		want       []string // substrings of the message
	}{
		{"empty", "", []string{"no key"}},
		{"only comments", "# nothing\n\n", []string{"no key"}},
		{"one field", "\n3", []string{"line 2", "1 field"}},
		{"three fields", "3 rfc4106(gcm(aes)) " + hex128, []string{"line 1", "3 fields"}},
		{"five fields", good + " extra", []string{"line 1", "5 fields"}},
		{"spi 0", "0 rfc4106(gcm(aes)) " + hex128 + " 128", []string{"line 1", `spi "0"`}},
		{"spi 16", "#c\n16+ rfc4106(gcm(aes)) " + hex128 + " 128", []string{"line 2", `spi "16+"`}},
		{"spi not numeric", "x rfc4106(gcm(aes)) " + hex128 + " 128", []string{"line 1", `spi "x"`}},
		{"unknown algo", "1 gcm(aes) " + hex128 + " 128", []string{"line 1", `algo "gcm(aes)"`}},
		{"hmac variant", "1 hmac(sha256) " + hex128 + " cbc(aes) " + hex128, []string{"line 1", `algo "hmac(sha256)"`}},
		{"bad hex", "1 rfc4106(gcm(aes)) 0123z56789abcdef0123456789abcdef01234567 128", []string{"line 1", "key", `'z'`, "offset 4"}},
		{"key too short", "1 rfc4106(gcm(aes)) " + hex128[:32] + " 128", []string{"line 1", "key", "32 hex characters"}},
		{"bits 32", "1 rfc4106(gcm(aes)) " + hex128 + " 32", []string{"line 1", `bits "32"`}},
		{"bits not numeric", "1 rfc4106(gcm(aes)) " + hex128 + " many", []string{"line 1", `bits "many"`}},
		{"duplicate spi", good + "\n" + good, []string{"line 2", "spi 1", "line 1"}},
		{"three keys", good + "\n2 rfc4106(gcm(aes)) " + hex128 + " 128\n\n3 rfc4106(gcm(aes)) " + hex128 + " 128", []string{"line 4", "third key", "spi 3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := ParseKeyFile([]byte(tc.data))
			if !errors.Is(err, ErrKeyFile) {
				t.Fatalf("got %v, %v; want an error wrapping ErrKeyFile", keys, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), hex128[:32]) {
				t.Errorf("error %q quotes key material", err)
			}
		})
	}
}

var (
	local = Local{IP: netip.MustParseAddr("172.30.0.1"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")}}
	peer  = Peer{Name: "node-b", IP: netip.MustParseAddr("172.30.0.2"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
)

// asPeer and asLocal swap the roles of the two nodes.
func asPeer(l Local) Peer  { return Peer{Name: "node-a", IP: l.IP, PodCIDRs: l.PodCIDRs} }
func asLocal(p Peer) Local { return Local{IP: p.IP, PodCIDRs: p.PodCIDRs} }

func checkState(t *testing.T, s *netlink.XfrmState, src, dst string, spi uint32, key []byte, icv int) {
	t.Helper()
	if s.Src.String() != src || s.Dst.String() != dst {
		t.Errorf("state %s -> %s, want %s -> %s", s.Src, s.Dst, src, dst)
	}
	if s.Proto != netlink.XFRM_PROTO_ESP || s.Mode != netlink.XFRM_MODE_TUNNEL {
		t.Errorf("state proto %s mode %s, want esp tunnel", s.Proto, s.Mode)
	}
	if uint32(s.Spi) != spi {
		t.Errorf("state spi %#x, want %#x", s.Spi, spi)
	}
	if s.Aead == nil || s.Aead.Name != AlgoGCM || s.Aead.ICVLen != icv || (key != nil && !bytes.Equal(s.Aead.Key, key)) {
		t.Errorf("state aead %v, want %s with icv %d and key %x", s.Aead, AlgoGCM, icv, key)
	}
}

func TestWireSPI(t *testing.T) {
	if got := wireSPI(3, netip.MustParseAddr("172.30.0.1")); got != 0x3c1e0001 {
		t.Errorf("wireSPI(3, 172.30.0.1) = %#x, want 0x3c1e0001", got)
	}
	if got := wireSPI(3, netip.MustParseAddr("::ffff:172.30.0.1")); got != 0x3c1e0001 {
		t.Errorf("wireSPI of a mapped address = %#x, want 0x3c1e0001", got)
	}
	a, b := wireSPI(15, netip.MustParseAddr("2001:db8:1::1")), wireSPI(15, netip.MustParseAddr("2001:db8:2::1"))
	if a>>28 != 15 || b>>28 != 15 || a == b {
		t.Errorf("IPv6 wire SPIs %#x and %#x: want key SPI 15 on top and different tags", a, b)
	}
}

func TestStatesOneKey(t *testing.T) {
	k := Key{SPI: 3, Algo: AlgoGCM, Key: mustHex(t, hex128), ICVBits: 128}
	st := States(local, peer, []Key{k})
	if len(st) != 2 {
		t.Fatalf("got %d states, want 2", len(st))
	}
	checkState(t, st[0], "172.30.0.1", "172.30.0.2", 0x3c1e0001, k.Key, 128)
	checkState(t, st[1], "172.30.0.2", "172.30.0.1", 0x3c1e0002, k.Key, 128)
	st[0].Aead.Key[0] ^= 0xff
	if k.Key[0] != 0x01 {
		t.Error("states alias the key's bytes")
	}
}

func TestStatesRotation(t *testing.T) {
	old := Key{SPI: 1, Algo: AlgoGCM, Key: mustHex(t, hex128), ICVBits: 96}
	cur := Key{SPI: 2, Algo: AlgoGCM, Key: mustHex(t, hex256), ICVBits: 128}
	st := States(local, peer, []Key{old, cur})
	if len(st) != 4 {
		t.Fatalf("got %d states, want 4", len(st))
	}
	checkState(t, st[0], "172.30.0.1", "172.30.0.2", 0x1c1e0001, old.Key, 96)
	checkState(t, st[1], "172.30.0.2", "172.30.0.1", 0x1c1e0002, old.Key, 96)
	checkState(t, st[2], "172.30.0.1", "172.30.0.2", 0x2c1e0001, cur.Key, 128)
	checkState(t, st[3], "172.30.0.2", "172.30.0.1", 0x2c1e0002, cur.Key, 128)
	if !reflect.DeepEqual(st, States(local, peer, []Key{old, cur})) {
		t.Error("States is not deterministic")
	}
}

func TestStatesPerNode(t *testing.T) {
	k := Key{SPI: 5, PerNode: true, Algo: AlgoGCM, Key: mustHex(t, hex256), ICVBits: 128}
	a := States(local, peer, []Key{k})                  // on node A
	b := States(asLocal(peer), asPeer(local), []Key{k}) // on node B
	for _, s := range append(a, b...) {
		if len(s.Aead.Key) != len(k.Key) || bytes.Equal(s.Aead.Key, k.Key) {
			t.Fatalf("per-node key %x: want %d bytes derived from, not equal to, the file's key", s.Aead.Key, len(k.Key))
		}
	}
	// A's outbound state is B's inbound one and the other way round.
	if !reflect.DeepEqual(a[0], b[1]) || !reflect.DeepEqual(a[1], b[0]) {
		t.Errorf("the two nodes disagree:\nA: %v\n   %v\nB: %v\n   %v", a[0], a[1], b[0], b[1])
	}
	if bytes.Equal(a[0].Aead.Key, a[1].Aead.Key) {
		t.Error("both directions share one key")
	}
	other := Peer{Name: "node-c", IP: netip.MustParseAddr("172.30.0.3")}
	c := States(local, other, []Key{k})
	if bytes.Equal(a[0].Aead.Key, c[0].Aead.Key) || bytes.Equal(a[1].Aead.Key, c[1].Aead.Key) {
		t.Error("different peers get the same key")
	}
	if !reflect.DeepEqual(a, States(local, peer, []Key{k})) {
		t.Error("States is not deterministic")
	}
}

func TestPolicies(t *testing.T) {
	cur := Key{SPI: 2, Algo: AlgoGCM, Key: mustHex(t, hex128), ICVBits: 128}
	pol := Policies(local, peer, cur)
	want := []struct {
		dir                  netlink.Dir
		src, dst, tsrc, tdst string
		spi                  uint32
	}{
		{netlink.XFRM_DIR_OUT, "10.244.0.0/24", "10.244.1.0/24", "172.30.0.1", "172.30.0.2", 0x2c1e0001},
		{netlink.XFRM_DIR_IN, "10.244.1.0/24", "10.244.0.0/24", "172.30.0.2", "172.30.0.1", 0},
		{netlink.XFRM_DIR_FWD, "10.244.1.0/24", "10.244.0.0/24", "172.30.0.2", "172.30.0.1", 0},
	}
	if len(pol) != len(want) {
		t.Fatalf("got %d policies, want %d", len(pol), len(want))
	}
	for i, w := range want {
		p := pol[i]
		if p.Dir != w.dir || p.Src.String() != w.src || p.Dst.String() != w.dst || p.Priority != PolicyPriority || p.Action != netlink.XFRM_POLICY_ALLOW {
			t.Errorf("policy %d: %v, want %s %s -> %s priority %d", i, p, w.dir, w.src, w.dst, PolicyPriority)
		}
		if len(p.Tmpls) != 1 {
			t.Fatalf("policy %d: %d templates, want 1", i, len(p.Tmpls))
		}
		tm := p.Tmpls[0]
		if tm.Src.String() != w.tsrc || tm.Dst.String() != w.tdst || tm.Proto != netlink.XFRM_PROTO_ESP ||
			tm.Mode != netlink.XFRM_MODE_TUNNEL || uint32(tm.Spi) != w.spi || tm.Reqid != reqID {
			t.Errorf("policy %d template %v, want esp tunnel %s -> %s spi %#x reqid %d", i, tm, w.tsrc, w.tdst, w.spi, reqID)
		}
	}
	// The out template picks exactly the current key's outbound state.
	st := States(local, peer, []Key{cur})
	if pol[0].Tmpls[0].Spi != st[0].Spi || st[0].Reqid != reqID {
		t.Errorf("out template spi %#x, current outbound state spi %#x", pol[0].Tmpls[0].Spi, st[0].Spi)
	}

	// Pod CIDRs of different families are not paired.
	dual := local
	dual.PodCIDRs = append(dual.PodCIDRs, netip.MustParsePrefix("fd00:10:244::/64"))
	if n := len(Policies(dual, peer, cur)); n != 3 {
		t.Errorf("dual-stack local with an IPv4-only peer: %d policies, want 3", n)
	}
}

// netnsInUse reports which of this process's tasks or open files still refer
// to the network namespace with inode ino.
func netnsInUse(ino uint64) []string {
	var users []string
	paths, _ := filepath.Glob("/proc/self/task/*/ns/net")
	fds, _ := filepath.Glob("/proc/self/fd/*")
	for _, p := range append(paths, fds...) {
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil && st.Ino == ino && st.Dev != 0 {
			if l, _ := os.Readlink(p); strings.HasPrefix(l, "net:") {
				users = append(users, p)
			}
		}
	}
	return users
}

func command(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestProbe(t *testing.T) {
	testutil.RequireRoot(t)
	// The probe's namespace is unnamed (unshare), so `ip netns list` is not
	// compared: other test packages running at the same time add and
	// remove named namespaces. That the probe's own namespace is gone is
	// checked below by its inode.
	snapshot := func() string {
		ns, _ := os.Readlink("/proc/self/ns/net")
		return fmt.Sprintf("netns %s\n%s\n%s", ns,
			command(t, "ip", "xfrm", "state"),
			command(t, "ip", "xfrm", "policy"))
	}
	before := snapshot()

	var probeNS uint64
	probeNetNSHook = func(ino uint64) { probeNS = ino }
	defer func() { probeNetNSHook = nil }()
	err := Probe()
	t.Logf("Probe() = %v", err)
	if err != nil {
		if !errors.Is(err, ErrNoESP) {
			t.Fatalf("Probe() = %v, want nil or an error wrapping ErrNoESP", err)
		}
		if msg := err.Error(); strings.Contains(msg, "\n") || !strings.HasPrefix(msg, ErrNoESP.Error()+": ") || !strings.Contains(msg, "needs CONFIG_") {
			t.Errorf("Probe() error %q: want one line starting with %q that names the missing kernel option", msg, ErrNoESP.Error())
		}
	}

	if after := snapshot(); after != before {
		t.Errorf("Probe changed the host:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if probeNS == 0 {
		t.Fatal("Probe did not report its temporary namespace")
	}
	if self, _ := os.Readlink("/proc/self/ns/net"); strings.Contains(self, fmt.Sprint(probeNS)) {
		t.Fatal("Probe's namespace is the process's one")
	}
	// The thread that entered the namespace exits after Probe returns.
	deadline := time.Now().Add(5 * time.Second)
	for users := netnsInUse(probeNS); len(users) > 0; users = netnsInUse(probeNS) {
		if time.Now().After(deadline) {
			t.Fatalf("Probe's namespace (inode %d) is still used by %v", probeNS, users)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
