package apiservertest

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/filament-net/filament/clustermesh"
)

func TestMain(m *testing.M) {
	RunChild()
	os.Exit(m.Run())
}

// StartProcess runs the apiserver in a process of its own, served as
// Start's is; Stop ends that process.
func TestStartProcess(t *testing.T) {
	s := StartProcess(t, "east", 7)
	if s.Pid() == os.Getpid() {
		t.Fatal("the apiserver runs in the test process")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.Agent.Get(ctx, clustermesh.ClusterConfigPrefix+"east"); err != nil {
		t.Fatalf("cluster-config through the child's apiserver: %v", err)
	}
	pid := s.Pid()
	s.Stop()
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("apiserver process %d still runs after Stop", pid)
	}
	if in := Start(t, "west", 8); in.Pid() != os.Getpid() {
		t.Fatalf("Start ran the apiserver in process %d", in.Pid())
	}
}
