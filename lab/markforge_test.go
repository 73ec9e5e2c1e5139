package lab_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/filament-net/filament/lab/labtest"
)

// markedGet (TestMain, FILAMENT_MARKED_GET="MARK ADDR PATH") asks ADDR for
// PATH over HTTP/1.0 from a socket marked MARK (hex) and prints the
// answer's status line, or "mark refused: ..." when the mark cannot be
// set.
func markedGet(spec string) {
	f := strings.Fields(spec)
	mark, _ := strconv.ParseUint(f[0], 16, 32)
	var markErr error
	d := net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		c.Control(func(fd uintptr) {
			markErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, int(mark))
		})
		return markErr
	}}
	c, err := d.Dial("tcp4", f[1])
	if markErr != nil {
		fmt.Println("mark refused:", markErr)
		return
	}
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: web\r\n\r\n", f[2])
	line, err := bufio.NewReader(c).ReadString('\n')
	fmt.Println(strings.TrimSpace(line), err)
}

// A process of a node's own network namespace in a cgroup other than the
// agent's (a host-network pod's; Linux 5.17 and later let CAP_NET_RAW
// alone set a socket mark) marks its connection as the proxy's upstream
// for an allowed client's identity: until 2026-12-07 it reached web's
// L7 port unjudged (GET /private answered 200 where the proxy answers
// 403), as that client (found by a review). The datapath's marks are now
// the agent's cgroup's alone (sock_setsockopt): the mark is refused.
func TestHostNetworkProcessCannotForgeProxyMark(t *testing.T) {
	l, base := l7Lab(t)
	var client uint32
	for _, ep := range labtest.Endpoints(t, l, "n1") {
		if strings.Contains(ep.Labels.String(), "app=client") {
			client = uint32(ep.Identity)
		}
	}
	if client == 0 {
		t.Fatal("no client endpoint")
	}
	root := ""
	data, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == "cgroup2" {
			root = f[1]
		}
	}
	if root == "" {
		t.Skip("skipped: no cgroup v2 hierarchy mounted")
	}
	dir, err := os.MkdirTemp(root, "flab-hostpod-")
	if err != nil {
		t.Skipf("skipped: a cgroup under %s: %v", root, err)
	}
	defer os.Remove(dir)
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	n1, _ := l.Node("n1")
	cmd := exec.Command("ip", "netns", "exec", n1.NetNS, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("FILAMENT_MARKED_GET=%x %s:80 /private", 0xFA000000|client&0xFFFFFF, strings.TrimPrefix(base, "http://")))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	out, err := cmd.CombinedOutput()
	got := strings.TrimSpace(string(out))
	if strings.Contains(got, " 200 ") {
		t.Fatalf("a host-network process took the client's identity past the proxy: %q", got)
	}
	if err != nil || !strings.HasPrefix(got, "mark refused") {
		t.Errorf("the marked GET: %v: %q, want the mark refused", err, got)
	}
}
