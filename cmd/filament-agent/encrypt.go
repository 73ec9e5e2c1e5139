package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/filament-net/filament/agent/api"
	"github.com/filament-net/filament/agent/config"
	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/node"
	"github.com/filament-net/filament/agent/routing"
	"github.com/filament-net/filament/crypto/ipsec"
	"github.com/filament-net/filament/crypto/wireguard"
)

// encryption is the node's transparent encryption as the agent wires it.
type encryption struct {
	mode   string
	strict bool
	wg     *wireguard.Device
}

// startEncryption opens the WireGuard device (peers follow the node
// registry through the router) or refuses a mode the kernel cannot do.
func startEncryption(cfg config.Config, dp *datapath.Datapath, router *routing.Router, underlayMTU int) (*encryption, error) {
	e := &encryption{mode: cfg.Encryption, strict: cfg.EncryptionStrict}
	switch cfg.Encryption {
	case "wireguard":
		wg, err := wireguard.Open(wireguard.Config{
			KeyPath: filepath.Join(cfg.StateDir, "wireguard", "private.key"), MTU: underlayMTU - wireguard.Overhead,
			PrivateRunDir: cfg.WireGuardPrivateRunDir,
		})
		if err != nil {
			return nil, err
		}
		// Decrypted packets come in on the device with pod sources.
		os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/rp_filter", wg.Name()), []byte("0"), 0o644)
		e.wg = wg
		router.SetEncryption(wg)
	case "ipsec":
		if err := ipsec.Probe(); err != nil {
			return nil, fmt.Errorf("encryption ipsec refused: %w", err)
		}
		data, err := os.ReadFile(cfg.IPsecKeyFile)
		if err != nil {
			return nil, fmt.Errorf("ipsecKeyFile: %w", err)
		}
		if _, err := ipsec.ParseKeyFile(data); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("encryption ipsec: the kernel has ESP, but Filament's IPsec datapath is not built yet (states and policies are generated and unit-tested only); use wireguard")
	}
	if err := dp.SetEncryption(e.wg != nil, e.strict); err != nil {
		if e.wg != nil {
			e.wg.Close()
		}
		return nil, err
	}
	return e, nil
}

func (e *encryption) publicKey() string {
	if e.wg == nil {
		return ""
	}
	return e.wg.PublicKey().String()
}

// rotate makes a new key pair and publishes its public key; peers follow
// through the registry.
func (e *encryption) rotate(ctx context.Context, reg *node.Registry) (string, error) {
	if e.wg == nil {
		return "", fmt.Errorf("encryption is %s: no key to rotate", e.mode)
	}
	pub, err := e.wg.Rotate()
	if err != nil {
		return "", err
	}
	if err := reg.UpdateSelf(ctx, func(n *node.Node) { n.WireGuardKey = pub.String() }); err != nil {
		return "", fmt.Errorf("publish the new key: %w", err)
	}
	return pub.String(), nil
}

func (e *encryption) status(dp *datapath.Datapath) (api.EncryptionStatus, error) {
	st := api.EncryptionStatus{Mode: e.mode, Strict: e.strict, Peers: []wireguard.PeerStatus{}}
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
