package wireguard

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// ErrDeviceProcess: the userspace device's own process did not start.
var ErrDeviceProcess = errors.New("wireguard device process")

// deviceProcess is the userspace device running in a process of its own
// (Config.DeviceCommand).
type deviceProcess struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	done     chan struct{} // closed when the process has ended
	stopping chan struct{} // closed by stop: an end after it is expected
}

// startDeviceProcess starts argv with name and mtu appended and waits
// until it says the device is up (RunDevice's "ready").
func startDeviceProcess(argv []string, name string, mtu int) (*deviceProcess, error) {
	cmd := exec.Command(argv[0], append(argv[1:], name, strconv.Itoa(mtu))...)
	// No Pdeathsig: it is tied to the starting thread, not to this
	// process, and Go may end that thread while the agent lives. The
	// child ends when its stdin reaches EOF instead, which happens when
	// this process closes it (stop) or dies (the kernel closes the pipe).
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// Locked, the child starts in this thread's network namespace (the
	// device's), which may not be the process's.
	runtime.LockOSThread()
	err = cmd.Start()
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrDeviceProcess, argv[0], err)
	}
	p := &deviceProcess{cmd: cmd, stdin: stdin, done: make(chan struct{}), stopping: make(chan struct{})}
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(l)
		io.Copy(io.Discard, stdout)
	}()
	go func() { cmd.Wait(); close(p.done) }()
	select {
	case l := <-line:
		if l == "ready" {
			return p, nil
		}
		p.stop()
		return nil, fmt.Errorf("%w: %s for %s said %q, not ready", ErrDeviceProcess, argv[0], name, l)
	case <-time.After(30 * time.Second):
		p.stop()
		return nil, fmt.Errorf("%w: %s for %s not ready within 30 s", ErrDeviceProcess, argv[0], name)
	}
}

// died is closed when the process ends without stop having been called.
func (p *deviceProcess) died() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		select {
		case <-p.done:
			select {
			case <-p.stopping:
			default:
				close(ch)
			}
		case <-p.stopping:
		}
	}()
	return ch
}

// stop ends the process (its stdin closes; killed after 5 s) and waits.
func (p *deviceProcess) stop() {
	select {
	case <-p.stopping:
	default:
		close(p.stopping)
	}
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// RunDevice is what a Config.DeviceCommand runs: the userspace device name
// (MTU mtu, the command's two last arguments) with its UAPI socket, in
// this process, until in closes. It writes "ready" and a newline to out
// once the device is up and can be configured.
func RunDevice(name, mtu string, in io.Reader, out io.Writer) error {
	m, err := strconv.Atoi(mtu)
	if err != nil || m < 576 || m > 65535 {
		return fmt.Errorf("%w: MTU %q", ErrDeviceProcess, mtu)
	}
	dev, uapi, err := startUserspace(name, m)
	if err != nil {
		return err
	}
	defer dev.Close()
	defer uapi.Close()
	fmt.Fprintln(out, "ready")
	io.Copy(io.Discard, in)
	return nil
}
