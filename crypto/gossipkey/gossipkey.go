// Package gossipkey owns a cluster's gossip key file: the AES keys that
// authenticate and encrypt the agents' failure-detection gossip
// (memberlist). The file holds one key per line, base64; the first line is
// the primary key (messages are sealed with it), every line is accepted.
// Rotation is three steps, each applied on every node before the next:
// Add a new key (accepted everywhere), Use it (made primary), Drop the
// others.
package gossipkey

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/filament-net/filament/crypto/keyfile"
	"github.com/filament-net/filament/internal/atomicfile"
)

// FileName is the gossip key file's name in a cluster bundle.
const FileName = "gossip.key"

// KeySize is the size of a key: AES-256.
const KeySize = 32

// ErrInvalid is wrapped by every error about a key file's contents.
var ErrInvalid = errors.New("invalid gossip key file")

// Keys is a parsed key file: Keys[0] is the primary key.
type Keys [][]byte

// Parse reads a key file's contents; errors name the line.
func Parse(b []byte) (Keys, error) {
	var ks Keys
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(line)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: not base64", ErrInvalid, i+1)
		}
		if len(k) != KeySize {
			return nil, fmt.Errorf("%w: line %d: key of %d bytes, want %d", ErrInvalid, i+1, len(k), KeySize)
		}
		for _, o := range ks {
			if bytes.Equal(o, k) {
				return nil, fmt.Errorf("%w: line %d: key listed twice", ErrInvalid, i+1)
			}
		}
		ks = append(ks, k)
	}
	if len(ks) == 0 {
		return nil, fmt.Errorf("%w: no key", ErrInvalid)
	}
	return ks, nil
}

// Load reads and parses the key file at path; it must not be readable by
// others than its owner.
func Load(path string) (Keys, error) {
	b, err := keyfile.Read(path)
	if errors.Is(err, keyfile.ErrExposed) {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err != nil {
		return nil, fmt.Errorf("gossip key file: %w", err)
	}
	ks, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ks, nil
}

// Format writes ks as a key file.
func (ks Keys) Format() []byte {
	var b bytes.Buffer
	for _, k := range ks {
		b.WriteString(base64.StdEncoding.EncodeToString(k))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// New returns a fresh random key.
func New() ([]byte, error) {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	return k, nil
}

// Ensure creates the key file at path with one new key unless it exists.
func Ensure(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	k, err := New()
	if err != nil {
		return err
	}
	return write(path, Keys{k})
}

func write(path string, ks Keys) error {
	if err := atomicfile.Write(path, ks.Format(), 0o600); err != nil {
		return fmt.Errorf("gossip key file: %w", err)
	}
	return nil
}

// Rotation steps.
const (
	StepAdd  = "add"  // append a new key: accepted, not yet used
	StepUse  = "use"  // make the newest key primary
	StepDrop = "drop" // keep only the primary key
)

// Rotate applies one rotation step to the key file at path and returns
// the resulting keys. The steps go in order: the last one done is kept
// beside the file (path + ".step"), and a step out of order is refused:
// until 2026-12-06 a repeated use swapped the keys back, and an add then a
// drop, or a use run twice then a drop, kept the old (perhaps leaked) key
// and dropped the new one, each reported done (TestRotationStepsInOrder).
// A file without a step record (an older CLI's) takes any step.
func Rotate(path, step string) (Keys, error) {
	ks, err := Load(path)
	if err != nil {
		return nil, err
	}
	record, err := os.ReadFile(path + ".step")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("gossip key file: %w", err)
	}
	if next(step) == "" {
		return nil, fmt.Errorf("%w: rotation step %q: want add, use or drop", ErrInvalid, step)
	}
	if len(record) > 0 {
		// The record names the step and the key file it left: a file
		// changed since (by hand, a new bundle, or a step whose record was
		// not written) leaves the order unknown.
		last, sum, withSum := strings.Cut(string(record), " ")
		if withSum && sum != fileSum(ks) {
			return nil, fmt.Errorf("%w: step %s: %s changed since step %s was recorded in %s.step; check its keys, then remove that file", ErrInvalid, step, path, last, path)
		}
		if next(last) != step {
			return nil, fmt.Errorf("%w: step %s: the last step done was %s; the next is %s", ErrInvalid, step, last, next(last))
		}
	}
	switch step {
	case StepAdd:
		k, err := New()
		if err != nil {
			return nil, err
		}
		ks = append(ks, k)
	case StepUse:
		if len(ks) < 2 {
			return nil, fmt.Errorf("%w: step use: only one key; run step add first", ErrInvalid)
		}
		last := ks[len(ks)-1]
		ks = append(Keys{last}, ks[:len(ks)-1]...)
	case StepDrop:
		ks = ks[:1]
	default:
		return nil, fmt.Errorf("%w: rotation step %q: want add, use or drop", ErrInvalid, step)
	}
	if err := write(path, ks); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path+".step", []byte(step+" "+fileSum(ks)), 0o600); err != nil {
		return nil, fmt.Errorf("gossip key file: %w", err)
	}
	return ks, nil
}

// fileSum identifies the key file holding ks (its SHA-256, hex).
func fileSum(ks Keys) string {
	sum := sha256.Sum256(ks.Format())
	return hex.EncodeToString(sum[:])
}

// next is the step that follows step.
func next(step string) string {
	return map[string]string{StepAdd: StepUse, StepUse: StepDrop, StepDrop: StepAdd}[step]
}
