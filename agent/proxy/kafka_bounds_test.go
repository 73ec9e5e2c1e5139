package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"iter"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

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
	m.learn(broker, metadataIDs(meta(500)))
	for round := range 3 {
		for port := range 400 {
			hostile := kafkaScope{addr: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), uint16(10000+port))}
			m.learn(hostile, metadataIDs(meta(84+round*80)))
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

// metadataIDs are the topic IDs a Metadata response names, with their
// names.
func metadataIDs(r *kmsg.MetadataResponse) iter.Seq2[[16]byte, string] {
	return func(yield func([16]byte, string) bool) {
		for _, t := range r.Topics {
			if !yield(t.TopicID, *t.Topic) {
				return
			}
		}
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

// manyPartitions is a Produce v8 request to partitions 0..n-1 of each
// topic, with no records: eight bytes a partition on the wire, 36 in its
// denial.
func manyPartitions(n int, topics ...string) *kmsg.ProduceRequest {
	r := kmsg.NewPtrProduceRequest()
	r.Version, r.Acks, r.TimeoutMillis = 8, 1, 1000
	for _, name := range topics {
		t := kmsg.NewProduceRequestTopic()
		t.Topic = name
		t.Partitions = make([]kmsg.ProduceRequestTopicPartition, n)
		for i := range t.Partitions {
			t.Partitions[i].Partition = int32(i)
		}
		r.Topics = append(r.Topics, t)
	}
	return r
}

// Denials, and the denied part of a split request whose errors wait to be
// merged into the broker's response, were held outside any budget: behind
// a request the broker holds (a long-poll Fetch), or for a client that
// reads nothing, a connection queued them without end (4 denials of 8 MiB
// grew the heap 240 MiB). Since 2026-12-07 each is charged to the
// client's share of the response budget before it is queued, and the
// proxy reads the client's next request only once it fits.
func TestKafkaDenialsHoldOnlyTheirShare(t *testing.T) {
	defer func(d time.Duration) { kafkaHoldTimeout = d }(kafkaHoldTimeout)
	kafkaHoldTimeout = 500 * time.Millisecond // then the request waiting for room closes the connection
	deny := manyPartitions(maxKafkaEntries-1, "topic2")
	size := len(kafkaDenial(&kafkaRequest{key: kafkaProduce, version: 8, body: deny}))
	for _, c := range []struct {
		name string
		req  *kmsg.ProduceRequest
		held int // what the answer holds until written
	}{
		{"denied", deny, size},
		{"denied in a part", manyPartitions((maxKafkaEntries-2)/2, "topic1", "topic2"), size / 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			share := int(kafkaResponseBudget.perSource) / c.held
			up := rawUpstream(t, func(c net.Conn) { io.Copy(io.Discard, c) }) // answers nothing
			h := newHarnessTo(t, up, Options{})
			h.set(PortPolicy{Endpoint: serverIP, Direction: Ingress, Port: h.upstream.Port(), Protocol: "TCP", Kind: KindKafka,
				Rules: []PeerRules{{Remotes: []uint32{clientID}, Kafka: []KafkaRule{{Role: "produce", Topic: "topic1"}}}}})
			recs, cancel := h.p.Subscribe()
			defer cancel()
			conn := h.dial()
			if _, err := conn.Write(kafkaRequestFrame(metadataReq(8, "topic1"), 1, "c")); err != nil {
				t.Fatal(err)
			}
			frame := kafkaRequestFrame(c.req, 2, "c")
			go func() {
				for range share + 8 {
					if _, err := conn.Write(frame); err != nil {
						return
					}
				}
			}()
			n := 0
			for quiet := time.NewTimer(2 * time.Second); ; {
				select {
				case r := <-recs:
					if r.Method == "Produce" {
						n++
					}
					quiet.Reset(2 * time.Second)
					continue
				case <-quiet.C:
				}
				break
			}
			if n > share+1 {
				t.Fatalf("the proxy decided %d requests whose answers (%d KiB each) wait behind a request the broker holds, want at most its share of the response budget (%d)", n, c.held>>10, share)
			}
			// The connection closed, its share is given back.
			who := source{clientIP, clientID}
			for deadline := time.Now().Add(5 * time.Second); kafkaResponseBudget.heldBy(who) != 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the client holds %d bytes of the response budget after its connection closed", kafkaResponseBudget.heldBy(who))
				}
			}
		})
	}
}

// A denial the client does not read holds the response budget, so the
// connection is closed once it has waited kafkaHoldTimeout (Kafka's
// request timeout), as a broker's response is; until 2026-12-07 a denial
// waited the idle timeout, 5 minutes.
func TestKafkaUnreadDenialsHeldBriefly(t *testing.T) {
	defer func(d time.Duration) { kafkaHoldTimeout = d }(kafkaHoldTimeout)
	kafkaHoldTimeout = 300 * time.Millisecond
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Role: "consume"}}})
	k := h.raw()
	frame := kafkaRequestFrame(manyPartitions(maxKafkaEntries-1, "topic1"), 1, "c")
	size := len(kafkaDenial(&kafkaRequest{key: kafkaProduce, version: 8, body: manyPartitions(maxKafkaEntries-1, "topic1")}))
	const denials = 8 // more than the sockets' buffers hold
	go func() {
		for range denials {
			if _, err := k.c.Write(frame); err != nil {
				return
			}
		}
	}()
	time.Sleep(2 * time.Second) // not reading
	k.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, k.c)
	if errors.Is(err, os.ErrDeadlineExceeded) || n >= int64(denials*size) {
		t.Fatalf("denials not read for 2 s: %d bytes then %v; want the connection closed before they all went out", n, err)
	}
}

// metadataFrame frames a Metadata response (correlation ID 7) as a broker
// sends it, size prefix included.
func metadataFrame(r *kmsg.MetadataResponse) []byte {
	return kafkaResponseFrame(&kafkaRequest{key: kafkaMetadata, corr: 7}, r)
}

// A broker's Metadata response was parsed whole to learn its topic IDs
// (and to leave out the topics a client may not see), at some ten times
// its size for small entries: a hostile server's 95 MiB response of 10M
// empty topics held 915 MiB. Since 2026-12-07 the response is walked in
// place, and costs no more than its bytes (and those of what is sent
// instead).
func TestKafkaMetadataResponseCostsItsSize(t *testing.T) {
	r := kmsg.NewPtrMetadataResponse()
	r.Version = 9
	r.Topics = make([]kmsg.MetadataResponseTopic, 1_000_000)
	for i := range r.Topics {
		r.Topics[i].Topic = kmsg.StringPtr("")
	}
	r.Topics[0].Topic = kmsg.StringPtr("topic1")
	framed := metadataFrame(r)
	r = nil
	p := New(Options{})
	for name, visible := range map[string]func(string) bool{"learned": nil, "left out": func(n string) bool { return n == "topic1" }} {
		var resp []byte
		a := allocated(func() {
			resp = p.inspectKafkaResponse(kafkaScope{}, &kafkaPending{key: kafkaMetadata, version: 9, corr: 7, visible: visible}, framed)
		})
		if a > 2*uint64(len(framed)) {
			t.Errorf("%s: inspecting a %d MiB response allocated %d MiB", name, len(framed)>>20, a>>20)
		}
		if resp == nil {
			t.Fatalf("%s: the response was refused", name)
		}
	}
}

// sampleMetadata is a Metadata response of version v naming brokers and
// topics (topic1, secret, one in error and, from v12, one without a
// name) with partitions.
func sampleMetadata(v int16) *kmsg.MetadataResponse {
	r := kmsg.NewPtrMetadataResponse()
	r.Version, r.ThrottleMillis, r.ClusterID, r.ControllerID = v, 5, kmsg.StringPtr("c"), 2
	for i := range int32(2) {
		b := kmsg.NewMetadataResponseBroker()
		b.NodeID, b.Host, b.Port, b.Rack = i, "broker"+strconv.Itoa(int(i)), 9092, kmsg.StringPtr("r")
		r.Brokers = append(r.Brokers, b)
	}
	r.Topics = []kmsg.MetadataResponseTopic{metadataTopic(kmsg.StringPtr("topic1"), 1, 0, 2), metadataTopic(kmsg.StringPtr("secret"), 2, 0, 1),
		metadataTopic(kmsg.StringPtr("failed"), 3, 3, 0)}
	if v >= 12 {
		r.Topics = append(r.Topics, metadataTopic(nil, 4, 0, 1))
	}
	return r
}

func metadataTopic(name *string, id byte, code int16, partitions int) kmsg.MetadataResponseTopic {
	t := kmsg.NewMetadataResponseTopic()
	t.Topic, t.TopicID[15], t.ErrorCode, t.AuthorizedOperations = name, id, code, 8
	for i := range int32(partitions) {
		p := kmsg.NewMetadataResponseTopicPartition()
		p.Partition, p.Leader, p.LeaderEpoch = i, 1, 3
		p.Replicas, p.ISR, p.OfflineReplicas = []int32{0, 1}, []int32{1}, []int32{0}
		t.Partitions = append(t.Partitions, p)
	}
	return t
}

// The walked response is the parsed one: at every version the IDs
// learned, a response cut to the visible topics and one with denied
// topics' errors merged in are those kmsg makes.
func TestKafkaMetadataWalkAgreesWithKmsg(t *testing.T) {
	for v := int16(0); v <= kmsg.NewPtrMetadataResponse().MaxVersion(); v++ {
		r := sampleMetadata(v)
		framed := metadataFrame(r)
		p := New(Options{})
		scope := kafkaScope{identity: 1234}
		if got := p.inspectKafkaResponse(scope, &kafkaPending{key: kafkaMetadata, version: v, corr: 7}, framed); !bytes.Equal(got, framed) {
			t.Errorf("v%d: a response to leave alone was changed", v)
		}
		for id, want := range map[byte]string{1: "topic1", 2: "secret", 3: "", 4: ""} {
			name, ok := p.kafkaIDs.name(scope, [16]byte{15: id})
			if v < 10 || want == "" {
				if ok {
					t.Errorf("v%d: ID %d learned as %q", v, id, name)
				}
			} else if name != want {
				t.Errorf("v%d: ID %d learned as %q %v, want %q", v, id, name, ok, want)
			}
		}

		visible := *r
		visible.Topics = visible.Topics[:1]
		got := p.inspectKafkaResponse(scope, &kafkaPending{key: kafkaMetadata, version: v, corr: 7, visible: func(n string) bool { return n == "topic1" }}, framed)
		if want := metadataFrame(&visible); !bytes.Equal(got, want) {
			t.Errorf("v%d: cut to the visible topics:\n%x\nwant\n%x", v, got, want)
		}

		denial := kmsg.NewPtrMetadataResponse()
		denial.Version = v
		denial.Topics = []kmsg.MetadataResponseTopic{metadataTopic(kmsg.StringPtr("topic2"), 0, kafkaTopicAuthorizationFailed, 0),
			metadataTopic(kmsg.StringPtr("topic3"), 0, kafkaTopicAuthorizationFailed, 0)}
		merged := *r
		merged.Topics = append(slices.Clone(r.Topics), denial.Topics...)
		got = p.inspectKafkaResponse(scope, &kafkaPending{key: kafkaMetadata, version: v, corr: 7, merge: denial.AppendTo(nil)}, framed)
		if want := metadataFrame(&merged); !bytes.Equal(got, want) {
			t.Errorf("v%d: with the denied topics merged in:\n%x\nwant\n%x", v, got, want)
		}

		// A response that does not parse is passed on as it is, or, to
		// be cut to the visible topics, refused.
		bad := framed[:len(framed)-1]
		binary.BigEndian.PutUint32(bad, uint32(len(bad)-4))
		if got := p.inspectKafkaResponse(scope, &kafkaPending{key: kafkaMetadata, version: v, corr: 7}, bad); !bytes.Equal(got, bad) {
			t.Errorf("v%d: a truncated response was changed", v)
		}
		if got := p.inspectKafkaResponse(scope, &kafkaPending{key: kafkaMetadata, version: v, corr: 7, visible: func(string) bool { return true }}, bad); got != nil {
			t.Errorf("v%d: a truncated response to cut was passed on", v)
		}
	}
}

// A hostile broker's response is read as a client reads it: what the walk
// takes (a response it would cut to the visible topics), kmsg parses,
// with the same topics. (The walk is the stricter: it refuses bytes after
// the body, which kmsg ignores.)
func TestKafkaMetadataWalkNoLooserThanKmsg(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for v := int16(0); v <= kmsg.NewPtrMetadataResponse().MaxVersion(); v++ {
		body := sampleMetadata(v).AppendTo(nil)
		for range 2000 {
			b := slices.Clone(body)
			for range 1 + rng.IntN(3) {
				b[rng.IntN(len(b))] = byte(rng.Uint32())
			}
			var names []*string
			if _, ok := walkKafkaMetadata(b, v, func(t kafkaMetadataTopic) {
				names = append(names, (*string)(nil))
				if t.name != nil {
					names[len(names)-1] = kmsg.StringPtr(string(t.name))
				}
			}); !ok {
				continue
			}
			r := kmsg.NewPtrMetadataResponse()
			r.Version = v
			if err := r.ReadFrom(b); err != nil {
				t.Fatalf("v%d: walked, and kmsg says %v: %x", v, err, b)
			}
			if !slices.EqualFunc(names, r.Topics, func(n *string, t kmsg.MetadataResponseTopic) bool {
				return (n == nil) == (t.Topic == nil) && (n == nil || *n == *t.Topic)
			}) {
				t.Fatalf("v%d: walked topics differ from kmsg's: %x", v, b)
			}
		}
	}
}

// Denials queued behind a forwarded request, charged already, do not
// freeze the connection when the broker's answer does not fit the share
// with them: until 2026-12-07 the answer waited for room that only its
// own writing would make, with no end, and four pods so held the whole
// response budget (found by a review). It now waits kafkaHoldTimeout at
// most and the connection closes.
func TestKafkaDenialsBehindPendingResponseNotStuck(t *testing.T) {
	d, b := kafkaHoldTimeout, kafkaResponseBudget
	t.Cleanup(func() { kafkaHoldTimeout, kafkaResponseBudget = d, b }) // after the harness's cleanups
	kafkaHoldTimeout = 300 * time.Millisecond
	kafkaResponseBudget = newByteShare(4<<20, 1<<20) // 1 MiB a source

	big := kmsg.NewPtrMetadataResponse()
	big.Version = 8
	big.Topics = []kmsg.MetadataResponseTopic{metadataTopic(kmsg.StringPtr("topic1"), 1, 0, 6000)} // ~250 KiB
	answer := kafkaResponseFrame(&kafkaRequest{key: kafkaMetadata, corr: 1}, big)
	up := rawUpstream(t, func(c net.Conn) {
		if _, err := readKafkaFrame(c); err != nil {
			return
		}
		time.Sleep(time.Second) // the denials are queued meanwhile
		c.Write(answer)
		io.Copy(io.Discard, c)
	})
	h := newHarnessTo(t, up, Options{})
	h.set(PortPolicy{Endpoint: serverIP, Direction: Ingress, Port: h.upstream.Port(), Protocol: "TCP", Kind: KindKafka,
		Rules: []PeerRules{{Remotes: []uint32{clientID}, Kafka: []KafkaRule{{Role: "produce", Topic: "topic1"}}}}})
	conn := h.dial()
	deny := manyPartitions(2500, "topic2")
	size := len(kafkaDenial(&kafkaRequest{key: kafkaProduce, version: 8, body: deny}))
	n := (1<<20-len(answer))/size + 1 // the denials fit the share; with the answer they do not
	if n*size >= 1<<20 || n*size+len(answer)-4 <= 1<<20 {
		t.Fatalf("setup: %d denials of %d, answer %d", n, size, len(answer))
	}
	out := kafkaRequestFrame(metadataReq(8, "topic1"), 1, "c")
	for i := range n {
		out = append(out, kafkaRequestFrame(deny, int32(2+i), "c")...)
	}
	if _, err := conn.Write(out); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(6 * time.Second))
	want := int64(len(answer) + n*size)
	got, err := io.CopyN(io.Discard, conn, want)
	if got < want && errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("neither answered nor closed 6 s on (hold timeout %v): %d bytes read, %d bytes of the response budget held",
			kafkaHoldTimeout, got, kafkaResponseBudget.heldBy(source{clientIP, clientID}))
	}
}

// The list bound counts lists behind a pointer too (a StreamsGroup
// heartbeat's topology): until 2026-12-07 they were not followed.
func TestKafkaListBoundsFollowPointers(t *testing.T) {
	r := kmsg.NewPtrStreamsGroupHeartbeatRequest()
	r.Version = r.MaxVersion()
	r.Topology = &kmsg.StreamsGroupHeartbeatRequestTopology{}
	r.Topology.Subtopologies = make([]kmsg.StreamsGroupHeartbeatRequestTopologySubtopology, 20_000)
	for i := range r.Topology.Subtopologies {
		r.Topology.Subtopologies[i].SourceTopics = make([]string, 10)
	}
	_, err := parseKafkaRequest(kafkaRequestFrame(r, 1, "c")[4:], func([16]byte) (string, bool) { return "", false })
	if !errors.Is(err, errKafkaTooManyEntries) {
		t.Fatalf("220,000 entries under Topology: %v", err)
	}
}
