package proxy

import (
	"encoding/binary"
	"net/netip"
	"strconv"
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
