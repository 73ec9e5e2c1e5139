package api

import (
	"fmt"
	"strconv"
)

// icmpTypes maps the ICMP type names accepted in policy, per family, to
// their numbers (IANA's names in CamelCase).
var icmpTypes = map[string]map[string]uint8{
	ICMPFamilyIPv4: {
		"EchoReply":              0,
		"DestinationUnreachable": 3,
		"Redirect":               5,
		"Echo":                   8,
		"EchoRequest":            8,
		"RouterAdvertisement":    9,
		"RouterSelection":        10,
		"TimeExceeded":           11,
		"ParameterProblem":       12,
		"Timestamp":              13,
		"TimestampReply":         14,
		"Photuris":               40,
		"ExtendedEchoRequest":    42,
		"ExtendedEchoReply":      43,
	},
	ICMPFamilyIPv6: {
		"DestinationUnreachable":                 1,
		"PacketTooBig":                           2,
		"TimeExceeded":                           3,
		"ParameterProblem":                       4,
		"EchoRequest":                            128,
		"EchoReply":                              129,
		"MulticastListenerQuery":                 130,
		"MulticastListenerReport":                131,
		"MulticastListenerDone":                  132,
		"RouterSolicitation":                     133,
		"RouterAdvertisement":                    134,
		"NeighborSolicitation":                   135,
		"NeighborAdvertisement":                  136,
		"RedirectMessage":                        137,
		"RouterRenumbering":                      138,
		"ICMPNodeInformationQuery":               139,
		"ICMPNodeInformationResponse":            140,
		"InverseNeighborDiscoverySolicitation":   141,
		"InverseNeighborDiscoveryAdvertisement":  142,
		"HomeAgentAddressDiscoveryRequest":       144,
		"HomeAgentAddressDiscoveryReply":         145,
		"MobilePrefixSolicitation":               146,
		"MobilePrefixAdvertisement":              147,
		"DuplicateAddressRequestCodeSuffix":      157,
		"DuplicateAddressConfirmationCodeSuffix": 158,
		"ExtendedEchoRequest":                    160,
		"ExtendedEchoReply":                      161,
	},
}

// TypeNumber resolves the ICMP type: a number 0-255 (also as a decimal
// string) or a name of the field's family (IPv4 when empty), like
// EchoRequest.
func (f ICMPField) TypeNumber() (uint8, error) {
	family := f.Family
	if family == "" {
		family = ICMPFamilyIPv4
	}
	names, ok := icmpTypes[family]
	switch {
	case !ok:
		return 0, fmt.Errorf("%q is not an ICMP family (IPv4 or IPv6)", f.Family)
	case f.Type == nil:
		return 0, fmt.Errorf("no ICMP type")
	case !f.Type.IsString:
		if f.Type.Int < 0 || f.Type.Int > 255 {
			return 0, fmt.Errorf("%d is not an ICMP type 0-255", f.Type.Int)
		}
		return uint8(f.Type.Int), nil
	}
	if n, ok := names[f.Type.Str]; ok {
		return n, nil
	}
	if n, err := strconv.ParseUint(f.Type.Str, 10, 8); err == nil {
		return uint8(n), nil
	}
	return 0, fmt.Errorf("%q is not an ICMP type 0-255 or an %s ICMP type name like EchoRequest", f.Type.Str, family)
}
