package proxy

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Kafka API keys the proxy treats by name.
const (
	kafkaProduce          int16 = 0
	kafkaFetch            int16 = 1
	kafkaListOffsets      int16 = 2
	kafkaMetadata         int16 = 3
	kafkaOffsetCommit     int16 = 8
	kafkaOffsetFetch      int16 = 9
	kafkaFindCoordinator  int16 = 10
	kafkaJoinGroup        int16 = 11
	kafkaHeartbeat        int16 = 12
	kafkaLeaveGroup       int16 = 13
	kafkaSyncGroup        int16 = 14
	kafkaSaslHandshake    int16 = 17
	kafkaApiVersions      int16 = 18
	kafkaCreateTopics     int16 = 19
	kafkaDeleteTopics     int16 = 20
	kafkaDeleteRecords    int16 = 21
	kafkaInitProducerID   int16 = 22
	kafkaSaslAuthenticate int16 = 36

	kafkaConsumerGroupHeartbeat int16 = 68
)

// kafkaRoles are the API keys of CiliumNetworkPolicy's Kafka roles, and
// InitProducerID for produce (idempotent producing, the default of
// current clients, Kafka 3.0 and franz-go, cannot start without it) and
// ConsumerGroupHeartbeat for consume (KIP-848's consumer groups, Kafka 4.0),
// and for both SASL's handshake and authentication: a client of a broker
// that asks for SASL sends nothing else first, and they allow nothing by
// themselves (until 2026-12-04 a SASL client under a role rule was denied
// before it could authenticate).
var kafkaRoles = map[string][]int16{
	"produce": {kafkaProduce, kafkaMetadata, kafkaApiVersions, kafkaInitProducerID, kafkaSaslHandshake, kafkaSaslAuthenticate},
	"consume": {kafkaFetch, kafkaListOffsets, kafkaMetadata, kafkaOffsetCommit, kafkaOffsetFetch, kafkaFindCoordinator,
		kafkaJoinGroup, kafkaHeartbeat, kafkaLeaveGroup, kafkaSyncGroup, kafkaApiVersions, kafkaConsumerGroupHeartbeat,
		kafkaSaslHandshake, kafkaSaslAuthenticate},
}

// kafkaRoleAPIs are the API keys of either role: what a client producing
// or consuming sends.
var kafkaRoleAPIs = func() map[int16]bool {
	m := map[int16]bool{}
	for _, keys := range kafkaRoles {
		for _, k := range keys {
			m[k] = true
		}
	}
	return m
}()

// kafkaAPIKeys maps a policy's API key names (kmsg's names in lower case,
// and Cilium's "offsets" for ListOffsets) to keys.
var kafkaAPIKeys = func() map[string]int16 {
	m := map[string]int16{"offsets": kafkaListOffsets}
	for k := int16(0); k < 1000; k++ {
		if kmsg.RequestForKey(k) != nil {
			m[strings.ToLower(kmsg.NameForKey(k))] = k
		}
	}
	return m
}()

// kafkaTopicName is Cilium's validation of a rule's topic.
var kafkaTopicName = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,255}$`)

// kafkaRule is a compiled KafkaRule.
type kafkaRule struct {
	keys       map[int16]bool // nil: every API
	version    int16
	anyVersion bool
	clientID   string // "": any
	topic      string // "": any
	apiKey     bool   // keys named by apiKey (not a role, not a topic-only rule)
}

func compileKafkaRule(field string, r KafkaRule) (kafkaRule, error) {
	out := kafkaRule{clientID: r.ClientID, topic: r.Topic, anyVersion: r.APIVersion == ""}
	switch {
	case r.Role != "" && r.APIKey != "":
		return out, fmt.Errorf("%w: %s: role and apiKey are exclusive", ErrInvalid, field)
	case r.Role != "":
		keys, ok := kafkaRoles[strings.ToLower(r.Role)]
		if !ok {
			return out, fmt.Errorf("%w: %s.role %q: want produce or consume", ErrInvalid, field, r.Role)
		}
		out.keys = map[int16]bool{}
		for _, k := range keys {
			out.keys[k] = true
		}
	case r.APIKey != "":
		k, ok := kafkaAPIKeys[strings.ToLower(r.APIKey)]
		if !ok {
			return out, fmt.Errorf("%w: %s.apiKey %q: not a Kafka API", ErrInvalid, field, r.APIKey)
		}
		out.keys, out.apiKey = map[int16]bool{k: true}, true
	}
	if out.keys == nil && r.Topic != "" {
		// A rule with a topic but neither role nor apiKey allows what a
		// client producing or consuming sends (and SASL), not the
		// cluster's other APIs: topic-less ones (EndTxn, ListGroups,
		// DeleteGroups, the ACL and quota APIs...), which the topic
		// cannot restrict, nor the administration of the topic itself
		// (CreateTopics, DeleteTopics, DeleteRecords; an apiKey rule
		// allows them). Until 2026-12-04 such a rule allowed every API.
		out.keys = kafkaRoleAPIs
	}
	if !out.anyVersion {
		v, err := strconv.ParseInt(r.APIVersion, 10, 16)
		if err != nil || v < 0 {
			return out, fmt.Errorf("%w: %s.apiVersion %q: not a version", ErrInvalid, field, r.APIVersion)
		}
		out.version = int16(v)
	}
	if r.Topic != "" && !kafkaTopicName.MatchString(r.Topic) {
		return out, fmt.Errorf("%w: %s.topic %q: want 1-255 of [a-zA-Z0-9._-]", ErrInvalid, field, r.Topic)
	}
	return out, nil
}

// matchesAPI tells whether the rule allows a request's API, version and
// client ID, whatever its topics. A transactional InitProducerID (one
// naming a transactional.id) fences that ID's producer, aborting its open
// transaction on topics of any name: only a rule naming the API (apiKey)
// or allowing every API allows it, not a role's or a topic-only rule's
// InitProducerID, which is an idempotent producer's (until 2026-12-06 it
// was: TestKafkaTransactionalInitProducerIDNeedsItsAPI).
func (r kafkaRule) matchesAPI(q *kafkaRequest) bool {
	if q.transactional && r.keys != nil && !r.apiKey {
		return false
	}
	return (r.keys == nil || r.keys[q.key]) && (r.anyVersion || r.version == q.version) &&
		(r.clientID == "" || r.clientID == q.clientID)
}

// matchesTopic tells whether the rule allows topic t (the API matching).
func (r kafkaRule) matchesTopic(t kafkaTopic) bool {
	return r.topic == "" || t.known && t.name == r.topic
}

// allowKafka tells which topics of request q the side lets through (every
// topic by a rule of a peer entry that applies, not necessarily the same
// rule), and whether it lets q through whole; a request naming no topic is
// let through by any such rule.
func (sd side) allowKafka(q *kafkaRequest) (all bool, topics []bool) {
	if sd.kind != KindKafka {
		return false, make([]bool, len(q.topics))
	}
	allows := func(t *kafkaTopic) bool {
		for _, p := range sd.peers {
			if p.remotes != nil && !p.remotes[sd.remote] {
				continue
			}
			if len(p.kafka) == 0 {
				return true
			}
			for _, r := range p.kafka {
				if r.matchesAPI(q) && (t == nil || r.matchesTopic(*t)) {
					return true
				}
			}
		}
		return false
	}
	if len(q.topics) == 0 {
		return allows(nil), nil
	}
	all = true
	topics = make([]bool, len(q.topics))
	for i := range q.topics {
		topics[i] = allows(&q.topics[i])
		all = all && topics[i]
	}
	return all, topics
}
