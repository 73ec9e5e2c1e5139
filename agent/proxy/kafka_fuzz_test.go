package proxy

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

func TestKafkaRulesValidated(t *testing.T) {
	ep := netip.MustParseAddr("10.0.0.1")
	pol := func(kind, protocol string, pr PeerRules) Config {
		return Config{Policies: []PortPolicy{{Endpoint: ep, Direction: Ingress, Port: 9092, Protocol: protocol, Kind: kind, Rules: []PeerRules{pr}}}}
	}
	kafka := func(rules ...KafkaRule) Config { return pol(KindKafka, "TCP", PeerRules{Kafka: rules}) }
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{kafka(KafkaRule{Role: "admin"}), `policies[0].rules[0].kafka[0].role "admin"`},
		{kafka(KafkaRule{}, KafkaRule{APIKey: "nosuchapi"}), `policies[0].rules[0].kafka[1].apiKey "nosuchapi"`},
		{kafka(KafkaRule{Role: "produce", APIKey: "fetch"}), `policies[0].rules[0].kafka[0]: role and apiKey`},
		{kafka(KafkaRule{APIVersion: "v1"}), `policies[0].rules[0].kafka[0].apiVersion "v1"`},
		{kafka(KafkaRule{APIVersion: "-1"}), `kafka[0].apiVersion "-1"`},
		{kafka(KafkaRule{APIVersion: "40000"}), `kafka[0].apiVersion "40000"`},
		{kafka(KafkaRule{Topic: "a/b"}), `kafka[0].topic "a/b"`},
		{kafka(KafkaRule{Topic: strings.Repeat("t", 256)}), `kafka[0].topic`},
		{pol(KindKafka, "UDP", PeerRules{}), `policies[0].protocol "UDP"`},
		{pol(KindKafka, "TCP", PeerRules{HTTP: []HTTPRule{{Path: "/"}}}), `rules[0].http: a Kafka port has no HTTP rules`},
		{pol(KindKafka, "TCP", PeerRules{DNS: []DNSRule{{MatchName: "a"}}}), `rules[0].dns: a Kafka port has no DNS rules`},
		{pol(KindHTTP, "TCP", PeerRules{Kafka: []KafkaRule{{}}}), `rules[0].kafka: an HTTP port has no Kafka rules`},
		{pol(KindDNS, "UDP", PeerRules{Kafka: []KafkaRule{{}}}), `rules[0].kafka: a DNS port has no Kafka rules`},
	} {
		_, err := compile(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("want error containing %q, got %v", tc.want, err)
		}
	}
	for _, r := range []KafkaRule{{Role: "Produce", Topic: "topic1"}, {Role: "consume", ClientID: "c"}, {APIKey: "offsets"},
		{APIKey: "ApiVersions", APIVersion: "3"}, {Topic: strings.Repeat("a.b_c-", 42)}} {
		if _, err := compile(kafka(r)); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
}

// FuzzKafkaRequest decides hostile request frames under a produce rule
// for topic1 (and apiVersions): the proxy never panics, forwards only
// requests that parse and that the rules allow (a partly allowed one cut
// down to the allowed topics), and answers every request it does not
// forward, unless it closes the connection, with the request's
// correlation ID.
func FuzzKafkaRequest(f *testing.F) {
	for i, r := range []kmsg.Request{metadataReq(12, "topic1"), metadataReq(9, "topic2", "topic1"), produceReq("topic1", [16]byte{}),
		produceReq("topic2", [16]byte{}), produceReq("", [16]byte{7}), fetchReq([16]byte{7}), kmsg.NewPtrApiVersionsRequest(),
		kmsg.NewPtrFindCoordinatorRequest(), kmsg.NewPtrInitProducerIDRequest(), &kmsg.OffsetFetchRequest{Version: 8}} {
		f.Add(kafkaRequestFrame(r, int32(i), "client")[4:])
	}
	f.Add([]byte{0, 18, 0, 99, 0, 0, 0, 1, 0, 0})
	f.Add([]byte{0, 3, 0, 12, 0, 0, 0, 1, 0xff, 0xff, 0x05, 1, 2, 3})
	p := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	dst := netip.AddrPortFrom(serverIP, 9092)
	if err := p.SetConfig(Config{IPCache: ipcache, Policies: []PortPolicy{{Endpoint: serverIP, Direction: Ingress, Port: 9092, Protocol: "TCP", Kind: KindKafka,
		Rules: []PeerRules{{Kafka: []KafkaRule{{Role: "produce", Topic: "topic1"}, {APIKey: "apiversions"}}}}}}}); err != nil {
		f.Fatal(err)
	}
	dc := &downConn{p: p, src: netip.AddrPortFrom(clientIP, 40000), dst: dst}
	scope := kafkaScopeOf(p.cfg.Load(), dst)
	f.Fuzz(func(t *testing.T, frame []byte) {
		v := p.judgeKafka(dc, clientID, scope, frame, nil, nil)
		switch {
		case v.close:
			return
		case v.forward:
			out := frame
			if v.frame != nil {
				if got := binary.BigEndian.Uint32(v.frame); int(got) != len(v.frame)-4 {
					t.Fatalf("a forwarded part framed with size %d, has %d bytes", got, len(v.frame)-4)
				}
				out = v.frame[4:]
			}
			q, err := parseKafkaRequest(out, func([16]byte) (string, bool) { return "", false })
			if err != nil {
				t.Fatalf("forwarded a request that does not parse: %v", err)
			}
			if !map[int16]bool{kafkaProduce: true, kafkaMetadata: true, kafkaApiVersions: true, kafkaInitProducerID: true}[q.key] {
				t.Fatalf("forwarded %s", kmsg.NameForKey(q.key))
			}
			for _, tp := range q.topics {
				if q.key != kafkaApiVersions && q.key != kafkaInitProducerID && (!tp.known || tp.name != "topic1") {
					t.Fatalf("forwarded %s naming topic %s", kmsg.NameForKey(q.key), tp)
				}
			}
			if q.corr != int32(binary.BigEndian.Uint32(frame[4:])) {
				t.Fatalf("forwarded with correlation ID %d", q.corr)
			}
		case v.reply == nil:
			if !v.q.noResponse {
				t.Fatal("a denied request neither answered nor the connection closed")
			}
		default:
			if len(v.reply) < 8 || int(binary.BigEndian.Uint32(v.reply)) != len(v.reply)-4 {
				t.Fatalf("answer framed wrong: %x", v.reply)
			}
			if got, want := binary.BigEndian.Uint32(v.reply[4:]), binary.BigEndian.Uint32(frame[4:]); got != want {
				t.Fatalf("answer has correlation ID %d, want %d", got, want)
			}
		}
	})
}
