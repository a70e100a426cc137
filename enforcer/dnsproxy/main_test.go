package dnsproxy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
)

// netnsEnv marks the copy of the test binary that runs in a network namespace of its own.
const netnsEnv = "NETPACT_DNSPROXY_TEST_NETNS"

// TestMain runs the tests, as root, in a network namespace of their own: it is the node the
// transparent tests build (TPROXY rules, policy routes, veths to a pod and a DNS server), so that
// nothing of it touches the host's, which other work shares, and nothing is left when the
// process ends. Without root the tests run where they are, and the transparent ones skip (fail
// with CI=true).
func TestMain(m *testing.M) {
	if os.Geteuid() == 0 && os.Getenv(netnsEnv) == "" {
		os.Exit(inPrivateNetns())
	}
	if os.Getenv(netnsEnv) != "" {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "bring lo up in the test's network namespace: %v\n", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

func inPrivateNetns() int {
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return ee.ExitCode()
	}
	fmt.Fprintf(os.Stderr, "run the tests in a network namespace of their own: %v\n", err)
	return 1
}
