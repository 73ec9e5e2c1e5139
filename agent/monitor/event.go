package monitor

import (
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/filament-net/filament/agent/identity"
)

// Event is one drop, policy verdict or service translation reported by
// the programs, or an L7 record of the proxy.
type Event struct {
	Time        time.Time                `json:"time"`
	Type        string                   `json:"type"` // "drop", "policy-verdict", "translated" or "l7"
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
	// TCPFlags are the packet's TCP flags (TCP events; TCPFlag* bits).
	TCPFlags uint8 `json:"tcpFlags,omitempty"`
	// IsReply: conntrack found the packet in the reply direction of its
	// connection (false when it is the connection's own direction or the
	// datapath did not look).
	IsReply bool `json:"isReply,omitempty"`
	// Redirected is set on a "policy-verdict" whose connection the
	// verdict sends to the node's L7 proxy.
	Redirected bool `json:"redirected,omitempty"`
	// Audit is set on a "policy-verdict" of policy audit mode: policy
	// would have dropped the new connection (Reason, ReasonCode say why)
	// and let it through.
	Audit bool `json:"audit,omitempty"`
	// Service is the frontend a "translated" event's connection asked
	// for (Dst is the backend chosen); Src is the client, its address
	// or port zero when the datapath did not know them (a socket hook).
	Service netip.AddrPort `json:"service,omitzero"`
	// L7 is set on "l7" events: one request through the node's proxy.
	L7 *L7 `json:"l7,omitempty"`
}

// TCP flags of Event.TCPFlags, as in the TCP header.
const (
	TCPFlagFIN = 0x01
	TCPFlagSYN = 0x02
	TCPFlagRST = 0x04
	TCPFlagPSH = 0x08
	TCPFlagACK = 0x10
	TCPFlagURG = 0x20
	TCPFlagECE = 0x40
	TCPFlagCWR = 0x80
)

// L7 is what the proxy saw of one request and what it decided.
type L7 struct {
	Protocol string        `json:"protocol"` // HTTP/1.1, HTTP/2, gRPC, DNS/UDP or DNS/TCP
	Method   string        `json:"method"`
	Host     string        `json:"host"`
	Path     string        `json:"path"`
	Status   int           `json:"status"`
	Latency  time.Duration `json:"latency"` // ns
	Verdict  string        `json:"verdict"` // forwarded or denied
	Notes    []string      `json:"notes,omitempty"`
	// DNS (Protocol DNS/UDP or DNS/TCP): Host is the name asked, Method
	// the query type, Status the rcode.
	DNSRcode   string       `json:"dnsRcode,omitempty"`
	DNSAnswers []netip.Addr `json:"dnsAnswers,omitempty"`
	DNSTTL     uint32       `json:"dnsTTL,omitempty"`
}

// Printable is s, a workload's string (an L7 record's method, path, host,
// topic) for a view: its bytes that are not UTF-8 escaped as \xNN, and
// its characters that are neither graphic nor the space as \xNN (ASCII),
// \uNNNN or \UNNNNNNNN, so that what a terminal or a page would act on
// (a C1 CSI, a right-to-left override, a newline) is shown as text, and
// a backslash as \\. Each escape has one reading (a \xNN above 7f is a
// byte that is not UTF-8, the longer forms are fixed-width) and a
// workload cannot write one as text, so every string reads back exactly
// (FuzzPrintable).
func Printable(s string) string { return escape(s, true, 0) }

// PrintableCut is Printable(s) in at most max bytes (max > len("…")):
// past it the string is cut between two characters or escapes, never
// inside one, and ends in "…". For stores that keep many of a workload's
// strings (a node's flows): escaping can make a string four times longer.
func PrintableCut(s string, max int) string { return escape(s, true, max) }

// Terminal is s with what a terminal would act on escaped as Printable
// escapes it, its backslashes left as they are: for text a server made
// printable already (a Hubble server's flows, whose backslashes would
// otherwise show doubled) and a policy's own text.
func Terminal(s string) string { return escape(s, false, 0) }

const cutMark = "…"

// escape is s with the escapes above (backslashes too with backslash),
// in at most max bytes when max > 0 (cut, ending in cutMark).
func escape(s string, backslash bool, max int) string {
	if utf8.ValidString(s) && strings.IndexFunc(s, notShown) < 0 && (!backslash || !strings.Contains(s, `\`)) {
		if max <= 0 || len(s) <= max {
			return s
		}
	}
	var b strings.Builder
	if max > 0 {
		b.Grow(min(len(s), max))
	} else {
		b.Grow(len(s))
	}
	var piece [10]byte
	fit := 0 // the last boundary between pieces that leaves room for cutMark
	for i, r := range s {
		p := piece[:0]
		switch {
		case r == '\\' && backslash:
			p = append(p, '\\', '\\')
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			p = hexEscape(p, 'x', uint32(s[i]), 2)
		case !notShown(r):
			p = utf8.AppendRune(p, r)
		case r < utf8.RuneSelf:
			p = hexEscape(p, 'x', uint32(r), 2)
		case r <= 0xFFFF:
			p = hexEscape(p, 'u', uint32(r), 4)
		default:
			p = hexEscape(p, 'U', uint32(r), 8)
		}
		if max > 0 {
			if b.Len() <= max-len(cutMark) {
				fit = b.Len()
			}
			if b.Len()+len(p) > max {
				return b.String()[:fit] + cutMark
			}
		}
		b.Write(p)
	}
	return b.String()
}

// hexEscape appends \ kind and v's low digits hexadecimal digits to p.
func hexEscape(p []byte, kind byte, v uint32, digits int) []byte {
	const hex = "0123456789abcdef"
	p = append(p, '\\', kind)
	for i := digits - 1; i >= 0; i-- {
		p = append(p, hex[v>>(4*i)&0xf])
	}
	return p
}

// notShown tells whether r is a character a view would not show as
// itself: neither graphic nor the space.
func notShown(r rune) bool { return r != ' ' && !unicode.IsGraphic(r) }
