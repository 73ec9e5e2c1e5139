package datapath

import (
	"log/slog"
	"sync"
	"time"
)

// worker runs one kind of background walk of the datapath's tables (the
// forgetter's, the scrubber's) in a goroutine of its own, started on the
// first wake: each wake runs do once, after settle (for related changes
// to land and join the same walk); wakes meanwhile fold into one more
// run; a failed run is tried again a second later; the goroutine ends
// when closed is.
type worker struct {
	once sync.Once
	kick chan struct{}
}

// wake starts the goroutine if need be and asks it for a run of do.
// what names the walk in the log line of a failed run.
func (w *worker) wake(closed <-chan struct{}, settle time.Duration, what string, do func() error) {
	w.once.Do(func() {
		w.kick = make(chan struct{}, 1)
		go w.run(closed, settle, what, do)
	})
	w.poke()
}

func (w *worker) poke() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *worker) run(closed <-chan struct{}, settle time.Duration, what string, do func() error) {
	for {
		select {
		case <-closed:
			return
		case <-w.kick:
		}
		if settle > 0 {
			select {
			case <-closed:
				return
			case <-time.After(settle):
			}
		}
		if err := do(); err != nil {
			slog.Warn(what+" not all deleted; trying again", "err", err)
			time.AfterFunc(time.Second, w.poke)
		}
	}
}
