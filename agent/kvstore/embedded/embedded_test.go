package embedded

import (
	"crypto/tls"
	"net/http"
	"net/url"
	"testing"
	"time"

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
