package cniplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/netpact/netpact/internal/fileutil"
)

// Endpoint is a pod the plugin wired on this node: the record the enforcer reads to find the
// pod's host veth and addresses (and, with the datapath on kind, to attach its programs there).
type Endpoint struct {
	ContainerID string   `json:"containerID"`
	Namespace   string   `json:"namespace,omitempty"`
	Pod         string   `json:"pod,omitempty"`
	PodUID      string   `json:"podUID,omitempty"`
	Netns       string   `json:"netns"`
	IfName      string   `json:"ifName"`
	HostVeth    string   `json:"hostVeth"`
	HostIfIndex int      `json:"hostIfIndex"`
	IPs         []string `json:"ips"`
	// NetnsCookie is the pod network namespace's cookie (SO_NETNS_COOKIE), which the socket
	// programs record translations under: flow events then name the Service.
	NetnsCookie uint64 `json:"netnsCookie,omitempty"`
}

// WriteEndpoint records an endpoint atomically.
func WriteEndpoint(dir string, ep Endpoint) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("endpoint dir: %w", err)
	}
	b, err := json.MarshalIndent(ep, "", "  ")
	if err != nil {
		return err
	}
	if err := fileutil.WriteAtomic(filepath.Join(dir, ep.ContainerID+".json"), b, 0o644); err != nil {
		return fmt.Errorf("write endpoint: %w", err)
	}
	return nil
}

// RemoveEndpoint forgets an endpoint; a missing record is not an error.
func RemoveEndpoint(dir, containerID string) error {
	err := os.Remove(filepath.Join(dir, containerID+".json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove endpoint: %w", err)
	}
	return nil
}

// Endpoints lists the recorded endpoints, sorted by namespace, pod and container.
func Endpoints(dir string) ([]Endpoint, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	var eps []Endpoint
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read endpoint: %w", err)
		}
		var ep Endpoint
		if err := json.Unmarshal(b, &ep); err != nil {
			return nil, fmt.Errorf("endpoint %s: %w", f, err)
		}
		eps = append(eps, ep)
	}
	sort.Slice(eps, func(i, j int) bool {
		a, b := eps[i], eps[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Pod != b.Pod {
			return a.Pod < b.Pod
		}
		return a.ContainerID < b.ContainerID
	})
	return eps, nil
}
