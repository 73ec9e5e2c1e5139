// Package maglev owns the Maglev lookup table that the service load
// balancer uses to pick a backend per flow hash: every backend gets an
// almost equal share of the table's slots, and adding or removing one
// backend moves few flows (minimal disruption).
//
// The table is populated as described in Eisenbud et al., "Maglev: A Fast
// and Reliable Software Network Load Balancer" (NSDI 2016), section 3.4:
// each backend has a preference list (a permutation of the slots) given by
// an offset and a skip derived from two hashes of its name, and backends
// take turns claiming their next preferred slot that is still empty until
// the table is full.
package maglev

import (
	"errors"
	"fmt"
	"math"
	"sort"
)

// ErrSize is returned (wrapped, with the offending value) by ValidSize and
// Build when the table size is not a prime in the supported range.
var ErrSize = errors.New("maglev table size must be a prime")

// ErrNoBackends is returned by Build when the backend list is empty.
var ErrNoBackends = errors.New("no backends")

// DefaultSize is the default number of slots in a lookup table. It is a
// prime, as the algorithm requires.
const DefaultSize = 16381

// Bounds of the table sizes accepted by ValidSize.
const (
	minSize = 251
	maxSize = 131071
)

// Salts that turn FNV-1a into two independent hashes of a backend name.
// They are fixed so that every node builds the same table.
const (
	offsetSalt = 0x6d61676c65763031 // "maglev01"
	skipSalt   = 0x6d61676c65763032 // "maglev02"
)

// ValidSize reports whether m is usable as a table size: a prime between
// 251 and 131071 inclusive. It returns nil or an error wrapping ErrSize.
func ValidSize(m uint32) error {
	if m < minSize || m > maxSize {
		return fmt.Errorf("%w: %d is out of range [%d, %d]", ErrSize, m, minSize, maxSize)
	}
	if !isPrime(m) {
		return fmt.Errorf("%w: %d is not prime", ErrSize, m)
	}
	return nil
}

// SizeAtLeast is the smallest valid table size (ValidSize) of at least
// n: the smallest prime not below n and 251, or 131071 when n is past it.
func SizeAtLeast(n uint32) uint32 {
	m := max(n, minSize)
	if m >= maxSize {
		return maxSize
	}
	for !isPrime(m) {
		m++
	}
	return m
}

func isPrime(m uint32) bool {
	if m < 2 {
		return false
	}
	for d := uint32(2); d*d <= m; d++ {
		if m%d == 0 {
			return false
		}
	}
	return true
}

// Build returns a lookup table of m slots; slot i holds an index into
// backends. backends are stable, unique names (e.g. "10.0.1.5:8080"). The
// preference list of each backend depends only on its name, and backends
// are processed in sorted name order, so the slot -> name mapping is the
// same on every node for the same set of names whatever the order of the
// slice. Every backend gets floor(m/n) or ceil(m/n) slots when n <= m.
func Build(backends []string, m uint32) ([]int32, error) {
	if err := ValidSize(m); err != nil {
		return nil, err
	}
	n := len(backends)
	if n == 0 {
		return nil, ErrNoBackends
	}
	if n > math.MaxInt32 {
		return nil, fmt.Errorf("maglev: too many backends: %d", n)
	}

	// order[k] is the index in backends of the k-th name in sorted order.
	order := make([]int32, n)
	for i := range order {
		order[i] = int32(i)
	}
	sort.Slice(order, func(a, b int) bool { return backends[order[a]] < backends[order[b]] })
	for k := 1; k < n; k++ {
		if backends[order[k]] == backends[order[k-1]] {
			return nil, fmt.Errorf("maglev: duplicate backend %q", backends[order[k]])
		}
	}

	// Each backend's permutation is pos, pos+skip, pos+2*skip, ... mod m.
	// skip is in [1, m-1] and m is prime, so this visits every slot once.
	pos := make([]uint32, n)
	skip := make([]uint32, n)
	for k, i := range order {
		pos[k], skip[k] = Permutation(backends[i], m)
	}

	table := make([]int32, m)
	for j := range table {
		table[j] = -1
	}
	for filled := uint32(0); ; {
		for k, i := range order {
			c := pos[k]
			for table[c] >= 0 {
				c = advance(c, skip[k], m)
			}
			table[c] = i
			pos[k] = advance(c, skip[k], m)
			if filled++; filled == m {
				return table, nil
			}
		}
	}
}

// Permutation returns the preference list of backend name in a table of
// m slots (m > 1): it prefers slot offset, then offset+skip, offset+2·skip
// … mod m. The hashes are public: anyone can find a name whose list
// starts where they like.
func Permutation(name string, m uint32) (offset, skip uint32) {
	return uint32(hash(name, offsetSalt) % uint64(m)), uint32(hash(name, skipSalt)%uint64(m-1)) + 1
}

// advance returns (c + skip) mod m for c, skip < m.
func advance(c, skip, m uint32) uint32 {
	c += skip // c, skip < m <= maxSize: no overflow
	if c >= m {
		c -= m
	}
	return c
}

// hash is FNV-1a 64 over the salt's bytes followed by name, finished with
// the splitmix64 finalizer so that the low bits used by the modulo are well
// mixed. It is deterministic across processes and machines.
func hash(name string, salt uint64) uint64 {
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	h := uint64(offset64)
	for s := 0; s < 8; s++ {
		h ^= (salt >> (8 * s)) & 0xff
		h *= prime64
	}
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= prime64
	}
	return Mix64(h)
}

// Mix64 is the splitmix64 finalizer: every bit of h moves every bit of
// the result.
func Mix64(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// Disruption returns the fraction of slots whose backend name differs
// between oldTable (indexes into oldNames) and newTable (indexes into
// newNames). Tables of different lengths share no flow mapping, so the
// result is then 1. It is meant for tests and benchmarks.
func Disruption(oldNames []string, oldTable []int32, newNames []string, newTable []int32) float64 {
	if len(oldTable) != len(newTable) {
		return 1
	}
	if len(oldTable) == 0 {
		return 0
	}
	moved := 0
	for i := range oldTable {
		if oldNames[oldTable[i]] != newNames[newTable[i]] {
			moved++
		}
	}
	return float64(moved) / float64(len(oldTable))
}
