package hubble

import (
	"encoding/json"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/filament-net/filament/agent/flow"
	flowpb "github.com/filament-net/filament/agent/hubble/pb/flow"
)

// Flows is the server's flow ring, for readers other than the API (the
// exporter): a reader that falls behind loses flows, the writer never
// waits.
func (s *Server) Flows() *flow.Ring[*flowpb.Flow] { return s.ring }

// CompileFilters compiles allow and deny lists with GetFlows' semantics:
// a flow passes when it matches an allow filter (or there is none) and no
// deny filter.
func CompileFilters(allow, deny []*flowpb.FlowFilter) (func(*flowpb.Flow) bool, error) {
	fs, err := compileFilters(allow, deny)
	if err != nil {
		return nil, err
	}
	return fs.pass, nil
}

// ParseFilters reads FlowFilters written in Hubble's JSON form (its proto
// field names or their JSON names), one or more objects separated by
// commas or spaces, or a JSON array of them: `{"verdict":["DROPPED"]}
// {"source_pod":["default/"]}`. Empty is none.
func ParseFilters(s string) ([]*flowpb.FlowFilter, error) {
	var raws []json.RawMessage
	if s = strings.TrimSpace(s); strings.HasPrefix(s, "[") {
		if err := json.Unmarshal([]byte(s), &raws); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrFilter, err)
		}
		s = ""
	}
	for s = strings.TrimLeft(s, " \t\r\n,"); s != ""; s = strings.TrimLeft(s, " \t\r\n,") {
		dec := json.NewDecoder(strings.NewReader(s))
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrFilter, err)
		}
		raws = append(raws, raw)
		s = s[dec.InputOffset():]
	}
	out := make([]*flowpb.FlowFilter, 0, len(raws))
	for _, raw := range raws {
		ff := &flowpb.FlowFilter{}
		if err := protojson.Unmarshal(raw, ff); err != nil {
			return nil, fmt.Errorf("%w %s: %v", ErrFilter, raw, err)
		}
		out = append(out, ff)
	}
	return out, nil
}
