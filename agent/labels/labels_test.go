package labels

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	cases := map[string]Label{
		"app=web":                      {SourceK8s, "app", "web"},
		"k8s:app=web":                  {SourceK8s, "app", "web"},
		"reserved:host":                {SourceReserved, "host", ""},
		"cidr:10.0.0.0/8":              {SourceCIDR, "10.0.0.0/8", ""},
		"k8s:filament.io/cluster=east": {SourceK8s, "filament.io/cluster", "east"},
		"container:io.x/y=z":           {SourceContainer, "io.x/y", "z"},
	}
	for in, want := range cases {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
}

func TestInvalid(t *testing.T) {
	for _, in := range []string{"bad key!=x", "app=bad value", "Foo.IO/app=x", "/app=x", "app=" + strings.Repeat("v", 64), "cidr:10.0.0.0/40", "=x"} {
		_, err := Parse(in)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q): want ErrInvalid, got %v", in, err)
		}
	}
	if _, err := New(Label{SourceK8s, "app", "a"}, Label{SourceK8s, "app", "b"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("conflicting values accepted: %v", err)
	}
}

func TestCanonical(t *testing.T) {
	a, _ := ParseList("tier=front,app=web", "reserved:host")
	b, _ := ParseList("k8s:app=web", "k8s:tier=front,reserved:host", "app=web")
	if a.String() != b.String() || a.String() != "k8s:app=web;k8s:tier=front;reserved:host" {
		t.Fatalf("canonical forms differ: %q %q", a, b)
	}
	back, err := ParseCanonical(a.String())
	if err != nil || !back.Equal(a) {
		t.Fatalf("round trip: %v %v", back, err)
	}
	with, _ := a.With(Label{SourceK8s, "app", "db"})
	if v, _ := with.Get("app"); v != "db" || len(with) != 3 {
		t.Fatalf("With: %v", with)
	}
	if v, _ := a.Get("app"); v != "web" {
		t.Fatal("With changed the original")
	}
}
