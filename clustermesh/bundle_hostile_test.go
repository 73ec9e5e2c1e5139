package clustermesh

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/identity"
)

// A peer bundle is another cluster's (its operator's) and is not trusted:
// until 2026-12-07 its cluster.yaml's name was taken unchecked as a file
// name and a line of the local PeersFile, so a name of "../../x" made
// connect replace, and disconnect delete, x.yaml outside both bundles as
// the operator (root), and broke the local PeersFile for every later
// command (found by a review).
func TestPeerBundleNameChecked(t *testing.T) {
	root, local, peer := eastWest(t)
	victim := filepath.Join(root, "victim.yaml")
	os.WriteFile(victim, []byte("kind: Pod\n"), 0o600)
	for _, name := range []string{"../../victim", "west\nnorth deadbeef", "WEST", strings.Repeat("w", 33)} {
		os.WriteFile(filepath.Join(peer, "cluster.yaml"), []byte("name: "+quoteYAML(name)+"\nid: 2\nendpoints: [\"https://10.0.0.2:2379\"]\n"), 0o644)
		if _, _, err := Connect(local, peer); err == nil || !strings.Contains(err.Error(), "cluster name") {
			t.Errorf("connect to a peer named %q: %v, want refused naming the cluster name", name, err)
		}
		if err := Disconnect(local, peer); err == nil {
			t.Errorf("disconnect from a peer named %q went on", name)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "kind: Pod\n" {
		t.Errorf("a file outside both bundles was replaced: %q", b)
	}
	if peers, err := ScanPeers(PeersFile(local)); err != nil || len(peers) != 0 {
		t.Errorf("the local PeersFile after refused connects: %v, %v", peers, err)
	}
	// Endpoints are https URLs.
	os.WriteFile(filepath.Join(peer, "cluster.yaml"), []byte("name: west\nid: 2\nendpoints: [\"http://10.0.0.2:2379\"]\n"), 0o644)
	if _, _, err := Connect(local, peer); err == nil || !strings.Contains(err.Error(), "endpoint") {
		t.Errorf("connect to a peer with a plain HTTP endpoint: %v, want refused naming the endpoint", err)
	}
}

// A second bundle that names itself as a connected cluster does not take
// that cluster's place (its endpoints, CA and etcd user), and a bundle
// renamed since it was connected is not disconnected in another's name.
func TestPeerBundleCannotTakeAConnectedName(t *testing.T) {
	root := t.TempDir()
	local, north, evil := filepath.Join(root, "east"), filepath.Join(root, "north"), filepath.Join(root, "evil")
	enable(t, local, "east", 1)
	enable(t, north, "north", 2)
	enable(t, evil, "evil", 3)
	if _, _, err := Connect(local, north); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(RemotesDir(local), "north.yaml"))
	os.WriteFile(filepath.Join(evil, "cluster.yaml"), []byte("name: north\nid: 9\nendpoints: [\"https://203.0.113.9:2379\"]\n"), 0o644)
	if _, _, err := Connect(local, evil); err == nil || !strings.Contains(err.Error(), "north") {
		t.Errorf("a second bundle named north connected: %v, want refused naming north", err)
	}
	if err := Disconnect(local, evil); err == nil {
		t.Error("a bundle named north but of another CA disconnected north")
	}
	if after, _ := os.ReadFile(filepath.Join(RemotesDir(local), "north.yaml")); string(after) != string(before) {
		t.Error("north's remote config changed")
	}
	if peers, _ := ScanPeers(PeersFile(local)); len(peers) != 1 || peers[0].Name != "north" {
		t.Errorf("the local peers: %v, want north's alone", peers)
	}
	// The real north disconnects.
	if err := Disconnect(local, north); err != nil {
		t.Fatal(err)
	}
	// A bundle renamed since (or never connected) says so rather than
	// disconnect nothing quietly.
	if err := Disconnect(local, north); err == nil || !strings.Contains(err.Error(), "not connected") {
		t.Errorf("disconnecting clusters not connected: %v, want an error saying so", err)
	}
}

// Writing into a peer bundle (its relay certificate, made for bundles
// from before the relay) does not follow its links.
func TestPeerBundleLinksNotFollowed(t *testing.T) {
	root, local, peer := eastWest(t)
	victim := filepath.Join(root, "shadow")
	os.WriteFile(victim, []byte("root:x:0:0\n"), 0o640)
	os.Remove(filepath.Join(peer, HubbleRelay+".pem"))
	os.Remove(filepath.Join(peer, HubbleRelay+"-key.pem"))
	os.Symlink(filepath.Join(root, "new-file.pem"), filepath.Join(peer, HubbleRelay+".pem"))
	os.Symlink(victim, filepath.Join(peer, HubbleRelay+"-key.pem"))
	Connect(local, peer)
	if b, _ := os.ReadFile(victim); string(b) != "root:x:0:0\n" {
		t.Errorf("connect wrote through the peer bundle's link over %s: %q", victim, b)
	}
	if _, err := os.Stat(filepath.Join(root, "new-file.pem")); err == nil {
		t.Error("connect created a file through the peer bundle's dangling link")
	}
}

// eastWest enables the bundles east (ID 1) and west (ID 2) in a new
// directory root.
func eastWest(t *testing.T) (root, east, west string) {
	root = t.TempDir()
	east, west = filepath.Join(root, "east"), filepath.Join(root, "west")
	enable(t, east, "east", 1)
	enable(t, west, "west", 2)
	return root, east, west
}

func enable(t *testing.T, dir, name string, id uint32) {
	t.Helper()
	if _, err := Enable(dir, name, id, []net.IP{net.ParseIP("10.0.0.1")}); err != nil {
		t.Fatal(err)
	}
}

// quoteYAML is s as a YAML double-quoted scalar.
func quoteYAML(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s) + `"`
}

// Bundles of the 511-cluster layout connect from a process that runs
// without the mesh's layout (connect, the relay): the check that a peer's
// bundle names a valid cluster takes an ID of any layout.
func TestConnect511Layout(t *testing.T) {
	d := t.TempDir()
	a, b := filepath.Join(d, "a"), filepath.Join(d, "b")
	if err := identity.SetMaxClusters(511); err != nil {
		t.Fatal(err)
	}
	defer identity.SetMaxClusters(255)
	if _, err := Enable(a, "east", 300, []net.IP{net.ParseIP("10.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := Enable(b, "west", 301, []net.IP{net.ParseIP("fd00::1")}); err != nil {
		t.Fatal(err)
	}
	identity.SetMaxClusters(255) // what connect and filament-relay run with
	if _, _, err := Connect(a, b); err != nil {
		t.Errorf("connect: %v", err)
	}
}
