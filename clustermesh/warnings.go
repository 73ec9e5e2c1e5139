package clustermesh

import (
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Warnings logs a remote's refusals at a bounded rate: a burst, then one
// every interval; the line after a gap says how many were left out
// ("notLogged"). What a remote writes decides how many refusals there
// are, so each one logged would let a remote fill every agent's log (until
// 2026-12-07 it did). The counts in the remote's status stay exact.
type Warnings struct {
	mu      sync.Mutex
	lim     *rate.Limiter
	dropped int
}

// NewWarnings logs up to burst warnings at once and one every interval
// after.
func NewWarnings(interval time.Duration, burst int) *Warnings {
	return &Warnings{lim: rate.NewLimiter(rate.Every(interval), burst)}
}

// Warn logs msg with args as slog.Warn does, unless past the rate (a nil
// Warnings logs every one).
func (w *Warnings) Warn(msg string, args ...any) {
	if w == nil {
		slog.Warn(msg, args...)
		return
	}
	w.mu.Lock()
	if !w.lim.Allow() {
		w.dropped++
		w.mu.Unlock()
		return
	}
	n := w.dropped
	w.dropped = 0
	w.mu.Unlock()
	if n > 0 {
		args = append(args, "notLogged", n)
	}
	slog.Warn(msg, args...)
}

// Remote refusals logged: 20 at once, then one a second.
const (
	refusalBurst    = 20
	refusalInterval = time.Second
)

// NewRefusalWarnings is the Warnings for one remote's refusals.
func NewRefusalWarnings() *Warnings { return NewWarnings(refusalInterval, refusalBurst) }
