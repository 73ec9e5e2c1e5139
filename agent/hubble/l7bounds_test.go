package hubble

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/filament-net/filament/agent/monitor"
)

// A pod's request can carry strings of 16 KiB each into its L7 record
// (the proxy's bound), and escaping a byte that is no UTF-8 makes it
// four. Until 2026-12-07 a flow kept them whole: 4,095 requests of a
// query string of 0xff bytes held over 300 MiB in the node's flow ring
// (and a relay's backlog held every node's), and escaping them took the
// agent's single ingest goroutine milliseconds a record. A flow's L7
// strings are now cut while escaped, to a bound of their own.
func TestHostileL7FlowsBounded(t *testing.T) {
	ff := strings.Repeat("\xff", 16<<10)
	ctl := strings.Repeat("\x01", 16<<10)
	base := events(time.Now())[3]
	http, kafka, dns := base, base, base
	http.L7 = &monitor.L7{Protocol: "HTTP/1.1", Method: ctl, Host: strings.Repeat("h", 16<<10), Path: "/?" + ff, Status: 403, Verdict: "denied", Notes: []string{ctl, ctl}}
	kafka.L7 = &monitor.L7{Protocol: "Kafka", Method: "Metadata", Path: ctl, Verdict: "denied", Notes: []string{ctl}}
	dns.L7 = &monitor.L7{Protocol: "DNS", Method: "A", Host: ctl, DNSRcode: ctl, Verdict: "forwarded"}
	for _, ev := range []monitor.Event{http, kafka, dns} {
		f := Meta{}.Flow(ev)
		if n := proto.Size(f); n > 8<<10 {
			t.Errorf("%s: a flow of %d bytes, want at most 8 KiB", ev.L7.Protocol, n)
		}
		for _, s := range []string{f.GetL7().GetHttp().GetUrl(), f.GetL7().GetHttp().GetMethod(), f.GetL7().GetKafka().GetTopic(), f.GetL7().GetDns().GetQuery()} {
			if s == "" {
				continue
			}
			if !utf8.ValidString(s) || !strings.HasSuffix(s, "…") {
				t.Errorf("%s: %.40q… is not a cut printable string", ev.L7.Protocol, s)
			}
		}
	}
	// What fits is kept whole.
	ok := base
	ok.L7 = &monitor.L7{Protocol: "HTTP/1.1", Method: "GET", Host: "web", Path: "/public/" + strings.Repeat("a", 1000), Status: 200, Verdict: "forwarded"}
	got := (Meta{}).Flow(ok).GetL7().GetHttp().GetUrl()
	if want := "http://web/public/" + strings.Repeat("a", 1000); got != want {
		t.Errorf("url %.60q…, want it whole", got)
	}
}
