package clustermesh

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Connects and disconnects of one bundle run at the same time (two
// operators, or `connect --to b --to c` beside another) each change the
// bundle's PeersFile by reading and rewriting it; without a lock one
// rewrite lost the other's peer, whose etcd user the apiserver then never
// made (its agents could not read this cluster) or never deleted (a
// disconnected cluster kept reading it).
func TestConcurrentConnectsKeepEveryPeer(t *testing.T) {
	hub := t.TempDir()
	if _, err := Enable(hub, "hub", 1, []net.IP{net.ParseIP("10.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	const n = 8
	spokes := make([]string, n)
	for i := range spokes {
		spokes[i] = t.TempDir()
		if _, err := Enable(spokes[i], fmt.Sprintf("spoke%d", i), uint32(i+2), nil); err != nil {
			t.Fatal(err)
		}
	}
	// Half connected first, to be disconnected while the others connect.
	for _, s := range spokes[:n/2] {
		if _, _, err := Connect(hub, s); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, s := range spokes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i < n/2 {
				errs <- Disconnect(hub, s)
				return
			}
			_, _, err := Connect(s, hub)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	peers, err := ScanPeers(PeersFile(hub))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, p := range peers {
		got[p.Name] = true
	}
	for i := range spokes {
		name := fmt.Sprintf("spoke%d", i)
		_, statErr := os.Stat(filepath.Join(RemotesDir(hub), name+".yaml"))
		if want := i >= n/2; got[name] != want || (statErr == nil) != want {
			t.Errorf("%s: listed in the hub's peers %v, its config in the hub %v; want both %v (peers: %v)", name, got[name], statErr == nil, want, peers)
		}
	}
}

// A relay certificate's common name is a peer's only when it is
// hubble-remote-<valid cluster name>-<16 hex digits>.
func TestPeerOfRelayUser(t *testing.T) {
	for cn, want := range map[string]Peer{
		"hubble-remote-b-0123456789abcdef":          {"b", "0123456789abcdef"},
		"hubble-remote-my-cluster-0123456789abcdef": {"my-cluster", "0123456789abcdef"},
		"hubble-remote":                    {},
		"hubble-remote-b":                  {},
		"hubble-remote-b-0123":             {},
		"hubble-remote--0123456789abcdef":  {},
		"hubble-remote-B-0123456789abcdef": {},
		"remote-b-0123456789abcdef":        {},
		"hubble-relay":                     {},
	} {
		p, ok := PeerOfRelayUser(cn)
		if ok != (want != Peer{}) || p != want {
			t.Errorf("PeerOfRelayUser(%q) = %v %v, want %v", cn, p, ok, want)
		}
		if ok && p.RelayUser() != cn {
			t.Errorf("%q: RelayUser gives %q back", cn, p.RelayUser())
		}
	}
}

// A bundle names the apiserver at the port it is reached at (the chart's
// apiserver listens on its Service's port since 2026-12-07, so a bundle
// naming 2379 would reach nothing there); a port outside 1-65535 is
// refused.
func TestEnableOnPort(t *testing.T) {
	c, err := EnableOnPort(t.TempDir(), "east", 1, []net.IP{net.ParseIP("192.0.2.1")}, 12379)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Endpoints) != 1 || c.Endpoints[0] != "https://192.0.2.1:12379" {
		t.Errorf("endpoints %v, want [https://192.0.2.1:12379]", c.Endpoints)
	}
	if _, err := EnableOnPort(t.TempDir(), "east", 1, nil, 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("port 0: %v, want ErrInvalid", err)
	}
}
