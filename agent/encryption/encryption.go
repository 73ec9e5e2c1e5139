// Package encryption wires the node's transparent encryption and node
// authentication into the agent: the WireGuard device (or the IPsec peers)
// started from the configuration, the datapath's encryption settings, key
// rotation published through the node registry, the status the API
// serves, and the node authentication that vets every node record.
package encryption

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/routing"
	"github.com/filament-net/filament/crypto/ipsec"
	"github.com/filament-net/filament/crypto/keyfile"
	"github.com/filament-net/filament/crypto/nodeauth"
	"github.com/filament-net/filament/crypto/wireguard"
	"github.com/filament-net/filament/internal/atomicfile"
)

// Encryption is the node's transparent encryption as the agent wires it.
type Encryption struct {
	mode     string
	strict   bool
	wg       *wireguard.Device
	ipsec    bool
	rotateMu sync.Mutex // Rotate: the device's key and the published one change together
}

// ipsecPeers installs XFRM states and policies toward each peer node.
type ipsecPeers struct {
	local ipsec.Local
	keys  []ipsec.Key
	// install and uninstall: ipsec.Install and ipsec.Uninstall (fakes in
	// tests).
	install   func(ipsec.Local, ipsec.Peer, []ipsec.Key) error
	uninstall func(ipsec.Local, ipsec.Peer, []ipsec.Key)

	mu sync.Mutex
	// tags: the peer address holding each wire SPI sender tag
	// (ipsec.Tag). A second address of a tag is refused: its inbound
	// states would be the first's, and its removal would delete them.
	tags map[uint32]netip.Addr
}

// ErrTagTaken: a peer's wire SPI sender tag is another peer's.
var ErrTagTaken = errors.New("ipsec: the node's SPI sender tag is another node's")

func newIPsecPeers(local ipsec.Local, keys []ipsec.Key) *ipsecPeers {
	return &ipsecPeers{local: local, keys: keys, install: ipsec.Install, uninstall: ipsec.Uninstall, tags: map[uint32]netip.Addr{}}
}

func (x *ipsecPeers) peer(n node.Node, ip netip.Addr) ipsec.Peer {
	p := ipsec.Peer{Name: n.Name, IP: ip}
	for _, c := range n.PodCIDRs {
		if pc, err := netip.ParsePrefix(c); err == nil {
			p.PodCIDRs = append(p.PodCIDRs, pc)
		}
	}
	return p
}

func (x *ipsecPeers) AddPeer(n node.Node, ip netip.Addr) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	tag := ipsec.Tag(ip)
	if owner, ok := x.tags[tag]; ok && owner != ip {
		return fmt.Errorf("%w: %s and %s share the low 28 bits of their addresses (tag %#07x): node %s refused",
			ErrTagTaken, ip, owner, tag, n.Name)
	}
	if err := x.install(x.local, x.peer(n, ip), x.keys); err != nil {
		return err
	}
	x.tags[tag] = ip
	return nil
}

func (x *ipsecPeers) RemovePeer(n node.Node, ip netip.Addr) {
	x.mu.Lock()
	defer x.mu.Unlock()
	tag := ipsec.Tag(ip)
	if owner, ok := x.tags[tag]; ok && owner != ip {
		return // refused: the tag's inbound states are the other node's
	}
	x.uninstall(x.local, x.peer(n, ip), x.keys)
	delete(x.tags, tag)
}

// Start opens the WireGuard device (peers follow the node
// registry through the router) or refuses a mode the kernel cannot do.
func Start(cfg config.Config, dp *datapath.Datapath, router *routing.Router, underlayMTU int, nodeIP netip.Addr, podCIDR string) (*Encryption, error) {
	e := &Encryption{mode: cfg.Encryption, strict: cfg.EncryptionStrict}
	switch cfg.Encryption {
	case "wireguard":
		wg, err := wireguard.Open(wireguard.Config{
			KeyPath: filepath.Join(cfg.StateDir, "wireguard", "private.key"), MTU: underlayMTU - wireguard.Overhead,
			PrivateRunDir: cfg.WireGuardPrivateRunDir, DeviceCommand: cfg.WireGuardDeviceCommand,
		})
		if err != nil {
			return nil, err
		}
		// Decrypted packets come in on the device with pod sources.
		os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/rp_filter", wg.Name()), []byte("0"), 0o644)
		e.wg = wg
		// The gateway: the source of this node's traffic through the
		// device, and of NodePort traffic to backends on peers.
		var gw netip.Addr
		if p, err := netip.ParsePrefix(podCIDR); err == nil {
			gw = p.Masked().Addr().Next()
		}
		router.SetEncryption(wg, gw)
		if _, err := dp.AttachWireGuard(wg.Name(), wg.IfIndex()); err != nil {
			wg.Close()
			return nil, fmt.Errorf("attach from_wireguard: %w", err)
		}
		if err := dp.SetEncryptSNAT(gw); err != nil {
			wg.Close()
			return nil, err
		}
		if err := dp.SetWireGuardPort(uint16(wg.Port())); err != nil {
			wg.Close()
			return nil, err
		}
	case "ipsec":
		if err := ipsec.Probe(); err != nil {
			return nil, fmt.Errorf("encryption ipsec refused: %w", err)
		}
		data, err := keyfile.Read(cfg.IPsecKeyFile)
		if err != nil {
			return nil, fmt.Errorf("ipsecKeyFile: %w", err)
		}
		keys, err := ipsec.ParseKeyFile(data)
		if err != nil {
			return nil, err
		}
		local := ipsec.Local{IP: nodeIP}
		if p, err := netip.ParsePrefix(podCIDR); err == nil {
			local.PodCIDRs = []netip.Prefix{p}
		}
		router.SetIPsec(newIPsecPeers(local, keys))
		e.ipsec = true
	}
	if e.wg == nil {
		// No translation from the gateway, no WireGuard port, left over
		// from an earlier run.
		if err := dp.SetEncryptSNAT(netip.Addr{}); err != nil {
			return nil, err
		}
		if err := dp.SetWireGuardPort(0); err != nil {
			return nil, err
		}
	}
	if err := dp.SetEncryption(e.wg != nil || e.ipsec, e.strict); err != nil {
		if e.wg != nil {
			e.wg.Close()
		}
		return nil, err
	}
	return e, nil
}

// DeviceDied is closed when the WireGuard device's own process ends while
// the agent runs; nil (never ready) for other devices and modes.
func (e *Encryption) DeviceDied() <-chan struct{} {
	if e.wg == nil {
		return nil
	}
	return e.wg.Died()
}

func (e *Encryption) PublicKey() string {
	if e.wg == nil {
		return ""
	}
	return e.wg.PublicKey().String()
}

// Rotate makes a new key pair and publishes its public key; peers follow
// through the registry.
func (e *Encryption) Rotate(ctx context.Context, reg *node.Registry) (string, error) {
	if e.wg == nil {
		return "", fmt.Errorf("encryption is %s: no key to rotate", e.mode)
	}
	// One rotation at a time: two at once could leave the device on one
	// key and the published record on the other (every peer's handshake
	// failing until the next rotation).
	e.rotateMu.Lock()
	defer e.rotateMu.Unlock()
	pub, err := e.wg.Rotate()
	if err != nil {
		return "", err
	}
	if err := reg.UpdateSelf(ctx, func(n *node.Node) { n.WireGuardKey = pub.String() }); err != nil {
		return "", fmt.Errorf("publish the new key (in use; published again in the background until it is in): %w", err)
	}
	return pub.String(), nil
}

func (e *Encryption) Status(dp *datapath.Datapath, auth *NodeAuth) (api.EncryptionStatus, error) {
	st := api.EncryptionStatus{Mode: e.mode, Strict: e.strict, Peers: []wireguard.PeerStatus{},
		Authentication: auth.enabled, Refused: auth.refusals.List()}
	if cs, err := dp.Counters(); err == nil {
		for _, c := range cs {
			if c.Reason == datapath.ReasonNoEncryptPeer {
				st.StrictDrops += c.Packets
			}
		}
	}
	if e.wg == nil {
		return st, nil
	}
	st.Device, st.Type, st.PublicKey, st.Port = e.wg.Name(), e.wg.Type, e.wg.PublicKey().String(), e.wg.Port()
	peers, err := e.wg.Peers()
	if err != nil {
		return st, err
	}
	st.Peers = peers
	return st, nil
}

// NodeAuth signs this node's record and vets every other node's.
type NodeAuth struct {
	enabled  bool
	signer   *nodeauth.Signer
	caPEM    []byte
	refusals *nodeauth.Refusals

	// The cluster CA's revocation list (nodeCRL): the revoked node
	// certificates of this cluster, read again when the file changes.
	crlPath  string
	crlMu    sync.Mutex
	crlStamp string
	crlPEM   []byte // the list read (nil: none)
	revoked  atomic.Pointer[nodeauth.Revoked]

	// Remote clusters' lists (RemoteCRL), by cluster: the latest each
	// one's CA signed that this agent has read, kept in remoteDir (one
	// file a cluster) so that a restart starts from them.
	remoteMu  sync.Mutex
	remote    map[string]*nodeauth.Revoked
	remoteDir string
}

func StartNodeAuth(cfg config.Config, router *routing.Router) (*NodeAuth, error) {
	a := &NodeAuth{refusals: nodeauth.NewRefusals(), remote: map[string]*nodeauth.Revoked{}}
	if cfg.NodeCert == "" {
		if cfg.Encryption != "none" {
			slog.Warn("node authentication is off (no --node-cert): every node in the kvstore becomes an encryption peer")
		}
		return a, nil
	}
	s, err := nodeauth.LoadSigner(cfg.NodeCert, cfg.NodeKey)
	if err != nil {
		return nil, err
	}
	if want := nodeauth.CommonName(cfg.ClusterName, cfg.NodeName); s.Subject() != want {
		return nil, fmt.Errorf("nodeCert %s is for %q, not this node (%q)", cfg.NodeCert, s.Subject(), want)
	}
	if a.caPEM, err = os.ReadFile(cfg.NodeCA); err != nil {
		return nil, fmt.Errorf("nodeCA: %w", err)
	}
	a.enabled, a.signer, a.crlPath = true, s, cfg.NodeCRL
	a.remoteDir = filepath.Join(cfg.StateDir, "remote-crl")
	if _, err := a.ReloadCRL(); err != nil {
		return nil, err
	}
	router.RequireNodes()
	return a, nil
}

// ReloadCRL reads the revocation list again if its file's content
// changed (absent: nothing revoked) and says whether the
// revoked set changed: then every node is to be vetted again. A list that
// does not verify against the CA is refused, the last one kept.
func (a *NodeAuth) ReloadCRL() (bool, error) {
	if !a.enabled || a.crlPath == "" {
		return false, nil
	}
	a.crlMu.Lock()
	defer a.crlMu.Unlock()
	var stamp string
	data, err := os.ReadFile(a.crlPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		stamp = "absent"
	case err != nil:
		return false, fmt.Errorf("nodeCRL: %w", err)
	default:
		sum := sha256.Sum256(data)
		stamp = hex.EncodeToString(sum[:])
	}
	if stamp == a.crlStamp {
		return false, nil
	}
	var r *nodeauth.Revoked
	if data != nil {
		if r, err = nodeauth.ParseRevoked(data, a.caPEM); err != nil {
			return false, fmt.Errorf("nodeCRL %s: %w", a.crlPath, err)
		}
	}
	a.revoked.Store(r)
	a.crlStamp, a.crlPEM = stamp, data
	slog.Info("node revocation list read", "path", a.crlPath, "revoked", r.Len())
	return true, nil
}

// ParseCRL reads a revocation list of this cluster's CA.
func (a *NodeAuth) ParseCRL(crlPEM []byte) (*nodeauth.Revoked, error) {
	return nodeauth.ParseRevoked(crlPEM, a.caPEM)
}

// LocalCRL is the revocation list read (PEM; nil: none) and its
// entries, for publishing (node.CRLPrefix).
func (a *NodeAuth) LocalCRL() ([]byte, *nodeauth.Revoked) {
	a.crlMu.Lock()
	defer a.crlMu.Unlock()
	return a.crlPEM, a.revoked.Load()
}

// RemoteCRL takes a remote cluster's revocation list as published in its
// kvstore, if its CA (caPEM) signed it and it is later than the last one
// taken (an earlier list, or none, is what a writer of that kvstore
// could put there to unrevoke a node: ignored). It says whether the
// revoked set changed: the cluster's nodes are then vetted again.
func (a *NodeAuth) RemoteCRL(cluster string, caPEM, crlPEM []byte) (bool, error) {
	if !a.enabled {
		return false, nil
	}
	r, err := nodeauth.ParseRevoked(crlPEM, caPEM)
	if err != nil {
		return false, fmt.Errorf("revocation list of cluster %s: %w", cluster, err)
	}
	a.remoteMu.Lock()
	defer a.remoteMu.Unlock()
	if !r.Newer(a.remoteLocked(cluster, caPEM)) {
		return false, nil
	}
	a.remote[cluster] = r
	slog.Info("a remote cluster's node revocation list read", "cluster", cluster, "revoked", r.Len())
	if a.remoteDir != "" && node.ValidName(cluster) {
		if err := writeFileAtomic(filepath.Join(a.remoteDir, cluster+".pem"), crlPEM); err != nil {
			slog.Warn("a remote cluster's node revocation list not kept for the next start", "cluster", cluster, "err", err)
		}
	}
	return true, nil
}

// remoteLocked is the list taken for cluster, or the one kept from an
// earlier start if caPEM signed it. a.remoteMu is held.
func (a *NodeAuth) remoteLocked(cluster string, caPEM []byte) *nodeauth.Revoked {
	if r, ok := a.remote[cluster]; ok || a.remoteDir == "" || !node.ValidName(cluster) {
		return r
	}
	var r *nodeauth.Revoked
	if data, err := os.ReadFile(filepath.Join(a.remoteDir, cluster+".pem")); err == nil {
		if r, err = nodeauth.ParseRevoked(data, caPEM); err != nil {
			slog.Warn("a remote cluster's kept node revocation list refused", "cluster", cluster, "err", err)
			r = nil
		}
	}
	a.remote[cluster] = r
	return r
}

func (a *NodeAuth) remoteRevoked(cluster string, caPEM []byte) *nodeauth.Revoked {
	a.remoteMu.Lock()
	defer a.remoteMu.Unlock()
	return a.remoteLocked(cluster, caPEM)
}

// writeFileAtomic writes data to path through a temporary file.
func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, data, 0o600)
}

func (a *NodeAuth) Sign() []func(*node.Node) error {
	if !a.enabled {
		return nil
	}
	return []func(*node.Node) error{a.signer.Sign}
}

// check vets node n of cluster against caPEM and records the verdict under
// the name the agent uses for it.
func (a *NodeAuth) check(local, cluster string, caPEM []byte, n node.Node) error {
	if !a.enabled {
		return nil
	}
	name := n.Name
	if cluster != local {
		name = cluster + "/" + n.Name
	}
	err := nodeauth.Verify(n, caPEM)
	switch {
	case err != nil:
	case cluster == local:
		err = a.revoked.Load().Check(n)
	default:
		err = a.remoteRevoked(cluster, caPEM).Check(n)
	}
	if err != nil {
		slog.Warn("refused a node", "node", name, "err", err)
	}
	a.refusals.Set(name, err)
	return err
}

// Accept vets a node of the local cluster.
func (a *NodeAuth) Accept(local string, n node.Node) bool {
	return a.check(local, local, a.caPEM, n) == nil
}

// CheckCert refuses a certificate the cluster CA's revocation list
// revokes (the Hubble listener's clients: a relay's certificate).
func (a *NodeAuth) CheckCert(cert *x509.Certificate) error {
	if a == nil {
		return nil
	}
	return a.revoked.Load().CheckCert(cert)
}

// Forget drops a node's refusal (its record is gone).
func (a *NodeAuth) Forget(name string) { a.refusals.Set(name, nil) }

// Remote vets remote clusters' nodes with their CAs (nil when off).
func (a *NodeAuth) Remote() func(cluster string, caPEM []byte, n node.Node) error {
	if !a.enabled {
		return nil
	}
	return func(cluster string, caPEM []byte, n node.Node) error { return a.check("", cluster, caPEM, n) }
}

// Revocations takes remote clusters' revocation lists (RemoteCRL; nil
// when node authentication is off).
func (a *NodeAuth) Revocations() func(cluster string, caPEM, crlPEM []byte) (bool, error) {
	if !a.enabled {
		return nil
	}
	return a.RemoteCRL
}

// Refused is how many nodes are refused now.
func (a *NodeAuth) Refused() int { return a.refusals.Count() }

// Close closes the WireGuard device, if any (its peers and routes stay
// for the next agent).
func (e *Encryption) Close() {
	if e.wg != nil {
		e.wg.Close()
	}
}
