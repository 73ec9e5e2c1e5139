package embedded

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// The embedded etcd is one member: nothing but itself may speak raft to
// it. Until 2026-12-07 its peer port served plain HTTP to anyone who could
// reach it (the chart's apiserver runs on the host network with it on
// 127.0.0.1:2380: every host-network pod and local user of its node), and
// one unauthenticated raft append, as a leader of a later term, wrote any
// key as etcd's root past the client port's mutual TLS and users (found
// by a review, which proved it with a forged entry). The peer port now
// serves TLS and takes only a certificate of the member's own authority,
// made at each start.
func TestPeerPortRefusesStrangers(t *testing.T) {
	s, err := Start(Config{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", UnsafeNoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := s.e.Peers[0].Listener.Addr().String()
	c := &http.Client{Timeout: 5 * time.Second}
	if resp, err := c.Get("http://" + addr + "/members"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("the peer port answered /members in plain HTTP")
		}
	}
	// TLS without a certificate of the member's authority.
	c.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	resp, err := c.Get("https://" + addr + "/members")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("the peer port answered /members over TLS without a client certificate: %s", resp.Status)
	}
}

// A member bootstrapped with a plain HTTP peer URL (before 2026-12-07)
// starts again from its data directory with the TLS peer port.
func TestPeerTLSOverAnOlderMember(t *testing.T) {
	dir := t.TempDir()
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir, cfg.UnsafeNoFsync = "filament", dir, true
	cu, _ := url.Parse("http://127.0.0.1:0")
	pu, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = "filament=" + pu.String()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	old, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-old.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("the older member did not start")
	}
	old.Close()
	s, err := Start(Config{Dir: dir, ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", UnsafeNoFsync: true})
	if err != nil {
		t.Fatalf("a member bootstrapped with an HTTP peer URL does not start with TLS: %v", err)
	}
	s.Close()
}

// An agent's embedded etcd (a single-node cluster, no etcd configured)
// serves its clients mutual TLS with its own authority: until 2026-12-07
// it served plain HTTP without authentication on 127.0.0.1:2379, so any
// local user or host-network pod of the node wrote its policies,
// identities and services past the agent's root-only API socket.
func TestOwnClientTLSRefusesStrangers(t *testing.T) {
	s, err := Start(Config{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0", PeerURL: "http://127.0.0.1:0", UnsafeNoFsync: true, OwnClientTLS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ep := s.Endpoints()[0]
	if !strings.HasPrefix(ep, "https://") {
		t.Fatalf("endpoint %s, want https", ep)
	}
	put := func(tc *tls.Config) error {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second, TLS: tc, Logger: zap.NewNop()})
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, err = c.Put(ctx, "filament/state/policies/v1/x", "forged")
		return err
	}
	plain, _ := clientv3.New(clientv3.Config{Endpoints: []string{strings.Replace(ep, "https://", "http://", 1)}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	if _, err := plain.Put(ctx, "filament/state/policies/v1/x", "forged"); err == nil {
		t.Error("a client without TLS wrote the store")
	}
	cancel()
	plain.Close()
	ca, cert, key := s.ClientTLS()
	noCert, err := (transport.TLSInfo{TrustedCAFile: ca}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if err := put(noCert); err == nil {
		t.Error("a TLS client without a certificate wrote the store")
	}
	own, err := (transport.TLSInfo{TrustedCAFile: ca, CertFile: cert, KeyFile: key}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if err := put(own); err != nil {
		t.Errorf("the member's own client certificate: %v", err)
	}
}

// Every client URL the agent's configuration takes (a loopback address, a
// name, any address, IPv6) serves its own clients over TLS: until
// 2026-12-07 (with own TLS new) a name or any address made the agent fail
// to connect, its certificate naming neither what it listened on nor
// what it was dialled at (found by a review).
func TestOwnClientTLSEveryURL(t *testing.T) {
	for _, u := range []string{"http://127.0.0.1:0", "http://localhost:0", "http://0.0.0.0:0", "http://[::1]:0", "http://[::]:0"} {
		t.Run(u, func(t *testing.T) {
			s, err := Start(Config{Dir: t.TempDir(), ClientURL: u, PeerURL: "http://127.0.0.1:0", UnsafeNoFsync: true, OwnClientTLS: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ca, cert, key := s.ClientTLS()
			tc, err := (transport.TLSInfo{TrustedCAFile: ca, CertFile: cert, KeyFile: key}).ClientConfig()
			if err != nil {
				t.Fatal(err)
			}
			c, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 3 * time.Second, TLS: tc, Logger: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := c.Put(ctx, "x", "y"); err != nil {
				t.Fatalf("endpoints %v: %v", s.Endpoints(), err)
			}
		})
	}
}
