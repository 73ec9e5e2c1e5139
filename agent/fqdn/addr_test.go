package fqdn

import (
	"net/netip"
	"testing"
)

func TestLearnable(t *testing.T) {
	for a, want := range map[string]bool{
		"198.51.100.7": true, "10.0.9.1": true, "8.8.8.8": true, "223.255.255.255": true, "::ffff:198.51.100.7": false,
		"169.254.169.254": false, "127.0.0.1": false, "0.0.0.0": false, "0.1.2.3": false, "224.0.0.251": false,
		"239.255.255.250": false, "168.63.129.16": false, "100.100.100.200": false, "100.100.100.201": true, "240.0.0.1": false, "255.255.255.255": false, "2001:db8::1": false,
	} {
		if got := Learnable(netip.MustParseAddr(a)); got != want {
			t.Errorf("Learnable(%s) = %v, want %v", a, got, want)
		}
	}
}
