package main

import (
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/filament-net/filament/agent/kvstore/embedded"
)

// parseQuota reads --etcd-quota: a size such as 8Gi or 512Mi within the
// embedded etcd's bounds; "" is 0 (etcd's default). Errors name the flag
// and the value given.
func parseQuota(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	q, err := resource.ParseQuantity(s)
	if err == nil && (q.Value() < embedded.MinQuotaBytes || q.Value() > embedded.MaxQuotaBytes) {
		err = errors.New("want 64Mi to 8Gi")
	}
	if err != nil {
		return 0, fmt.Errorf("--etcd-quota %q: %w", s, err)
	}
	return q.Value(), nil
}
