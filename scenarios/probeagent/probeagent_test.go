package probeagent

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// freePort is a port nothing listens on, TCP and UDP, at the time of the call.
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

func TestServeAndRun(t *testing.T) {
	tcp, udp, closed := freePort(t), freePort(t), freePort(t)
	ready := filepath.Join(t.TempDir(), "ready")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeLogging(ctx, []Port{{tcp, "TCP"}, {udp, "UDP"}}, ready, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ready file never appeared")
		}
	}
	// A DNS server of four lines: the reply is the query with QR set.
	dns, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := dns.ReadFrom(buf)
			if err != nil {
				return
			}
			buf[2] |= 0x80
			_, _ = dns.WriteTo(buf[:n], from)
		}
	}()
	dnsPort := uint16(dns.LocalAddr().(*net.UDPAddr).Port)
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silentPort := uint16(silent.LocalAddr().(*net.UDPAddr).Port)
	reqs := []Request{
		{ID: 0, Proto: "TCP", Host: "127.0.0.1", Port: tcp},
		{ID: 1, Proto: "TCP", Host: "::1", Port: tcp, HTTP: true, Path: "/metrics"},
		{ID: 2, Proto: "UDP", Host: "127.0.0.1", Port: udp},
		{ID: 3, Proto: "TCP", Host: "127.0.0.1", Port: closed},
		{ID: 4, Proto: "UDP", Host: "127.0.0.1", Port: closed, TimeoutMS: 500},
		{ID: 5, Proto: "UDP", Host: "127.0.0.1", Port: dnsPort, DNS: true},
		// A UDP echo is not a resolver: its reply has QR clear.
		{ID: 6, Proto: "UDP", Host: "127.0.0.1", Port: udp, DNS: true},
		// A socket that reads and never answers.
		{ID: 7, Proto: "UDP", Host: "127.0.0.1", Port: silentPort, TimeoutMS: 300},
	}
	want := []string{"allow", "http-200", "allow", "refused", "refused", "allow", "error", "timeout"}
	got := Run(reqs)
	for i, r := range got {
		if r.ID != i || r.Outcome != want[i] {
			t.Errorf("probe %d %+v: got %s (%s), want %s", i, reqs[i], r.Outcome, r.Note, want[i])
		}
	}
}

func TestParsePort(t *testing.T) {
	for in, ok := range map[string]bool{"80/TCP": true, "53/udp": true, "8080": true, "0/TCP": false, "80/SCTP": true, "80/ICMP": false, "x": false} {
		if _, err := ParsePort(in); (err == nil) != ok {
			t.Errorf("ParsePort(%q): err %v", in, err)
		}
	}
}
