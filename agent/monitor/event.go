package monitor

import (
	"net/netip"
	"time"

	"github.com/filament-net/filament/agent/identity"
)

// Event is one drop or policy verdict reported by the programs.
type Event struct {
	Time        time.Time                `json:"time"`
	Type        string                   `json:"type"` // "drop" or "policy-verdict"
	Reason      string                   `json:"reason"`
	ReasonCode  uint8                    `json:"reasonCode"`
	Direction   string                   `json:"direction"` // of the deciding endpoint: "ingress" or "egress"
	Endpoint    uint16                   `json:"endpoint"`  // the endpoint whose policy decided, else whose interface the packet used (0: none)
	PeerEP      uint16                   `json:"peerEndpoint,omitempty"`
	SrcIdentity identity.NumericIdentity `json:"srcIdentity"`
	DstIdentity identity.NumericIdentity `json:"dstIdentity"`
	SrcLabels   []string                 `json:"srcLabels,omitempty"`
	DstLabels   []string                 `json:"dstLabels,omitempty"`
	Src         netip.AddrPort           `json:"src"`
	Dst         netip.AddrPort           `json:"dst"`
	Protocol    string                   `json:"protocol"`
	IfIndex     uint32                   `json:"ifindex"`
	Length      uint32                   `json:"length"`
}
