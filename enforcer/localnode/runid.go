package localnode

import (
	"fmt"
	"os"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/netpact/netpact/enforcer/podnet"
)

// idDir holds one directory per run id in use on this host, with the owner's pid inside.
const idDir = "/run/netpact/run-ids"

// ClaimRunID reserves a run id in [0, 200) for this process across every process on the host
// (a directory per id, created atomically), so that parallel test packages and suites never
// share namespace or interface names. Ids whose owner is gone are reclaimed. release frees it.
func ClaimRunID() (id int, release func(), err error) {
	if err := os.MkdirAll(idDir, 0o755); err != nil {
		return 0, nil, fmt.Errorf("claim run id: %w", err)
	}
	sweepDeadIDs()
	start := os.Getpid() % 200
	for pass := 0; pass < 2; pass++ {
		for i := 0; i < 200; i++ {
			id := (start + i) % 200
			dir := fmt.Sprintf("%s/%d", idDir, id)
			if err := os.Mkdir(dir, 0o755); err == nil {
				os.WriteFile(dir+"/pid", []byte(fmt.Sprint(os.Getpid())), 0o644)
				removeStalePods(id)
				return id, func() { os.RemoveAll(dir) }, nil
			}
			if pass == 1 {
				continue
			}
			// Reclaim the id of a process that is gone.
			data, err := os.ReadFile(dir + "/pid")
			var pid int
			if _, scanErr := fmt.Sscan(string(data), &pid); err == nil && scanErr == nil && pid > 0 {
				if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
					continue
				}
			} else if err == nil || !os.IsNotExist(err) {
				continue
			}
			os.RemoveAll(dir)
		}
	}
	return 0, nil, fmt.Errorf("claim run id: all 200 ids are in use under %s", idDir)
}

// sweepDeadIDs frees the run ids whose owner process is gone.
func sweepDeadIDs() {
	entries, err := os.ReadDir(idDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		dir := idDir + "/" + e.Name()
		data, err := os.ReadFile(dir + "/pid")
		var pid int
		if _, scanErr := fmt.Sscan(string(data), &pid); err != nil || scanErr != nil || pid <= 0 {
			continue // being claimed right now, or not ours
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			os.RemoveAll(dir)
		}
	}
}

// idHeld says whether a process other than dead holds run id: its directory is there, being
// claimed (no pid yet) or with a live owner's pid.
func idHeld(id, dead int) bool {
	data, err := os.ReadFile(fmt.Sprintf("%s/%d/pid", idDir, id))
	if os.IsNotExist(err) {
		_, dirErr := os.Stat(fmt.Sprintf("%s/%d", idDir, id))
		return dirErr == nil // claimed this instant: the pid comes next
	}
	var pid int
	if _, scanErr := fmt.Sscan(string(data), &pid); err != nil || scanErr != nil || pid <= 0 || pid == dead {
		return false
	}
	_, err = os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// removeStalePods deletes the pods, external hosts and proxy routing of run id (namespaces
// np<id>-*, host veths np<id>h* and np<id>x*, the external hosts' routing rules, the proxy's
// table and rule) that a process which held the id before left behind (killed before it could delete them): every process makes its pods under
// the id it holds, and this one holds id now, so none is another's.
func removeStalePods(id int) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), fmt.Sprintf("np%d-", id)) {
			(&podnet.Pod{Netns: e.Name()}).Delete()
		}
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		name := l.Attrs().Name
		if strings.HasPrefix(name, fmt.Sprintf("np%dh", id)) || strings.HasPrefix(name, fmt.Sprintf("np%dx", id)) {
			netlink.LinkDel(l)
		}
	}
	_ = removeExternalRules(id)
	_ = proxyRoutes(id).Remove()
}
