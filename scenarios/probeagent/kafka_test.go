package probeagent

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// startBroker starts the kafka workload on a free port of every local address, advertising
// 127.0.0.2 (a loopback address the clients are not given), with the extra topic "audit".
func startBroker(t *testing.T) netip.AddrPort {
	t.Helper()
	advertise := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), freePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := StartKafkaBroker(ctx, net.Listen, advertise, []string{"audit"}, (&net.Dialer{}).DialContext)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return advertise
}

// TestKafkaBroker: the broker tells clients to connect to its advertised address, has the seed
// topics and the extra one, each with one record, and the probes produce and consume on them.
func TestKafkaBroker(t *testing.T) {
	advertise := startBroker(t)
	port := advertise.Port()
	cl, err := kgo.NewClient(kgo.SeedBrokers(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	meta, err := kmsg.NewPtrMetadataRequest().RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	if len(meta.Brokers) != 1 || meta.Brokers[0].Host != "127.0.0.2" || meta.Brokers[0].Port != int32(port) {
		t.Fatalf("metadata brokers %+v, want 127.0.0.2:%d", meta.Brokers, port)
	}
	var topics []string
	for _, tp := range meta.Topics {
		topics = append(topics, *tp.Topic)
	}
	for _, want := range append(KafkaSeedTopics, "audit") {
		if !strings.Contains(strings.Join(topics, " "), want) {
			t.Errorf("topics %v lack %s", topics, want)
		}
	}

	reqs := []Request{
		{Host: "127.0.0.1", Port: port, Kafka: KafkaProduce, Topic: "orders", TimeoutMS: 400},
		{Host: "127.0.0.1", Port: port, Kafka: KafkaConsume, Topic: "notifications", TimeoutMS: 400},
		{Host: "127.0.0.1", Port: port, Kafka: KafkaConsume, Topic: "audit", ClientID: "auditor", TimeoutMS: 400},
		{Host: "127.0.0.1", Port: freePort(t), Kafka: KafkaProduce, Topic: "orders", TimeoutMS: 400},
	}
	for i := range reqs {
		reqs[i].ID = i
	}
	want := []string{KafkaProduceOK, KafkaConsumeOK, KafkaConsumeOK, "refused"}
	for i, r := range Run(reqs) {
		if r.Outcome != want[i] {
			t.Errorf("probe %d (%s %s): %s (%s), want %s", i, reqs[i].Kafka, reqs[i].Topic, r.Outcome, r.Note, want[i])
		}
	}
}

// TestKafkaProbeDenied: a broker's TOPIC_AUTHORIZATION_FAILED, on the Metadata answer a producer
// asks first or on the ListOffsets answer a consumer needs before its first fetch, is a denial,
// seen within a probe's time; another error is named.
func TestKafkaProbeDenied(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "payments", "orders"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.ControlKey(int16(kmsg.Metadata), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := r.(*kmsg.MetadataRequest)
		if len(req.Topics) != 1 || req.Topics[0].Topic == nil || *req.Topics[0].Topic != "payments" {
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.MetadataResponse)
		rt := kmsg.NewMetadataResponseTopic()
		rt.Topic, rt.ErrorCode = req.Topics[0].Topic, kerr.TopicAuthorizationFailed.Code
		resp.Topics = append(resp.Topics, rt)
		return resp, nil, true
	})
	c.ControlKey(int16(kmsg.ListOffsets), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := r.(*kmsg.ListOffsetsRequest)
		resp := req.ResponseKind().(*kmsg.ListOffsetsResponse)
		for _, tp := range req.Topics {
			rt := kmsg.NewListOffsetsResponseTopic()
			rt.Topic = tp.Topic
			for _, p := range tp.Partitions {
				rp := kmsg.NewListOffsetsResponseTopicPartition()
				rp.Partition = p.Partition
				rp.ErrorCode = kerr.TopicAuthorizationFailed.Code
				if tp.Topic == "orders" {
					rp.ErrorCode = kerr.ClusterAuthorizationFailed.Code
				}
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, nil, true
	})
	dial := (&net.Dialer{Timeout: 400 * time.Millisecond}).DialContext
	for _, tc := range []struct{ role, topic, want string }{
		{KafkaProduce, "payments", KafkaProduceDenied},
		{KafkaConsume, "payments", KafkaConsumeDenied},
		{KafkaConsume, "orders", "kafka-cluster-authorization-failed"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
		o, note := KafkaProbe(ctx, dial, c.ListenAddrs()[0], tc.role, tc.topic, "")
		cancel()
		if o != tc.want {
			t.Errorf("%s %s: %s (%s), want %s", tc.role, tc.topic, o, note, tc.want)
		}
	}
}
