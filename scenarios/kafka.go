package scenarios

import (
	"fmt"
	"slices"

	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// kafkaRequest is the request of the key a Kafka probe's client sends (besides ApiVersions on
// each connection, and InitProducerID for a producer when the ApiVersions answer lists it:
// neither names a topic, so a rule that lets the proxy list them allows them too). Its version
// is the newest the client sends (probeagent.KafkaClientVersions) of those the proxy's
// ApiVersions answer lists, which are the versions the flow's rules allow from the client
// (policy.Decision.AllowsKafkaKey), up to the versions that name topics (policy.KafkaMaxVersion);
// false when the answer lists none, and the client cannot send it.
func kafkaRequest(c Cell, d policy.Decision, key int16) (policy.KafkaRequest, bool) {
	top, _ := probeagent.KafkaClientVersions().LookupMaxKeyVersion(key)
	if capped, ok := policy.KafkaMaxVersion(key); ok {
		top = min(top, capped)
	}
	for v := top; v >= 0; v-- {
		if d.AllowsKafkaKey(key, v, c.ClientID) {
			return policy.KafkaRequest{APIKey: key, APIVersion: v, ClientID: c.ClientID, Topics: []string{c.Topic}}, true
		}
	}
	return policy.KafkaRequest{}, false
}

// kafkaOutcomes are a Kafka probe's two outcomes: allowed, and denied with
// TOPIC_AUTHORIZATION_FAILED.
func (c Cell) kafkaOutcomes() (ok, denied Outcome) {
	if c.Kafka == probeagent.KafkaConsume {
		return KafkaConsumeOK, KafkaConsumeDenied
	}
	return KafkaProduceOK, KafkaProduceDenied
}

// predictKafka is a Kafka probe's outcome on a flow a Kafka proxy judges (the destination's
// ingress, or the source's egress): each request the client makes in the role
// (policy.KafkaRoleRequests) in turn must be listed by the proxy's ApiVersions answer
// (kafkaRequest) and allowed by the rules (policy.Decision.MatchKafka); the first denied one is
// answered TOPIC_AUTHORIZATION_FAILED by the proxy. The proxy's ApiVersions answer is the
// broker's, narrowed: when the destination drops the flow, the client's first request gets no
// answer, whatever the rules say of the others.
func predictKafka(c Cell, d policy.Decision, rule string) (Outcome, string) {
	if d.Outcome == policy.OutcomeDenied || d.Outcome == policy.OutcomeDefaultDenied {
		return Timeout, "the Kafka proxy asks the broker for its ApiVersions, and the flow to it is dropped: " + d.Reason()
	}
	ok, denied := c.kafkaOutcomes()
	for _, key := range policy.KafkaRoleRequests(c.Kafka) {
		r, listed := kafkaRequest(c, d, key)
		if !listed {
			return KafkaUnsupported, fmt.Sprintf("no kafka rule allows %s requests, which the proxy's ApiVersions answer then leaves out",
				policy.KafkaKeyName(key))
		}
		v := d.MatchKafka(r)
		if v.Rule != nil {
			rule = v.Rule.String()
		}
		switch {
		case !v.Allowed && v.Reason != "":
			return denied, v.Reason
		case !v.Allowed:
			return denied, rule
		}
	}
	return ok, rule
}

// kafkaTopics are the topics the scenario's Kafka probes to a pod name, sorted: the kafka
// workload seeds them besides probeagent.KafkaSeedTopics.
func (s *Scenario) kafkaTopics(pod string) []string {
	var out []string
	for _, st := range s.Steps {
		for _, p := range st.Expect.Probes {
			if p.To == pod && p.Topic != "" && !slices.Contains(probeagent.KafkaSeedTopics, string(p.Topic)) {
				out = append(out, string(p.Topic))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
