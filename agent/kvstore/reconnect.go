package kvstore

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// How the client notices a dead kvstore and comes back to it. gRPC's
// default reconnect backoff grows to two minutes: after a kvstore restart
// the agent could wait many seconds for its next attempt while its lease ran
// out. Attempts here start after 100 ms and never wait more than a second,
// so the agent is back within about a second of the kvstore.
const (
	// ReconnectMaxDelay is the longest wait between two connection attempts.
	ReconnectMaxDelay = time.Second
	// keepAliveTime is how long a silent connection waits before a gRPC
	// ping; etcd refuses pings more often than every 5 s
	// (--grpc-keepalive-min-time), so not less.
	keepAliveTime = 10 * time.Second
	// keepAliveTimeout is how long an unanswered ping takes to declare the
	// connection dead (a kvstore that vanished without closing it).
	keepAliveTimeout = 5 * time.Second
)

// reconnectOptions are the gRPC dial options for fast reconnection.
func reconnectOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  100 * time.Millisecond,
			Multiplier: 1.6,
			Jitter:     0.2,
			MaxDelay:   ReconnectMaxDelay,
		},
		MinConnectTimeout: 5 * time.Second,
	})}
}
