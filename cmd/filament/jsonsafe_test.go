package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/hubble/pb/flow"
	"github.com/filament-net/filament/agent/hubble/pb/observer"
)

// hostileText holds what a terminal acts on though JSON encoders leave it
// raw: C1 controls (U+009D OSC ... U+009C ST sets xterm's title, U+009B is
// CSI), DEL and a bidi override (the rest of a line reads backwards).
const hostileText = "a\u009d0;pwned\u009cb\u009b2Jc\u202ed\x7fe"

// rawControls reports the first character of s a terminal would act on.
func rawControls(s string) string {
	for _, r := range s {
		if r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x202e {
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

	buf.Reset()
	p, err := newFlowPrinter("json", &buf, &buf)
	if err != nil {
		t.Fatal(err)
	}
	res := &observer.GetFlowsResponse{ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: &flow.Flow{NodeName: hostileText}}}
	if err := p.flow(res); err != nil {
		t.Fatal(err)
	}
	if r := rawControls(buf.String()); r != "" {
		t.Errorf("observe -o json printed %q raw: %q", r, buf.String())
	}
	if !strings.Contains(buf.String(), `\u009d`) {
		t.Errorf("observe -o json: %q", buf.String())
	}
}
