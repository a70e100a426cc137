package localnode

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// kafkaBenchTopic is the one topic of BenchmarkKafkaProduce's brokers (one partition).
const kafkaBenchTopic = "bench"

// kafkaBenchBroker runs a kfake cluster of one broker on each port of ports (comma-separated),
// listening on addr, the pod's address, until it is killed; it writes "ready" once every port
// listens. kfake advertises the address it listens on, so the Metadata answers name the pod's
// address and the producer's every connection is one the datapath sees. Produced records are
// acknowledged and not stored (kfake.BlackholeProduce), which keeps the broker's storage out of
// the measurement and its memory flat.
func kafkaBenchBroker(addr, ports string) {
	for _, port := range strings.Split(ports, ",") {
		p, err := strconv.Atoi(port)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kafka bench broker: port %q: %v\n", port, err)
			os.Exit(1)
		}
		listen := func(network, address string) (net.Listener, error) {
			_, port, err := net.SplitHostPort(address)
			if err != nil {
				return nil, err
			}
			return net.Listen(network, net.JoinHostPort(addr, port))
		}
		if _, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(p), kfake.ListenFn(listen),
			kfake.SeedTopics(1, kafkaBenchTopic), kfake.BlackholeProduce()); err != nil {
			fmt.Fprintf(os.Stderr, "kafka bench broker on %s: %v\n", port, err)
			os.Exit(1)
		}
	}
	fmt.Println("ready")
	select {}
}

// kafkaBenchProducer reads rounds from its input, a line "<broker address> <record bytes> <ms>
// <idempotent: true|false>" each, produces records of that size to kafkaBenchTopic as fast as
// the client takes them for that long, waits until every record is acknowledged, and answers a
// line "<ns from the first record to the last acknowledgement> <records acknowledged> <produce
// requests written>", or "error <message>" when a record or the flush failed. It keeps one
// client per address and mode across rounds.
func kafkaBenchProducer() {
	type key struct {
		addr       string
		idempotent bool
	}
	producers := map[key]*benchProducer{}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		var size, ms int
		if len(f) == 4 {
			size, _ = strconv.Atoi(f[1])
			ms, _ = strconv.Atoi(f[2])
		}
		if size <= 0 || ms <= 0 {
			fmt.Printf("error bad round %q\n", in.Text())
			continue
		}
		k := key{f[0], f[3] == "true"}
		p := producers[k]
		if p == nil {
			var err error
			if p, err = newBenchProducer(k.addr, k.idempotent); err != nil {
				fmt.Printf("error %s\n", oneLine(err))
				continue
			}
			producers[k] = p
		}
		elapsed, acked, requests, err := p.round(size, time.Duration(ms)*time.Millisecond)
		if err != nil {
			fmt.Printf("error %s\n", oneLine(err))
			continue
		}
		fmt.Printf("%d %d %d\n", elapsed, acked, requests)
	}
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// benchProducer is a franz-go client producing to one broker, counting the produce requests it
// writes (kgo.HookBrokerWrite).
type benchProducer struct {
	cl       *kgo.Client
	requests atomic.Int64
}

// newBenchProducer makes a client of addr with franz-go's defaults (acks all, idempotent, 10 ms
// linger, 1 MB batches, 10000 records buffered) except: no compression, so that the bytes on the
// wire are the records' bytes; a record fails after 10 s instead of being retried for ever; and
// with idempotent false, idempotence off. Its dialer refuses any address but addr: a broker
// that advertised another would take the producer past the connection the benchmark measures.
func newBenchProducer(addr string, idempotent bool) (*benchProducer, error) {
	p := &benchProducer{}
	dial := func(ctx context.Context, network, host string) (net.Conn, error) {
		if host != addr {
			return nil, fmt.Errorf("the broker advertised %s, not the seed address %s", host, addr)
		}
		return (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, host)
	}
	opts := []kgo.Opt{kgo.SeedBrokers(addr), kgo.Dialer(dial), kgo.DefaultProduceTopic(kafkaBenchTopic),
		kgo.ProducerBatchCompression(kgo.NoCompression()), kgo.RecordDeliveryTimeout(10 * time.Second), kgo.WithHooks(p)}
	if !idempotent {
		opts = append(opts, kgo.DisableIdempotentWrite())
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client of %s: %w", addr, err)
	}
	p.cl = cl
	return p, nil
}

// OnBrokerWrite counts the produce requests written.
func (p *benchProducer) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == 0 && err == nil {
		p.requests.Add(1)
	}
}

// round produces records of size bytes for d, then waits for their acknowledgements.
func (p *benchProducer) round(size int, d time.Duration) (elapsed time.Duration, acked, requests int64, err error) {
	value := make([]byte, size)
	var ok atomic.Int64
	var mu sync.Mutex
	var failed error
	done := func(_ *kgo.Record, err error) {
		if err != nil {
			mu.Lock()
			if failed == nil { // the first says why; the others follow from it
				failed = err
			}
			mu.Unlock()
			return
		}
		ok.Add(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	p.requests.Store(0)
	start := time.Now()
	for time.Since(start) < d {
		// Produce blocks while the client holds its most buffered records.
		p.cl.Produce(ctx, &kgo.Record{Value: value}, done)
	}
	if err := p.cl.Flush(ctx); err != nil {
		return 0, 0, 0, fmt.Errorf("flush: %w", err)
	}
	elapsed = time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	if failed != nil {
		return 0, 0, 0, fmt.Errorf("produce: %w", failed)
	}
	return elapsed, ok.Load(), p.requests.Load(), nil
}
