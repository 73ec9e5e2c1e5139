package api_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/filament-net/filament/agent/policy/api"
)

// FuzzParse feeds arbitrary documents to api.Parse, the entry point of
// every policy upload (API, CLI, kvstore, Kubernetes). It must never panic,
// and either refuse the input with ErrInvalidPolicy and no policy, or return
// policies that pass Validate, that parse back from their own Source to the
// same policy, and that survive the JSON form they are stored in unchanged.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := api.Parse(data)
		if err != nil {
			if ps != nil {
				t.Fatalf("Parse returned %d policies with error %v", len(ps), err)
			}
			if !errors.Is(err, api.ErrInvalidPolicy) {
				t.Fatalf("Parse error does not wrap ErrInvalidPolicy: %v", err)
			}
			return
		}
		for _, p := range ps {
			if err := p.Validate(); err != nil {
				t.Fatalf("Parse accepted %q but Validate refuses it: %v", p.Key(), err)
			}
			again, err := api.Parse([]byte(p.Source))
			if err != nil || len(again) != 1 {
				t.Fatalf("%q does not parse back from its Source (%d policies, %v):\n%s", p.Key(), len(again), err, p.Source)
			}
			if !reflect.DeepEqual(again[0], p) {
				t.Fatalf("%q parsed from its Source differs:\n got %#v\nwant %#v", p.Key(), again[0], p)
			}
			b, err := json.Marshal(p)
			if err != nil {
				t.Fatalf("%q does not marshal: %v", p.Key(), err)
			}
			var stored api.Policy
			if err := json.Unmarshal(b, &stored); err != nil {
				t.Fatalf("%q does not unmarshal from its JSON form: %v\n%s", p.Key(), err, b)
			}
			if !reflect.DeepEqual(stored, p) {
				t.Fatalf("%q changes through JSON:\n got %#v\nwant %#v\n%s", p.Key(), stored, p, b)
			}
		}
	})
}
