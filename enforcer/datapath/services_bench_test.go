package datapath

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/netpact/netpact/policy"
)

// BenchmarkServiceConnect is the connection rate (connect, one byte each way, close) of a pod to
// another through a ClusterIP the socket programs translate, against the same pod's address
// directly, under the same egress policy, in the same run. Run it with -benchtime 1x: at least 10
// interleaved rounds of each, min / median / max printed, and the medians' ratio reported
// (goal >= 95%: translation costs one hash lookup and a map write per connect, not per packet).
// A failed or empty measurement fails the benchmark.
func BenchmarkServiceConnect(b *testing.B) {
	n := newTrafficNode(b)
	cg, err := OwnCgroup()
	if err != nil {
		b.Fatal(err)
	}
	pin := fmt.Sprintf("%s-test/svcbench-%d", DefaultPinPath, os.Getpid())
	os.RemoveAll(pin)
	d, err := Open(Options{PinPath: pin, Cgroup: cg})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := d.Teardown(); err != nil {
			b.Errorf("teardown: %v", err)
		}
	})
	server, client := n.pods["a"], n.pods["c"]
	// Many short connections: reuse TIME_WAIT ports so the runs do not run out.
	for _, kv := range []string{"net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65535"} {
		if out, err := exec.Command("ip", "netns", "exec", client.Netns, "sysctl", "-qw", kv).CombinedOutput(); err != nil {
			b.Fatalf("sysctl %s: %v: %s", kv, err, out)
		}
	}
	rr := startRRServer(b, server, 8080)
	defer rr.Close()
	n.apply(b, d, servicesPolicy)
	vip := netip.AddrFrom4([4]byte{10, 254, byte(os.Getpid() % 200), 9})
	if err := d.SetServices([]Service{{Name: "bench/server", Frontend: netip.AddrPortFrom(vip, 80), Proto: policy.ProtoTCP,
		Backends: []netip.AddrPort{netip.AddrPortFrom(server.IPv4, 8080)}}}); err != nil {
		b.Fatal(err)
	}
	var direct, viaService []float64
	rounds := max(10, b.N)
	for r := 0; r < rounds; r++ {
		// Alternate which goes first, so that neither always runs on a warmer machine.
		if r%2 == 0 {
			direct = append(direct, connectRequestResponse(b, client, server.IPv4, 8080))
			viaService = append(viaService, connectRequestResponse(b, client, vip, 80))
		} else {
			viaService = append(viaService, connectRequestResponse(b, client, vip, 80))
			direct = append(direct, connectRequestResponse(b, client, server.IPv4, 8080))
		}
	}
	fmt.Printf("BenchmarkServiceConnect: %d rounds; connections/s, min / median / max\n", rounds)
	fmt.Printf("  %-22s %s\n", "pod-ip", spread(direct))
	fmt.Printf("  %-22s %s\n", "cluster-ip", spread(viaService))
	ratio := median(viaService) / median(direct)
	fmt.Printf("  cluster-ip / pod-ip: %.3f (goal >= 0.95)\n", ratio)
	b.ReportMetric(median(direct), "conn/s-pod-ip")
	b.ReportMetric(median(viaService), "conn/s-cluster-ip")
	b.ReportMetric(100*ratio, "%conn-rate-vs-pod-ip")
}
