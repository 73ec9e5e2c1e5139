package gossipkey

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if err := Ensure(path); err != nil {
		t.Fatal(err)
	}
	first, err := Load(path)
	if err != nil || len(first) != 1 {
		t.Fatalf("load: %v %d keys", err, len(first))
	}
	if err := Ensure(path); err != nil { // kept
		t.Fatal(err)
	}
	added, err := Rotate(path, StepAdd)
	if err != nil || len(added) != 2 || !bytes.Equal(added[0], first[0]) {
		t.Fatalf("add: %v, %d keys, primary kept %v", err, len(added), bytes.Equal(added[0], first[0]))
	}
	used, err := Rotate(path, StepUse)
	if err != nil || !bytes.Equal(used[0], added[1]) || !bytes.Equal(used[1], first[0]) {
		t.Fatalf("use: %v: the new key is not primary", err)
	}
	dropped, err := Rotate(path, StepDrop)
	if err != nil || len(dropped) != 1 || !bytes.Equal(dropped[0], added[1]) {
		t.Fatalf("drop: %v %d keys", err, len(dropped))
	}
	if _, err := Rotate(path, StepUse); !errors.Is(err, ErrInvalid) {
		t.Errorf("use with one key: %v, want ErrInvalid", err)
	}
	if _, err := Rotate(path, "bogus"); err == nil || !strings.Contains(err.Error(), `"bogus"`) {
		t.Errorf("bogus step: %v", err)
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "no key"},
		{"# only a comment\n", "no key"},
		{"!!!\n", "line 1: not base64"},
		{"\nAAAA\n", "line 2: key of 3 bytes"},
	} {
		_, err := Parse([]byte(c.in))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Parse(%q) = %v, want %q", c.in, err, c.want)
		}
	}
	k, _ := New()
	dup := append(Keys{k}, k).Format()
	if _, err := Parse(dup); err == nil || !strings.Contains(err.Error(), "line 2: key listed twice") {
		t.Errorf("duplicate: %v", err)
	}
}

func TestLoadRefusesReadableFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	k, _ := New()
	if err := os.WriteFile(path, Keys{k}.Format(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "readable by others") {
		t.Errorf("Load of a 0644 file: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	k, _ := New()
	f.Add(Keys{k}.Format())
	f.Add([]byte("# c\n\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ks, err := Parse(b)
		if err != nil {
			return
		}
		back, err := Parse(ks.Format())
		if err != nil || len(back) != len(ks) {
			t.Fatalf("round trip: %v", err)
		}
		for _, k := range ks {
			if len(k) != KeySize {
				t.Fatalf("key of %d bytes accepted", len(k))
			}
		}
	})
}

// The steps go in order whatever is retried: a use run twice, or a drop
// right after an add, is refused, and the key that stays after drop is
// the one added. Found 2026-12-06 by reading Rotate: a second use swapped
// the keys back and drop then kept the old key (the one a rotation is
// for retiring, perhaps leaked), reported done.
func TestRotationStepsInOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if err := Ensure(path); err != nil {
		t.Fatal(err)
	}
	added, err := Rotate(path, StepAdd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Rotate(path, StepDrop); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "next is use") {
		t.Errorf("drop right after add: %v, want refused", err)
	}
	if _, err := Rotate(path, StepUse); err != nil {
		t.Fatal(err)
	}
	if _, err := Rotate(path, StepUse); !errors.Is(err, ErrInvalid) {
		t.Errorf("use twice: %v, want refused", err)
	}
	dropped, err := Rotate(path, StepDrop)
	if err != nil || len(dropped) != 1 || !bytes.Equal(dropped[0], added[1]) {
		t.Fatalf("drop: %v; the key kept is not the one added", err)
	}
	if _, err := Rotate(path, StepAdd); err != nil {
		t.Errorf("a new rotation after drop: %v", err)
	}
	// The key file changed behind the record (a step whose record was not
	// written, a file edited or replaced): the order is not guessed.
	ks, _ := Load(path)
	if err := write(path, Keys{ks[1], ks[0]}); err != nil { // as if use ran and its record did not
		t.Fatal(err)
	}
	if _, err := Rotate(path, StepUse); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "changed since") {
		t.Errorf("use with the key file changed since the record: %v, want refused", err)
	}
	// A record of the step alone (the first form) keeps the order check.
	if err := os.WriteFile(path+".step", []byte(StepAdd), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Rotate(path, StepDrop); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "next is use") {
		t.Errorf("drop after a step-only add record: %v, want refused as out of order", err)
	}
	if _, err := Rotate(path, StepUse); err != nil {
		t.Errorf("use after a step-only add record: %v", err)
	}
}
