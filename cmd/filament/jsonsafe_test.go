package main

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
	"sigs.k8s.io/yaml"
)

// hostileText holds what a terminal acts on though JSON encoders leave it
// raw: C1 controls (U+009D OSC ... U+009C ST sets xterm's title, U+009B is
// CSI), DEL and a bidi override (the rest of a line reads backwards).
const hostileText = "a\u009d0;pwned\u009cb\u009b2Jc\u202ed\x7fe"

// rawControls reports the first character of s a terminal would act on.
func rawControls(s string) string {
	for _, r := range s {
		if r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x202e || r >= 0x2066 && r <= 0x2069 || r == 0xe0041 {
			return string(r)
		}
	}
	return ""
}

// The -o json outputs (listings, observe, monitor) escape what a terminal
// would act on, and stay the same JSON. Found 2026-12-05 by reading the
// CLI: a pod's Kafka topic or HTTP query with C1 controls or a bidi
// override reached the operator's terminal raw through observe -o json
// and monitor -o json (the compact outputs escaped them already).
func TestJSONOutputsEscapeTerminalControls(t *testing.T) {
	v := map[string]string{"topic": hostileText}
	var buf bytes.Buffer
	c := &cli{out: &buf, output: "json"}
	if err := c.print(v, nil); err != nil {
		t.Fatal(err)
	}
	var back map[string]string
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || back["topic"] != hostileText {
		t.Fatalf("listing: %q does not decode back (%v)", buf.String(), err)
	}
	if r := rawControls(buf.String()); r != "" {
		t.Errorf("listing -o json printed %q raw: %q", r, buf.String())
	}

	buf = observeHostile(t, "json")
	if !strings.Contains(buf.String(), `\u009d`) {
		t.Errorf("observe -o json: %q", buf.String())
	}
}

// The -o yaml outputs (listings, observe) and policy get's YAML escape
// what a terminal would act on too, and read back as the same values.
// Found 2026-12-05 by reading the CLI: YAML encoders count bidi overrides
// printable and wrote them raw, quoted or not.
func TestYAMLOutputsEscapeTerminalControls(t *testing.T) {
	v := map[string]any{
		"topic":               hostileText,
		hostileText:           []any{"plain", hostileText, "true", "0x1f", 3, 1.5, true, nil},
		"nested":              map[string]any{"x": "\u2066isolate\u2069", "y": "\U000e0041tag"},
		"long " + hostileText: strings.Repeat("w ", 100) + hostileText,
	}
	want, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, y []byte) {
		t.Helper()
		if r := rawControls(string(y)); r != "" {
			t.Errorf("%s printed %q raw: %q", what, r, y)
		}
		j, err := yaml.YAMLToJSON(y)
		if err != nil {
			t.Fatalf("%s: %q does not read back: %v", what, y, err)
		}
		var a, b any
		json.Unmarshal(j, &a)
		json.Unmarshal(want, &b)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s reads back as %s, want %s", what, j, want)
		}
	}
	var buf bytes.Buffer
	c := &cli{out: &buf, output: "yaml"}
	if err := c.print(v, nil); err != nil {
		t.Fatal(err)
	}
	check("listing -o yaml", buf.Bytes())

	// Without such a character the output is sigs.k8s.io/yaml's, unchanged.
	plain := map[string]any{"a": []any{"b", 1, "true"}, "c": map[string]any{"d": "é"}}
	got, err := yamlSafe(plain)
	if err != nil {
		t.Fatal(err)
	}
	if old, _ := yaml.Marshal(plain); string(got) != string(old) {
		t.Errorf("plain YAML %q, want %q", got, old)
	}

	buf = observeHostile(t, "yaml")
	var back struct {
		Flow struct {
			NodeName string `json:"node_name"`
		}
	}
	if err := yaml.Unmarshal(bytes.TrimPrefix(buf.Bytes(), []byte("---\n")), &back); err != nil || back.Flow.NodeName != hostileText {
		t.Errorf("observe -o yaml %q reads back as %q (%v)", buf.String(), back.Flow.NodeName, err)
	}
}

// observeHostile is observe's output in format of a flow whose node name is
// hostileText, checked for what a terminal acts on.
func observeHostile(t *testing.T, format string) bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	p, err := newFlowPrinter(format, &buf, &buf)
	if err != nil {
		t.Fatal(err)
	}
	res := &observer.GetFlowsResponse{ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: &flow.Flow{NodeName: hostileText}}}
	if err := p.flow(res); err != nil {
		t.Fatal(err)
	}
	if r := rawControls(buf.String()); r != "" {
		t.Errorf("observe -o %s printed %q raw: %q", format, r, buf.String())
	}
	return buf
}
