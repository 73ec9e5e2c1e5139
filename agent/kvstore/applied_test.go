package kvstore

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Wait returns once Advance reaches the revision, and not before; a
// context that ends first ends it with its error.
func TestAppliedWait(t *testing.T) {
	var a Applied
	done := make(chan error, 1)
	go func() { done <- a.Wait(context.Background(), 5) }()
	a.Advance(4)
	select {
	case err := <-done:
		t.Fatalf("Wait(5) returned at revision 4: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	a.Advance(7)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait(5) did not return at revision 7")
	}
	a.Advance(6) // never backwards
	if err := a.Wait(context.Background(), 7); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.Wait(ctx, 8); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with an ended context: %v", err)
	}
}
