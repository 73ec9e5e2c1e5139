package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/filament-net/filament/agent/datapath"
	"github.com/filament-net/filament/agent/policy"
)

func TestExposition(t *testing.T) {
	h := Handler(Sources{
		Counters: func() ([]datapath.Counter, error) {
			return []datapath.Counter{
				{Reason: datapath.ReasonForwarded, Direction: policy.Egress, Packets: 10, Bytes: 1000},
				{Reason: datapath.ReasonPolicyDenied, Direction: policy.Ingress, Packets: 3, Bytes: 180},
			}, nil
		},
		MapPressure:           func() map[string]float64 { return map[string]float64{"policy": 0.25} },
		Endpoints:             func() int { return 4 },
		Identities:            func() int { return 9 },
		Services:              func() int { return 3 },
		ServiceErrors:         func() int { return 1 },
		Groups:                func() map[string]int { return map[string]int{"error": 2} },
		DatapathEventsLost:    func() uint64 { return 17 },
		RemoteIPCacheRefused:  func() uint64 { return 5 },
		RemoteBackendsLeftOut: func() int { return 6 },
		KvstoreTrackedKeys:    func() int { return 7 },
	})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`filament_forwarded_packets_total{direction="egress"} 10`,
		`filament_forwarded_bytes_total{direction="egress"} 1000`,
		`filament_drop_packets_total{direction="ingress",reason="policy denied"} 3`,
		`filament_map_pressure_ratio{map="policy"} 0.25`,
		`filament_endpoints 4`,
		`filament_identities 9`,
		`filament_services 3`,
		`filament_service_datapath_errors_total 1`,
		`filament_cloud_groups{state="error"} 2`,
		`filament_datapath_events_lost_total 17`,
		`filament_remote_ipcache_refused_total 5`,
		`filament_remote_service_backends_left_out 6`,
		`filament_kvstore_watched_keys 7`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("missing %q in\n%s", want, body)
		}
	}
}
