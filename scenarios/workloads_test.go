package scenarios

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/internal/testenv"
	"github.com/netpact/netpact/policy"
)

func TestMain(m *testing.M) {
	if os.Getenv("NETPACT_WORKLOAD_HELPER") == "1" {
		holdWorkloads()
		return
	}
	code := m.Run()
	if err := apiServer.Stop(); err != nil {
		os.Stderr.WriteString("stop the API server: " + err.Error() + "\n")
		code = 1
	}
	os.Exit(code)
}

// holdWorkloads is the child of TestWorkloadsDieWithTheirParent: a local node with an nginx
// and a PostgreSQL pod; it prints "ready" and its pods' namespaces, and waits to be killed.
func holdWorkloads() {
	sc := &Scenario{Name: "hold", Namespaces: []Namespace{{Name: "app"}}, Pods: []Pod{
		{Name: "web", Namespace: "app", Workload: "nginx", Ports: []Port{{Port: 80, Protocol: policy.ProtoTCP}}},
		{Name: "db", Namespace: "app", Workload: "postgres", Ports: []Port{{Port: 5432, Protocol: policy.ProtoTCP}}},
	}}
	node := NewLocal(LocalOptions{})
	if _, err := node.Start(sc); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	// The pods' namespaces, for the test to delete: once this process is dead, another local
	// node may free its run id before the test looks, and the id no longer names them.
	fmt.Println("ready", node.node.Pod("app/web").Netns, node.node.Pod("app/db").Netns)
	select {}
}

// TestWorkloadsDieWithTheirParent: a test binary (or netpact test) killed with SIGKILL cannot
// stop its pods' workloads; the kernel's parent-death signal does, nginx and PostgreSQL with
// every process of theirs. What the killed process leaves in the kernel (namespaces, veths,
// pins) the next local node or this test removes.
func TestWorkloadsDieWithTheirParent(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	testenv.RequireCommand(t, "nginx", "nginx-light")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "NETPACT_WORKLOAD_HELPER=1")
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			ready <- sc.Text()
			return
		}
		ready <- "exited"
	}()
	var netns []string
	select {
	case line := <-ready:
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "ready" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("helper: %s", line)
		}
		netns = f[1:]
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("helper not ready")
	}
	descendants := processTree(t, cmd.Process.Pid)
	var names []string
	for _, d := range descendants {
		names = append(names, d.comm)
	}
	joined := strings.Join(names, " ")
	if !strings.Contains(joined, "nginx") || !strings.Contains(joined, "postgres") {
		t.Errorf("the helper's workloads are not running: %s", joined)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	// The next local node sweeps what the dead run left: pins and run id; its pods' namespaces
	// (and with them their veths) are the ones the helper named, removed here.
	t.Cleanup(func() {
		for _, ns := range netns {
			(&podnet.Pod{Netns: ns}).Delete()
		}
		n := NewLocal(LocalOptions{})
		if _, err := n.Start(&Scenario{Name: "sweep"}); err == nil {
			n.Stop()
		}
	})
	deadline := time.Now().Add(5 * time.Second) // the signal is immediate; this only waits for exit
	for {
		var alive []string
		for _, d := range descendants {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", d.pid)); err == nil {
				alive = append(alive, fmt.Sprintf("%s (%d)", d.comm, d.pid))
			}
		}
		if len(alive) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, d := range descendants {
				syscall.Kill(d.pid, syscall.SIGKILL)
			}
			t.Fatalf("workloads outlived their killed parent: %s", strings.Join(alive, ", "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type proc struct {
	pid  int
	comm string
}

// processTree lists every descendant of pid.
func processTree(t *testing.T, pid int) []proc {
	t.Helper()
	out, err := exec.Command("ps", "-eo", "pid=,ppid=,comm=").Output()
	if err != nil {
		t.Fatal(err)
	}
	children := map[int][]proc{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		p, _ := strconv.Atoi(f[0])
		pp, _ := strconv.Atoi(f[1])
		children[pp] = append(children[pp], proc{p, f[2]})
	}
	var all []proc
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			all = append(all, c)
			walk(c.pid)
		}
	}
	walk(pid)
	return all
}
