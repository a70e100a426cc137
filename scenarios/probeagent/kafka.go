package probeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kversion"
)

// A Kafka probe's outcomes: the record was acked (produce) or read (consume), or the broker (or
// a Kafka proxy on the way) answered TOPIC_AUTHORIZATION_FAILED. KafkaUnsupported: the broker
// (or proxy) left a request the client needs out of its ApiVersions answer. Other Kafka errors
// are kafka-<error name> (kafka-unknown-topic-or-partition); a connection that never answered
// is timeout, one refused is refused.
const (
	KafkaProduceOK     = "kafka-produce-ok"
	KafkaProduceDenied = "kafka-produce-denied"
	KafkaConsumeOK     = "kafka-consume-ok"
	KafkaConsumeDenied = "kafka-consume-denied"
	KafkaUnsupported   = "kafka-unsupported"
)

// Kafka roles a probe takes.
const (
	KafkaProduce = "produce"
	KafkaConsume = "consume"
)

// KafkaClientVersions are the newest request versions a Kafka probe's client sends: Kafka
// 4.1's, which the kafka workload (kfake) serves, whatever franz-go's own newest are.
var KafkaClientVersions = kversion.V4_1_0

// KafkaProbe produces one record to topic (role produce) or reads one from the topic's start
// without a consumer group (role consume) at addr, a broker's host:port, as franz-go's client
// with client ID clientID, dialing with dial, until ctx ends. It returns the outcome and a note:
// the error, and the last failed connection attempt.
func KafkaProbe(ctx context.Context, dial Dialer, addr, role, topic, clientID string) (string, string) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A refused connection ends the probe, as it ends the others: the client would retry.
	dials := &dialLog{refused: cancel}
	opts := []kgo.Opt{kgo.SeedBrokers(addr), kgo.ClientID(clientID), kgo.Dialer(dial), kgo.WithHooks(dials),
		kgo.MaxVersions(KafkaClientVersions()),
		// Client metrics (KIP-714) would add requests the prediction does not make.
		kgo.DisableClientMetrics()}
	if role == KafkaConsume {
		opts = append(opts, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return "error", fmt.Sprintf("kafka client: %v", err)
	}
	defer cl.Close()
	if role == KafkaProduce {
		r, err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("probe")}).First()
		if err == nil {
			return KafkaProduceOK, fmt.Sprintf("acked at offset %d of %s/%d", r.Offset, r.Topic, r.Partition)
		}
		return kafkaOutcome(err, KafkaProduceOK, KafkaProduceDenied, dials)
	}
	for {
		fs := cl.PollRecords(ctx, 1)
		for _, r := range fs.Records() {
			if r.Topic == topic {
				return KafkaConsumeOK, fmt.Sprintf("read offset %d of %s/%d", r.Offset, r.Topic, r.Partition)
			}
		}
		for _, fe := range fs.Errors() {
			// Retriable errors kgo retries on its own; a context error is the probe's end.
			if errors.Is(fe.Err, context.DeadlineExceeded) || errors.Is(fe.Err, context.Canceled) || !kerr.IsRetriable(fe.Err) {
				o, note := kafkaOutcome(fe.Err, KafkaConsumeOK, KafkaConsumeDenied, dials)
				if o == "timeout" {
					note = "no record within the probe's time: " + note
				}
				return o, note
			}
		}
		if ctx.Err() != nil {
			return kafkaOutcome(ctx.Err(), KafkaConsumeOK, KafkaConsumeDenied, dials)
		}
	}
}

// kafkaOutcome names what err means for a probe whose success is ok and denial denied.
func kafkaOutcome(err error, ok, denied string, dials *dialLog) (string, string) {
	note := ""
	if err != nil {
		note = err.Error()
	}
	if last := dials.failure(); last != nil {
		note += fmt.Sprintf(" (last connection attempt: %v)", last)
	}
	var ke *kerr.Error
	switch {
	case err == nil:
		return ok, note
	case errors.Is(err, kerr.TopicAuthorizationFailed):
		return denied, note
	case errors.As(err, &ke):
		return "kafka-" + strings.ReplaceAll(strings.ToLower(ke.Message), "_", "-"), note
	// kgo's errors for a key, or a version of it, missing from the ApiVersions answer.
	case strings.Contains(err.Error(), "request key is unknown"), strings.Contains(err.Error(), "broker is too old"):
		return KafkaUnsupported, note
	case errors.Is(dials.failure(), syscall.ECONNREFUSED):
		return "refused", note
	}
	return "timeout", note
}

// dialLog is a kgo hook that keeps the last connection attempt that failed, and ends the probe
// on a refused one.
type dialLog struct {
	mu      sync.Mutex
	last    error
	refused func()
}

func (d *dialLog) OnBrokerConnect(_ kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.last = err
		if errors.Is(err, syscall.ECONNREFUSED) && d.refused != nil {
			d.refused()
		}
	}
}

func (d *dialLog) failure() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

// KafkaSeedTopics are the topics every kafka workload has, each with one record, besides those a
// scenario's probes name.
var KafkaSeedTopics = []string{"orders", "notifications", "payments"}

// KafkaBroker is a one-broker Kafka cluster (franz-go's kfake) serving a pod's port.
type KafkaBroker struct {
	cluster *kfake.Cluster
}

// StartKafkaBroker starts a broker on advertise's port (listening with listen, on every address
// of the pod) that tells clients to connect to advertise (the pod's address: clients connect
// back to what Metadata answers), with topics (and KafkaSeedTopics) of one partition holding one
// record each, written with a client that dials with dial, within ctx.
func StartKafkaBroker(ctx context.Context, listen func(network, address string) (net.Listener, error),
	advertise netip.AddrPort, topics []string, dial Dialer) (*KafkaBroker, error) {
	all := append(append([]string{}, KafkaSeedTopics...), topics...)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(int(advertise.Port())), kfake.ClusterID("netpact"),
		kfake.SeedTopics(1, all...),
		// kfake listens on 127.0.0.1 and advertises its listener's address: listen on the pod's
		// addresses instead, and advertise the pod's.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			l, err := listen(network, fmt.Sprintf(":%d", advertise.Port()))
			if err != nil {
				return nil, err
			}
			return advertisedListener{l, net.TCPAddrFromAddrPort(advertise)}, nil
		}))
	if err != nil {
		return nil, fmt.Errorf("kafka broker on %s: %w", advertise, err)
	}
	b := &KafkaBroker{cluster: cluster}
	if err := b.seed(ctx, advertise.String(), all, dial); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// seed writes one record to each topic, so that a consume probe has something to read.
func (b *KafkaBroker) seed(ctx context.Context, addr string, topics []string, dial Dialer) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.Dialer(dial), kgo.DisableClientMetrics())
	if err != nil {
		return fmt.Errorf("kafka seed client: %w", err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for _, t := range topics {
		recs = append(recs, &kgo.Record{Topic: t, Value: []byte("seed record of " + t)})
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("seed kafka topics at %s: %w", addr, err)
	}
	return nil
}

// Close stops the broker.
func (b *KafkaBroker) Close() error {
	b.cluster.Close()
	return nil
}

// advertisedListener is a listener that gives its address as the one clients are to use.
type advertisedListener struct {
	net.Listener
	addr net.Addr
}

func (l advertisedListener) Addr() net.Addr { return l.addr }
