package lab_test

import (
	"os/exec"
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
// of the new-connection benchmark went to 0.8 s). The upstream connection,
// which has the client's address as its source, is closed with a reset
// for the same reason: it leaves no TIME_WAIT either.
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
	// TIME_WAIT sockets with the client's address, either side.
	timeWait := func(cmd *exec.Cmd, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ss: %v %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	ss := []string{"ss", "-Htn", "state", "time-wait", "( src " + client.IP + " or dst " + client.IP + " )"}
	if tw := timeWait(l.NodeCommand("n1", ss...)); tw != "" {
		t.Errorf("the node's namespace holds TIME_WAIT sockets with the client's address (the proxy closed first, downstream or upstream):\n%s", tw)
	}
	// Control: the client's namespace has them (the filter works).
	if tw := timeWait(l.PodCommand("client", ss...)); tw == "" {
		t.Errorf("no TIME_WAIT socket in the client's namespace after 5 closed connections")
	}
}
