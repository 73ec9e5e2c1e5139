// Package clustermesh owns what joins clusters into one mesh at the file
// level: a cluster's bundle (its CA and the certificates of its apiserver,
// admin, agents and remote readers; `filament clustermesh enable`) and the
// remote-cluster configuration files that `connect` exchanges between
// bundles. The apiserver (clustermesh/apiserver) serves a cluster's etcd;
// agents follow remote clusters with clustermesh/remote.
package clustermesh

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/yaml"

	"github.com/filament-net/filament/agent/identity"
	"github.com/filament-net/filament/agent/kvstore"
	"github.com/filament-net/filament/crypto/ca"
	"github.com/filament-net/filament/crypto/gossipkey"
	"github.com/filament-net/filament/internal/atomicfile"
)

// Key prefixes a remote cluster may read.
const (
	StatePrefix         = "filament/state/"
	ClusterConfigPrefix = "filament/cluster-config/"
	SyncedPrefix        = "filament/synced/"
)

// Canaries are the prefixes whose initial sync a remote waits for.
var Canaries = []string{"nodes", "identities", "ip", "services"}

// ClusterConfig is the cluster-config key's value.
type ClusterConfig struct {
	Name         string   `json:"name"`
	ID           uint32   `json:"id"`
	Capabilities []string `json:"capabilities"`
}

// etcd user names (certificate common names).
const (
	UserRoot   = "root"
	UserAgent  = "agent"
	UserRemote = "remote"
	// HubbleRelay is the client certificate the cluster's Hubble relay
	// presents to the nodes (not an etcd user); HubbleRemote the one a
	// connected cluster's relay presented before 2026-12-06 (the same
	// for every connected cluster, served while the nodes list the name;
	// connect now gives each its own: Peer.RelayUser).
	HubbleRelay  = "hubble-relay"
	HubbleRemote = "hubble-remote"
)

// HubbleRemotesDir is where a bundle keeps the relay credentials of the
// clusters it is connected to (for its relay only).
func HubbleRemotesDir(bundle string) string { return filepath.Join(bundle, "hubble-remotes") }

// HubbleRemoteConfig is what a relay needs to read a connected cluster's
// nodes: that cluster's CA and a client certificate it issued for relays.
type HubbleRemoteConfig struct {
	Name string `json:"name"`
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// LoadHubbleRemote reads hubble-remotes/<cluster>.yaml of a bundle.
func LoadHubbleRemote(bundle, cluster string) (HubbleRemoteConfig, error) {
	var r HubbleRemoteConfig
	if !nameRe.MatchString(cluster) {
		return r, fmt.Errorf("%w: cluster name %q", ErrInvalid, cluster)
	}
	path := filepath.Join(HubbleRemotesDir(bundle), cluster+".yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		return r, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := yaml.UnmarshalStrict(b, &r); err != nil {
		return r, fmt.Errorf("%w: %s: %v", ErrInvalid, path, err)
	}
	if r.Name != cluster || r.CA == "" || r.Cert == "" || r.Key == "" {
		return r, fmt.Errorf("%w: %s: name %q, ca, cert and key are required", ErrInvalid, path, cluster)
	}
	return r, nil
}

// ErrInvalid: bad names, IDs or files.
var ErrInvalid = errors.New("invalid cluster mesh configuration")

var nameRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$`)

// ValidateCluster checks a cluster's name and ID.
func ValidateCluster(name string, id uint32) error {
	if err := validateClusterName(name); err != nil {
		return err
	}
	if err := identity.ValidateClusterID(id); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

// validateClusterName checks a cluster's name.
func validateClusterName(name string) error {
	if !nameRe.MatchString(name) {
		return fmt.Errorf("%w: cluster name %q: 1-32 lowercase letters, digits and '-'", ErrInvalid, name)
	}
	return nil
}

// Cluster describes a cluster in its bundle (cluster.yaml).
type Cluster struct {
	Name      string   `json:"name"`
	ID        uint32   `json:"id"`
	Endpoints []string `json:"endpoints"`
}

// RemoteConfig is what an agent needs to read a remote cluster: one file
// per remote in the agent's clustermesh config directory, named <name>.yaml.
type RemoteConfig struct {
	Name      string   `json:"name"`
	Endpoints []string `json:"endpoints"`
	CA        string   `json:"ca"`   // PEM of the remote cluster's CA
	Cert      string   `json:"cert"` // PEM of our read-only client certificate
	Key       string   `json:"key"`
}

// KVStore is the client config that reads the remote's apiserver (mutual
// TLS with the config's certificate).
func (c RemoteConfig) KVStore() kvstore.Config {
	return kvstore.Config{Endpoints: c.Endpoints, DialTimeout: 3 * time.Second, CAData: c.CA, CertData: c.Cert, KeyData: c.Key}
}

// RemotesDir is where a bundle keeps the configs of the clusters it is connected to.
func RemotesDir(bundle string) string { return filepath.Join(bundle, "remotes") }

// GossipKeyFile is the cluster's gossip key file in bundle (every agent of
// the cluster uses it: --gossip-key-file).
func GossipKeyFile(bundle string) string { return filepath.Join(bundle, gossipkey.FileName) }

// NodeCRLFile is the CA's revocation list of node certificates in bundle
// (filament clustermesh revoke-node-cert writes it; agents read it:
// --node-crl).
func NodeCRLFile(bundle string) string { return filepath.Join(bundle, "node-crl.pem") }

// Enable creates a cluster's bundle in dir: the CA, certificates for the
// apiserver (valid for ips), the admin (root), the cluster's agents and
// remote readers, cluster.yaml and remote.yaml (the config other clusters
// use to read this one). An existing bundle is kept and its description
// returned.
func Enable(dir, name string, id uint32, ips []net.IP) (Cluster, error) {
	return EnableOnPort(dir, name, id, ips, DefaultAPIServerPort)
}

// DefaultAPIServerPort is the port the apiserver's etcd is reached at by
// default (the chart's clustermeshApiserver.service.port).
const DefaultAPIServerPort = 2379

// EnableOnPort is Enable for an apiserver reached at port of ips (the
// chart's apiserver listens on its Service's port).
func EnableOnPort(dir, name string, id uint32, ips []net.IP, port int) (Cluster, error) {
	if port < 1 || port > 65535 {
		return Cluster{}, fmt.Errorf("%w: apiserver port %d: want 1-65535", ErrInvalid, port)
	}
	if err := ValidateCluster(name, id); err != nil {
		return Cluster{}, err
	}
	if c, err := LoadCluster(dir); err == nil {
		if c.Name != name || c.ID != id {
			return Cluster{}, fmt.Errorf("%w: %s already holds cluster %s (ID %d)", ErrInvalid, dir, c.Name, c.ID)
		}
		// Bundles made before gossip was keyed or the relay had its
		// certificate get them now.
		if err := gossipkey.Ensure(GossipKeyFile(dir)); err != nil {
			return c, err
		}
		return c, ensureRelayCert(dir)
	}
	authority, err := ca.New(name)
	if err != nil {
		return Cluster{}, err
	}
	if err := authority.Save(dir); err != nil {
		return Cluster{}, err
	}
	c := Cluster{Name: name, ID: id}
	srvIPs := append([]net.IP{net.IPv4(127, 0, 0, 1)}, ips...)
	for _, ip := range ips {
		c.Endpoints = append(c.Endpoints, "https://"+net.JoinHostPort(ip.String(), strconv.Itoa(port)))
	}
	if len(c.Endpoints) == 0 {
		c.Endpoints = []string{"https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	}
	for _, x := range []struct {
		file, cn string
		server   bool
	}{{"server", "filament-clustermesh-apiserver", true}, {UserRoot, UserRoot, false}, {UserAgent, UserAgent, false}, {UserRemote, UserRemote, false}} {
		pair, err := authority.Issue(x.cn, x.server, srvIPs, []string{"localhost"})
		if err != nil {
			return Cluster{}, err
		}
		if err := ca.WritePair(dir, x.file, pair); err != nil {
			return Cluster{}, err
		}
	}
	remote, _ := os.ReadFile(filepath.Join(dir, UserRemote+".pem"))
	remoteKey, _ := os.ReadFile(filepath.Join(dir, UserRemote+"-key.pem"))
	if err := writeYAML(filepath.Join(dir, "remote.yaml"), RemoteConfig{Name: name, Endpoints: c.Endpoints, CA: string(authority.PEM),
		Cert: string(remote), Key: string(remoteKey)}, 0o600); err != nil {
		return Cluster{}, err
	}
	if err := os.MkdirAll(RemotesDir(dir), 0o700); err != nil {
		return Cluster{}, err
	}
	if err := gossipkey.Ensure(GossipKeyFile(dir)); err != nil {
		return Cluster{}, err
	}
	if err := writeYAML(filepath.Join(dir, "cluster.yaml"), c, 0o644); err != nil {
		return Cluster{}, err
	}
	return c, ensureRelayCert(dir)
}

// ensureRelayCert issues the Hubble relay's client certificate
// (hubble-relay.pem) unless the bundle has it. (Connected clusters'
// relays get one each at connect: Peer.RelayUser. Bundles made before
// 2026-12-06 also hold hubble-remote.yaml, the one certificate connect
// gave every connected cluster then; nothing reads it now.)
func ensureRelayCert(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, HubbleRelay+".pem")); err == nil {
		return nil
	}
	authority, err := ca.Load(dir)
	if err != nil {
		return err
	}
	pair, err := authority.Issue(HubbleRelay, false, nil, nil)
	if err != nil {
		return err
	}
	return ca.WritePair(dir, HubbleRelay, pair)
}

func writeYAML(path string, v any, mode os.FileMode) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, mode)
}

// LoadCluster reads a bundle's cluster.yaml.
func LoadCluster(dir string) (Cluster, error) {
	var c Cluster
	b, err := os.ReadFile(filepath.Join(dir, "cluster.yaml"))
	if err != nil {
		return c, fmt.Errorf("%w: %s is not a cluster mesh bundle (run filament clustermesh enable): %v", ErrInvalid, dir, err)
	}
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return c, fmt.Errorf("%w: %s/cluster.yaml: %v", ErrInvalid, dir, err)
	}
	// A peer's bundle is its operator's: its name becomes a file name and a
	// line of this bundle's PeersFile (until 2026-12-07 it was taken
	// unchecked, TestPeerBundleNameChecked).
	// (The ID within any layout: connect, the relay and node
	// certificates run without the mesh's.)
	if err := validateClusterName(c.Name); err != nil {
		return c, fmt.Errorf("%s/cluster.yaml: %w", dir, err)
	}
	if err := identity.ValidateAnyClusterID(c.ID); err != nil {
		return c, fmt.Errorf("%w: %s/cluster.yaml: %v", ErrInvalid, dir, err)
	}
	for _, e := range c.Endpoints {
		if err := validEndpoint(e); err != nil {
			return c, fmt.Errorf("%w: %s/cluster.yaml: endpoint %q: %v", ErrInvalid, dir, e, err)
		}
	}
	return c, nil
}

// validEndpoint checks a bundle's endpoint: an https URL of a host and
// port, and nothing else.
func validEndpoint(e string) error {
	u, err := url.Parse(e)
	switch {
	case err != nil:
		return err
	case u.Scheme != "https":
		return errors.New("not an https URL")
	case u.Hostname() == "" || u.Port() == "":
		return errors.New("no host and port")
	case u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return errors.New("more than a host and port")
	}
	return nil
}

// authoritiesMatch checks, both ways, that what each bundle holds for the
// other's name is of the other's authority (sameAuthority).
func authoritiesMatch(local string, a Cluster, peer string, b Cluster) error {
	for _, x := range []struct {
		bundle, of string
		c          Cluster
	}{{local, peer, b}, {peer, local, a}} {
		auth, err := ca.Load(x.of)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalid, x.of, err)
		}
		if err := sameAuthority(x.bundle, x.c, auth.PEM); err != nil {
			return err
		}
	}
	return nil
}

// sameAuthority refuses when bundle already holds a remote config named
// for cluster c of an authority other than caPEM: a second bundle naming
// itself as a connected cluster would take its place (its endpoints, CA
// and etcd user), or disconnect it (until 2026-12-07,
// TestPeerBundleCannotTakeAConnectedName).
func sameAuthority(bundle string, c Cluster, caPEM []byte) error {
	path := filepath.Join(RemotesDir(bundle), c.Name+".yaml")
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	r, err := LoadRemote(path)
	if err != nil {
		return err
	}
	if r.CA != string(caPEM) {
		return fmt.Errorf("%w: %s already connects a cluster named %s of another CA: is this bundle %s's? (disconnect the other first)", ErrInvalid, bundle, c.Name, c.Name)
	}
	return nil
}

// LoadRemote reads one remote config file.
func LoadRemote(path string) (RemoteConfig, error) {
	var r RemoteConfig
	b, err := os.ReadFile(path)
	if err != nil {
		return r, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := yaml.UnmarshalStrict(b, &r); err != nil {
		return r, fmt.Errorf("%w: %s: %v", ErrInvalid, path, err)
	}
	want := strings.TrimSuffix(filepath.Base(path), ".yaml")
	if r.Name != want {
		return r, fmt.Errorf("%w: %s: name %q does not match the file name", ErrInvalid, path, r.Name)
	}
	if len(r.Endpoints) == 0 || r.CA == "" || r.Cert == "" || r.Key == "" {
		return r, fmt.Errorf("%w: %s: endpoints, ca, cert and key are required", ErrInvalid, path)
	}
	return r, nil
}

// PeersFile lists the clusters connected to read this one, a line each:
// the cluster's name and the token of its user, which Connect sets and
// Disconnect removes. The apiserver keeps an etcd user of its own for
// each (RemoteUser), and deletes a gone peer's, ending its open watches.
// The token is new at each connect, so that a certificate issued before
// (to a cluster disconnected since, or to an earlier cluster of the same
// name) names a user that no longer exists. One file, so that it fits in
// a Kubernetes Secret beside the bundle's others.
func PeersFile(bundle string) string { return filepath.Join(bundle, "remote-peers") }

// Peer is a connected cluster of PeersFile.
type Peer struct{ Name, Token string }

// RemoteUser is the etcd user, and the common name of its certificate,
// that connected cluster p reads this one with.
func (p Peer) RemoteUser() string { return UserRemote + "-" + p.Name + "-" + p.Token }

// RelayUser is the common name of the client certificate connected
// cluster p's Hubble relay reads this cluster's nodes with
// (hubble-remote-<name>-<token>, issued at connect into p's
// hubble-remotes/, which p's agents never read): a node serves it while
// p is listed in the PeersFile it is given (--hubble-peers), so that a
// disconnected cluster's relay no longer reads this cluster's flows.
func (p Peer) RelayUser() string { return HubbleRemote + "-" + p.Name + "-" + p.Token }

// PeerOfRelayUser is the peer whose RelayUser cn would be (ok false: cn
// is no such name).
func PeerOfRelayUser(cn string) (Peer, bool) { return peerNamed(HubbleRemote, cn) }

// peerToken is a Peer's token: 16 lowercase hexadecimal digits.
var peerToken = regexp.MustCompile(`^[0-9a-f]{16}$`)

// IsPeerUser says whether etcd user u is one a Peer's RemoteUser could be
// (the apiserver deletes those of no peer, and no other user).
func IsPeerUser(u string) bool {
	_, ok := peerNamed(UserRemote, u)
	return ok
}

// peerNamed is the peer whose name cn is: kind-<cluster>-<token> (ok
// false: cn is no such name).
func peerNamed(kind, cn string) (Peer, bool) {
	rest, ok := strings.CutPrefix(cn, kind+"-")
	i := strings.LastIndexByte(rest, '-')
	if !ok || i <= 0 || ValidateCluster(rest[:i], 1) != nil || !peerToken.MatchString(rest[i+1:]) {
		return Peer{}, false
	}
	return Peer{rest[:i], rest[i+1:]}, true
}

// ScanPeers reads a PeersFile (none when it is missing); a line that is
// not a cluster name and a token is an error naming the file and line.
func ScanPeers(file string) ([]Peer, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Peer
	for i, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 || !peerToken.MatchString(f[1]) {
			return nil, fmt.Errorf("%w: %s line %d: want a cluster name and a token of 16 hexadecimal digits, got %q", ErrInvalid, file, i+1, line)
		}
		if err := ValidateCluster(f[0], 1); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", file, i+1, err)
		}
		if slices.ContainsFunc(out, func(p Peer) bool { return p.Name == f[0] }) {
			return nil, fmt.Errorf("%w: %s line %d: cluster %s listed twice", ErrInvalid, file, i+1, f[0])
		}
		out = append(out, Peer{f[0], f[1]})
	}
	return out, nil
}

// setPeer sets cluster name's token in the bundle's PeersFile ("": it
// goes).
func setPeer(bundle, name, token string) error {
	peers, err := ScanPeers(PeersFile(bundle))
	if err != nil {
		return err
	}
	peers = slices.DeleteFunc(peers, func(p Peer) bool { return p.Name == name })
	if token != "" {
		peers = append(peers, Peer{name, token})
	}
	slices.SortFunc(peers, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	var b strings.Builder
	for _, p := range peers {
		fmt.Fprintf(&b, "%s %s\n", p.Name, p.Token)
	}
	// Written even when empty: a file of no peers.
	return atomicfile.Write(PeersFile(bundle), []byte(b.String()), 0o600)
}

// lockBundles holds an exclusive lock (flock) on each bundle directory of
// dirs until unlock is called: Connect and Disconnect read and rewrite a
// bundle's PeersFile, and two of them at once on one bundle (two
// operators, two commands) lost one's change. The directories are locked
// in the order of their device and inode (two commands locking the same
// pair never wait on each other crosswise), a directory named twice
// (another path to it) once.
func lockBundles(dirs ...string) (unlock func(), err error) {
	type held struct {
		f  *os.File
		id [2]uint64
	}
	var hs []held
	unlock = func() {
		for _, h := range hs {
			h.f.Close() // closing the only descriptor releases its lock
		}
	}
	for _, d := range dirs {
		f, err := os.Open(d)
		if err != nil {
			unlock()
			return nil, fmt.Errorf("%w: bundle %s: %v", ErrInvalid, d, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			f.Close()
			unlock()
			return nil, fmt.Errorf("bundle %s: %w", d, err)
		}
		id := [2]uint64{uint64(st.Dev), st.Ino}
		if slices.ContainsFunc(hs, func(h held) bool { return h.id == id }) {
			f.Close()
			continue
		}
		hs = append(hs, held{f, id})
	}
	slices.SortFunc(hs, func(a, b held) int {
		if c := cmp.Compare(a.id[0], b.id[0]); c != 0 {
			return c
		}
		return cmp.Compare(a.id[1], b.id[1])
	})
	for i, h := range hs {
		for {
			err = unix.Flock(int(h.f.Fd()), unix.LOCK_EX)
			if err != unix.EINTR {
				break
			}
		}
		if err != nil {
			unlock()
			return nil, fmt.Errorf("bundle %s: lock (the bundle must be on a local file system): %w", hs[i].f.Name(), err)
		}
	}
	return unlock, nil
}

// Connect exchanges configs between two bundles both ways: each cluster's
// agents can then read the other, with a certificate of the other's CA
// issued to it alone (RemoteUser; listed in the other's PeersFile). It
// holds both bundles' locks (lockBundles) throughout.
func Connect(local, peer string) (Cluster, Cluster, error) {
	unlock, err := lockBundles(local, peer)
	if err != nil {
		return Cluster{}, Cluster{}, err
	}
	defer unlock()
	a, err := LoadCluster(local)
	if err != nil {
		return a, Cluster{}, err
	}
	b, err := LoadCluster(peer)
	if err != nil {
		return a, b, err
	}
	if a.Name == b.Name || a.ID == b.ID {
		return a, b, fmt.Errorf("%w: clusters %s (ID %d) and %s (ID %d) clash: names and IDs must differ", ErrInvalid, a.Name, a.ID, b.Name, b.ID)
	}
	if err := authoritiesMatch(local, a, peer, b); err != nil {
		return a, b, err
	}
	for _, dir := range []string{local, peer} { // bundles made before the relay
		if err := ensureRelayCert(dir); err != nil {
			return a, b, err
		}
	}
	// Both CAs first: a pair is connected both ways or not at all.
	for _, dir := range []string{local, peer} {
		if _, err := ca.Load(dir); err != nil {
			return a, b, fmt.Errorf("%w: %s: its CA (and key) are needed to issue the other cluster's certificate: %v", ErrInvalid, dir, err)
		}
		if _, err := ScanPeers(PeersFile(dir)); err != nil {
			return a, b, err
		}
	}
	for _, x := range []struct {
		from, to, name string
		reader         Cluster
	}{{peer, local, b.Name, a}, {local, peer, a.Name, b}} {
		// The agents' read-only etcd credentials and the relay's, the
		// reader's own.
		if err := issueRemote(x.from, x.reader.Name, x.to); err != nil {
			return a, b, err
		}
	}
	return a, b, nil
}

// issueRemote writes into bundle to the configs reader's cluster reads
// bundle's cluster with: its agents' (remotes/<cluster>.yaml: its
// endpoints, its CA and a client certificate of that CA issued to reader
// alone, Peer.RemoteUser) and its Hubble relay's
// (hubble-remotes/<cluster>.yaml: Peer.RelayUser, the same token); then
// lists reader in bundle's PeersFile.
func issueRemote(bundle, reader, to string) error {
	c, err := LoadCluster(bundle)
	if err != nil {
		return err
	}
	authority, err := ca.Load(bundle)
	if err != nil {
		return err
	}
	var tok [8]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return err
	}
	p := Peer{reader, hex.EncodeToString(tok[:])}
	pair, err := authority.Issue(p.RemoteUser(), false, nil, nil)
	if err != nil {
		return err
	}
	relay, err := authority.Issue(p.RelayUser(), false, nil, nil)
	if err != nil {
		return err
	}
	for _, d := range []string{RemotesDir(to), HubbleRemotesDir(to)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	// The configs first, then the listing: a user is never made for a
	// certificate nobody was given.
	if err := writeYAML(filepath.Join(RemotesDir(to), c.Name+".yaml"),
		RemoteConfig{Name: c.Name, Endpoints: c.Endpoints, CA: string(authority.PEM), Cert: string(pair.Cert), Key: string(pair.Key)}, 0o600); err != nil {
		return err
	}
	if err := writeYAML(filepath.Join(HubbleRemotesDir(to), c.Name+".yaml"),
		HubbleRemoteConfig{Name: c.Name, CA: string(authority.PEM), Cert: string(relay.Cert), Key: string(relay.Key)}, 0o600); err != nil {
		return err
	}
	return setPeer(bundle, reader, p.Token)
}

// Disconnect removes the configs between two bundles both ways, and each
// from the other's PeersFile (its apiserver then deletes the other's etcd
// user). It holds both bundles' locks (lockBundles) throughout.
func Disconnect(local, peer string) error {
	unlock, err := lockBundles(local, peer)
	if err != nil {
		return err
	}
	defer unlock()
	a, err := LoadCluster(local)
	if err != nil {
		return err
	}
	b, err := LoadCluster(peer)
	if err != nil {
		return err
	}
	if err := authoritiesMatch(local, a, peer, b); err != nil {
		return err
	}
	connected := false
	for _, x := range []struct{ dir, other string }{{local, b.Name}, {peer, a.Name}} { // both or neither
		peers, err := ScanPeers(PeersFile(x.dir))
		if err != nil {
			return err
		}
		_, err = os.Lstat(filepath.Join(RemotesDir(x.dir), x.other+".yaml"))
		connected = connected || err == nil || slices.ContainsFunc(peers, func(p Peer) bool { return p.Name == x.other })
	}
	// Nothing to remove says so: a bundle renamed since it was connected
	// disconnected nothing, quietly (until 2026-12-07).
	if !connected {
		return fmt.Errorf("%w: %s and %s are not connected (is %s the bundle that was connected?)", ErrInvalid, a.Name, b.Name, peer)
	}
	for _, x := range []struct{ bundle, name string }{{local, b.Name}, {peer, a.Name}} {
		if err := setPeer(x.bundle, x.name, ""); err != nil {
			return err
		}
		os.Remove(filepath.Join(RemotesDir(x.bundle), x.name+".yaml"))
		os.Remove(filepath.Join(HubbleRemotesDir(x.bundle), x.name+".yaml"))
	}
	return nil
}

// RemoteFile is one remote config file of a directory and the hash of its
// content (a change of the file is a new config).
type RemoteFile struct {
	Name, Path string
	Sum        [32]byte
}

// ScanRemotes lists the remote config files of dir (<name>.yaml; unreadable
// ones are left out).
func ScanRemotes(dir string) []RemoteFile {
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	var out []RemoteFile
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		out = append(out, RemoteFile{Name: strings.TrimSuffix(filepath.Base(f), ".yaml"), Path: f, Sum: sha256.Sum256(data)})
	}
	return out
}
