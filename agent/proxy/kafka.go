package proxy

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"iter"
	"math"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// maxKafkaFrame bounds a Kafka response: a bigger one closes the
// connection.
const maxKafkaFrame = 100 << 20

// maxKafkaRequest bounds a client's request (Kafka's own default
// max.request.size is 1 MiB): a bigger one closes the connection. A
// request is parsed whole before it is decided, and parsing can take many
// times its size (arrays of small elements), so the requests being read
// and parsed at once share kafkaRequestBudget bytes: a client waits for
// room, up to its idle timeout. A source (address and identity) holds at
// most a quarter of it, so one pod announcing requests it then sends
// slowly (or never) cannot keep the others' requests waiting.
const maxKafkaRequest = 8 << 20

var kafkaRequestBudget = newByteShare(64<<20, 16<<20)

// kafkaResponseBudget bounds the brokers' responses the proxy holds (read
// and not yet written to their clients): 512 MiB, at most 128 MiB a
// source. A response waits in the broker's socket for room, so a client
// that does not read its responses holds its own share, not the node's
// memory.
var kafkaResponseBudget = newByteShare(512<<20, 128<<20)

// kafkaHoldTimeout bounds how long a request waits for room in the
// request budget, how long its bytes are awaited once the budget holds
// them, and how long a response held in the
// response budget waits for its client to read it; then the connection
// is closed. Clients send a request whole and read responses as they come
// (Kafka's own request timeout is 30 s): sources that together fill a
// budget hold it this long at most, not the idle timeout.
var kafkaHoldTimeout = 30 * time.Second

// maxKafkaInFlight bounds the requests of one connection waiting for
// their responses; the proxy reads no more requests until one is answered.
const maxKafkaInFlight = 1024

// Kafka error codes of the proxy's denials.
const (
	kafkaTopicAuthorizationFailed   int16 = 29
	kafkaUnknownTopicID             int16 = 100
	kafkaFetchSessionIDNotFound     int16 = 70
	kafkaClusterAuthorizationFailed int16 = 31
	// TRANSACTIONAL_ID_AUTHORIZATION_FAILED
	kafkaTransactionalIDAuthorizationFailed int16 = 53
	kafkaUnsupportedVersion                 int16 = 35
)

// ErrKafkaFrame is a Kafka request or response the proxy cannot parse.
var ErrKafkaFrame = errors.New("malformed Kafka frame")

// errKafkaNewApiVersions is an ApiVersions request of a version newer
// than the proxy's: it is answered as a broker does, UNSUPPORTED_VERSION
// in version 0 with the versions the proxy knows, and the client asks
// again.
var errKafkaNewApiVersions = errors.New("ApiVersions version unknown to the proxy")

// kafkaTopic is a topic a request names: by name, or by ID (known: the
// name was learned from a Metadata response).
type kafkaTopic struct {
	name  string
	id    [16]byte
	known bool
}

func (t kafkaTopic) String() string {
	if t.known {
		return t.name
	}
	if t.id != ([16]byte{}) {
		return "id:" + hex.EncodeToString(t.id[:])
	}
	return "?"
}

// kafkaRequest is a parsed request.
type kafkaRequest struct {
	key, version int16
	corr         int32
	clientID     string
	hasClientID  bool // not null
	body         kmsg.Request
	topics       []kafkaTopic // every topic it names; one unknown for APIs whose topics are not read
	allTopics    bool         // a Metadata request for every topic
	noResponse   bool         // Produce with acks=0
	// transactional: an InitProducerID naming a transactional.id, which
	// fences that ID's producer (kafkaRule.matchesAPI).
	transactional bool
}

// unknownID tells whether q names topic id without the proxy knowing its
// name.
func (q *kafkaRequest) unknownID(id [16]byte) bool {
	return slices.ContainsFunc(q.topics, func(t kafkaTopic) bool { return !t.known && t.id == id })
}

// kafkaTopicless are APIs that name no topic: decided by API, version and
// client ID only.
var kafkaTopicless = map[int16]bool{
	kafkaFindCoordinator: true, kafkaJoinGroup: true, kafkaHeartbeat: true, kafkaLeaveGroup: true, kafkaSyncGroup: true,
	15 /* DescribeGroups */ : true, 16 /* ListGroups */ : true, 17 /* SASLHandshake */ : true, kafkaApiVersions: true,
	kafkaInitProducerID: true, 26 /* EndTxn */ : true, 36 /* SASLAuthenticate */ : true, 42 /* DeleteGroups */ : true,
	60 /* DescribeCluster */ : true, 71 /* GetTelemetrySubscriptions */ : true, 72 /* PushTelemetry */ : true,
}

// parseKafkaRequest parses a request frame (without its size): the header
// (v1, or v2 with tagged fields for flexible versions) and the body.
// Topic IDs are named by names(id) when known.
func parseKafkaRequest(frame []byte, names func([16]byte) (string, bool)) (*kafkaRequest, error) {
	if len(frame) < 8 {
		return nil, fmt.Errorf("%w: %d bytes of header", ErrKafkaFrame, len(frame))
	}
	q := &kafkaRequest{key: int16(binary.BigEndian.Uint16(frame)), version: int16(binary.BigEndian.Uint16(frame[2:])),
		corr: int32(binary.BigEndian.Uint32(frame[4:]))}
	q.body = kmsg.RequestForKey(q.key)
	if q.body == nil {
		return q, fmt.Errorf("%w: unknown API key %d", ErrKafkaFrame, q.key)
	}
	if q.key == kafkaApiVersions && q.version > q.body.MaxVersion() {
		return q, errKafkaNewApiVersions
	}
	if q.version < 0 || q.version > q.body.MaxVersion() {
		return q, fmt.Errorf("%w: %s version %d unknown", ErrKafkaFrame, kmsg.NameForKey(q.key), q.version)
	}
	q.body.SetVersion(q.version)
	rest := frame[8:]
	if q.key != 7 || q.version != 0 { // ControlledShutdown v0 has no client ID
		if len(rest) < 2 {
			return q, fmt.Errorf("%w: no client ID", ErrKafkaFrame)
		}
		n := int16(binary.BigEndian.Uint16(rest))
		rest = rest[2:]
		q.hasClientID = n >= 0
		if n > 0 {
			if len(rest) < int(n) {
				return q, fmt.Errorf("%w: client ID truncated", ErrKafkaFrame)
			}
			q.clientID, rest = string(rest[:n]), rest[n:]
		} else if n < -1 {
			return q, fmt.Errorf("%w: client ID length %d", ErrKafkaFrame, n)
		}
	}
	if q.body.IsFlexible() {
		var err error
		if rest, err = skipTags(rest); err != nil {
			return q, err
		}
	}
	if err := q.body.ReadFrom(rest); err != nil {
		return q, fmt.Errorf("%w: %s v%d: %w", ErrKafkaFrame, kmsg.NameForKey(q.key), q.version, err)
	}
	if err := boundKafkaLists(q.body); err != nil {
		return q, fmt.Errorf("%s v%d: %w", kmsg.NameForKey(q.key), q.version, err)
	}
	q.topics, q.noResponse = requestTopics(q.body, names)
	if ip, ok := q.body.(*kmsg.InitProducerIDRequest); ok && ip.TransactionalID != nil {
		q.transactional = true
	}
	if m, ok := q.body.(*kmsg.MetadataRequest); ok && (m.Topics == nil || m.Version == 0 && len(m.Topics) == 0) {
		q.allTopics = true
	}
	return q, nil
}

// A request's lists are bounded: at most maxKafkaOwnEntries entries in its
// own lists (the topics of Produce, Fetch, Metadata..., FindCoordinator's
// keys, OffsetFetch's groups) and maxKafkaEntries in its lists at every
// depth (partitions among them). Deciding a request costs some hundreds of
// bytes an entry (the topics listed and named in its record, a denial
// entry each), and its entries can be two bytes each: until 2026-12-07 a
// Metadata request of 8 MiB naming 4M empty topics took 1.6 GiB to decide
// (TestKafkaDecisionCostsNoMoreThanItsParse). Clients name the topics
// and partitions they produce to or fetch from one broker, and an
// admin client the topics it describes: far fewer. A request past the
// bounds closes the connection (no response has a field for it).
const (
	maxKafkaOwnEntries = 10_000
	maxKafkaEntries    = 100_000
)

// errKafkaTooManyEntries is a request whose lists hold more entries than
// the bounds above.
var errKafkaTooManyEntries = errors.New("Kafka request lists too many entries")

// boundKafkaLists checks a parsed request's lists against the bounds
// before anything is made of their entries; it counts no further than
// they allow.
func boundKafkaLists(body kmsg.Request) error {
	v := reflect.ValueOf(body).Elem()
	own, all := 0, 0
	for _, i := range kafkaListFields(v.Type()) {
		if f := v.Field(i); f.Kind() == reflect.Slice {
			own += f.Len()
		}
	}
	countKafkaEntries(v, &all)
	if own > maxKafkaOwnEntries || all > maxKafkaEntries {
		return fmt.Errorf("%w (more than %d in its own lists or %d in all)", errKafkaTooManyEntries, maxKafkaOwnEntries, maxKafkaEntries)
	}
	return nil
}

// countKafkaEntries adds the entries of the lists in v (a struct, or a
// list) to *n, stopping once past maxKafkaEntries.
func countKafkaEntries(v reflect.Value, n *int) {
	switch v.Kind() {
	case reflect.Struct:
		for _, i := range kafkaListFields(v.Type()) {
			countKafkaEntries(v.Field(i), n)
		}
	case reflect.Slice:
		*n += v.Len()
		if kafkaHoldsLists(v.Type().Elem()) {
			for j := 0; j < v.Len() && *n <= maxKafkaEntries; j++ {
				countKafkaEntries(v.Index(j), n)
			}
		}
	case reflect.Pointer:
		if !v.IsNil() {
			countKafkaEntries(v.Elem(), n)
		}
	}
}

// kafkaListFieldsOf caches kafkaListFields per struct type.
var kafkaListFieldsOf sync.Map // reflect.Type -> []int

// kafkaListFields are the indices of struct type t's fields that are
// lists or hold some.
func kafkaListFields(t reflect.Type) []int {
	if fs, ok := kafkaListFieldsOf.Load(t); ok {
		return fs.([]int)
	}
	var fs []int
	for i := range t.NumField() {
		if kafkaHoldsLists(t.Field(i).Type) {
			fs = append(fs, i)
		}
	}
	kafkaListFieldsOf.Store(t, fs)
	return fs
}

// kafkaHoldsLists tells whether a value of type t is a list (a slice, bytes
// aside: records and the like are counted by the frame's size) or holds
// one.
func kafkaHoldsLists(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Slice:
		return t.Elem().Kind() != reflect.Uint8
	case reflect.Struct:
		return len(kafkaListFields(t)) > 0
	case reflect.Pointer: // (a StreamsGroupHeartbeat's Topology; until 2026-12-07 not followed)
		return kafkaHoldsLists(t.Elem())
	}
	return false
}

// skipTags skips a header's tagged fields.
func skipTags(b []byte) ([]byte, error) {
	w := kafkaWire{b: b, flexible: true}
	if w.tags(); w.bad {
		return nil, fmt.Errorf("%w: header tags", ErrKafkaFrame)
	}
	return b[w.off:], nil
}

// kafkaWire reads a message's fields in place, without parsing it into
// memory; a read past its end sets bad (and reads nothing more).
type kafkaWire struct {
	b        []byte
	off      int
	flexible bool // compact lengths and tagged fields
	bad      bool
}

func (w *kafkaWire) skip(n int) {
	if n < 0 || n > len(w.b)-w.off {
		w.bad, w.off = true, len(w.b)
		return
	}
	w.off += n
}

// take is the next n bytes (nil past the end).
func (w *kafkaWire) take(n int) []byte {
	if w.skip(n); w.bad {
		return nil
	}
	return w.b[w.off-n : w.off]
}

func (w *kafkaWire) int16() int16 {
	if b := w.take(2); b != nil {
		return int16(binary.BigEndian.Uint16(b))
	}
	return 0
}

// uvarint reads an unsigned varint of Kafka's: five bytes at most, 32
// bits.
func (w *kafkaWire) uvarint() uint64 {
	v, n := binary.Uvarint(w.b[w.off:])
	if n <= 0 || n > 5 || v > math.MaxUint32 {
		w.bad, w.off = true, len(w.b)
		return 0
	}
	w.off += n
	return v
}

// length reads a string's or an array's length (-1: null): compact when
// flexible, else an int16's for a string, an int32's for an array.
func (w *kafkaWire) length(array bool) int {
	switch {
	case w.flexible:
		v := w.uvarint()
		if v > uint64(len(w.b)) {
			w.bad, w.off = true, len(w.b)
			return 0
		}
		return int(v) - 1
	case array:
		if b := w.take(4); b != nil {
			return int(int32(binary.BigEndian.Uint32(b)))
		}
		return 0
	}
	return int(w.int16())
}

// str reads a string, nil when null.
func (w *kafkaWire) str() []byte {
	if n := w.length(false); n >= 0 {
		return w.take(n)
	}
	return nil
}

// text reads a string that is not nullable (null is malformed, as kmsg
// reads it).
func (w *kafkaWire) text() []byte {
	s := w.str()
	if s == nil {
		w.bad, w.off = true, len(w.b)
	}
	return s
}

// array reads an array's length, 0 when null.
func (w *kafkaWire) array() int {
	return max(w.length(true), 0)
}

// tags skips tagged fields, when flexible.
func (w *kafkaWire) tags() {
	if !w.flexible {
		return
	}
	for n := w.uvarint(); n > 0 && !w.bad; n-- {
		w.uvarint()
		w.skip(int(min(w.uvarint(), uint64(len(w.b)+1))))
	}
}

// appendLength appends an array's length as w reads it.
func (w *kafkaWire) appendLength(b []byte, n int) []byte {
	if w.flexible {
		return binary.AppendUvarint(b, uint64(n)+1)
	}
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// kafkaMetadataTopic is a topic entry of a Metadata response, read in
// place: body[start:end] holds it.
type kafkaMetadataTopic struct {
	errorCode  int16
	name       []byte // nil: null
	id         [16]byte
	start, end int
}

// kafkaTopicsAt is where a Metadata response's topics are: their count at
// body[count:first], n entries at body[first:end].
type kafkaTopicsAt struct {
	count, first, end, n int
}

// walkKafkaMetadata reads a Metadata response's body (after the header) of
// the given version in place, calling each (when not nil) on every topic
// in turn; false: it does not parse (each may have been called on the
// topics before the fault). Nothing is allocated per entry: a response
// of small entries parsed by kmsg took some ten times its size.
func walkKafkaMetadata(body []byte, version int16, each func(kafkaMetadataTopic)) (kafkaTopicsAt, bool) {
	w := &kafkaWire{b: body, flexible: version >= 9}
	if version >= 3 {
		w.skip(4) // ThrottleMillis
	}
	for n := w.array(); n > 0 && !w.bad; n-- { // Brokers
		w.skip(4) // NodeID
		w.text()  // Host
		w.skip(4) // Port
		if version >= 1 {
			w.str() // Rack
		}
		w.tags()
	}
	if version >= 2 {
		w.str() // ClusterID
	}
	if version >= 1 {
		w.skip(4) // ControllerID
	}
	at := kafkaTopicsAt{count: w.off}
	n := w.array()
	at.first = w.off
	for ; n > 0 && !w.bad; n-- {
		t := kafkaMetadataTopic{start: w.off}
		t.errorCode = w.int16()
		if version < 12 {
			t.name = w.text()
		} else {
			t.name = w.str()
		}
		if version >= 10 {
			copy(t.id[:], w.take(16))
		}
		if version >= 1 {
			w.skip(1) // IsInternal
		}
		for p := w.array(); p > 0 && !w.bad; p-- {
			w.skip(2 + 4 + 4) // ErrorCode, Partition, Leader
			if version >= 7 {
				w.skip(4) // LeaderEpoch
			}
			w.skip(4 * w.array()) // Replicas
			w.skip(4 * w.array()) // ISR
			if version >= 5 {
				w.skip(4 * w.array()) // OfflineReplicas
			}
			w.tags()
		}
		if version >= 8 {
			w.skip(4) // AuthorizedOperations
		}
		w.tags()
		if t.end = w.off; !w.bad && each != nil {
			each(t)
		}
		at.n++
	}
	at.end = w.off
	if version >= 8 && version <= 10 {
		w.skip(4) // ClusterAuthorizedOperations
	}
	if version >= 13 {
		w.skip(2) // ErrorCode
	}
	w.tags()
	return at, !w.bad && w.off == len(body)
}

// requestTopics lists the topics a request names (by name, or by ID
// through names), and tells whether it has no response. A Metadata
// request for every topic names none: it is decided as a request without
// topics, and the topics the client may not see are left out of its
// response (inspectKafkaResponse). APIs whose topics are not read name one
// unknown topic (only rules without a topic allow them).
func requestTopics(r kmsg.Request, names func([16]byte) (string, bool)) (topics []kafkaTopic, noResponse bool) {
	byName := func(n string) { topics = append(topics, kafkaTopic{name: n, known: true}) }
	byID := func(name string, id [16]byte, v13 bool) {
		if !v13 {
			byName(name)
			return
		}
		t := kafkaTopic{id: id}
		t.name, t.known = names(id)
		topics = append(topics, t)
	}
	switch r := r.(type) {
	case *kmsg.ProduceRequest:
		for _, t := range r.Topics {
			byID(t.Topic, t.TopicID, r.Version >= 13)
		}
		return topics, r.Acks == 0
	case *kmsg.FetchRequest:
		for _, t := range r.Topics {
			byID(t.Topic, t.TopicID, r.Version >= 13)
		}
		// Forgotten topics leave the fetch session: no access.
	case *kmsg.ListOffsetsRequest:
		for _, t := range r.Topics {
			byName(t.Topic)
		}
	case *kmsg.MetadataRequest:
		// From v12 a broker answers by the IDs as soon as one entry has
		// one, names ignored: then every entry is decided by its ID.
		anyID := false
		for _, t := range r.Topics {
			anyID = anyID || r.Version >= 12 && t.TopicID != [16]byte{}
		}
		for _, t := range r.Topics {
			if t.Topic != nil && !anyID {
				byName(*t.Topic)
			} else {
				byID("", t.TopicID, true)
			}
		}
	case *kmsg.OffsetCommitRequest:
		for _, t := range r.Topics {
			byID(t.Topic, t.TopicID, r.Version >= 10)
		}
	case *kmsg.OffsetFetchRequest:
		for _, t := range r.Topics {
			byName(t.Topic)
		}
		for _, g := range r.Groups {
			for _, t := range g.Topics {
				byID(t.Topic, t.TopicID, r.Version >= 10)
			}
		}
		if r.Version < 8 && r.Topics == nil || r.Version >= 8 && groupsAllTopics(r.Groups) {
			topics = append(topics, kafkaTopic{}) // every topic's offsets: only rules without a topic
		}
	case *kmsg.CreateTopicsRequest:
		for _, t := range r.Topics {
			byName(t.Topic)
		}
	case *kmsg.DeleteTopicsRequest:
		for _, n := range r.TopicNames {
			byName(n)
		}
		for _, t := range r.Topics {
			if t.Topic != nil {
				byName(*t.Topic)
			} else {
				byID("", t.TopicID, true)
			}
		}
	case *kmsg.DeleteRecordsRequest:
		for _, t := range r.Topics {
			byName(t.Topic)
		}
	case *kmsg.ConsumerGroupHeartbeatRequest:
		for _, n := range r.SubscribedTopicNames {
			byName(n)
		}
		if r.SubscribedTopicRegex != nil {
			topics = append(topics, kafkaTopic{}) // any topic: only rules without a topic
		}
		for _, t := range r.Topics {
			byID("", t.TopicID, true)
		}
	default:
		if !kafkaTopicless[r.Key()] {
			topics = []kafkaTopic{{}}
		}
	}
	return topics, false
}

func groupsAllTopics(gs []kmsg.OffsetFetchRequestGroup) bool {
	for _, g := range gs {
		if g.Topics == nil {
			return true
		}
	}
	return false
}

// kafkaDenial is the API's own error response to a denied request, framed,
// with its correlation ID: topics' (partitions') error codes
// TOPIC_AUTHORIZATION_FAILED, or else the top-level error code
// (denialCode). Nil: the API has no such field (the connection is closed
// instead).
func kafkaDenial(q *kafkaRequest) []byte {
	resp := kafkaDenialResponse(q.body, denialCode(q), q.unknownID)
	if resp == nil {
		return nil
	}
	return kafkaResponseFrame(q, resp)
}

// kafkaDenialResponse is kafkaDenial's response, unframed; topLevel is
// the error code for a response with only a top-level error field. A
// topic named by an ID the proxy could not name (unknown, not even from
// the broker) gets UNKNOWN_TOPIC_ID, as the broker would answer, and which
// clients retry (after a lookup that timed out, the next may succeed);
// other topics TOPIC_AUTHORIZATION_FAILED.
func kafkaDenialResponse(body kmsg.Request, topLevel int16, unknown func([16]byte) bool) kmsg.Response {
	resp := body.ResponseKind()
	resp.SetVersion(body.GetVersion())
	const tErr = kafkaTopicAuthorizationFailed
	idErr := func(id [16]byte) int16 {
		if id != ([16]byte{}) && unknown(id) {
			return kafkaUnknownTopicID
		}
		return tErr
	}
	switch req := body.(type) {
	case *kmsg.ProduceRequest:
		r := resp.(*kmsg.ProduceResponse)
		for _, t := range req.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, p := range t.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition, rp.ErrorCode, rp.BaseOffset = p.Partition, idErr(t.TopicID), -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			r.Topics = append(r.Topics, rt)
		}
	case *kmsg.FetchRequest:
		r := resp.(*kmsg.FetchResponse)
		r.SessionID = 0 // no session: the next fetch is a full one
		for _, t := range req.Topics {
			rt := kmsg.NewFetchResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, p := range t.Partitions {
				rp := kmsg.NewFetchResponseTopicPartition()
				rp.Partition, rp.ErrorCode, rp.HighWatermark = p.Partition, idErr(t.TopicID), -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			r.Topics = append(r.Topics, rt)
		}
	case *kmsg.ListOffsetsRequest:
		r := resp.(*kmsg.ListOffsetsResponse)
		for _, t := range req.Topics {
			rt := kmsg.NewListOffsetsResponseTopic()
			rt.Topic = t.Topic
			for _, p := range t.Partitions {
				rp := kmsg.NewListOffsetsResponseTopicPartition()
				rp.Partition, rp.ErrorCode = p.Partition, tErr
				rt.Partitions = append(rt.Partitions, rp)
			}
			r.Topics = append(r.Topics, rt)
		}
	case *kmsg.MetadataRequest:
		r := resp.(*kmsg.MetadataResponse)
		for _, t := range req.Topics {
			rt := kmsg.NewMetadataResponseTopic()
			rt.Topic, rt.TopicID, rt.ErrorCode = t.Topic, t.TopicID, idErr(t.TopicID)
			r.Topics = append(r.Topics, rt)
		}
	case *kmsg.OffsetCommitRequest:
		r := resp.(*kmsg.OffsetCommitResponse)
		for _, t := range req.Topics {
			rt := kmsg.NewOffsetCommitResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, p := range t.Partitions {
				rp := kmsg.NewOffsetCommitResponseTopicPartition()
				rp.Partition, rp.ErrorCode = p.Partition, idErr(t.TopicID)
				rt.Partitions = append(rt.Partitions, rp)
			}
			r.Topics = append(r.Topics, rt)
		}
	case *kmsg.OffsetFetchRequest:
		r := resp.(*kmsg.OffsetFetchResponse)
		r.ErrorCode = tErr
		for _, t := range req.Topics {
			rt := kmsg.NewOffsetFetchResponseTopic()
			rt.Topic = t.Topic
			for _, p := range t.Partitions {
				rp := kmsg.NewOffsetFetchResponseTopicPartition()
				rp.Partition, rp.ErrorCode, rp.Offset = p, tErr, -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			r.Topics = append(r.Topics, rt)
		}
		for _, g := range req.Groups {
			rg := kmsg.NewOffsetFetchResponseGroup()
			rg.Group, rg.ErrorCode = g.Group, tErr
			r.Groups = append(r.Groups, rg)
		}
	case *kmsg.CreateTopicsRequest:
		r := resp.(*kmsg.CreateTopicsResponse)
		for _, t := range req.Topics {
			rt := kmsg.NewCreateTopicsResponseTopic()
			rt.Topic, rt.ErrorCode = t.Topic, tErr
			r.Topics = append(r.Topics, rt)
		}
	case *kmsg.DeleteTopicsRequest:
		r := resp.(*kmsg.DeleteTopicsResponse)
		for _, n := range req.TopicNames {
			rt := kmsg.NewDeleteTopicsResponseTopic()
			rt.Topic, rt.ErrorCode = kmsg.StringPtr(n), tErr
			r.Topics = append(r.Topics, rt)
		}
		for _, t := range req.Topics {
			rt := kmsg.NewDeleteTopicsResponseTopic()
			rt.Topic, rt.TopicID, rt.ErrorCode = t.Topic, t.TopicID, idErr(t.TopicID)
			r.Topics = append(r.Topics, rt)
		}
	case *kmsg.DeleteRecordsRequest:
		r := resp.(*kmsg.DeleteRecordsResponse)
		for _, t := range req.Topics {
			rt := kmsg.NewDeleteRecordsResponseTopic()
			rt.Topic = t.Topic
			for _, p := range t.Partitions {
				rp := kmsg.NewDeleteRecordsResponseTopicPartition()
				rp.Partition, rp.ErrorCode, rp.LowWatermark = p.Partition, tErr, -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			r.Topics = append(r.Topics, rt)
		}
	case *kmsg.FindCoordinatorRequest:
		r := resp.(*kmsg.FindCoordinatorResponse)
		r.ErrorCode, r.NodeID = kafkaClusterAuthorizationFailed, -1
		for _, k := range req.CoordinatorKeys {
			c := kmsg.NewFindCoordinatorResponseCoordinator()
			c.Key, c.NodeID, c.ErrorCode = k, -1, kafkaClusterAuthorizationFailed
			r.Coordinators = append(r.Coordinators, c)
		}
	case *kmsg.AddPartitionsToTxnRequest:
		r := resp.(*kmsg.AddPartitionsToTxnResponse)
		if req.Version >= 4 {
			r.ErrorCode = topLevel
			break
		}
		// v0-3 have errors per partition only: a response with none
		// reads as every partition added (found by review: the top-level
		// code set below is not encoded before v4).
		for _, t := range req.Topics {
			rt := kmsg.NewAddPartitionsToTxnResponseTopic()
			rt.Topic = t.Topic
			for _, p := range t.Partitions {
				rp := kmsg.NewAddPartitionsToTxnResponseTopicPartition()
				rp.Partition, rp.ErrorCode = p, tErr
				rt.Partitions = append(rt.Partitions, rp)
			}
			r.Topics = append(r.Topics, rt)
		}
	default:
		f := reflect.ValueOf(resp).Elem().FieldByName("ErrorCode")
		if !f.IsValid() || f.Kind() != reflect.Int16 {
			return nil
		}
		// A top-level error code some versions do not encode would make
		// the denial read as a success: such a response is none (the
		// connection is closed instead).
		without := resp.AppendTo(nil)
		f.SetInt(int64(topLevel))
		if bytes.Equal(without, resp.AppendTo(nil)) {
			return nil
		}
	}
	return resp
}

// splitKafka splits a Produce, Fetch or Metadata request some of whose
// topics are allowed (ok, in requestTopics' order) into the request of the
// allowed ones, for the broker, and the denied ones, whose errors are
// merged into its response (mergeKafka). Other APIs are not split.
func splitKafka(body kmsg.Request, ok []bool) (allowed, denied kmsg.Request) {
	switch r := body.(type) {
	case *kmsg.ProduceRequest:
		a, d := *r, *r
		a.Topics, d.Topics = splitTopics(r.Topics, ok)
		return &a, &d
	case *kmsg.FetchRequest:
		a, d := *r, *r
		a.Topics, d.Topics = splitTopics(r.Topics, ok)
		return &a, &d
	case *kmsg.MetadataRequest:
		a, d := *r, *r
		a.Topics, d.Topics = splitTopics(r.Topics, ok)
		return &a, &d
	}
	return nil, nil
}

// splitTopics splits ts by ok; the allowed part is never nil (a Metadata
// request's nil topics ask for every topic).
func splitTopics[T any](ts []T, ok []bool) (allowed, denied []T) {
	allowed = []T{}
	for i, t := range ts {
		if ok[i] {
			allowed = append(allowed, t)
		} else {
			denied = append(denied, t)
		}
	}
	return allowed, denied
}

// mergeKafka adds the topics of denial (kafkaDenialResponse of a split
// Produce or Fetch request's denied part, encoded) to the broker's
// response frame (without its size) to the allowed part; false: the
// response does not parse. (A Metadata response's are added in place:
// inspectKafkaMetadata.)
func mergeKafka(frame []byte, key, version int16, encoded []byte) ([]byte, bool) {
	resp, denial := kmsg.ResponseForKey(key), kmsg.ResponseForKey(key)
	resp.SetVersion(version)
	denial.SetVersion(version)
	if denial.ReadFrom(encoded) != nil {
		return nil, false
	}
	body := frame[4:]
	if resp.IsFlexible() {
		var err error
		if body, err = skipTags(body); err != nil {
			return nil, false
		}
	}
	if resp.ReadFrom(body) != nil {
		return nil, false
	}
	switch r := resp.(type) {
	case *kmsg.ProduceResponse:
		r.Topics = append(r.Topics, denial.(*kmsg.ProduceResponse).Topics...)
	case *kmsg.FetchResponse:
		r.Topics = append(r.Topics, denial.(*kmsg.FetchResponse).Topics...)
	default:
		return nil, false
	}
	return kafkaResponseFrame(&kafkaRequest{key: resp.Key(), corr: int32(binary.BigEndian.Uint32(frame))}, resp), true
}

// kafkaResponseFrame frames a response to q: size, correlation ID, the
// header's tags when flexible (never for ApiVersions), the body.
func kafkaResponseFrame(q *kafkaRequest, resp kmsg.Response) []byte {
	b := make([]byte, 8, 64)
	binary.BigEndian.PutUint32(b[4:], uint32(q.corr))
	if resp.IsFlexible() && q.key != kafkaApiVersions {
		b = append(b, 0)
	}
	b = resp.AppendTo(b)
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// maxKafkaTopicIDs bounds the topic IDs the proxy remembers.
const maxKafkaTopicIDs = 100_000

// kafkaScope is whose Metadata responses name a topic ID: the brokers of
// one cluster identity, or one address and port for brokers outside the
// cluster (world and CIDR identities cover servers that are no broker of
// ours, one of which must not name IDs for the others; nor another port of
// the same address: a load balancer or a NAT'd host fronts many servers).
type kafkaScope struct {
	identity uint32
	addr     netip.AddrPort
}

func kafkaScopeOf(cfg *compiled, dst netip.AddrPort) kafkaScope {
	// An allocated identity only: a cover identity (cluster-local number
	// below identity.LocalMin) stands for every pod of a remote cluster
	// (until 2026-12-06 its pods shared one scope with its brokers:
	// TestKafkaScopeOfCoverIsTheAddress).
	if id := cfg.identity(dst.Addr()); isWorkload(id) && id&localNumberMask != coverLocal {
		return kafkaScope{identity: id}
	}
	// Until 2026-12-06 the address alone
	// (TestKafkaScopeOfOutsideServerIsAddressAndPort).
	return kafkaScope{addr: netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())}
}

const (
	// localNumberMask is the cluster-local number's bits in the layout of
	// 511 clusters (15 bits; 16 in the default layout, whose 16th bit is
	// then ignored), and coverLocal a cover identity's local number
	// (agent/sparse) in both: a default layout's workload of local number
	// 0x8001 is taken for a cover too (scoped by address: more lookups,
	// no other verdict).
	localNumberMask = 0x7fff
	coverLocal      = 1
)

// kafkaTopicIDs are the topic names of IDs learned from Metadata responses
// the proxy forwarded: a client may fetch by ID on another connection than
// the one it asked for metadata on (franz-go does). The table holds
// maxKafkaTopicIDs in all; when full, room is made in the holder holding
// the most (holder), so one server answering with IDs without end, on
// one port or on many, pushes out its own, not the brokers'.
type kafkaTopicIDs struct {
	mu      sync.Mutex
	scopes  map[kafkaScope]map[[16]byte]string
	holders map[kafkaScope]int // IDs held by each holder
	n       int
}

// holder is whom a scope's IDs count against when the table is full: the
// scope's identity, or its address over all its ports (until 2026-12-07
// each port counted apart, and a server answering on 400 ports, each
// holding less than the broker, pushed the broker's IDs out:
// TestKafkaTopicIDsFloodFromManyScopes).
func (s kafkaScope) holder() kafkaScope {
	if s.identity != 0 {
		return s
	}
	return kafkaScope{addr: netip.AddrPortFrom(s.addr.Addr(), 0)}
}

// kafkaEvictBatch is how many IDs a full table drops at once: finding the
// holder holding the most takes a pass over the holders, done once a
// batch rather than once an ID.
const kafkaEvictBatch = maxKafkaTopicIDs / 100

func (m *kafkaTopicIDs) name(scope kafkaScope, id [16]byte) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.scopes[scope][id]
	return n, ok
}

// len is the number of IDs held.
func (m *kafkaTopicIDs) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.n
}

// learn remembers the names of topic IDs (a Metadata response's).
func (m *kafkaTopicIDs) learn(scope kafkaScope, topics iter.Seq2[[16]byte, string]) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.scopes == nil {
		m.scopes, m.holders = map[kafkaScope]map[[16]byte]string{}, map[kafkaScope]int{}
	}
	for id, name := range topics {
		ids := m.scopes[scope]
		if _, ok := ids[id]; !ok {
			if m.n >= maxKafkaTopicIDs {
				m.evict(scope)
			}
			if ids = m.scopes[scope]; ids == nil {
				ids = map[[16]byte]string{}
				m.scopes[scope] = ids
			}
			m.n++
			m.holders[scope.holder()]++
		}
		ids[id] = name
	}
}

// evict drops kafkaEvictBatch IDs (or all it holds) of the holder holding
// the most, scope's own holder on a tie, and of that holder scope's own
// IDs first; m.mu is held. Until 2026-12-07 one ID of any scope holding
// at least the average share.
func (m *kafkaTopicIDs) evict(scope kafkaScope) {
	from := scope.holder()
	for h, n := range m.holders {
		if n > m.holders[from] {
			from = h
		}
	}
	left := min(kafkaEvictBatch, m.holders[from])
	drop := func(s kafkaScope) {
		ids := m.scopes[s]
		for id := range ids {
			if left == 0 {
				break
			}
			delete(ids, id)
			left--
			m.n--
			m.holders[from]--
		}
		if len(ids) == 0 {
			delete(m.scopes, s)
		}
	}
	if scope.holder() == from {
		drop(scope)
	}
	for s := range m.scopes {
		if left == 0 {
			break
		}
		if s.holder() == from {
			drop(s)
		}
	}
	if m.holders[from] == 0 {
		delete(m.holders, from)
	}
}

// kafkaPending is a request waiting for its response to go out.
type kafkaPending struct {
	key, version int16
	corr         int32
	upstream     bool                    // answered by the broker
	merge        []byte                  // the denied topics' errors to add to it (a response body)
	visible      func(topic string) bool // a Metadata response's topics the client may see; nil: all
	resp         []byte                  // the framed response, once known
	// internal is the proxy's own request (resolveID): closed once its
	// response is read; the response is never sent to the client.
	internal chan struct{}
	// opensSession: a Fetch opening a fetch session, whose ID the
	// response gives (kafkaConn.sessions).
	opensSession bool
	// held: what the entry holds of kafkaResponseBudget: its denial, or
	// the errors to merge and the broker's response.
	held int64
}

// kafkaConn is a downstream Kafka connection being served.
type kafkaConn struct {
	p     *Proxy
	dc    *downConn
	up    net.Conn
	scope kafkaScope
	done  chan struct{} // closed when the connection ends
	once  sync.Once

	slots chan struct{} // in-flight requests

	mu    sync.Mutex
	queue []*kafkaPending // in request order

	// serveKafka's goroutine's: the last correlation ID of the proxy's
	// own requests; the topic IDs resolveID asked for on the request
	// being decided, and until when it may wait for answers.
	corr      int32
	tried     map[[16]byte]bool
	resolveBy time.Time

	// sessions are the fetch sessions the broker opened on this
	// connection (under mu): the only ones incremental Fetches may use.
	sessions map[int32]bool
	// held is what the queue's responses hold of kafkaResponseBudget,
	// released as they are written and at the end (under mu); ended: the
	// connection ended, and its holdings were released.
	held  int64
	ended bool
	// budget is kafkaResponseBudget as the connection began (what it
	// holds goes back there, whatever a test made the variable since).
	budget *byteShare
	// ctx ends with the connection.
	ctx    context.Context
	cancel context.CancelFunc
}

// maxKafkaSessions bounds the fetch sessions one connection keeps (a
// client has one per broker connection); past it the oldest are
// forgotten all at once.
const maxKafkaSessions = 64

// session reports whether the fetch session id was opened on kc.
func (kc *kafkaConn) session(id int32) bool {
	kc.mu.Lock()
	defer kc.mu.Unlock()
	return kc.sessions[id]
}

// learnSession notes the session a Fetch opening one got (its response,
// framed); kc.mu held.
func (kc *kafkaConn) learnSession(pd *kafkaPending, framed []byte) {
	body := framed[8:]
	if pd.version >= 12 { // flexible: the header's tagged fields first
		var err error
		if body, err = skipTags(body); err != nil {
			return
		}
	}
	if len(body) < 10 { // ThrottleMillis, ErrorCode, SessionID
		return
	}
	id := int32(binary.BigEndian.Uint32(body[6:10]))
	if id == 0 {
		return
	}
	if kc.sessions == nil || len(kc.sessions) >= maxKafkaSessions {
		kc.sessions = map[int32]bool{}
	}
	kc.sessions[id] = true
}

func (kc *kafkaConn) close() {
	kc.once.Do(func() {
		close(kc.done)
		kc.cancel()
		kc.dc.Close()
		kc.up.Close()
		kc.mu.Lock()
		kc.budget.release(kc.dc.who, kc.held)
		kc.held, kc.ended = 0, true
		kc.mu.Unlock()
	})
}

// serveKafka serves a connection whose port's policy is Kafka: each
// request is decided and forwarded on the connection's own upstream
// connection (marked with the client's identity) or answered with the
// API's error response; responses go back in request order.
func (p *Proxy) serveKafka(dc *downConn) {
	dc.mu.Lock()
	dc.kafka = true // closed when its port policy changes (store)
	dc.mu.Unlock()
	cfg := p.cfg.Load()
	srcID := dc.srcIdentity(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.DialTimeout)
	up, err := p.dialUpstream(ctx, "tcp", dc.src.Addr(), dc.dst, srcID)
	cancel()
	if err != nil {
		p.log.Debug("L7 proxy: Kafka upstream", "dst", dc.dst, "err", err)
		dc.Close()
		return
	}
	kc := &kafkaConn{p: p, dc: dc, up: up, scope: kafkaScopeOf(cfg, dc.dst), done: make(chan struct{}), budget: kafkaResponseBudget,
		slots: make(chan struct{}, maxKafkaInFlight)}
	kc.ctx, kc.cancel = context.WithCancel(context.Background())
	defer kc.close()
	go kc.readUpstream()
	// A request's size is read with what follows it in one system call;
	// the rest of a large request is read straight into its buffer.
	r := bufio.NewReaderSize(dc, kafkaReadAhead)
	for {
		dc.SetReadDeadline(time.Now().Add(p.opts.IdleTimeout))
		n, err := readKafkaSize(r, maxKafkaRequest)
		var framed []byte
		if err == nil {
			framed, err = readBudgeted(r, dc, n, kafkaHoldTimeout)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				p.log.Debug("L7 proxy: Kafka request", "src", dc.src, "err", err)
			}
			return
		}
		ok := kc.serve(srcID, n, framed)
		putKafkaBuf(framed) // forwarded or answered: nothing refers to it
		if !ok {
			return
		}
	}
}

// kafkaReadAhead is the read buffer of a Kafka connection's requests.
const kafkaReadAhead = 16 << 10

// serve decides one request (framed, its body n bytes held in the
// budget) and forwards it or queues its denial; false: the connection is
// closed.
func (kc *kafkaConn) serve(srcID uint32, n int32, framed []byte) bool {
	p := kc.p
	clear(kc.tried)
	kc.resolveBy = time.Now().Add(kafkaResolveTimeout)
	v := p.judgeKafka(kc.dc, srcID, kc.scope, framed[4:], kc.resolveID, kc.session)
	if v.close || v.q.noResponse && !v.forward { // acks=0: the client expects no answer
		kafkaRequestBudget.release(kc.dc.who, int64(n))
		return !v.close
	}
	// A denial, or the errors to merge into the broker's response, is held
	// until written: charged to the client's response share before it is
	// queued, the request's bytes held meanwhile (until 2026-12-07 neither
	// was, and a connection queued denials without end behind a request
	// the broker held: TestKafkaDenialsHoldOnlyTheirShare).
	held := int64(len(v.reply) + len(v.merge))
	if v.q.noResponse {
		held = 0 // a Produce with acks=0 forwarded: nothing is queued
	}
	ctx, cancel := context.WithTimeout(kc.ctx, kafkaHoldTimeout)
	err := kc.charge(ctx, held)
	cancel()
	kafkaRequestBudget.release(kc.dc.who, int64(n)) // parsed and decided
	if err != nil {
		p.log.Debug("L7 proxy: Kafka answer", "src", kc.dc.src, "err", fmt.Errorf("no room for %d bytes: %w", held, err))
		return false
	}
	select {
	case kc.slots <- struct{}{}:
	case <-kc.done:
		return false // close released what was charged
	}
	if !v.forward {
		kc.mu.Lock()
		kc.queue = append(kc.queue, &kafkaPending{key: v.q.key, version: v.q.version, corr: v.q.corr, resp: v.reply, held: held})
		err := kc.flush()
		kc.mu.Unlock()
		return err == nil
	}
	if !v.q.noResponse {
		kc.mu.Lock()
		fr, fetch := v.q.body.(*kmsg.FetchRequest)
		kc.queue = append(kc.queue, &kafkaPending{key: v.q.key, version: v.q.version, corr: v.q.corr, upstream: true, merge: v.merge, visible: v.visible,
			opensSession: fetch && fr.Version >= 7 && fr.SessionEpoch == 0, held: held})
		kc.mu.Unlock()
	} else {
		<-kc.slots
	}
	if v.frame != nil {
		framed = v.frame
	}
	kc.up.SetWriteDeadline(time.Now().Add(p.opts.IdleTimeout))
	_, err = kc.up.Write(framed)
	return err == nil
}

// Resolving topic IDs the proxy has not seen named. A request may name a
// topic by an ID whose Metadata response went through another node's
// proxy (the client asked another broker), or before this proxy started:
// then the proxy asks the broker itself, on the connection's own upstream
// connection (so with the client's identity, as the client could), in
// line with the client's requests, and decides once the answer is in.
const (
	// kafkaResolveTimeout bounds the wait for the broker's answers for one
	// request (its bytes are held in the parse budget meanwhile); an ID
	// not answered by then stays unknown, and no topic rule allows it.
	kafkaResolveTimeout = 5 * time.Second
	// maxKafkaResolves bounds the IDs asked for per request.
	maxKafkaResolves = 16
	// kafkaResolveVersion is the Metadata version that looks topics up by
	// ID alone (KIP-516).
	kafkaResolveVersion = 12
)

// resolveID asks the broker for the name of topic ID id (a Metadata
// request of the proxy's, its response learned by inspectKafkaResponse
// and kept from the client) and reports whether the answer came.
func (kc *kafkaConn) resolveID(id [16]byte) bool {
	wait := time.Until(kc.resolveBy)
	if len(kc.tried) >= maxKafkaResolves || wait <= 0 || kc.tried[id] {
		return false
	}
	if kc.tried == nil {
		kc.tried = map[[16]byte]bool{}
	}
	kc.tried[id] = true
	req := kmsg.NewPtrMetadataRequest()
	req.SetVersion(kafkaResolveVersion)
	t := kmsg.NewMetadataRequestTopic()
	t.TopicID = id
	req.Topics = []kmsg.MetadataRequestTopic{t}
	kc.corr-- // negative: apart from the client's (any would do: responses come in order)
	frame := kmsg.NewRequestFormatter(kmsg.FormatterClientID("filament-proxy")).AppendRequest(nil, req, kc.corr)
	done := make(chan struct{})
	kc.mu.Lock()
	kc.queue = append(kc.queue, &kafkaPending{key: kafkaMetadata, version: kafkaResolveVersion, corr: kc.corr, upstream: true, internal: done})
	kc.mu.Unlock()
	kc.up.SetWriteDeadline(time.Now().Add(kc.p.opts.IdleTimeout))
	if _, err := kc.up.Write(frame); err != nil {
		kc.close()
		return false
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-done:
		return true
	case <-timer.C:
	case <-kc.done:
	}
	return false
}

// readUpstream reads the broker's responses, each for the oldest request
// forwarded and not answered yet, and lets them out in order.
func (kc *kafkaConn) readUpstream() {
	defer kc.close()
	r := bufio.NewReaderSize(kc.up, 4<<10) // a response's size and body in one system call
	for {
		kc.up.SetReadDeadline(time.Time{})
		framed, err := kc.readResponse(r)
		if err != nil || len(framed) < 8 {
			return
		}
		frame := framed[4:]
		kc.mu.Lock()
		var pd *kafkaPending
		for _, x := range kc.queue {
			if x.upstream && x.resp == nil {
				pd = x
				break
			}
		}
		var held int64
		if pd != nil {
			pd.held += int64(len(frame))
			held = pd.held
		}
		kc.mu.Unlock()
		if pd == nil || int32(binary.BigEndian.Uint32(frame)) != pd.corr {
			kc.p.log.Debug("L7 proxy: Kafka response for no request", "dst", kc.dc.dst)
			return
		}
		// Only this goroutine sets a forwarded request's response: pd stays
		// queued, and what inspection reads of it does not change.
		resp := kc.p.inspectKafkaResponse(kc.scope, pd, framed)
		if resp == nil {
			return
		}
		// A response made larger than what was charged for it is charged
		// the difference (until 2026-12-07 only the broker's frame was).
		more := max(int64(len(resp)-4)-held, 0)
		if kc.chargeBrief(more) != nil {
			return
		}
		kc.mu.Lock()
		pd.resp = resp
		pd.held += more
		if pd.internal != nil {
			close(pd.internal) // its topic IDs are learned
		}
		if pd.opensSession {
			kc.learnSession(pd, framed)
		}
		err = kc.flush()
		kc.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// readResponse reads the broker's next response frame once the response
// budget has room for it (within kafkaHoldTimeout, chargeBrief).
func (kc *kafkaConn) readResponse(r io.Reader) ([]byte, error) {
	n, err := readKafkaSize(r, maxKafkaFrame)
	if err != nil {
		return nil, err
	}
	if err := kc.chargeBrief(int64(n)); err != nil {
		return nil, err
	}
	return readKafkaBody(r, n, kafkaEagerRead)
}

// chargeBrief is charge for what the broker sent, waiting kafkaHoldTimeout
// at most (the connection then closes): room may only come back once
// this answer is written, ahead of denials queued behind it and charged
// already, so waiting as long as the connection lasted froze it and its
// share for good (until 2026-12-07, TestKafkaDenialsBehindPendingResponseNotStuck).
func (kc *kafkaConn) chargeBrief(n int64) error {
	ctx, cancel := context.WithTimeout(kc.ctx, kafkaHoldTimeout)
	defer cancel()
	return kc.charge(ctx, n)
}

// charge takes n bytes of the response budget for the client, waiting
// until ctx ends; they are kc.held until flush writes what holds them, or
// the connection ends. Nothing is held while waiting.
func (kc *kafkaConn) charge(ctx context.Context, n int64) error {
	if n == 0 {
		return nil
	}
	if err := kc.budget.acquire(ctx, kc.dc.who, n); err != nil {
		return err
	}
	kc.mu.Lock()
	defer kc.mu.Unlock()
	if kc.ended {
		kc.budget.release(kc.dc.who, n)
		return net.ErrClosed
	}
	kc.held += n
	return nil
}

// flush writes the responses at the head of the queue that are known,
// releasing what they hold of the response budget; kc.mu is held.
func (kc *kafkaConn) flush() error {
	for len(kc.queue) > 0 && kc.queue[0].resp != nil {
		pd := kc.queue[0]
		if pd.internal == nil {
			// Each holds the response budget: a denial too, which until
			// 2026-12-07 waited the idle timeout for its client
			// (TestKafkaUnreadDenialsHeldBriefly).
			kc.dc.SetWriteDeadline(time.Now().Add(min(kc.p.opts.IdleTimeout, kafkaHoldTimeout)))
			if _, err := kc.dc.Write(pd.resp); err != nil {
				return err
			}
			<-kc.slots
		}
		if !kc.ended {
			kc.budget.release(kc.dc.who, pd.held)
			kc.held -= pd.held
		}
		kc.queue[0] = nil
		kc.queue = kc.queue[1:]
	}
	return nil
}

// inspectKafkaResponse learns the topic IDs of a Metadata response and
// leaves out the topics the client may not see from the answer to a
// request for every topic, caps the versions an ApiVersions response
// offers at those the proxy parses (a client would else use versions it
// must refuse), and returns the framed response for the client (out
// itself when unchanged); nil: the connection is closed. out is the
// broker's frame, size prefix included.
func (p *Proxy) inspectKafkaResponse(scope kafkaScope, pd *kafkaPending, out []byte) []byte {
	frame := out[4:]
	switch pd.key {
	case kafkaMetadata:
		return p.inspectKafkaMetadata(scope, pd, out)
	case kafkaApiVersions:
		r := kmsg.NewPtrApiVersionsResponse()
		r.SetVersion(pd.version)
		if r.ReadFrom(frame[4:]) != nil || r.ErrorCode != 0 {
			return out
		}
		keys := r.ApiKeys[:0]
		for _, k := range r.ApiKeys {
			req := kmsg.RequestForKey(k.ApiKey)
			if req == nil || k.MinVersion > req.MaxVersion() {
				continue
			}
			k.MaxVersion = min(k.MaxVersion, req.MaxVersion())
			keys = append(keys, k)
		}
		r.ApiKeys = keys
		return kafkaResponseFrame(&kafkaRequest{key: pd.key, corr: pd.corr}, r)
	}
	if pd.merge != nil {
		if m, ok := mergeKafka(frame, pd.key, pd.version, pd.merge); ok {
			return m
		}
	}
	return out
}

// inspectKafkaMetadata is inspectKafkaResponse's for Metadata: it learns
// the response's topic IDs, and adds the denied topics' errors (a split
// request's) or leaves out the topics the client may not see (a request
// for every topic's), walking the response in place and copying the
// entries kept: until 2026-12-07 kmsg parsed it whole, and a hostile
// server's 95 MiB response of 10M empty topics held 915 MiB
// (TestKafkaMetadataResponseCostsItsSize).
func (p *Proxy) inspectKafkaMetadata(scope kafkaScope, pd *kafkaPending, out []byte) []byte {
	head := 8 // size, correlation ID
	rest, err := out[head:], error(nil)
	if pd.version >= 9 {
		rest, err = skipTags(rest)
	}
	head = len(out) - len(rest)
	body := out[head:]
	at, ok := walkKafkaMetadata(body, pd.version, nil)
	if !ok || err != nil {
		if pd.visible != nil {
			return nil // the topics cannot be filtered
		}
		return out
	}
	// Topic IDs come with Metadata v10: an older response's walk does not
	// hold the table's lock (every ID lookup of the node waits on it).
	if pd.version >= 10 {
		p.kafkaIDs.learn(scope, func(yield func([16]byte, string) bool) {
			more := true
			walkKafkaMetadata(body, pd.version, func(t kafkaMetadataTopic) {
				if more && t.name != nil && t.id != ([16]byte{}) && t.errorCode == 0 {
					more = yield(t.id, string(t.name))
				}
			})
		})
	}
	var denied kafkaTopicsAt
	if pd.merge != nil {
		if denied, ok = walkKafkaMetadata(pd.merge, pd.version, nil); !ok {
			return out
		}
	}
	kept, n := body[at.first:at.end], at.n
	if pd.visible != nil {
		var b []byte
		n = 0
		walkKafkaMetadata(body, pd.version, func(t kafkaMetadataTopic) {
			if t.name != nil && pd.visible(string(t.name)) {
				b = append(b, body[t.start:t.end]...)
				n++
			}
		})
		kept = b
	}
	if n == at.n && pd.merge == nil {
		return out // nothing left out, nothing added
	}
	w := kafkaWire{flexible: pd.version >= 9}
	added := pd.merge[denied.first:denied.end]
	b := make([]byte, 0, head+at.first+5+len(kept)+len(added)+len(body)-at.end)
	b = append(b, out[:head+at.count]...)
	b = w.appendLength(b, n+denied.n)
	b = append(append(append(b, kept...), added...), body[at.end:]...)
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// readKafkaFrame reads one frame of at most maxKafkaFrame bytes (a
// broker's response: no budget is held for it, so the buffer grows only
// as bytes arrive past the first kafkaEagerRead) and returns it with its
// size prefix, as it came.
func readKafkaFrame(r io.Reader) ([]byte, error) {
	n, err := readKafkaSize(r, maxKafkaFrame)
	if err != nil {
		return nil, err
	}
	return readKafkaBody(r, n, kafkaEagerRead)
}

// readKafkaSize reads a frame's size, at most limit.
func readKafkaSize(r io.Reader, limit int32) (int32, error) {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return 0, err
	}
	n := int32(binary.BigEndian.Uint32(l[:]))
	if n < 0 || n > limit {
		return 0, fmt.Errorf("%w: size %d", ErrKafkaFrame, n)
	}
	return n, nil
}

// readBudgeted reads a request body of n bytes once the request budget
// has room for it (waiting at most wait), and returns the frame with its
// size prefix; on success the caller releases n after deciding the
// request.
func readBudgeted(r io.Reader, dc *downConn, n int32, wait time.Duration) ([]byte, error) {
	who := dc.who
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := kafkaRequestBudget.acquire(ctx, who, int64(n)); err != nil {
		return nil, fmt.Errorf("%w: no room for a %d-byte request: %w", ErrKafkaFrame, n, err)
	}
	dc.SetReadDeadline(time.Now().Add(kafkaHoldTimeout)) // the budget holds n: the bytes come now
	b := getKafkaBuf(4 + int(n))                         // the budget holds n already: allocated at once
	binary.BigEndian.PutUint32(b, uint32(n))
	if _, err := io.ReadFull(r, b[4:]); err != nil {
		putKafkaBuf(b)
		kafkaRequestBudget.release(who, int64(n))
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}

// Request buffers are reused: a producer's requests are about a megabyte
// each, and a new buffer for each (cleared, then collected) was a fifth
// of the proxy's CPU under a streaming producer. kafkaBufs[i] holds
// buffers of capacity 1<<(i+kafkaBufMinShift); the budget bounds those
// in use, the pools are emptied by the collector.
const kafkaBufMinShift = 12

var kafkaBufs [25 - kafkaBufMinShift]sync.Pool // up to 16 MiB: maxKafkaRequest and its size

// kafkaBufClass is the pool of buffers of at least size bytes.
func kafkaBufClass(size int) int {
	c := 0
	for 1<<(c+kafkaBufMinShift) < size {
		c++
	}
	return c
}

// getKafkaBuf returns a buffer of length size (its bytes not cleared).
func getKafkaBuf(size int) []byte {
	c := kafkaBufClass(size)
	if c >= len(kafkaBufs) {
		return make([]byte, size)
	}
	if b, ok := kafkaBufs[c].Get().(*[]byte); ok {
		return (*b)[:size]
	}
	return make([]byte, size, 1<<(c+kafkaBufMinShift))
}

// putKafkaBuf gives back a buffer of getKafkaBuf once nothing refers to
// its bytes (a parsed request's byte fields alias them).
func putKafkaBuf(b []byte) {
	c := kafkaBufClass(cap(b))
	if c >= len(kafkaBufs) || cap(b) != 1<<(c+kafkaBufMinShift) {
		return
	}
	kafkaBufs[c].Put(&b)
}

// kafkaEagerRead is how much of a response's body is allocated before its
// bytes arrive; beyond it the buffer grows (doubling) only as they do, so
// a broker that announces a large frame and sends little holds little.
const kafkaEagerRead = 64 << 10

// readKafkaBody reads a frame's body of n bytes, allocating eager bytes
// of it at once and the rest as it arrives, and returns the frame with its
// size prefix in front (forwarded as it is, in one write).
func readKafkaBody(r io.Reader, n int32, eager int) ([]byte, error) {
	size := 4 + int(n)
	b := make([]byte, 4, min(size, 4+eager))
	binary.BigEndian.PutUint32(b, uint32(n))
	for len(b) < size {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(size-len(b), cap(b)))
		}
		m, err := r.Read(b[len(b):min(cap(b), size)])
		b = b[:len(b)+m]
		if err != nil && len(b) < size {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return b, nil
}

// kafkaVerdict is the decision on one request.
type kafkaVerdict struct {
	q       *kafkaRequest
	forward bool
	reply   []byte // the denial, when not forwarded
	close   bool   // the connection is closed instead
	// A request forwarded in part: what goes to the broker instead
	// (framed), and the denial of the other part, encoded, for mergeKafka.
	frame []byte
	merge []byte
	// visible filters the topics of the response to a Metadata request
	// for every topic.
	visible func(topic string) bool
}

// judgeKafka decides a request frame (without its size) of dc's flow, and
// records it; resolve, when not nil, is asked for the name of a topic ID
// not learned yet; session tells the fetch sessions opened on the
// connection (nil: none).
func (p *Proxy) judgeKafka(dc *downConn, srcID uint32, scope kafkaScope, frame []byte, resolve func([16]byte) bool, session func(int32) bool) kafkaVerdict {
	start := time.Now()
	q, err := parseKafkaRequest(frame, func(id [16]byte) (string, bool) {
		n, ok := p.kafkaIDs.name(scope, id)
		if !ok && resolve != nil && resolve(id) {
			n, ok = p.kafkaIDs.name(scope, id)
		}
		return n, ok
	})
	cfg := p.cfg.Load()
	rec := Record{Time: start, SrcIP: dc.src.Addr(), SrcPort: dc.src.Port(), DstIP: dc.dst.Addr(), DstPort: dc.dst.Port(),
		SrcIdentity: srcID, DstIdentity: cfg.identity(dc.dst.Addr()), Protocol: "Kafka"}
	if q != nil {
		rec.Method = kmsg.NameForKey(q.key)
	}
	if errors.Is(err, errKafkaNewApiVersions) {
		rec.Reason, rec.Status = err.Error(), int(kafkaUnsupportedVersion)
		p.finishKafka(rec, Denied)
		r := kmsg.NewPtrApiVersionsResponse()
		r.ErrorCode = kafkaUnsupportedVersion
		r.ApiKeys = []kmsg.ApiVersionsResponseApiKey{{ApiKey: kafkaApiVersions, MaxVersion: q.body.MaxVersion()}}
		return kafkaVerdict{q: q, reply: kafkaResponseFrame(q, r)}
	}
	if err != nil {
		rec.Reason = err.Error()
		if errors.Is(err, errKafkaTooManyEntries) {
			rec.Notes = []string{"connection closed"}
		}
		p.finishKafka(rec, Denied)
		return kafkaVerdict{close: true}
	}
	// An incremental Fetch names no topics (or only those it adds): the
	// topics it reads are its session's, decided when the session was
	// opened. So it is taken only for a session opened on this
	// connection, which a policy change closes; brokers key sessions by
	// ID and epoch alone, and one opened before a topic's revocation, on
	// another connection, would go on reading it.
	if fr, ok := q.body.(*kmsg.FetchRequest); ok && fr.SessionID != 0 && fr.SessionEpoch > 0 && (session == nil || !session(fr.SessionID)) {
		rec.Reason, rec.Status = fmt.Sprintf("fetch session %d not opened on this connection", fr.SessionID), int(kafkaFetchSessionIDNotFound)
		p.finishKafka(rec, Denied)
		r := kmsg.NewPtrFetchResponse()
		r.SetVersion(q.version)
		r.ErrorCode = kafkaFetchSessionIDNotFound
		return kafkaVerdict{q: q, reply: kafkaResponseFrame(q, r)}
	}
	names := make([]string, len(q.topics))
	for i, t := range q.topics {
		names[i] = t.String()
	}
	rec.Path = strings.Join(names, ",")
	rec.Notes = []string{fmt.Sprintf("version %d", q.version)}
	if q.clientID != "" {
		rec.Notes = append(rec.Notes, "client ID "+q.clientID)
	}
	sides := cfg.sides(dc.src, dc.dst, srcID)
	deny := func(reason string) kafkaVerdict {
		rec.Reason = reason
		v := kafkaVerdict{q: q, reply: kafkaDenial(q)}
		if v.reply == nil && !q.noResponse {
			v.close = true
			rec.Notes = append(rec.Notes, "no error field in the response: connection closed")
		} else {
			rec.Status = int(denialCode(q))
		}
		p.finishKafka(rec, Denied)
		return v
	}
	if len(sides) == 0 {
		return deny("no L7 policy")
	}
	// Every side must allow each topic.
	ok := make([]bool, len(q.topics))
	for i := range ok {
		ok[i] = true
	}
	var by string // the first side that denies a topic
	for _, sd := range sides {
		rec.Direction, rec.Endpoint = sd.direction, sd.endpoint
		all, topics := sd.allowKafka(q)
		if all {
			continue
		}
		if len(q.topics) == 0 {
			return deny("no " + sd.direction + " Kafka rule matches")
		}
		for i, t := range topics {
			ok[i] = ok[i] && t
		}
		by = cmp.Or(by, sd.direction)
	}
	rec.Direction, rec.Endpoint = sides[0].direction, sides[0].endpoint
	if by == "" {
		p.finishKafka(rec, Forwarded)
		v := kafkaVerdict{q: q, forward: true}
		if q.allTopics {
			v.visible = func(topic string) bool {
				one := *q
				one.topics = []kafkaTopic{{name: topic, known: true}}
				for _, sd := range sides {
					if all, _ := sd.allowKafka(&one); !all {
						return false
					}
				}
				return true
			}
		}
		return v
	}
	var denied []string
	for i, t := range q.topics {
		if !ok[i] {
			denied = append(denied, t.String())
		}
	}
	reason := "no " + by + " Kafka rule matches"
	if len(denied) == len(q.topics) {
		return deny(reason)
	}
	// Some topics allowed: those go to the broker; the others' errors are
	// added to its response.
	allowed, rest := splitKafka(q.body, ok)
	if allowed == nil {
		return deny(reason + " for " + strings.Join(denied, ","))
	}
	f := kmsg.NewRequestFormatter()
	if q.hasClientID {
		f = kmsg.NewRequestFormatter(kmsg.FormatterClientID(q.clientID))
	}
	rec.Reason = "topics " + strings.Join(denied, ",") + " denied: " + reason
	p.finishKafka(rec, Forwarded)
	return kafkaVerdict{q: q, forward: true, frame: f.AppendRequest(nil, allowed, q.corr), merge: kafkaDenialResponse(rest, kafkaTopicAuthorizationFailed, q.unknownID).AppendTo(nil)}
}

// denialCode is the error code of q's denial: TOPIC_AUTHORIZATION_FAILED
// for a request that names topics, TRANSACTIONAL_ID_AUTHORIZATION_FAILED
// for a transactional InitProducerID, else CLUSTER_AUTHORIZATION_FAILED.
func denialCode(q *kafkaRequest) int16 {
	if _, ok := q.body.(*kmsg.FindCoordinatorRequest); ok {
		return kafkaClusterAuthorizationFailed
	}
	if q.transactional {
		return kafkaTransactionalIDAuthorizationFailed
	}
	if len(q.topics) > 0 {
		return kafkaTopicAuthorizationFailed
	}
	return kafkaClusterAuthorizationFailed
}

// finishKafka counts and publishes a Kafka request's record.
func (p *Proxy) finishKafka(rec Record, verdict string) {
	rec.Verdict, rec.Latency = verdict, time.Since(rec.Time)
	api := rec.Method
	if api == "" {
		api = "Unknown"
	}
	p.metrics.kafkaRequests.WithLabelValues(verdict, api).Inc()
	p.hub.publish(rec)
}
