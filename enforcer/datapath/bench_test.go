package datapath

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

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
	}{
		{"allowed", d.objs.TcToPod, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 41000, dport: 80, ack: true}},
		{"allowed-range", d.objs.TcToPod, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: tcp, sport: 41001, dport: 8005, ack: true}},
		{"default-denied", d.objs.TcToPod, pkt{src: "8.8.8.8", dst: "10.0.0.1", proto: tcp, sport: 41002, dport: 80, syn: true}},
		{"denied", d.objs.TcToPod, pkt{src: "10.0.0.3", dst: "10.0.0.1", proto: tcp, sport: 41003, dport: 22, syn: true}},
		{"reply", d.objs.TcFromPod, pkt{src: "10.0.0.1", dst: "10.0.0.2", proto: tcp, sport: 80, dport: 41000, ack: true}},
		{"ipv6-allowed", d.objs.TcToPod, pkt{src: "fd00::2", dst: "fd00::1", proto: tcp, sport: 41004, dport: 80, ack: true}},
		{"icmp-allowed", d.objs.TcToPod, pkt{src: "10.0.0.2", dst: "10.0.0.1", proto: policy.ProtoICMP, icmpType: 8}},
		{"spoofed", d.objs.TcFromPod, pkt{src: "10.9.9.9", dst: "10.0.0.2", proto: tcp, sport: 1, dport: 443, syn: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			frame := c.p.build(b)
			ctx := make([]uint32, 11)
			ctx[10] = uint32(ifindex)
			// One test run repeating the program b.N times in the kernel: ns/op is per packet.
			b.ResetTimer()
			if _, err := c.prog.Run(&ebpf.RunOptions{Data: frame, Context: ctx, Repeat: uint32(b.N)}); err != nil {
				b.Fatal(err)
			}
		})
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
// Run it with -benchtime 1x; each sub-benchmark reports its ratio to the no-program run.
func BenchmarkTraffic(b *testing.B) {
	testenv.RequireBPF(b)
	iperf := testenv.RequireCommand(b, "iperf3", "iperf3")
	testenv.RequireCommand(b, "iptables-restore", "iptables")
	if err := podnet.PrepareHost(); err != nil {
		b.Fatal(err)
	}
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
	type sample struct{ gbps, rtt, crr []float64 }
	samples := make([]sample, len(configs))
	rounds := 3 * b.N
	for r := 0; r < rounds; r++ {
		for i, cfg := range configs {
			cleanup := protect(b, cfg, cluster, pods)
			samples[i].gbps = append(samples[i].gbps, iperfStream(b, iperf, server, client))
			samples[i].rtt = append(samples[i].rtt, requestResponse(b, client, server.IPv4, 9000))
			samples[i].crr = append(samples[i].crr, connectRequestResponse(b, client, server.IPv4, 9000))
			cleanup()
		}
	}
	base := samples[0]
	for i, cfg := range configs {
		gbps, rtt, crr := median(samples[i].gbps), median(samples[i].rtt), median(samples[i].crr)
		b.Run(cfg.name, func(b *testing.B) {
			b.ReportMetric(gbps, "Gbit/s")
			b.ReportMetric(rtt, "us-rtt")
			b.ReportMetric(crr, "conn/s")
			if i > 0 {
				b.ReportMetric(100*gbps/median(base.gbps), "%throughput")
				b.ReportMetric(100*(rtt-median(base.rtt))/median(base.rtt), "%added-rtt")
				b.ReportMetric(100*crr/median(base.crr), "%conn-rate")
			}
		})
	}
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

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

func protect(b *testing.B, cfg trafficConfig, cluster *policy.Cluster, pods map[string]*podnet.Pod) func() {
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
		return func() {
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
		return func() {
			exec.Command("iptables", "-D", "FORWARD", "-j", "NETPACT-BENCH").Run()
			exec.Command("iptables", "-F", "NETPACT-BENCH").Run()
			exec.Command("iptables", "-X", "NETPACT-BENCH").Run()
		}
	}
	return func() {}
}

func iperfStream(b *testing.B, iperf string, server, client *podnet.Pod) float64 {
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
	var out []byte
	var err error
	for try := 0; try < 20; try++ {
		out, err = exec.Command("ip", "netns", "exec", client.Netns, iperf, "-c", server.IPv4.String(), "-t", "3", "-J", "--connect-timeout", "1000").Output()
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		srv.Process.Kill()
		b.Fatalf("iperf3: %v: %s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		b.Fatalf("iperf3 output: %v", err)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9
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

const loadDuration = 2 * time.Second

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
	return float64(n) / time.Since(start).Seconds()
}
