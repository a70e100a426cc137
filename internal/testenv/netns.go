package testenv

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// NetNS makes a named network namespace (under /run/netns, as CNI runtimes do) that is removed
// when the test ends, passed or failed. A namespace whose handle is open cannot be unmounted
// (EBUSY), so the handle is closed first; an error of either step fails the test.
func NetNS(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("make network namespace: %v", err)
	}
	t.Cleanup(func() {
		if _, err := os.Stat(n.Path()); errors.Is(err, os.ErrNotExist) {
			return // removed by the test itself (RemoveNetNS)
		}
		if err := RemoveNetNS(n); err != nil {
			t.Errorf("remove network namespace: %v", err)
		}
	})
	return n
}

// RemoveNetNS closes the handle and unmounts and removes the namespace's bind mount, so the
// kernel frees the namespace once no process is in it: what a container runtime does before a
// CNI DEL for a pod that is already gone.
func RemoveNetNS(n ns.NetNS) error {
	if err := n.Close(); err != nil {
		return fmt.Errorf("close %s: %w", n.Path(), err)
	}
	if err := testutils.UnmountNS(n); err != nil {
		return fmt.Errorf("unmount %s: %w", n.Path(), err)
	}
	return nil
}
