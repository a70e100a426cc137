package datapath

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

// BenchmarkVerdict measures nanoseconds per packet for each verdict class with BPF_PROG_TEST_RUN.
func BenchmarkVerdict(b *testing.B) {
	d := openTest(b, Options{})
	ifindex := testLink(b, fmt.Sprintf("npb%d", os.Getpid()%100000))
	programA(b, d, compileYAML(b, unitCluster(), unitPolicies), ifindex)
	tcp := policy.ProtoTCP
	// A tracked flow for the reply class.
	runProg(b, d.objs.TcToPod, ifindex, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 41000, dport: 80, syn: true}.build(b))
	for _, c := range []struct {
		name string
		prog *ebpf.Program
		p    pkt
		want uint32
	}{
		{"allowed", d.objs.TcToPod, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 41000, dport: 80, ack: true}, tcOK},
		{"allowed-range", d.objs.TcToPod, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 41001, dport: 8005, ack: true}, tcOK},
		{"default-denied", d.objs.TcToPod, pkt{src: "8.8.8.8", dst: "10.0.0.1", proto: tcp, sport: 41002, dport: 80, syn: true}, tcShot},
		{"denied", d.objs.TcToPod, pkt{src: "10.0.0.3", dst: "10.0.0.1", proto: tcp, sport: 41003, dport: 22, syn: true}, tcShot},
		{"reply", d.objs.TcFromPod, pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: tcp, sport: 80, dport: 41000, ack: true}, tcOK},
		{"ipv6-allowed", d.objs.TcToPod, pkt{src: "fd00::2", dst: "fd00::1", proto: tcp, sport: 41004, dport: 80, ack: true}, tcOK},
		{"icmp-allowed", d.objs.TcToPod, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: policy.ProtoICMP, icmpType: 8}, tcOK},
		{"spoofed", d.objs.TcFromPod, pkt{src: "10.9.9.9", dst: "10.0.0.2", proto: tcp, sport: 1, dport: 443, syn: true}, tcShot},
	} {
		b.Run(c.name, func(b *testing.B) {
			frame := c.p.build(b)
			// The case the benchmark names, checked before it is timed.
			if got := runProg(b, c.prog, ifindex, frame); got != c.want {
				b.Fatalf("verdict %d, want %d: the benchmark would time another case", got, c.want)
			}
			// One test run repeating the program b.N times in the kernel: ns/op is per packet, as
			// the wall clock saw it; bpf-ns/pkt is the kernel's own mean, which leaves out the
			// time the test run was scheduled away (this machine's cores are shared).
			b.ResetTimer()
			perRun, err := testRunDuration(c.prog, ifindex, frame, b.N)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(perRun.Nanoseconds()), "bpf-ns/pkt")
		})
	}
}

// testRunDuration runs prog repeat times on frame in one BPF_PROG_TEST_RUN and returns the
// kernel's mean run time (its duration field), which cilium/ebpf's Run drops and whose Benchmark
// takes no context (the programs need the ifindex of an endpoint). A run a signal interrupts is
// run again, as Run does.
func testRunDuration(prog *ebpf.Program, ifindex int, frame []byte, repeat int) (time.Duration, error) {
	// __sk_buff up to and including ifindex; the kernel wants the other fields zero.
	ctx := make([]uint32, 11)
	ctx[10] = uint32(ifindex)
	// union bpf_attr's test member (include/uapi/linux/bpf.h).
	attr := struct {
		progFD, retval, dataSizeIn, dataSizeOut uint32
		dataIn, dataOut                         uint64
		repeat, duration, ctxSizeIn, ctxSizeOut uint32
		ctxIn, ctxOut                           uint64
		flags, cpu, batchSize, _                uint32
	}{
		progFD: uint32(prog.FD()), dataSizeIn: uint32(len(frame)), dataIn: uint64(uintptr(unsafe.Pointer(&frame[0]))),
		repeat: uint32(repeat), ctxSizeIn: uint32(4 * len(ctx)), ctxIn: uint64(uintptr(unsafe.Pointer(&ctx[0]))),
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		runtime.KeepAlive(frame)
		runtime.KeepAlive(ctx)
		if errno == unix.EINTR || errno == unix.EAGAIN {
			continue
		}
		if errno != 0 {
			return 0, fmt.Errorf("BPF_PROG_TEST_RUN: %w", errno)
		}
		return time.Duration(attr.duration), nil
	}
}

// trafficConfig is one way of protecting the server pod.
type trafficConfig struct {
	name     string
	ebpf     bool
	iptables bool
	rules    int
}

// BenchmarkTraffic measures TCP stream throughput (iperf3), request/response latency and
// connect/request/response rate (a Go load generator) between two namespace pods: with no
// program, with netpact and 10 or 10,000 rules, and with the same policy as iptables rules.
// Two measures this 2-core machine resolves better than throughput ratios (which move by up to
// 20% between identical runs): the datapath's own run time per packet on real traffic, from
// the kernel's BPF statistics, and the CPU time of the whole machine per GB transferred. Run it
// with -benchtime 1x: at least 10 interleaved rounds, each configuration's min, median and max
// printed, the medians reported with ratios to the no-program run. A failed or empty
// measurement fails the benchmark.
func BenchmarkTraffic(b *testing.B) {
	testenv.RequireBPF(b)
	iperf := testenv.RequireCommand(b, "iperf3", "iperf3")
	testenv.RequireCommand(b, "iptables-restore", "iptables")
	if err := podnet.PrepareHost(); err != nil {
		b.Fatal(err)
	}
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	id := os.Getpid() % 10000
	cluster := &policy.Cluster{Nodes: []policy.Node{{Name: "node-1"}}, Namespaces: []policy.Namespace{{Name: "bench"}}}
	pods := map[string]*podnet.Pod{}
	for i, name := range []string{"client", "server"} {
		v4 := netip.AddrFrom4([4]byte{10, 201, byte(id % 200), byte(i + 1)})
		p, err := podnet.CreatePod(name, fmt.Sprintf("npb-%d-%s", id, name), fmt.Sprintf("npb%d%c", id, name[0]), v4, netip.Addr{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { p.Delete() })
		pods[name] = p
		cluster.Endpoints = append(cluster.Endpoints, policy.Endpoint{Namespace: "bench", Name: name, Node: "node-1",
			Labels: map[string]string{"app": name}, IPs: []netip.Addr{v4}})
	}
	server, client := pods["server"], pods["client"]
	// Many short connections: reuse TIME_WAIT ports so the connection-rate runs do not run out.
	for _, kv := range []string{"net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65535"} {
		if out, err := exec.Command("ip", "netns", "exec", client.Netns, "sysctl", "-qw", kv).CombinedOutput(); err != nil {
			b.Fatalf("sysctl %s: %v: %s", kv, err, out)
		}
	}
	rr := startRRServer(b, server, 9000)
	defer rr.Close()

	configs := []trafficConfig{
		{name: "no-program"},
		{name: "netpact-10-rules", ebpf: true, rules: 10},
		{name: "netpact-10000-rules", ebpf: true, rules: 10000},
		{name: "iptables-10-rules", iptables: true, rules: 10},
		{name: "iptables-10000-rules", iptables: true, rules: 10000},
	}
	// Rounds go over every configuration in turn, so that the machine's drift hits all of them
	// alike; each configuration reports the median of its rounds.
	type sample struct {
		gbps, rtt, crr, cpuPerGB []float64
		// The BPF run time per packet (run) during the stream and the connection-rate run: of
		// both programs together, then of each (progNames), and each program's runs.
		nsStream, nsConn     []float64
		progStream, progConn [2][]float64
		runsStream, runsConn [2][]float64
	}
	samples := make([]sample, len(configs))
	rounds := max(10, b.N)
	for r := 0; r < rounds; r++ {
		for i, cfg := range configs {
			d, cleanup := protect(b, cfg, cluster, pods)
			before := progStats(b, d)
			cpu0 := cpuSeconds(b)
			gbps, gbytes := iperfStream(b, iperf, server, client)
			cpu := cpuSeconds(b) - cpu0
			mid := progStats(b, d)
			samples[i].gbps = append(samples[i].gbps, gbps)
			samples[i].cpuPerGB = append(samples[i].cpuPerGB, cpu/gbytes)
			samples[i].rtt = append(samples[i].rtt, requestResponse(b, client, server.IPv4, 9000))
			samples[i].crr = append(samples[i].crr, connectRequestResponse(b, client, server.IPv4, 9000))
			if d != nil {
				after := progStats(b, d)
				samples[i].nsStream = append(samples[i].nsStream, nsPerRun(b, before.total(), mid.total()))
				samples[i].nsConn = append(samples[i].nsConn, nsPerRun(b, mid.total(), after.total()))
				for j := range progNames {
					samples[i].progStream[j] = append(samples[i].progStream[j], nsPerRun(b, before[j], mid[j]))
					samples[i].progConn[j] = append(samples[i].progConn[j], nsPerRun(b, mid[j], after[j]))
					samples[i].runsStream[j] = append(samples[i].runsStream[j], float64(mid[j].runs-before[j].runs))
					samples[i].runsConn[j] = append(samples[i].runsConn[j], float64(after[j].runs-mid[j].runs))
				}
			}
			cleanup()
		}
	}
	base := samples[0]
	fmt.Printf("BenchmarkTraffic: %d rounds; min / median / max of each configuration\n", rounds)
	for i, cfg := range configs {
		s := samples[i]
		type metric struct {
			name string
			xs   []float64
		}
		ms := []metric{{"Gbit/s", s.gbps}, {"us-rtt", s.rtt}, {"conn/s", s.crr}, {"cpu-s/GB", s.cpuPerGB},
			{"bpf-ns/pkt-stream", s.nsStream}, {"bpf-ns/pkt-conn", s.nsConn}}
		for j, name := range progNames {
			ms = append(ms, metric{"bpf-ns/pkt-stream " + name, s.progStream[j]}, metric{"runs-stream " + name, s.runsStream[j]},
				metric{"bpf-ns/pkt-conn " + name, s.progConn[j]}, metric{"runs-conn " + name, s.runsConn[j]})
		}
		for _, m := range ms {
			if len(m.xs) > 0 {
				fmt.Printf("  %-22s %-30s %s\n", cfg.name, m.name, spread(m.xs))
			}
		}
		b.Run(cfg.name, func(b *testing.B) {
			b.ReportMetric(median(s.gbps), "Gbit/s")
			b.ReportMetric(median(s.rtt), "us-rtt")
			b.ReportMetric(median(s.crr), "conn/s")
			b.ReportMetric(median(s.cpuPerGB), "cpu-s/GB")
			if len(s.nsStream) > 0 {
				b.ReportMetric(median(s.nsStream), "bpf-ns/pkt-stream")
				b.ReportMetric(median(s.nsConn), "bpf-ns/pkt-conn")
				for j, name := range progNames {
					b.ReportMetric(median(s.progStream[j]), "bpf-ns/pkt-stream-"+name)
					b.ReportMetric(median(s.progConn[j]), "bpf-ns/pkt-conn-"+name)
				}
			}
			if i > 0 {
				b.ReportMetric(100*median(s.gbps)/median(base.gbps), "%throughput")
				b.ReportMetric(100*(median(s.rtt)-median(base.rtt))/median(base.rtt), "%added-rtt")
				b.ReportMetric(100*median(s.crr)/median(base.crr), "%conn-rate")
				b.ReportMetric(100*median(s.cpuPerGB)/median(base.cpuPerGB), "%cpu-per-GB")
			}
		})
	}
}

func spread(xs []float64) string { return testenv.Spread(xs) }

// runStats is the kernel's run count and run time of a program.
type runStats struct {
	runs    uint64
	runtime time.Duration
}

// progNames names the programs of progStats' readings, in order: what a pod sends (its host
// veth's tcx ingress, on the client's and the server's veth alike) and what it receives.
var progNames = [2]string{"tc_from_pod", "tc_to_pod"}

// progReading is one reading of each of netpact's two pod programs (progNames).
type progReading [2]runStats

func (r progReading) total() runStats {
	return runStats{runs: r[0].runs + r[1].runs, runtime: r[0].runtime + r[1].runtime}
}

func progStats(b *testing.B, d *Datapath) progReading {
	var out progReading
	if d == nil {
		return out
	}
	for i, p := range []*ebpf.Program{d.objs.TcFromPod, d.objs.TcToPod} {
		st, err := p.Stats()
		if err != nil {
			b.Fatalf("read program statistics: %v", err)
		}
		out[i] = runStats{runs: st.RunCount, runtime: st.Runtime}
	}
	return out
}

// nsPerRun is the mean run time between two readings (of one program, or of both); a reading
// without runs is a failed measurement.
func nsPerRun(b *testing.B, from, to runStats) float64 {
	runs := to.runs - from.runs
	if runs == 0 {
		b.Fatal("netpact's programs did not run during the measurement: BPF statistics are not counting")
	}
	return float64((to.runtime - from.runtime).Nanoseconds()) / float64(runs)
}

// cpuSeconds is the busy CPU time of the whole machine so far (testenv.CPU).
func cpuSeconds(b *testing.B) float64 { return testenv.ReadCPU(b).BusySeconds() }

func median(xs []float64) float64 { return testenv.Median(xs) }

// benchPolicy allows the client to reach the server on rules ports, the benchmark ports among
// them (9000 and iperf3's 5201), so the matching entry sits among all the others.
func benchPolicy(rules int) string {
	var ports []string
	ports = append(ports, `{port: "9000", protocol: TCP}`, `{port: "5201", protocol: TCP}`)
	for p := 20000; len(ports) < rules; p++ {
		ports = append(ports, fmt.Sprintf(`{port: "%d", protocol: TCP}`, p))
	}
	return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [%s]}]
`, strings.Join(ports, ", "))
}

func protect(b *testing.B, cfg trafficConfig, cluster *policy.Cluster, pods map[string]*podnet.Pod) (*Datapath, func()) {
	switch {
	case cfg.ebpf:
		d, err := Open(Options{PinPath: filepath.Join(DefaultPinPath+"-test", fmt.Sprintf("bench-%d", os.Getpid()))})
		if err != nil {
			b.Fatal(err)
		}
		st := compileYAML(b, cluster, benchPolicy(cfg.rules))
		if err := d.SetIPCache(st.IPCache("node-1")); err != nil {
			b.Fatal(err)
		}
		for i, name := range []string{"client", "server"} {
			key := policy.EndpointKey{Namespace: "bench", Name: name}
			es, _ := st.Endpoint(key)
			ident, _ := st.Identity(key)
			p := pods[name]
			if err := d.UpsertEndpoint(Endpoint{Ifindex: p.Ifindex, Ifname: p.HostIfname, ID: uint32(i + 1), Identity: ident.ID, IPv4: p.IPv4}, es); err != nil {
				b.Fatal(err)
			}
		}
		return d, func() {
			if err := d.Teardown(); err != nil {
				b.Error(err)
			}
		}
	case cfg.iptables:
		var rules strings.Builder
		rules.WriteString("*filter\n:NETPACT-BENCH - [0:0]\n")
		rules.WriteString("-A FORWARD -j NETPACT-BENCH\n")
		rules.WriteString("-A NETPACT-BENCH -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
		c, s := pods["client"].IPv4, pods["server"].IPv4
		for i := 0; i < cfg.rules-2; i++ {
			fmt.Fprintf(&rules, "-A NETPACT-BENCH -s %s/32 -d %s/32 -p tcp --dport %d -j ACCEPT\n", c, s, 20000+i)
		}
		fmt.Fprintf(&rules, "-A NETPACT-BENCH -s %s/32 -d %s/32 -p tcp --dport 5201 -j ACCEPT\n", c, s)
		fmt.Fprintf(&rules, "-A NETPACT-BENCH -s %s/32 -d %s/32 -p tcp --dport 9000 -j ACCEPT\n", c, s)
		fmt.Fprintf(&rules, "-A NETPACT-BENCH -d %s/32 -j DROP\n", s)
		rules.WriteString("COMMIT\n")
		cmd := exec.Command("iptables-restore", "--noflush")
		cmd.Stdin = strings.NewReader(rules.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("iptables-restore: %v: %s", err, out)
		}
		return nil, func() {
			exec.Command("iptables", "-D", "FORWARD", "-j", "NETPACT-BENCH").Run()
			exec.Command("iptables", "-F", "NETPACT-BENCH").Run()
			exec.Command("iptables", "-X", "NETPACT-BENCH").Run()
		}
	}
	return nil, func() {}
}

// iperfStream runs a 2-second iperf3 stream and returns Gbit/s and the gigabytes received; an
// error or an empty result fails the benchmark.
func iperfStream(b *testing.B, iperf string, server, client *podnet.Pod) (float64, float64) {
	srv := exec.Command("ip", "netns", "exec", server.Netns, iperf, "-s", "-1")
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		// The one-off server exits after a test; kill it if the client never ran one.
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			srv.Process.Kill()
			<-done
		}
	}()
	// iperf3 3.12 with -J exits 0 when it cannot connect and says so in the JSON: the server
	// may not listen yet, so that error is retried; any other, or an empty result, fails.
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	for try := 0; ; try++ {
		out, err := exec.Command("ip", "netns", "exec", client.Netns, iperf, "-c", server.IPv4.String(), "-t", "2", "-J", "--connect-timeout", "1000").Output()
		res.Error = ""
		if jerr := json.Unmarshal(out, &res); jerr != nil && err == nil {
			err = fmt.Errorf("iperf3 output: %w", jerr)
		}
		notYet := err != nil || strings.Contains(res.Error, "unable to connect")
		if notYet && try < 20 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			srv.Process.Kill()
			b.Fatalf("iperf3: %v: %s", err, out)
		}
		break
	}
	if res.Error != "" || res.End.SumReceived.BitsPerSecond <= 0 || res.End.SumReceived.Bytes <= 0 {
		srv.Process.Kill()
		b.Fatalf("iperf3 measured nothing (error %q, %v bit/s, %v bytes)", res.Error, res.End.SumReceived.BitsPerSecond, res.End.SumReceived.Bytes)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, res.End.SumReceived.Bytes / 1e9
}

func startRRServer(b *testing.B, server *podnet.Pod, port int) net.Listener {
	var l net.Listener
	if err := server.Do(func() error {
		var err error
		l, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l
}

const loadDuration = time.Second

// requestResponse ping-pongs one byte over one connection and returns the mean round trip in µs.
func requestResponse(b *testing.B, client *podnet.Pod, server netip.Addr, port int) float64 {
	var c net.Conn
	if err := client.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", net.JoinHostPort(server.String(), fmt.Sprint(port)), time.Second)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := []byte{1}
	n := 0
	start := time.Now()
	c.SetDeadline(start.Add(loadDuration + 5*time.Second))
	for time.Since(start) < loadDuration {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
		n++
	}
	if n == 0 {
		b.Fatal("request/response: no round trip completed")
	}
	return float64(time.Since(start).Microseconds()) / float64(n)
}

// connectRequestResponse opens a fresh connection per transaction and returns transactions/s.
func connectRequestResponse(b *testing.B, client *podnet.Pod, server netip.Addr, port int) float64 {
	addr := net.JoinHostPort(server.String(), fmt.Sprint(port))
	n := 0
	start := time.Now()
	err := client.Do(func() error {
		buf := []byte{1}
		for time.Since(start) < loadDuration {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return err
			}
			// A transaction the server never answers (its accept queue overflowed) is not counted.
			c.SetDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(buf); err == nil {
				if _, err := c.Read(buf); err == nil {
					n++
				}
			}
			c.Close()
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	if n == 0 {
		b.Fatal("connect/request/response: no transaction completed")
	}
	return float64(n) / time.Since(start).Seconds()
}
