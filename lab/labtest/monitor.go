package labtest

import (
	"context"
	"testing"
	"time"

	"github.com/filament-net/filament/agent/api/client"
	"github.com/filament-net/filament/agent/api/types"
	"github.com/filament-net/filament/lab"
)

// Monitor follows a lab node's monitor events of kind ("drop", "l7", ""
// for all) with fn, from when it returns until t's cleanup; it fails t
// when the monitor does not connect within 15 s.
func Monitor(t testing.TB, l *lab.Lab, node, kind string, fn func(types.Event)) {
	t.Helper()
	n, err := l.Node(node)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	connected := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- client.New(n.Socket).MonitorConnected(ctx, 0, kind, func() { close(connected) }, fn) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	})
	select {
	case <-connected:
	case err := <-done:
		done <- err // for the cleanup
		t.Fatalf("monitor of %s: %v", node, err)
	case <-time.After(15 * time.Second):
		t.Fatalf("monitor of %s never connected", node)
	}
}
