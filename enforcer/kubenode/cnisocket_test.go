package kubenode

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netpact/netpact/enforcer/cniplugin"
)

// TestCNISocketRefusesHostileRequests: garbage, an unknown op, an endless line and an ADD for a
// pod the enforcer cannot look up each get an error answer in bounded time; the listener keeps
// serving, and its socket is 0600.
func TestCNISocketRefusesHostileRequests(t *testing.T) {
	e := newOffline(t)
	sock := filepath.Join(t.TempDir(), "enforcer.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.ServeCNI(ctx, sock, time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the socket never listened")
		}
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: %v %v", st.Mode(), err)
	}
	raw := func(payload string) string {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Write([]byte(payload))
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		return string(buf[:n])
	}
	for name, tc := range map[string]struct{ payload, want string }{
		"not JSON":     {"hello\n", "not JSON"},
		"unknown op":   {`{"op":"rm -rf"}` + "\n", "unknown op"},
		"endless line": {strings.Repeat("a", 1<<20), "read request"},
	} {
		if got := raw(tc.payload); !strings.Contains(got, tc.want) {
			t.Errorf("%s: answered %q, want %q", name, got, tc.want)
		}
	}
	start := time.Now()
	err := cniplugin.AskAgent(sock, cniplugin.AgentRequest{Op: "add", Namespace: "a", Pod: "p", ContainerID: "c"}, 5*time.Second)
	if err == nil || time.Since(start) > 4*time.Second {
		t.Errorf("an ADD for a pod nobody knows: %v after %s", err, time.Since(start))
	}
	if err := cniplugin.AskAgent(sock, cniplugin.AgentRequest{Op: "del", ContainerID: "c"}, 5*time.Second); err != nil {
		t.Errorf("del: %v", err)
	}
}
