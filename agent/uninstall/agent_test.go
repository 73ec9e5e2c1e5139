package uninstall

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// A listening API socket is a running agent: WaitAgentGone gives up with
// ErrAgentRunning while it answers and returns once it has closed (its
// socket file left behind, as a killed agent leaves it).
func TestWaitAgentGone(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	if AgentRunning(sock) {
		t.Fatal("no socket file: reported running")
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
	if AgentRunning(sock) {
		t.Fatal("closed listener with its socket file left: reported running")
	}
}
