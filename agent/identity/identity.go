// Package identity owns security identities: the 24-bit numeric layout
// (cluster ID in bits 16–23, reserved identities 1–255, node-local CIDR
// identities with bit 24), the reserved label sets, and the allocator that
// gives every label set one cluster-wide number through the kvstore.
package identity

import (
	"errors"
	"fmt"

	"github.com/filament-net/filament/agent/labels"
)

// NumericIdentity is the number the datapath carries for a label set.
type NumericIdentity uint32

// Layout. By default 255 clusters: cluster ID in bits 16–23, the
// cluster-local number in bits 0–15. SetMaxClusters(511) moves the cluster
// ID to bits 15–23 and halves the local numbers, so that an identity still
// fits in the 24 bits of a VXLAN VNI. Every cluster of a mesh must use the
// same layout.
var (
	ClusterIDShift uint32 = 16
	ClusterIDMax   uint32 = 255
	// LocalMax bounds the per-cluster allocatable numbers.
	LocalMax uint32 = 0xffff
)

const (
	// LocalMin is the lowest per-cluster allocatable number.
	LocalMin = 256
	// LocalScopeFlag marks node-local identities (CIDR-derived), never
	// published; bpf/lib/common.h has it as IDENTITY_LOCAL_SCOPE.
	LocalScopeFlag NumericIdentity = 1 << 24
)

// SetMaxClusters selects the layout for a mesh of up to 255 or 511
// clusters; call it once at start, before any identity is made.
func SetMaxClusters(n int) error {
	switch n {
	case 255:
		ClusterIDShift, ClusterIDMax, LocalMax = 16, 255, 0xffff
	case 511:
		ClusterIDShift, ClusterIDMax, LocalMax = 15, 511, 0x7fff
	default:
		return fmt.Errorf("max connected clusters %d: want 255 or 511", n)
	}
	return nil
}

// Reserved identities, the same in every cluster.
const (
	Unknown     NumericIdentity = 0
	Host        NumericIdentity = 1
	World       NumericIdentity = 2
	Unmanaged   NumericIdentity = 3
	Health      NumericIdentity = 4
	Init        NumericIdentity = 5
	RemoteNode  NumericIdentity = 6
	MaxReserved NumericIdentity = 255
)

var reservedNames = map[NumericIdentity]string{
	Host: "host", World: "world", Unmanaged: "unmanaged", Health: "health", Init: "init", RemoteNode: "remote-node",
}

// ErrClusterID is returned for a cluster ID outside 1–ClusterIDMax.
var ErrClusterID = errors.New("cluster ID out of range")

// MaxAnyClusterID is the largest cluster ID of any layout (511 clusters):
// what input read without the mesh's layout (a bundle, a remote's cache)
// may hold.
const MaxAnyClusterID = 511

// ValidateAnyClusterID checks a cluster ID against every layout (1 to
// MaxAnyClusterID), for a process that does not know the mesh's.
func ValidateAnyClusterID(id uint32) error {
	if id < 1 || id > MaxAnyClusterID {
		return fmt.Errorf("%w: cluster ID must be 1-%d, got %d", ErrClusterID, MaxAnyClusterID, id)
	}
	return nil
}

// ValidateClusterID checks id against the layout (1–255, or 1–511).
func ValidateClusterID(id uint32) error {
	if id < 1 || id > ClusterIDMax {
		return fmt.Errorf("%w: cluster ID must be 1-%d, got %d", ErrClusterID, ClusterIDMax, id)
	}
	return nil
}

// ClusterID is the cluster part of a global identity (0 for reserved and local ones).
func (n NumericIdentity) ClusterID() uint32 {
	if n.IsReserved() || n.IsLocal() {
		return 0
	}
	return uint32(n) >> ClusterIDShift & ClusterIDMax
}

// IsReserved reports whether n is one of 1–255.
func (n NumericIdentity) IsReserved() bool { return n > 0 && n <= MaxReserved }

// IsLocal reports whether n is a node-local (CIDR) identity.
func (n NumericIdentity) IsLocal() bool { return n&LocalScopeFlag != 0 }

// InClusterRange reports whether n is a global identity allocated by cluster.
func (n NumericIdentity) InClusterRange(cluster uint32) bool {
	if n.IsReserved() || n.IsLocal() {
		return false
	}
	return uint32(n)>>ClusterIDShift == cluster && uint32(n)&LocalMax >= LocalMin
}

// Compose builds the global identity for a cluster's local number.
func Compose(cluster, local uint32) NumericIdentity {
	return NumericIdentity(cluster<<ClusterIDShift | local&LocalMax)
}

func (n NumericIdentity) String() string {
	if name, ok := reservedNames[n]; ok {
		return fmt.Sprintf("%d (reserved:%s)", uint32(n), name)
	}
	return fmt.Sprintf("%d", uint32(n))
}

// Identity is a numeric identity and its label set.
type Identity struct {
	ID     NumericIdentity `json:"id"`
	Labels labels.Labels   `json:"labels"`
}

// Reserved returns the reserved identities and their labels.
func Reserved() []Identity {
	out := make([]Identity, 0, len(reservedNames))
	for _, id := range []NumericIdentity{Host, World, Unmanaged, Health, Init, RemoteNode} {
		out = append(out, Identity{ID: id, Labels: labels.Labels{{Source: labels.SourceReserved, Key: reservedNames[id]}}})
	}
	return out
}

// LookupReserved returns the reserved identity whose labels are ls, if any.
func LookupReserved(ls labels.Labels) (NumericIdentity, bool) {
	if len(ls) != 1 || ls[0].Source != labels.SourceReserved {
		return 0, false
	}
	for id, name := range reservedNames {
		if ls[0].Key == name {
			return id, true
		}
	}
	return 0, false
}
