package uninstall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// ErrAgentRunning: an agent still answers on the node's API socket, and
// it would put back what an uninstall removes.
var ErrAgentRunning = errors.New("an agent is still running on this node")

// AgentRunning reports whether something accepts connections on the
// agent's API socket (a socket file left by a stopped agent refuses them).
func AgentRunning(socket string) bool {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// WaitAgentGone returns once no agent answers on socket, checking every
// poll, or ErrAgentRunning (naming the socket) when ctx ends first. An
// uninstall DaemonSet rolled out while the agents' pods are still
// terminating waits here instead of racing them.
func WaitAgentGone(ctx context.Context, socket string, poll time.Duration) error {
	for AgentRunning(socket) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: its API socket %s answers; stop the agent (delete its DaemonSet) first", ErrAgentRunning, socket)
		case <-time.After(poll):
		}
	}
	return nil
}
