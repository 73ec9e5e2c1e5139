package kubenode

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Containerd is a containerd of the test's own: its root, state and socket
// under one directory, its CRI plugin pointed at the test's CNI
// directories and the pause image; the host's containerd (if any) is not
// touched.
type Containerd struct {
	Dir, Socket string
	cmd         *exec.Cmd
	log         *os.File
}

// ErrMissing: a program the node needs is not installed; the message names it.
var ErrMissing = errors.New("missing on this machine")

// StartContainerd starts containerd with everything under dir (which must
// be on a filesystem overlayfs accepts as upper: not tmpfs-in-overlay) in
// network namespace netns ("" = this one; host-network pods share it: the
// node's namespace) and waits for its socket.
func StartContainerd(dir, cniBin, cniConf, netns string) (*Containerd, error) {
	for _, p := range []string{"containerd", "runc", "containerd-shim-runc-v2", "ctr"} {
		if _, err := exec.LookPath(p); err != nil {
			return nil, fmt.Errorf("%w: %s (apt-get install containerd runc)", ErrMissing, p)
		}
	}
	c := &Containerd{Dir: dir, Socket: filepath.Join(dir, "containerd.sock")}
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Even root may not lower oom_score_adj on the test machines (writing
  # -998 is refused): keep containers at their parent's.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Socket, PauseRef, cniBin, cniConf)
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, err
	}
	c.log = log
	c.cmd = exec.Command("containerd", "--config", cfg)
	if netns != "" {
		c.cmd = exec.Command("nsenter", "--net="+netns, "containerd", "--config", cfg)
	}
	c.cmd.Stdout, c.cmd.Stderr = log, log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := c.cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.Dial("unix", c.Socket)
		if err == nil {
			conn.Close()
			return c, nil
		}
		if time.Now().After(deadline) {
			c.Stop()
			return nil, fmt.Errorf("containerd socket %s not up in 30s: %v (log %s)", c.Socket, err, log.Name())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Ctr runs ctr against this containerd in namespace k8s.io (the CRI's).
func (c *Containerd) Ctr(args ...string) (string, error) {
	out, err := exec.Command("ctr", append([]string{"--address", c.Socket, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Stop kills and deletes every task this containerd runs (their shims
// exit with them), stops containerd and waits, then unmounts whatever is
// still mounted under Dir (rootfs and shm of sandboxes) so that Dir can go.
func (c *Containerd) Stop() {
	if out, err := c.Ctr("tasks", "list", "-q"); err == nil {
		for _, id := range strings.Fields(out) {
			c.Ctr("tasks", "kill", "-s", "SIGKILL", id)
		}
		for _, id := range strings.Fields(out) {
			for i := 0; i < 50; i++ {
				if _, err := c.Ctr("tasks", "delete", id); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	if c.cmd.Process != nil {
		c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill()
			<-done
		}
	}
	c.log.Close()
	unmountUnder(c.Dir)
}

// unmountUnder unmounts every mount below dir, the deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var under []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			under = append(under, f[1])
		}
	}
	for i := len(under) - 1; i >= 0; i-- {
		syscall.Unmount(under[i], syscall.MNT_DETACH)
	}
}
