package scenarios

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/netpact/netpact/enforcer/podnet"
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

// startKafka starts the kafka workload in a local node's pod: a broker on port of every address
// of the pod, advertising the pod's IPv4 address, with topics (and the seed topics) holding a
// record each, within the time startWorkload gives a program.
func startKafka(p *podnet.Pod, port uint16, topics []string) (*probeagent.KafkaBroker, error) {
	listen := func(network, addr string) (net.Listener, error) {
		var l net.Listener
		err := p.Do(func() error {
			var err error
			l, err = net.Listen(network, addr)
			return err
		})
		return l, err
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := p.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := probeagent.StartKafkaBroker(ctx, listen, netip.AddrPortFrom(p.IPv4, port), topics, dial)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	return b, nil
}

// kafka makes a Kafka probe from a pod within twice the probe timeout, as an HTTP request has.
func (pr *prober) kafka(from *podnet.Pod, to netip.Addr, port uint16, c Cell) (Outcome, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*pr.timeout)
	defer cancel()
	o, note := probeagent.KafkaProbe(ctx, pr.dialer(from), hostPort(to, port), c.Kafka, c.Topic, c.ClientID)
	return Outcome(o), note
}
