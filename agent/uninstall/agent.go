package uninstall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// ErrAgentRunning: an agent may still be running on this node (its API
// socket answers, or cannot be told apart from one that does), and it
// would put back what an uninstall removes.
var ErrAgentRunning = errors.New("an agent is still running on this node")

// AgentRunning reports whether an agent may be running: anything but a
// missing socket or one nobody listens on (a stopped agent's leftover
// file, ECONNREFUSED) counts as running, e.g. a hung agent whose backlog
// is full (EAGAIN) or a socket this process may not open.
func AgentRunning(socket string) (bool, error) {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err == nil {
		c.Close()
		return true, nil
	}
	if agentGone(err) {
		return false, nil
	}
	return true, err
}

// agentGone: a dial error that says no agent listens.
func agentGone(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

// WaitAgentGone returns once no agent answers on socket, checking every
// poll, or ErrAgentRunning (naming the socket and the last dial error)
// when ctx ends first. An uninstall DaemonSet rolled out while the
// agents' pods are still terminating waits here instead of racing them.
func WaitAgentGone(ctx context.Context, socket string, poll time.Duration) error {
	for {
		running, err := AgentRunning(socket)
		if !running {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("%w: its API socket %s: %v; stop the agent (delete its DaemonSet) first", ErrAgentRunning, socket, err)
			}
			return fmt.Errorf("%w: its API socket %s answers; stop the agent (delete its DaemonSet) first", ErrAgentRunning, socket)
		case <-time.After(poll):
		}
	}
}
