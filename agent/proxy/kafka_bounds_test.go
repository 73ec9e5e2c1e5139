package proxy

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// A server answering on many ports (one scope each: a load balancer's or
// a NAT'd host's address) held, over all of them, most of the topic-ID
// table while each held less than the broker, and a full table made room
// in any scope at or above the average share: the broker's among them.
// Until 2026-12-07; now room is made in the holder (a workload identity,
// or an address over all its ports) holding the most (review finding).
func TestKafkaTopicIDsFloodFromManyScopes(t *testing.T) {
	var m kafkaTopicIDs
	broker := kafkaScope{identity: 1234}
	next := 0
	meta := func(n int) *kmsg.MetadataResponse {
		r := kmsg.NewPtrMetadataResponse()
		for range n {
			next++
			t := kmsg.NewMetadataResponseTopic()
			t.Topic = kmsg.StringPtr("t" + strconv.Itoa(next))
			binary.BigEndian.PutUint64(t.TopicID[8:], uint64(next))
			r.Topics = append(r.Topics, t)
		}
		return r
	}
	m.learn(broker, meta(500))
	for round := range 3 {
		for port := range 400 {
			hostile := kafkaScope{addr: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), uint16(10000+port))}
			m.learn(hostile, meta(84+round*80))
		}
	}
	kept := 0
	for i := 1; i <= 500; i++ {
		var id [16]byte
		binary.BigEndian.PutUint64(id[8:], uint64(i))
		if n, ok := m.name(broker, id); ok && n == "t"+strconv.Itoa(i) {
			kept++
		}
	}
	if kept < 500 {
		t.Fatalf("the broker keeps %d of its 500 topic IDs after one address's flood over 400 ports", kept)
	}
	if got := m.len(); got > maxKafkaTopicIDs {
		t.Fatalf("%d IDs held, bound %d", got, maxKafkaTopicIDs)
	}
}

// allocated is what f allocates on the heap (garbage included): loose
// multiples of it say what a step costs, as a peak would, without
// sampling.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// emptyTopicsMetadata is a Metadata v8 request naming n empty topics: two
// bytes each on the wire, the cheapest entry a request can list.
func emptyTopicsMetadata(n int) *kmsg.MetadataRequest {
	r := kmsg.NewPtrMetadataRequest()
	r.Version = 8
	r.Topics = make([]kmsg.MetadataRequestTopic, n)
	for i := range r.Topics {
		r.Topics[i].Topic = kmsg.StringPtr("")
	}
	return r
}

// kafkaJudge is a proxy whose Kafka port 9092 on serverIP lets anyone
// consume topic1, and a flow to it.
func kafkaJudge(t *testing.T) (*Proxy, *downConn) {
	p := New(Options{})
	if err := p.SetConfig(Config{Policies: []PortPolicy{{Endpoint: serverIP, Direction: Ingress, Port: 9092, Protocol: "TCP", Kind: KindKafka,
		Rules: []PeerRules{{Kafka: []KafkaRule{{Role: "consume", Topic: "topic1"}}}}}}}); err != nil {
		t.Fatal(err)
	}
	return p, &downConn{src: netip.AddrPortFrom(clientIP, 1000), dst: netip.AddrPortFrom(serverIP, 9092)}
}

// Deciding a request cost some 200 times its size when it named many
// small topics (the topics listed, their names joined for the record, a
// denial entry for each): a Metadata request of 8 MiB naming 4M empty
// topics held 1.6 GiB. Since 2026-12-07 a request whose lists hold more
// than real clients send is refused (the connection closed, the record
// saying why) before its topics are listed: deciding it costs no more
// than kmsg's parse of it.
func TestKafkaDecisionCostsNoMoreThanItsParse(t *testing.T) {
	frame := kafkaRequestFrame(emptyTopicsMetadata(400_000), 2, "c")
	parse := allocated(func() {
		r := kmsg.NewPtrMetadataRequest()
		r.Version = 8
		if err := r.ReadFrom(frame[4+8+2+1:]); err != nil { // size, key, version, correlation ID, client ID "c"
			t.Fatal(err)
		}
	})
	p, dc := kafkaJudge(t)
	recs, cancel := p.Subscribe()
	defer cancel()
	var v kafkaVerdict
	decide := allocated(func() { v = p.judgeKafka(dc, clientID, kafkaScope{}, frame[4:], nil, nil) })
	if decide > 2*parse {
		t.Errorf("deciding a %d KiB request naming 400,000 topics allocated %d MiB, its parse %d MiB", len(frame)>>10, decide>>20, parse>>20)
	}
	if !v.close {
		t.Errorf("a request naming 400,000 topics: %d bytes of denial, want the connection closed", len(v.reply))
	}
	if r := <-recs; r.Verdict != Denied || !strings.Contains(r.Reason, "entries") {
		t.Errorf("record %s %.200q, want denied saying the request lists too many entries", r.Verdict, r.Reason)
	}
}

// The bounds are on what real clients never approach: a request naming
// 10,000 topics, or 100,000 partitions, is decided; one more closes the
// connection. So is any API's list (FindCoordinator's keys).
func TestKafkaRequestListBounds(t *testing.T) {
	names := func(n int) []string {
		s := make([]string, n)
		for i := range s {
			s[i] = "t" + strconv.Itoa(i)
		}
		return s
	}
	produce := func(partitions int) kmsg.Request {
		r := produceReq("topic2", [16]byte{})
		r.Topics[0].Partitions = make([]kmsg.ProduceRequestTopicPartition, partitions)
		return r
	}
	coordinators := func(n int) kmsg.Request {
		r := kmsg.NewPtrFindCoordinatorRequest()
		r.Version, r.CoordinatorKeys = 4, names(n)
		return r
	}
	p, dc := kafkaJudge(t)
	for _, c := range []struct {
		name string
		req  kmsg.Request
		ok   bool
	}{
		{"Metadata naming 10,000 topics", metadataReq(8, names(10_000)...), true},
		{"Metadata naming 10,001 topics", metadataReq(8, names(10_001)...), false},
		{"Produce to 100,000 partitions", produce(100_000 - 1), true}, // and its one topic
		{"Produce to 100,001 partitions", produce(100_000), false},
		{"FindCoordinator of 10,000 keys", coordinators(10_000), true},
		{"FindCoordinator of 10,001 keys", coordinators(10_001), false},
	} {
		v := p.judgeKafka(dc, clientID, kafkaScope{}, kafkaRequestFrame(c.req, 1, "c")[4:], nil, nil)
		if v.close == c.ok {
			t.Errorf("%s: connection closed %v, want %v", c.name, v.close, !c.ok)
		}
	}
}
