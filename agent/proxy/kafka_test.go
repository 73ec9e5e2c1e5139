package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"

	"github.com/filament-net/filament/agent/policy/api"
	"github.com/filament-net/filament/internal/testutil"
)

// kafkaHarness is a proxy on 127.0.0.1 whose every connection "was going"
// to a one-broker kfake cluster on serverIP with topics topic1 and topic2.
// Clients dial the proxy for every broker address.
type kafkaHarness struct {
	*harness
	broker netip.AddrPort
}

func newKafkaHarness(t testing.TB, rules ...PeerRules) *kafkaHarness {
	t.Helper()
	return newKafkaHarnessOpts(t, nil, rules...)
}

// newKafkaHarnessOpts is newKafkaHarness with more broker options.
func newKafkaHarnessOpts(t testing.TB, opts []kfake.Opt, rules ...PeerRules) *kafkaHarness {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(1, "topic1", "topic2"),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, netip.AddrPortFrom(serverIP, 0).String())
		})}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	broker := netip.MustParseAddrPort(c.ListenAddrs()[0])
	h := &kafkaHarness{harness: newHarnessTo(t, broker, Options{}), broker: broker}
	h.kafka(rules...)
	return h
}

// kafka sets the broker's ingress policy: Kafka rules.
func (h *kafkaHarness) kafka(rules ...PeerRules) {
	h.t.Helper()
	h.set(PortPolicy{Endpoint: serverIP, Direction: Ingress, Port: h.broker.Port(), Protocol: "TCP", Kind: KindKafka, Rules: rules})
}

// client is a franz-go client from the client pod whose every connection
// goes to the proxy.
func (h *kafkaHarness) client(opts ...kgo.Opt) *kgo.Client {
	h.t.Helper()
	opts = append([]kgo.Opt{
		kgo.SeedBrokers(h.broker.String()),
		kgo.ClientID("test-client"),
		kgo.Dialer(func(ctx context.Context, _, _ string) (net.Conn, error) {
			return clientDialer().DialContext(ctx, "tcp", h.addr)
		}),
		kgo.RecordRetries(2),
		kgo.RequestRetries(2),
		kgo.RetryBackoffFn(func(int) time.Duration { return 10 * time.Millisecond }),
	}, opts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(cl.Close)
	return cl
}

func produce(t *testing.T, cl *kgo.Client, topic, value string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte(value)}).FirstErr()
}

// consume polls topic from the start until it has n records.
func consume(t *testing.T, h *kafkaHarness, topic string, n int) []string {
	t.Helper()
	cl := h.client(kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got []string
	for len(got) < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %q of %s, want %d records: %v", got, topic, n, fs.Errors())
		}
		for _, e := range fs.Errors() {
			t.Fatalf("fetch %s: %v", topic, e.Err)
		}
		fs.EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	return got
}

func TestKafkaProduceConsume(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Remotes: []uint32{clientID}, Kafka: []KafkaRule{
		{Role: "produce", Topic: "topic1"}, {Role: "consume", Topic: "topic1"},
	}})
	recs := h.records()
	cl := h.client()
	if err := produce(t, cl, "topic1", "hello"); err != nil {
		t.Fatalf("produce to topic1: %v", err)
	}
	// topic2 is not allowed: its metadata is denied, the produce fails with
	// the broker's own error for it.
	if err := produce(t, cl, "topic2", "nope"); !errors.Is(err, kerr.TopicAuthorizationFailed) {
		t.Fatalf("produce to topic2: %v, want TOPIC_AUTHORIZATION_FAILED", err)
	}
	if err := produce(t, cl, "topic1", "again"); err != nil {
		t.Fatalf("produce to topic1 after a denial: %v", err)
	}
	if got := consume(t, h, "topic1", 2); strings.Join(got, ",") != "hello,again" {
		t.Fatalf("consumed %q", got)
	}
	// The consumer fetched by topic ID (Fetch v13+) on a connection that
	// had not asked for metadata: the ID was learned on another one. Only
	// topic1 was produced to.
	var fetchedByID, deniedTopic2 bool
	for !fetchedByID || !deniedTopic2 {
		r := recs(1)[0]
		switch {
		case r.Method == "Produce" && r.Path != "topic1":
			t.Fatalf("produce record %+v", r)
		case r.Method == "Fetch" && r.Path == "topic1" && r.Verdict == Forwarded:
			fetchedByID = fetchedByID || slices.ContainsFunc(r.Notes, func(n string) bool {
				v, err := strconv.Atoi(strings.TrimPrefix(n, "version "))
				return err == nil && v >= 13
			})
		case r.Method == "Metadata" && strings.Contains(r.Reason, "topic2 denied"):
			deniedTopic2 = true
		}
	}
}

func TestKafkaConsumeOnlyRejectsProduce(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Role: "consume"}}})
	// Idempotent producing starts with InitProducerID: not a consumer's.
	if err := produce(t, h.client(), "topic1", "x"); !errors.Is(err, kerr.ClusterAuthorizationFailed) {
		t.Fatalf("idempotent produce: %v, want CLUSTER_AUTHORIZATION_FAILED", err)
	}
	if err := produce(t, h.client(kgo.DisableIdempotentWrite()), "topic1", "x"); !errors.Is(err, kerr.TopicAuthorizationFailed) {
		t.Fatalf("produce: %v, want TOPIC_AUTHORIZATION_FAILED", err)
	}
}

// kafkaRequestFrame frames a request with its size: header v1 (v2 when
// flexible) with clientID, body.
func kafkaRequestFrame(r kmsg.Request, corr int32, clientID string) []byte {
	return kmsg.NewRequestFormatter(kmsg.FormatterClientID(clientID)).AppendRequest(nil, r, corr)
}

// rawKafka is a raw connection to the proxy from the client pod.
type rawKafka struct {
	t *testing.T
	c net.Conn
}

func (h *kafkaHarness) raw() *rawKafka {
	return &rawKafka{t: h.t.(*testing.T), c: h.dial()}
}

// send writes the requests (corr 1, 2...) at once and returns their
// responses, checking they come in order.
func (k *rawKafka) send(clientID string, reqs ...kmsg.Request) []kmsg.Response {
	k.t.Helper()
	var out []byte
	for i, r := range reqs {
		out = append(out, kafkaRequestFrame(r, int32(i+1), clientID)...)
	}
	if _, err := k.c.Write(out); err != nil {
		k.t.Fatal(err)
	}
	var resps []kmsg.Response
	for i, r := range reqs {
		k.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		framed, err := readKafkaFrame(k.c)
		if err != nil {
			k.t.Fatalf("response %d: %v", i+1, err)
		}
		frame := framed[4:]
		if corr := int32(binary.BigEndian.Uint32(frame)); corr != int32(i+1) {
			k.t.Fatalf("response %d has correlation ID %d", i+1, corr)
		}
		resp := r.ResponseKind()
		body := frame[4:]
		if resp.IsFlexible() && r.Key() != kafkaApiVersions {
			if body, err = skipTags(body); err != nil {
				k.t.Fatal(err)
			}
		}
		if err := resp.ReadFrom(body); err != nil {
			k.t.Fatalf("response %d (%s): %v", i+1, kmsg.NameForKey(r.Key()), err)
		}
		resps = append(resps, resp)
	}
	return resps
}

// closed tells whether the proxy closed the connection.
func (k *rawKafka) closed() bool {
	k.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := k.c.Read(make([]byte, 1))
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

func metadataReq(version int16, topics ...string) *kmsg.MetadataRequest {
	r := kmsg.NewPtrMetadataRequest()
	r.Version = version
	r.Topics = []kmsg.MetadataRequestTopic{}
	for _, n := range topics {
		t := kmsg.NewMetadataRequestTopic()
		t.Topic = kmsg.StringPtr(n)
		r.Topics = append(r.Topics, t)
	}
	return r
}

// produceReq produces nothing (no records) to a topic, by name (v12) or,
// when id is set, by ID (v13).
func produceReq(topic string, id [16]byte) *kmsg.ProduceRequest {
	r := kmsg.NewPtrProduceRequest()
	r.Version, r.Acks, r.TimeoutMillis = 12, 1, 1000
	t := kmsg.NewProduceRequestTopic()
	t.Topic = topic
	if id != ([16]byte{}) {
		r.Version, t.Topic, t.TopicID = 13, "", id
	}
	t.Partitions = []kmsg.ProduceRequestTopicPartition{{Partition: 0}}
	r.Topics = append(r.Topics, t)
	return r
}

func fetchReq(id [16]byte) *kmsg.FetchRequest {
	r := kmsg.NewPtrFetchRequest()
	r.Version, r.MaxBytes = 13, 1<<20
	t := kmsg.NewFetchRequestTopic()
	t.TopicID = id
	p := kmsg.NewFetchRequestTopicPartition()
	p.PartitionMaxBytes = 1 << 20
	t.Partitions = append(t.Partitions, p)
	r.Topics = append(r.Topics, t)
	return r
}

func produceError(t *testing.T, r kmsg.Response) int16 {
	t.Helper()
	pr := r.(*kmsg.ProduceResponse)
	if len(pr.Topics) != 1 || len(pr.Topics[0].Partitions) != 1 {
		t.Fatalf("produce response %+v", pr)
	}
	return pr.Topics[0].Partitions[0].ErrorCode
}

// TestKafkaDenialInOrder: a denied request is answered with its API's own
// error after the responses to the requests before it, and the connection
// goes on.
func TestKafkaDenialInOrder(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Role: "produce", Topic: "topic1"}}})
	k := h.raw()
	resps := k.send("c", metadataReq(12, "topic1"), produceReq("topic2", [16]byte{}), produceReq("topic1", [16]byte{}),
		metadataReq(12, "topic2", "topic1"), kmsg.NewPtrApiVersionsRequest())
	md := resps[0].(*kmsg.MetadataResponse)
	if len(md.Topics) != 1 || *md.Topics[0].Topic != "topic1" || md.Topics[0].ErrorCode != 0 {
		t.Fatalf("metadata of topic1: %+v", md.Topics)
	}
	if code := produceError(t, resps[1]); code != kafkaTopicAuthorizationFailed {
		t.Fatalf("produce to topic2: error %d", code)
	}
	if code := produceError(t, resps[2]); code == kafkaTopicAuthorizationFailed {
		t.Fatal("produce to topic1 denied")
	}
	// Metadata for an allowed and a denied topic: the broker's answer for
	// topic1, the proxy's for topic2.
	errs := map[string]int16{}
	for _, tp := range resps[3].(*kmsg.MetadataResponse).Topics {
		errs[*tp.Topic] = tp.ErrorCode
	}
	if len(errs) != 2 || errs["topic1"] != 0 || errs["topic2"] != kafkaTopicAuthorizationFailed {
		t.Fatalf("metadata of topic2 and topic1: %v", errs)
	}
	if av := resps[4].(*kmsg.ApiVersionsResponse); av.ErrorCode != 0 || len(av.ApiKeys) == 0 {
		t.Fatalf("api versions: %+v", av)
	}
	// Metadata for every topic: topic2 is left out of the answer.
	all := k.send("c", &kmsg.MetadataRequest{Version: 12}, &kmsg.MetadataRequest{Version: 1})
	for _, r := range all {
		md := r.(*kmsg.MetadataResponse)
		if len(md.Topics) != 1 || *md.Topics[0].Topic != "topic1" || len(md.Brokers) != 1 {
			t.Fatalf("metadata v%d for every topic: %+v", md.Version, md)
		}
	}
	// By ID: topic1's (learned above) is allowed; an ID neither the
	// proxy nor the broker knows is not (UNKNOWN_TOPIC_ID, as the broker
	// would answer).
	id1 := md.Topics[0].TopicID
	resps = k.send("c", produceReq("", [16]byte{1, 2, 3}), produceReq("", id1))
	if code := produceError(t, resps[0]); code != kafkaUnknownTopicID {
		t.Fatalf("produce to an unknown topic ID: error %d", code)
	}
	if code := produceError(t, resps[1]); code == kafkaTopicAuthorizationFailed {
		t.Fatal("produce to topic1 by ID denied")
	}
}

// TestKafkaFetchByTopicID: a fetch by an ID no one knows is denied
// under a topic rule (UNKNOWN_TOPIC_ID), one by topic1's goes through.
func TestKafkaFetchByTopicID(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Role: "consume", Topic: "topic1"}}})
	k := h.raw()
	md := k.send("c", metadataReq(12, "topic1"))[0].(*kmsg.MetadataResponse)
	resps := k.send("c", fetchReq([16]byte{9}), fetchReq(md.Topics[0].TopicID))
	for i, want := range []int16{kafkaUnknownTopicID, 0} {
		f := resps[i].(*kmsg.FetchResponse)
		if len(f.Topics) != 1 || len(f.Topics[0].Partitions) != 1 {
			t.Fatalf("fetch %d: %+v", i, f)
		}
		if got := f.Topics[0].Partitions[0].ErrorCode; got != want {
			t.Fatalf("fetch %d: error %d, want %d", i, got, want)
		}
	}
	// Another connection knows the ID too.
	f := h.raw().send("c", fetchReq(md.Topics[0].TopicID))[0].(*kmsg.FetchResponse)
	if f.Topics[0].Partitions[0].ErrorCode == kafkaTopicAuthorizationFailed {
		t.Fatal("fetch of topic1 by ID on another connection denied")
	}
}

// TestKafkaResolvesTopicID: a request naming a topic by an ID the proxy
// never saw in a Metadata response (the client asked another broker,
// through another node's proxy) is decided by the name the broker gives
// the proxy for it: topic1's ID is fetched from, topic2's denied
// (TOPIC_AUTHORIZATION_FAILED), an ID the broker does not know denied
// with UNKNOWN_TOPIC_ID (what the broker says; clients retry it); the
// proxy's own Metadata requests
// never reach the client (its responses come in order, with its
// correlation IDs).
func TestKafkaResolvesTopicID(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Role: "consume", Topic: "topic1"}}})
	direct, err := net.Dial("tcp", h.broker.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { direct.Close() })
	ids := map[string][16]byte{}
	for _, tp := range (&rawKafka{t: t, c: direct}).send("c", metadataReq(12, "topic1", "topic2"))[0].(*kmsg.MetadataResponse).Topics {
		ids[*tp.Topic] = tp.TopicID
	}
	if len(ids) != 2 || ids["topic1"] == ([16]byte{}) || ids["topic2"] == ([16]byte{}) {
		t.Fatalf("topic IDs from the broker: %v", ids)
	}
	recs := h.records()
	resps := h.raw().send("c", fetchReq(ids["topic1"]), fetchReq(ids["topic2"]), fetchReq([16]byte{7}), fetchReq(ids["topic1"]))
	for i, want := range []int16{0, kafkaTopicAuthorizationFailed, kafkaUnknownTopicID, 0} {
		f := resps[i].(*kmsg.FetchResponse)
		if len(f.Topics) != 1 || len(f.Topics[0].Partitions) != 1 {
			t.Fatalf("fetch %d: %+v", i, f)
		}
		if got := f.Topics[0].Partitions[0].ErrorCode; got != want {
			t.Errorf("fetch %d: error %d, want %d", i, got, want)
		}
	}
	for i, want := range []string{"topic1", "topic2", "id:07000000000000000000000000000000", "topic1"} {
		if r := recs(1)[0]; r.Path != want {
			t.Errorf("record %d: topic %q, want %q", i, r.Path, want)
		}
	}
}

func TestKafkaAPIKeyVersionClientID(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{
		{APIKey: "metadata", APIVersion: "12"}, {APIKey: "apiversions"}, {APIKey: "produce", ClientID: "good"},
	}})
	k := h.raw()
	resps := k.send("bad", metadataReq(12, "topic1"), metadataReq(11, "topic1"), produceReq("topic1", [16]byte{}),
		kmsg.NewPtrFindCoordinatorRequest())
	if e := resps[0].(*kmsg.MetadataResponse).Topics[0].ErrorCode; e != 0 {
		t.Fatalf("metadata v12: error %d", e)
	}
	if e := resps[1].(*kmsg.MetadataResponse).Topics[0].ErrorCode; e != kafkaTopicAuthorizationFailed {
		t.Fatalf("metadata v11: error %d", e)
	}
	if e := produceError(t, resps[2]); e != kafkaTopicAuthorizationFailed {
		t.Fatalf("produce from client bad: error %d", e)
	}
	if e := resps[3].(*kmsg.FindCoordinatorResponse).ErrorCode; e != kafkaClusterAuthorizationFailed {
		t.Fatalf("find coordinator: error %d", e)
	}
	if e := produceError(t, k.send("good", produceReq("topic1", [16]byte{}))[0]); e == kafkaTopicAuthorizationFailed {
		t.Fatal("produce from client good denied")
	}
}

// TestKafkaHostileFrames: a frame the proxy cannot take closes its
// connection, and only that one.
func TestKafkaHostileFrames(t *testing.T) {
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { testutil.NoLeaks(t, before) }) // after the harness's cleanups: no connection's goroutine left
	h := newKafkaHarness(t, PeerRules{})
	good := h.raw()
	for name, b := range map[string][]byte{
		"huge size":       binary.BigEndian.AppendUint32(nil, maxKafkaFrame+1),
		"negative size":   binary.BigEndian.AppendUint32(nil, 0x80000000),
		"unknown API":     append(binary.BigEndian.AppendUint32(nil, 10), 0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0),
		"short header":    append(binary.BigEndian.AppendUint32(nil, 3), 0, 3, 0),
		"truncated body":  append(binary.BigEndian.AppendUint32(nil, 20), kafkaRequestFrame(metadataReq(12, "topic1"), 1, "c")[4:14]...),
		"garbage":         append(binary.BigEndian.AppendUint32(nil, 16), []byte("GET / HTTP/1.1\r\n")[:16]...),
		"bad client ID":   append(binary.BigEndian.AppendUint32(nil, 10), 0, 3, 0, 12, 0, 0, 0, 1, 0x7f, 0),
		"unknown version": kafkaRequestFrame(&kmsg.MetadataRequest{Version: 999}, 1, "c"),
	} {
		k := h.raw()
		if _, err := k.c.Write(b); err != nil {
			t.Fatal(err)
		}
		if name == "truncated body" {
			k.c.(*net.TCPConn).CloseWrite()
		}
		if !k.closed() {
			t.Errorf("%s: connection not closed", name)
		}
		if md := good.send("c", metadataReq(12, "topic1"))[0].(*kmsg.MetadataResponse); len(md.Topics) != 1 || md.Topics[0].ErrorCode != 0 {
			t.Fatalf("after %s: metadata %+v", name, md)
		}
	}
}

// TestKafkaNewApiVersions: an ApiVersions request newer than the proxy
// knows is answered as a broker does (UNSUPPORTED_VERSION, v0, the
// versions known), and the versions a broker offers are capped at those
// the proxy parses.
func TestKafkaNewApiVersions(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{})
	k := h.raw()
	req := kmsg.NewPtrApiVersionsRequest()
	req.Version = req.MaxVersion() + 1
	k.c.Write(kafkaRequestFrame(req, 7, "c"))
	k.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	framed, err := readKafkaFrame(k.c)
	if err != nil {
		t.Fatal(err)
	}
	frame := framed[4:]
	resp := kmsg.NewPtrApiVersionsResponse()
	if err := resp.ReadFrom(frame[4:]); err != nil || binary.BigEndian.Uint32(frame) != 7 || resp.ErrorCode != kafkaUnsupportedVersion {
		t.Fatalf("response %+v, %v", resp, err)
	}
	av := k.send("c", kmsg.NewPtrApiVersionsRequest())[0].(*kmsg.ApiVersionsResponse)
	for _, key := range av.ApiKeys {
		if r := kmsg.RequestForKey(key.ApiKey); r == nil || key.MaxVersion > r.MaxVersion() {
			t.Fatalf("api key %d offered up to version %d", key.ApiKey, key.MaxVersion)
		}
	}
}

// TestKafkaConsumerGroupHeartbeat: a KIP-848 heartbeat subscribing to a
// denied topic, or by regex under a topic rule, is denied with
// TOPIC_AUTHORIZATION_FAILED.
func TestKafkaConsumerGroupHeartbeat(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Role: "consume", Topic: "topic1"}}})
	hb := func(names []string, regex *string) *kmsg.ConsumerGroupHeartbeatRequest {
		r := kmsg.NewPtrConsumerGroupHeartbeatRequest()
		r.Version, r.Group, r.MemberID, r.SubscribedTopicNames, r.SubscribedTopicRegex = 1, "g", "m", names, regex
		return r
	}
	resps := h.raw().send("c", hb([]string{"topic2"}, nil), hb(nil, kmsg.StringPtr("topic.*")), hb([]string{"topic1"}, nil))
	for i, want := range []bool{true, true, false} {
		e := resps[i].(*kmsg.ConsumerGroupHeartbeatResponse).ErrorCode
		if denied := e == kafkaTopicAuthorizationFailed; denied != want {
			t.Errorf("heartbeat %d: error %d", i, e)
		}
	}
}

// TestKafkaGroupConsumer: a consumer group (classic protocol) consumes and
// commits under the consume role.
func TestKafkaGroupConsumer(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Role: "produce", Topic: "topic1"}, {Role: "consume", Topic: "topic1"}}})
	recs := h.records()
	if err := produce(t, h.client(), "topic1", "g"); err != nil {
		t.Fatal(err)
	}
	cl := h.client(kgo.ConsumeTopics("topic1"), kgo.ConsumerGroup("group1"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []string
	for len(got) == 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("group consumer got nothing: %v", fs.Errors())
		}
		fs.EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	if err := cl.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	// The group's APIs went through, allowed by the consume role.
	want := map[string]bool{"FindCoordinator": true, "JoinGroup": true, "SyncGroup": true, "OffsetFetch": true, "OffsetCommit": true}
	for len(want) > 0 {
		r := recs(1)[0]
		if r.Verdict == Denied && r.Method != "GetTelemetrySubscriptions" {
			t.Fatalf("denied: %+v", r)
		}
		if r.Verdict == Forwarded {
			delete(want, r.Method)
		}
	}
}

// Metadata v12+ naming an allowed topic with the ID of another: the
// broker answers by the ID, so the proxy decides by the ID too (an
// allowed name is no cover for a denied topic's ID).
func TestKafkaMetadataNameWithForeignID(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Role: "consume", Topic: "topic1"}}})
	// topic2's ID, from the broker itself.
	direct, err := net.Dial("tcp", h.broker.String())
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	md := (&rawKafka{t: t, c: direct}).send("c", metadataReq(12, "topic2"))[0].(*kmsg.MetadataResponse)
	id2 := md.Topics[0].TopicID
	if id2 == [16]byte{} {
		t.Fatal("the broker gave topic2 no ID")
	}
	req := metadataReq(12, "topic1")
	req.Topics[0].TopicID = id2
	r := h.raw().send("c", req)[0].(*kmsg.MetadataResponse)
	for _, tp := range r.Topics {
		if tp.ErrorCode != kafkaTopicAuthorizationFailed {
			t.Errorf("metadata naming topic1 with topic2's ID: topic %v error %d, want TOPIC_AUTHORIZATION_FAILED", tp.Topic, tp.ErrorCode)
		}
	}
}

// The policy validator and the proxy take the same apiKey names.
func TestKafkaAPIKeyNamesAgree(t *testing.T) {
	for _, n := range api.KafkaAPIKeys {
		if _, ok := kafkaAPIKeys[n]; !ok {
			t.Errorf("the validator takes apiKey %q, the proxy does not", n)
		}
	}
	for n := range kafkaAPIKeys {
		if !slices.Contains(api.KafkaAPIKeys, n) {
			t.Errorf("the proxy takes apiKey %q, the validator does not", n)
		}
	}
}

// A change of a Kafka connection's port policy closes the connection: a
// client's fetch session (or anything it set up) under the old policy
// does not outlive it; the client reconnects and is decided anew. A
// config change elsewhere leaves it alone.
func TestKafkaPolicyChangeClosesConnection(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Role: "consume", Topic: "topic1"}}})
	k := h.raw()
	k.send("c", metadataReq(12, "topic1"))
	cfg := h.p.Config()
	cfg.Revision++
	cfg.IPCache = append(slices.Clone(cfg.IPCache), IPCacheEntry{Prefix: netip.MustParsePrefix("10.9.9.9/32"), Identity: 7000})
	if err := h.p.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	k.send("c", metadataReq(12, "topic1")) // still served
	h.kafka(PeerRules{Kafka: []KafkaRule{{Role: "consume", Topic: "topic2"}}})
	k.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := k.c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read after the port's policy changed: %v, want the connection closed", err)
	}
}

// TestReadKafkaBody: a frame comes back whole with its size prefix, read
// in whatever pieces the peer sends; a broker that announces a large
// response and sends little makes the proxy hold about what it sent (at
// most the eager first allocation), not what it announced.
func TestReadKafkaBody(t *testing.T) {
	body := make([]byte, 40*kafkaEagerRead+123)
	for i := range body {
		body[i] = byte(i * 7)
	}
	for _, eager := range []int{kafkaEagerRead, len(body)} {
		got, err := readKafkaBody(iotest.OneByteReader(io.MultiReader(bytes.NewReader(body[:10]), iotest.HalfReader(bytes.NewReader(body[10:])))), int32(len(body)), eager)
		if err != nil {
			t.Fatal(err)
		}
		if n := binary.BigEndian.Uint32(got); int(n) != len(body) || !bytes.Equal(got[4:], body) {
			t.Fatalf("eager %d: read %d bytes announcing %d, want %d bytes", eager, len(got)-4, n, len(body))
		}
	}
	if _, err := readKafkaBody(bytes.NewReader(body[:10]), 20, 20); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated: %v, want %v", err, io.ErrUnexpectedEOF)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := readKafkaFrame(bytes.NewReader(append(binary.BigEndian.AppendUint32(nil, maxKafkaFrame), body[:100]...))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("announced %d bytes, sent 100: %v", maxKafkaFrame, err)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 2*kafkaEagerRead {
		t.Fatalf("announced %d bytes and sent 100: %d bytes allocated", maxKafkaFrame, grew)
	}
}

// TestKafkaBufs: a request buffer has the length asked for whatever
// buffer it reuses (a parse reads no byte of an earlier, longer request),
// and only buffers of the pools' sizes go back to them.
func TestKafkaBufs(t *testing.T) {
	for _, size := range []int{1, 4096, 4097, 1 << 20, 4 + maxKafkaRequest} {
		b := getKafkaBuf(size)
		if len(b) != size || cap(b) < size {
			t.Fatalf("getKafkaBuf(%d): len %d cap %d", size, len(b), cap(b))
		}
		for i := range b {
			b[i] = 0xff
		}
		putKafkaBuf(b)
		if b := getKafkaBuf(size - size/2); len(b) != size-size/2 {
			t.Fatalf("getKafkaBuf(%d) after a %d-byte one: len %d", size-size/2, size, len(b))
		}
	}
	if c := kafkaBufClass(4 + maxKafkaRequest); c >= len(kafkaBufs) {
		t.Fatalf("the largest request has no pool (class %d of %d)", c, len(kafkaBufs))
	}
	if b := getKafkaBuf(32 << 20); len(b) != 32<<20 {
		t.Fatalf("a buffer past the pools: len %d", len(b))
	}
	putKafkaBuf(make([]byte, 5000)) // not a pool's size: dropped
	if b := getKafkaBuf(5000); cap(b) != 8192 {
		t.Fatalf("getKafkaBuf(5000): cap %d, want 8192 (a pool's)", cap(b))
	}
}

// One source announcing large requests on several connections and
// sending nothing more holds its own share of the request budget, not
// the whole: another source's requests go on. Before, eight such
// connections (8 MiB each) held the node's 64 MiB, and every other
// client's request waited until its idle timeout.
func TestKafkaSlowRequestsHoldOnlyTheirShare(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{})
	good := h.raw()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: 5 * time.Second}
	for range 8 {
		c, err := d.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write(binary.BigEndian.AppendUint32(nil, maxKafkaRequest)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // the proxy has read the sizes
	done := make(chan kmsg.Response, 1)
	go func() {
		good.c.SetDeadline(time.Now().Add(5 * time.Second))
		framed := kafkaRequestFrame(metadataReq(12, "topic1"), 1, "c")
		if _, err := good.c.Write(framed); err != nil {
			done <- nil
			return
		}
		if _, err := readKafkaFrame(good.c); err != nil {
			done <- nil
			return
		}
		done <- &kmsg.MetadataResponse{}
	}()
	if r := <-done; r == nil {
		t.Fatal("another source's request got no answer while eight slow 8 MiB requests were announced")
	}
}

// A fetch session opened while a topic was allowed is not read again,
// after the topic's revocation, by an incremental Fetch (which names no
// topics) on a new connection: the proxy takes incremental Fetches only
// for sessions opened through the same connection, and answers others
// FETCH_SESSION_ID_NOT_FOUND (the client opens a full session, whose
// topics are decided). Before, brokers key sessions by ID and epoch, and
// the revoked topic's records kept coming.
func TestKafkaFetchSessionOutlivesNoRevocation(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Role: "produce"}, {Role: "consume"}}})
	cl := h.client()
	for _, topic := range []string{"topic1", "topic2"} {
		if err := produce(t, cl, topic, "secret in "+topic); err != nil {
			t.Fatal(err)
		}
	}
	fetch := func(id, epoch int32, topics ...string) *kmsg.FetchRequest {
		r := kmsg.NewPtrFetchRequest()
		r.Version, r.ReplicaID, r.MaxWaitMillis, r.MaxBytes = 12, -1, 10, 1<<20
		r.SessionID, r.SessionEpoch = id, epoch
		for _, topic := range topics {
			ft := kmsg.NewFetchRequestTopic()
			ft.Topic = topic
			fp := kmsg.NewFetchRequestTopicPartition()
			fp.PartitionMaxBytes, fp.LogStartOffset, fp.CurrentLeaderEpoch, fp.LastFetchedEpoch = 1<<20, -1, -1, -1
			ft.Partitions = []kmsg.FetchRequestTopicPartition{fp}
			r.Topics = append(r.Topics, ft)
		}
		return r
	}
	k := h.raw()
	full := k.send("c", fetch(0, 0, "topic1", "topic2"))[0].(*kmsg.FetchResponse)
	if full.ErrorCode != 0 || full.SessionID == 0 {
		t.Fatalf("full fetch: error %d, session %d; want a session", full.ErrorCode, full.SessionID)
	}
	// An incremental Fetch on the connection that opened the session is
	// taken.
	if inc := k.send("c", fetch(full.SessionID, 1))[0].(*kmsg.FetchResponse); inc.ErrorCode != 0 {
		t.Fatalf("incremental fetch of the connection's own session: error %d", inc.ErrorCode)
	}
	// topic2 is revoked: consume topic1 only (k is closed).
	h.kafka(PeerRules{Kafka: []KafkaRule{{Role: "consume", Topic: "topic1"}}})
	resp := h.raw().send("c", fetch(full.SessionID, 2))[0].(*kmsg.FetchResponse)
	for _, rt := range resp.Topics {
		for _, p := range rt.Partitions {
			if rt.Topic == "topic2" && len(p.RecordBatches) > 0 {
				t.Fatalf("topic2's records, revoked, read through the old session %d", full.SessionID)
			}
		}
	}
	if resp.ErrorCode != kafkaFetchSessionIDNotFound {
		t.Fatalf("incremental fetch of a session opened elsewhere: error %d, want %d", resp.ErrorCode, kafkaFetchSessionIDNotFound)
	}
}

// Responses a client does not read hold the proxy's memory only up to its
// source's share of the response budget: the broker's further responses
// to that source wait in the broker's socket. Before, each connection
// held a whole response (up to 100 MiB), so many connections of one pod
// that never read could run the proxy out of memory.
func TestKafkaUnreadResponsesHoldOnlyTheirShare(t *testing.T) {
	const big = 32 << 20
	var written atomic.Int32 // whole responses the broker wrote
	up := bigKafkaBroker(t, big, &written)
	h := newHarnessTo(t, up, Options{})
	h.set(PortPolicy{Endpoint: serverIP, Direction: Ingress, Port: h.upstream.Port(), Protocol: "TCP", Kind: KindKafka, Rules: []PeerRules{{}}})
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}, Timeout: 5 * time.Second}
	share := int32(kafkaResponseBudget.perSource / big)
	for range share + 3 {
		c, err := d.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write(kafkaRequestFrame(metadataReq(12, "topic1"), 1, "c")); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second)
	if n := written.Load(); n > share {
		t.Fatalf("the proxy took %d responses of %d MiB for one source that reads none, want at most its share (%d)", n, big>>20, share)
	}
}

// A request announced and not sent, and a response not read, hold their
// budget for kafkaHoldTimeout, not the idle timeout (5 minutes): then the
// connection is closed. So sources that together fill a budget hold it
// that long at most.
func TestKafkaBudgetHeldBriefly(t *testing.T) {
	defer func(d time.Duration) { kafkaHoldTimeout = d }(kafkaHoldTimeout)
	kafkaHoldTimeout = 300 * time.Millisecond
	h := newKafkaHarness(t, PeerRules{})
	k := h.raw()
	if _, err := k.c.Write(binary.BigEndian.AppendUint32(nil, 1<<20)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if !k.closed() || time.Since(start) > 5*time.Second {
		t.Fatalf("a request announced and never sent: connection still open after %v", time.Since(start))
	}

	// A broker answering 32 MiB to a client that reads nothing.
	up := bigKafkaBroker(t, 32<<20, nil)
	h2 := newHarnessTo(t, up, Options{})
	h2.set(PortPolicy{Endpoint: serverIP, Direction: Ingress, Port: h2.upstream.Port(), Protocol: "TCP", Kind: KindKafka, Rules: []PeerRules{{}}})
	c := h2.dial()
	if _, err := c.Write(kafkaRequestFrame(metadataReq(12, "topic1"), 1, "c")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // not reading
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) || n >= 4+32<<20 {
		t.Fatalf("a response not read for 2 s: %d bytes then %v; want the connection closed before the whole response", n, err)
	}
}

// A request waiting for room in the request budget waits as long as its
// client would (Kafka's request timeout), not the idle timeout: before,
// a connection whose request found the budget full (other sources
// filling it) stayed, with its goroutine and its place in the budget's
// queue, for 5 minutes, whether or not its client was still there.
func TestKafkaBudgetWaitBrief(t *testing.T) {
	defer func(d time.Duration) { kafkaHoldTimeout = d }(kafkaHoldTimeout)
	kafkaHoldTimeout = 300 * time.Millisecond
	for i := range 4 { // four other sources hold the whole budget
		other := source{addr: netip.AddrFrom4([4]byte{10, 9, 9, byte(i)}), id: 12345}
		if err := kafkaRequestBudget.acquire(context.Background(), other, 16<<20); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { kafkaRequestBudget.release(other, 16<<20) })
	}
	h := newKafkaHarness(t, PeerRules{})
	k := h.raw()
	if _, err := k.c.Write(binary.BigEndian.AppendUint32(nil, 1024)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if !k.closed() || time.Since(start) > 5*time.Second {
		t.Fatalf("a request waiting for room: connection still open after %v", time.Since(start))
	}
}

// bigKafkaBroker answers each connection's first request with a response
// of size bytes (its correlation ID, then zeros), counting in written (if
// not nil) those written whole.
func bigKafkaBroker(t *testing.T, size int, written *atomic.Int32) netip.AddrPort {
	return rawUpstream(t, func(c net.Conn) {
		frame, err := readKafkaFrame(c)
		if err != nil || len(frame) < 12 {
			return
		}
		resp := make([]byte, 4+size)
		binary.BigEndian.PutUint32(resp, uint32(size))
		copy(resp[4:8], frame[8:12]) // the request's correlation ID
		if _, err := c.Write(resp); err == nil && written != nil {
			written.Add(1)
		}
		io.Copy(io.Discard, c)
	})
}

// TestKafkaTopicRuleAllowsNoClusterAPIs: a rule naming only a topic (no
// role, no apiKey) lets through what a client producing or consuming
// that topic sends (ApiVersions, Metadata of every topic, the group APIs,
// Produce), and not the cluster's other APIs: a pod allowed topic1 must
// not end transactions, list or delete groups, read the cluster's
// description, or delete the topic.
func TestKafkaTopicRuleAllowsNoClusterAPIs(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Topic: "topic1"}}})
	recs := h.records()
	k := h.raw()
	endTxn := kmsg.NewPtrEndTxnRequest()
	endTxn.TransactionalID, endTxn.ProducerID = "txn", 1
	deleteGroups := kmsg.NewPtrDeleteGroupsRequest()
	deleteGroups.Groups = []string{"group1"}
	deleteTopics := kmsg.NewPtrDeleteTopicsRequest()
	deleteTopics.Version, deleteTopics.TopicNames = 3, []string{"topic1"}
	denied := []kmsg.Request{endTxn, kmsg.NewPtrListGroupsRequest(), kmsg.NewPtrDescribeClusterRequest(), deleteTopics, deleteGroups}
	allowed := []kmsg.Request{kmsg.NewPtrApiVersionsRequest(), metadataReq(12), kmsg.NewPtrFindCoordinatorRequest(),
		produceReq("topic1", [16]byte{})}
	// The denials that have a top-level error field answer with it; the
	// last (DeleteGroups has none) closes the connection, so it goes last.
	resps := k.send("c", append(slices.Clone(allowed), denied[:4]...)...)
	for i, r := range resps[len(allowed):] {
		code := int16(-1)
		switch r := r.(type) {
		case *kmsg.EndTxnResponse:
			code = r.ErrorCode
		case *kmsg.ListGroupsResponse:
			code = r.ErrorCode
		case *kmsg.DescribeClusterResponse:
			code = r.ErrorCode
		case *kmsg.DeleteTopicsResponse:
			if len(r.Topics) == 1 && r.Topics[0].ErrorCode == kafkaTopicAuthorizationFailed {
				continue
			}
		}
		if code != kafkaClusterAuthorizationFailed {
			t.Errorf("%s under a topic-only rule: error %d, want CLUSTER_AUTHORIZATION_FAILED", kmsg.NameForKey(denied[i].Key()), code)
		}
	}
	got := map[string]string{}
	for _, r := range recs(len(resps)) {
		got[r.Method] = r.Verdict
	}
	for _, q := range allowed {
		if n := kmsg.NameForKey(q.Key()); got[n] != Forwarded {
			t.Errorf("%s under a topic-only rule: %v, want forwarded", n, got[n])
		}
	}
	if _, err := k.c.Write(kafkaRequestFrame(deleteGroups, 99, "c")); err != nil {
		t.Fatal(err)
	}
	if r := recs(1)[0]; r.Method != "DeleteGroups" || r.Verdict != Denied {
		t.Errorf("DeleteGroups under a topic-only rule: %+v, want denied", r)
	}
	if !k.closed() {
		t.Error("a denied DeleteGroups (no error field to set) left the connection open")
	}
}

// Rules naming a topic, with a role or none, let SASL's handshake through
// (a client of a broker that asks for SASL sends nothing else first).
func TestKafkaRulesAllowSASL(t *testing.T) {
	for name, rule := range map[string]KafkaRule{"topic-only": {Topic: "topic1"}, "produce": {Role: "produce", Topic: "topic1"},
		"consume": {Role: "consume", Topic: "topic1"}} {
		h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{rule}})
		recs := h.records()
		hs := kmsg.NewPtrSASLHandshakeRequest()
		hs.Mechanism = "PLAIN"
		// kfake without SASL configured closes the connection: only the
		// proxy's verdict is looked at.
		if _, err := h.raw().c.Write(kafkaRequestFrame(hs, 1, "c")); err != nil {
			t.Fatal(err)
		}
		if r := recs(1)[0]; r.Method != "SASLHandshake" || r.Verdict != Forwarded {
			t.Errorf("SASL handshake under a %s rule: %+v, want forwarded", name, r)
		}
	}
}

// A server a pod may reach (a world address it controls) answering
// Metadata with 100,000 topic IDs pushed every other broker's IDs out of
// the proxy's one table (each then asked for again by the proxy, per
// request). A full table now makes room in the scopes holding the most.
func TestKafkaTopicIDsFloodEvictsItsOwn(t *testing.T) {
	var m kafkaTopicIDs
	broker := kafkaScope{identity: 1234}
	hostile := kafkaScope{addr: netip.MustParseAddrPort("203.0.113.9:9092")}
	meta := func(first, n int) *kmsg.MetadataResponse {
		r := kmsg.NewPtrMetadataResponse()
		for i := first; i < first+n; i++ {
			t := kmsg.NewMetadataResponseTopic()
			t.Topic = kmsg.StringPtr("t" + strconv.Itoa(i))
			binary.BigEndian.PutUint64(t.TopicID[8:], uint64(i+1))
			r.Topics = append(r.Topics, t)
		}
		return r
	}
	m.learn(broker, metadataIDs(meta(0, 100)))
	for i := range 11 {
		m.learn(hostile, metadataIDs(meta(1000+i*10_000, 10_000)))
	}
	for i := range 100 {
		var id [16]byte
		binary.BigEndian.PutUint64(id[8:], uint64(i+1))
		if n, ok := m.name(broker, id); !ok || n != "t"+strconv.Itoa(i) {
			t.Fatalf("the broker's topic %d: %q %v after another scope's flood; want it kept", i, n, ok)
		}
	}
	if got := m.len(); got > maxKafkaTopicIDs {
		t.Fatalf("%d IDs held, bound %d", got, maxKafkaTopicIDs)
	}
}

// A transactional InitProducerID (one naming a transactional.id) fences
// that ID's producer: the broker aborts its open transaction, on topics
// of any name, raises its epoch and hands the asker its producer ID. The
// produce role (and a topic-only rule) allowed it, as the start of
// idempotent producing, so a pod allowed to produce to topic1 could abort
// and fence any producer whose transactional.id it knew (found 2026-12-06
// by a review). A transactional one now needs a rule that names the API
// (apiKey: initproducerid) or allows every API: under a role or
// topic-only rule it is answered TRANSACTIONAL_ID_AUTHORIZATION_FAILED.
// An idempotent producer's (no transactional.id) is still the produce
// role's.
func TestKafkaTransactionalInitProducerIDNeedsItsAPI(t *testing.T) {
	initPID := func(txn *string) *kmsg.InitProducerIDRequest {
		r := kmsg.NewPtrInitProducerIDRequest()
		r.Version = 4
		r.TransactionalID = txn
		r.TransactionTimeoutMillis = 60000
		r.ProducerID, r.ProducerEpoch = -1, -1
		return r
	}
	const txnAuthFailed = 53 // TRANSACTIONAL_ID_AUTHORIZATION_FAILED
	for _, c := range []struct {
		name             string
		rule             KafkaRule
		idempotent, txnl int16 // error codes
	}{
		{"role produce, topic1", KafkaRule{Role: "produce", Topic: "topic1"}, 0, txnAuthFailed},
		{"topic1 only", KafkaRule{Topic: "topic1"}, 0, txnAuthFailed},
		{"role produce", KafkaRule{Role: "produce"}, 0, txnAuthFailed},
		{"apiKey initproducerid", KafkaRule{APIKey: "initproducerid"}, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{c.rule}})
			resps := h.raw().send("attacker", initPID(nil), initPID(kmsg.StringPtr("victim-txn")))
			if got := resps[0].(*kmsg.InitProducerIDResponse).ErrorCode; got != c.idempotent {
				t.Errorf("an idempotent producer's InitProducerID: error %d, want %d", got, c.idempotent)
			}
			if got := resps[1].(*kmsg.InitProducerIDResponse).ErrorCode; got != c.txnl {
				t.Errorf("a transactional InitProducerID: error %d, want %d", got, c.txnl)
			}
		})
	}
}

// A denied AddPartitionsToTxn of versions 0-3 was answered with a
// top-level error code those versions do not encode: the client read "no
// error" and took its partitions as added (found 2026-12-06 by review).
// It now gets each partition's error; v4 and later the top-level one.
func TestKafkaDeniedAddPartitionsToTxnSaysSo(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Topic: "topic1"}}})
	for _, v := range []int16{0, 3, 4} {
		r := kmsg.NewPtrAddPartitionsToTxnRequest()
		r.Version = v
		if v < 4 {
			r.TransactionalID, r.ProducerID = "txn", 1
			rt := kmsg.NewAddPartitionsToTxnRequestTopic()
			rt.Topic, rt.Partitions = "topic2", []int32{0, 1}
			r.Topics = append(r.Topics, rt)
		} else {
			tx := kmsg.NewAddPartitionsToTxnRequestTransaction()
			tx.TransactionalID, tx.ProducerID = "txn", 1
			rt := kmsg.NewAddPartitionsToTxnRequestTransactionTopic()
			rt.Topic, rt.Partitions = "topic2", []int32{0}
			tx.Topics = append(tx.Topics, rt)
			r.Transactions = append(r.Transactions, tx)
		}
		resp := h.raw().send("c", r)[0].(*kmsg.AddPartitionsToTxnResponse)
		var codes []int16
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				codes = append(codes, p.ErrorCode)
			}
		}
		switch {
		case v < 4 && !slices.Equal(codes, []int16{kafkaTopicAuthorizationFailed, kafkaTopicAuthorizationFailed}):
			t.Errorf("v%d: partition errors %v, want TOPIC_AUTHORIZATION_FAILED for both", v, codes)
		case v >= 4 && resp.ErrorCode == 0:
			t.Errorf("v%d: top-level error 0, want a denial", v)
		}
	}
}

// A denial whose top-level error code the request's version does not
// encode closes the connection rather than answer what reads as success
// (DescribeLogDirs before v3 has none; from v3 it does).
func TestKafkaDenialWithoutItsErrorFieldCloses(t *testing.T) {
	h := newKafkaHarness(t, PeerRules{Kafka: []KafkaRule{{Topic: "topic1"}}})
	v3 := kmsg.NewPtrDescribeLogDirsRequest()
	v3.Version = 3
	if resp := h.raw().send("c", v3)[0].(*kmsg.DescribeLogDirsResponse); resp.ErrorCode == 0 {
		t.Errorf("DescribeLogDirs v3 denied: error code 0, want a denial")
	}
	v2 := kmsg.NewPtrDescribeLogDirsRequest()
	v2.Version = 2
	k := h.raw()
	if _, err := k.c.Write(kafkaRequestFrame(v2, 1, "c")); err != nil {
		t.Fatal(err)
	}
	if !k.closed() {
		t.Error("DescribeLogDirs v2 denied: the connection is open, want it closed (v2 has no error code to say so)")
	}
}
