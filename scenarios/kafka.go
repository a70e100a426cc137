package scenarios

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kversion"

	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// kafkaRequests are the requests a Kafka probe's client (franz-go, probeagent.KafkaProbe) sends
// that the Kafka proxy judges by topic, in order: Metadata for the topic first, then Produce; or
// ListOffsets (the topic's start) and Fetch. Besides them it sends ApiVersions on each
// connection, and a producer InitProducerID when the ApiVersions answer lists it: neither names
// a topic, so a rule that lets the proxy advertise them allows them too.
func kafkaRequests(c Cell) []policy.KafkaRequest {
	keys := []int16{policy.KafkaMetadata, policy.KafkaProduce}
	if c.Kafka == probeagent.KafkaConsume {
		keys = []int16{policy.KafkaMetadata, policy.KafkaListOffsets, policy.KafkaFetch}
	}
	out := make([]policy.KafkaRequest, len(keys))
	for i, k := range keys {
		out[i] = policy.KafkaRequest{APIKey: k, APIVersion: kafkaVersion(k), ClientID: c.ClientID, Topics: []string{c.Topic}}
	}
	return out
}

// kafkaVersion is the version of a request the probe's client sends: the newest it supports
// (kversion.Stable), except Produce and Fetch, which stop at v12, the last to name topics: from
// v13 they name them by ID, which no topic rule can match, so a proxy enforcing topic rules
// advertises at most v12. Only a rule's apiVersion reads it.
func kafkaVersion(key int16) int16 {
	v, _ := kversion.Stable().LookupMaxKeyVersion(key)
	if key == policy.KafkaProduce || key == policy.KafkaFetch {
		v = min(v, 12)
	}
	return v
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
// ingress, or the source's egress even when the destination refuses the flow): each request the
// client sends in turn must be in the proxy's ApiVersions answer (policy.Decision.AllowsKafkaKey)
// and allowed by the rules (policy.Decision.MatchKafka); the first denied one is answered
// TOPIC_AUTHORIZATION_FAILED by the proxy, and one forwarded to a destination that drops the
// flow gets no answer.
func predictKafka(c Cell, d policy.Decision, rule string) (Outcome, string) {
	ok, denied := c.kafkaOutcomes()
	for _, r := range kafkaRequests(c) {
		if !d.AllowsKafkaKey(r.APIKey, r.APIVersion, r.ClientID) {
			return KafkaUnsupported, fmt.Sprintf("no kafka rule allows %s requests, which the proxy's ApiVersions answer then leaves out",
				policy.KafkaKeyName(r.APIKey))
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
		case v.Unreachable != "":
			return Timeout, v.Unreachable
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
