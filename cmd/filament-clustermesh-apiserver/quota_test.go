package main

import (
	"strings"
	"testing"
)

func TestParseQuota(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"", 0, false},
		{"64Mi", 64 << 20, false},
		{"8Gi", 8 << 30, false},
		{"1.5Gi", 3 << 29, false},
		{"2G", 2e9, false},
		{"63Mi", 0, true},
		{"9Gi", 0, true},
		{"0", 0, true},
		{"-1Gi", 0, true},
		{"100m", 0, true},
		{"eight", 0, true},
		{"1e100", 0, true},
	} {
		got, err := parseQuota(c.in)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("parseQuota(%q) = %d, %v; want %d, error %v", c.in, got, err, c.want, c.err)
		}
		if err != nil && (!strings.Contains(err.Error(), "--etcd-quota") || !strings.Contains(err.Error(), c.in)) {
			t.Errorf("parseQuota(%q): error %q names neither the flag nor the value", c.in, err)
		}
	}
}
