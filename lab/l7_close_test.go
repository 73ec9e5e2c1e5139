package lab_test

import (
	"strings"
	"testing"
)

// After a response that ends its connection (Connection: close), the
// proxy lets the client close first, as curl and wrk do once they have
// the response: the connection's TIME_WAIT is then the client's, in its
// own namespace. Were it the proxy's, in the node's namespace with the
// client's own tuple, a new connection from the same client port (free
// again at once on the client's side) would meet the old socket instead of
// the proxy's listener, and its SYN would be lost once (a 1 s stall; p99
// of the new-connection benchmark went to 0.8 s).
func TestL7ClientClosesFirst(t *testing.T) {
	l, base := l7Lab(t)
	client, err := l.Pod("client")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if got := curlCodes(t, l, "client", "-H", "Connection: close", base+"/public/close"); got != "200" {
			t.Fatalf("request %d: %q, want 200", i, got)
		}
	}
	timeWait := func(run func(string, ...string) (string, error), where string) string {
		out, err := run(where, "ss", "-Htn", "state", "time-wait", "dst", client.IP)
		if err != nil {
			t.Fatalf("ss in %s: %v %s", where, err, out)
		}
		return strings.TrimSpace(out)
	}
	node := func(name string, argv ...string) (string, error) {
		cmd, err := l.NodeCommand(name, argv...)
		if err != nil {
			return "", err
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if tw := timeWait(node, "n1"); tw != "" {
		t.Errorf("the node's namespace holds TIME_WAIT sockets with the client's tuple (the proxy closed first):\n%s", tw)
	}
	pod := func(name string, argv ...string) (string, error) {
		cmd, err := l.PodCommand(name, argv...)
		if err != nil {
			return "", err
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// Control: the client's namespace has them (ss's filter works).
	if tw := timeWait(func(_ string, argv ...string) (string, error) {
		return pod("client", append(argv[:len(argv)-2:len(argv)-2], "src", client.IP)...)
	}, "client"); tw == "" {
		t.Errorf("no TIME_WAIT socket in the client's namespace after 5 closed connections")
	}
}
