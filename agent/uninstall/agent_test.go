package uninstall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A listening API socket is a running agent: WaitAgentGone gives up with
// ErrAgentRunning while it answers and returns once it has closed (its
// socket file left behind, as a killed agent leaves it).
func TestWaitAgentGone(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	if running, err := AgentRunning(sock); running {
		t.Fatalf("no socket file: reported running (%v)", err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := WaitAgentGone(ctx, sock, 50*time.Millisecond); !errors.Is(err, ErrAgentRunning) {
		t.Fatalf("listening socket: want ErrAgentRunning, got %v", err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		l.Close()
	}()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := WaitAgentGone(ctx2, sock, 50*time.Millisecond); err != nil {
		t.Fatalf("after the listener closed: %v", err)
	}
	if running, err := AgentRunning(sock); running {
		t.Fatalf("closed listener with its socket file left: reported running (%v)", err)
	}
}

// Only a missing socket or a refused connection say no agent runs; any
// other dial error (a full backlog, no permission) keeps the uninstall
// waiting.
func TestAgentGone(t *testing.T) {
	for _, c := range []struct {
		err  error
		gone bool
	}{
		{&net.OpError{Op: "dial", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ENOENT}}, true},
		{&net.OpError{Op: "dial", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}, true},
		{&net.OpError{Op: "dial", Err: &os.SyscallError{Syscall: "connect", Err: syscall.EAGAIN}}, false},
		{&net.OpError{Op: "dial", Err: &os.SyscallError{Syscall: "connect", Err: syscall.EACCES}}, false},
		{fmt.Errorf("i/o timeout"), false},
	} {
		if got := agentGone(c.err); got != c.gone {
			t.Errorf("%v: gone %v, want %v", c.err, got, c.gone)
		}
	}
}
