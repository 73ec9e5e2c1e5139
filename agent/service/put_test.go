package service

import (
	"context"
	"testing"
)

// A store whose view is behind on the key (another agent stored the same
// value between this one's check and its transaction) catches up and
// writes nothing: the transaction compares the key's revision with the
// view's, and the view's value by its hash, so the value is sent once.
func TestManagerStoreOfSameValueFromABehindView(t *testing.T) {
	ctx := context.Background()
	m1, m2, kv := twoManagers(t)
	once := true
	m2.beforePut = func() {
		if once {
			once = false
			if err := m1.Upsert(ctx, k8sService(t, "web", "10.96.0.10")); err != nil {
				t.Error(err)
			}
		}
	}
	if err := m2.Upsert(ctx, k8sService(t, "web", "10.96.0.10")); err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, Prefix+"c1/default/web")
	if err != nil {
		t.Fatal(err)
	}
	if e.ModRevision != e.CreateRevision {
		t.Errorf("the key was written again (revision %d, created %d)", e.ModRevision, e.CreateRevision)
	}
}
