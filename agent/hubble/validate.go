package hubble

import "github.com/filament-net/filament/agent/hubble/pb/flow"

// ValidateFilters is nil when this server takes a request's allow and
// deny filters, else the ErrFilter it would refuse the request with (a
// client checks what it builds before sending it).
func ValidateFilters(allow, deny []*flow.FlowFilter) error {
	_, err := compileFilters(allow, deny)
	return err
}
