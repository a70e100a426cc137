package policy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/netpact/netpact/api/ciliumv2"
)

// Kafka rules follow Cilium 1.19's semantics (cilium/proxy's proxylib, removed in Cilium 1.20):
// a rule's role expands to API keys, apiKey names one, apiVersion and clientID match exactly, and
// topic is matched against the topics of the request kinds that carry topics; the rules together
// must cover every topic of a request.

// KafkaAPIKeys are the API key names a rule's apiKey may take (case-insensitive), as Cilium 1.19
// defined them, with their numbers.
var KafkaAPIKeys = map[string]int16{
	"produce": 0, "fetch": 1, "offsets": 2, "metadata": 3, "leaderandisr": 4, "stopreplica": 5,
	"updatemetadata": 6, "controlledshutdown": 7, "offsetcommit": 8, "offsetfetch": 9,
	"findcoordinator": 10, "joingroup": 11, "heartbeat": 12, "leavegroup": 13, "syncgroup": 14,
	"describegroups": 15, "listgroups": 16, "saslhandshake": 17, "apiversions": 18,
	"createtopics": 19, "deletetopics": 20, "deleterecords": 21, "initproducerid": 22,
	"offsetforleaderepoch": 23, "addpartitionstotxn": 24, "addoffsetstotxn": 25, "endtxn": 26,
	"writetxnmarkers": 27, "txnoffsetcommit": 28, "describeacls": 29, "createacls": 30,
	"deleteacls": 31, "describeconfigs": 32, "alterconfigs": 33,
}

// Kafka API keys the proxy and the roles name.
const (
	KafkaProduce         int16 = 0
	KafkaFetch           int16 = 1
	KafkaListOffsets     int16 = 2
	KafkaMetadata        int16 = 3
	KafkaOffsetCommit    int16 = 8
	KafkaOffsetFetch     int16 = 9
	KafkaFindCoordinator int16 = 10
	KafkaJoinGroup       int16 = 11
	KafkaHeartbeat       int16 = 12
	KafkaLeaveGroup      int16 = 13
	KafkaSyncGroup       int16 = 14
	KafkaAPIVersions     int16 = 18
)

// kafkaRoles are the API keys each role expands to.
var kafkaRoles = map[string][]int16{
	"produce": {KafkaProduce, KafkaMetadata, KafkaAPIVersions},
	"consume": {KafkaFetch, KafkaListOffsets, KafkaMetadata, KafkaOffsetCommit, KafkaOffsetFetch,
		KafkaFindCoordinator, KafkaJoinGroup, KafkaHeartbeat, KafkaLeaveGroup, KafkaSyncGroup, KafkaAPIVersions},
}

// KafkaTopicKey says whether requests of the key may carry topics, so that a rule's topic applies
// to them (the topic of a rule is ignored for the other keys). It is Cilium's list, and, where
// netpact is stricter than Cilium 1.19, DescribeConfigs and AlterConfigs (32, 33: their resources
// may be topics) and every key past Cilium's list (38 on: share groups, the new consumer group
// protocol, DescribeTopicPartitions, OffsetDelete, ... read or change topics): Cilium ignored a
// rule's topic for those, so that a rule with only a topic let them read any topic. The proxy
// reads no topics of them, so only rules without a topic allow them.
func KafkaTopicKey(key int16) bool {
	switch key {
	case 0, 1, 2, 3, 4, 5, 6, 8, 9, 19, 20, 21, 23, 24, 27, 28, 32, 33, 34, 35, 37:
		return true
	}
	return key >= 38
}

// KafkaRequest is what a Kafka rule is matched against: the request header's API key, version
// and client ID, and the topics of the request. Topics are those of the kinds whose topics
// Cilium reads (produce, fetch, offsets, metadata, offsetcommit, offsetfetch); for the other kinds
// that carry topics they are left empty, and a rule with a topic then does not match, as in
// Cilium. A topic the request names only by ID is given as "" (no rule's topic matches it).
type KafkaRequest struct {
	APIKey, APIVersion int16
	ClientID           string
	Topics             []string
}

// KafkaKeyName is the key's name as rules write it ("produce"), or its number for keys past
// Cilium's list.
func KafkaKeyName(key int16) string {
	for name, k := range KafkaAPIKeys {
		if k == key {
			return name
		}
	}
	return strconv.Itoa(int(key))
}

// KafkaMaxVersion is the newest version of a key the Kafka proxy judges and advertises: from the
// next on, a request names its topics by ID (Produce 13, Fetch 13, OffsetCommit 10, OffsetFetch
// 10), and the rules match names. Other keys are capped only by what the proxy reads (kmsg); ok
// is false for them.
func KafkaMaxVersion(key int16) (v int16, ok bool) {
	switch key {
	case KafkaProduce, KafkaFetch:
		return 12, true
	case KafkaOffsetCommit, KafkaOffsetFetch:
		return 9, true
	}
	return 0, false
}

// kafkaRule is a Kafka rule as the matcher reads it.
type kafkaRule struct {
	keys     []int16 // nil: any key
	version  int16   // -1: any version
	clientID string
	topic    string
}

func compileKafka(r ciliumv2.PortRuleKafka) kafkaRule {
	k := kafkaRule{version: -1, clientID: r.ClientID, topic: r.Topic}
	switch {
	case r.Role != "":
		k.keys = kafkaRoles[strings.ToLower(r.Role)]
		if k.keys == nil {
			k.keys = []int16{} // an unknown role (validation refuses it) matches no key
		}
	case r.APIKey != "":
		if key, ok := KafkaAPIKeys[strings.ToLower(r.APIKey)]; ok {
			k.keys = []int16{key}
		} else {
			k.keys = []int16{}
		}
	}
	if r.APIVersion != "" {
		v, err := strconv.ParseInt(r.APIVersion, 10, 16)
		if err != nil || v < 0 {
			k.keys = []int16{} // refused by validation; matches nothing
		} else {
			k.version = int16(v)
		}
	}
	return k
}

// matchesHeader says whether the rule's key, version and client ID constraints hold.
func (k kafkaRule) matchesHeader(key, version int16, clientID string) bool {
	return (k.keys == nil || slices.Contains(k.keys, key)) && (k.version < 0 || k.version == version) &&
		(k.clientID == "" || k.clientID == clientID)
}

// MatchKafka is Cilium 1.19's Kafka rule matching, the one function both the prediction and the
// Kafka proxy use. A request is allowed when a rule matches it; a rule matches when its key (or
// role), version and client ID do, and, when it has a topic and the request's kind carries topics,
// when the topics the rules matched so far, its own included, cover all the request's topics
// (a request with topics on several rules' topics needs them all; one with no topic, such as
// a metadata request for every topic, is matched by no rule with a topic). No Kafka rule at all
// allows every request. It returns the index of the rule that completed the match, or -1.
func (l *L7Policy) MatchKafka(r KafkaRequest) (bool, int) {
	if l == nil || len(l.Kafka) == 0 {
		return true, -1
	}
	left := map[string]bool{}
	for _, t := range r.Topics {
		left[t] = true
	}
	for i, kr := range l.Kafka {
		k := compileKafka(kr)
		if !k.matchesHeader(r.APIKey, r.APIVersion, r.ClientID) {
			continue
		}
		if k.topic == "" || !KafkaTopicKey(r.APIKey) {
			return true, i
		}
		if left[k.topic] {
			delete(left, k.topic)
			if len(left) == 0 {
				return true, i
			}
		}
	}
	return false, -1
}

// AllowsKafkaKey says whether some rule lets requests of the key, at the version, from the client
// ID through, whatever their topics: what the proxy advertises in its ApiVersions answer.
func (l *L7Policy) AllowsKafkaKey(key, version int16, clientID string) bool {
	if l == nil || len(l.Kafka) == 0 {
		return true
	}
	for _, kr := range l.Kafka {
		if compileKafka(kr).matchesHeader(key, version, clientID) {
			return true
		}
	}
	return false
}

// KafkaVerdict is the judgement of one Kafka request on a flow: allowed or not, the side whose
// rules decided, the rule (its policy section) and the index of the Kafka rule that matched (-1:
// none did, or no Kafka rule applies).
type KafkaVerdict struct {
	Allowed   bool
	Direction Direction
	Rule      *RuleInfo
	Index     int
	// Reason says why, when no rule of a side matched or L3/L4 refuses the flow.
	Reason string
	// Unreachable, for a request the source's egress rules allow, says why the broker's ingress
	// policy drops the connection the proxy makes for it.
	Unreachable string
}

// kafkaSides are the sides of a decided flow whose entries hand it to the Kafka proxy.
func (d Decision) kafkaSides() []struct {
	dir Direction
	dd  *DirectionDecision
} {
	var out []struct {
		dir Direction
		dd  *DirectionDecision
	}
	for _, side := range []struct {
		dir Direction
		dd  *DirectionDecision
	}{{Egress, d.Egress}, {Ingress, d.Ingress}} {
		if side.dd.Proxy() == ParserKafka {
			out = append(out, side)
		}
	}
	return out
}

// MatchKafka judges a request on the decided flow: every side whose entry carries Kafka rules
// (the client's egress, the broker's ingress) must allow it, as two proxies in a row would; a
// flow L3/L4 refuses allows no request, and one without Kafka rules allows every request.
func (d Decision) MatchKafka(r KafkaRequest) KafkaVerdict {
	switch d.Outcome {
	case OutcomeDenied, OutcomeDefaultDenied:
		if egress, ok := d.egressProxied(ParserKafka); ok {
			v := egress.MatchKafka(r)
			if v.Allowed {
				v.Unreachable = d.Reason()
			}
			return v
		}
		return KafkaVerdict{Direction: d.Direction, Rule: d.Rule, Index: -1, Reason: d.Reason()}
	}
	v := KafkaVerdict{Allowed: true, Direction: d.Direction, Rule: d.Rule, Index: -1}
	for i, side := range d.kafkaSides() {
		e := side.dd.Match.Entry
		ok, idx := e.L7.MatchKafka(r)
		rule := d.rules[e.Rules[0]]
		if !ok {
			return KafkaVerdict{Direction: side.dir, Rule: rule, Index: -1,
				Reason: fmt.Sprintf("no kafka rule of %s on %s allows %s", rule, side.dir, r)}
		}
		if i == 0 || side.dir == Ingress {
			v.Direction, v.Rule, v.Index = side.dir, rule, idx
		}
	}
	return v
}

// AllowsKafkaKey says whether the flow's rules on every side let requests of the key, at the
// version, from the client ID through for some topic (ApiVersions advertises those).
func (d Decision) AllowsKafkaKey(key, version int16, clientID string) bool {
	switch d.Outcome {
	case OutcomeDenied, OutcomeDefaultDenied:
		if egress, ok := d.egressProxied(ParserKafka); ok {
			return egress.AllowsKafkaKey(key, version, clientID)
		}
		return false
	}
	for _, side := range d.kafkaSides() {
		if !side.dd.Match.Entry.L7.AllowsKafkaKey(key, version, clientID) {
			return false
		}
	}
	return true
}

// String is the request as a verdict names it: key, version, client ID and topics.
func (r KafkaRequest) String() string {
	s := fmt.Sprintf("%s v%d", KafkaKeyName(r.APIKey), r.APIVersion)
	if r.ClientID != "" {
		s += fmt.Sprintf(" from client %q", r.ClientID)
	}
	if len(r.Topics) > 0 {
		const shown = 5 // a verdict's reason stays a line, however many topics the request names
		var ts []string
		for _, t := range r.Topics[:min(len(r.Topics), shown)] {
			if t == "" {
				t = "(a topic by ID, or every topic)"
			}
			ts = append(ts, t)
		}
		if len(r.Topics) > shown {
			ts = append(ts, fmt.Sprintf("and %d more", len(r.Topics)-shown))
		}
		s += " on " + strings.Join(ts, ", ")
	}
	return s
}

// KafkaTopicVerdict is what a client can do with one topic on a flow the Kafka proxy judges: a
// role (produce or consume) and whether the rules allow every request the role takes on that
// topic, at some version; Topic "*" stands for any topic no rule names.
type KafkaTopicVerdict struct {
	Topic   string `json:"topic"`
	Role    string `json:"role"`
	Allowed bool   `json:"allowed"`
	// Rule is the rule that allowed the role's requests, or refused the first it does not allow.
	Rule string `json:"rule,omitempty"`
}

// kafkaRoleRequests are the requests a client makes on a topic to produce or consume (franz-go's:
// metadata first, then the records or the offsets and the records).
var kafkaRoleRequests = map[string][]int16{
	"produce": {KafkaMetadata, KafkaProduce},
	"consume": {KafkaMetadata, KafkaListOffsets, KafkaFetch},
}

// KafkaRoleRequests are the API keys of the requests a client makes on a topic in the role
// (produce or consume), in the order it makes them; nil for another role.
func KafkaRoleRequests(role string) []int16 { return slices.Clone(kafkaRoleRequests[role]) }

// KafkaTopics are the Kafka cells of a flow the Kafka proxy judges, per topic: each topic a
// kafka rule on the flow names, and "*" for the others, produced to and consumed from. nil for
// any other flow.
func (d Decision) KafkaTopics() []KafkaTopicVerdict {
	if d.Proxy != ParserKafka {
		return nil
	}
	seen := map[string]bool{}
	var names []string
	for _, side := range d.kafkaSides() {
		for _, r := range side.dd.Match.Entry.L7.Kafka {
			if r.Topic != "" && !seen[r.Topic] {
				seen[r.Topic] = true
				names = append(names, r.Topic)
			}
		}
	}
	slices.Sort(names)
	var out []KafkaTopicVerdict
	for _, topic := range append(names, "*") {
		for _, role := range []string{"produce", "consume"} {
			v := KafkaTopicVerdict{Topic: topic, Role: role, Allowed: true}
			name := topic
			if topic == "*" {
				name = "\x00another topic" // no rule's topic
			}
			for _, key := range kafkaRoleRequests[role] {
				kv := d.matchAnyVersion(key, name)
				if kv.Rule != nil {
					v.Rule = kv.Rule.String()
					if kv.Index >= 0 {
						v.Rule += fmt.Sprintf(" kafka[%d]", kv.Index)
					}
				}
				if !kv.Allowed {
					v.Allowed = false
					break
				}
			}
			out = append(out, v)
		}
	}
	return out
}

// matchAnyVersion is the verdict of a request of the key on the topic at the first version the
// rules allow (rules may pin apiVersion), or at version 0 when none does.
func (d Decision) matchAnyVersion(key int16, topic string) KafkaVerdict {
	var first KafkaVerdict
	for v := int16(0); v <= 16; v++ {
		kv := d.MatchKafka(KafkaRequest{APIKey: key, APIVersion: v, Topics: []string{topic}})
		if kv.Allowed {
			return kv
		}
		if v == 0 {
			first = kv
		}
	}
	return first
}
