package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// softMemoryLimit sets Go's soft memory limit to 90% of the container's (cgroup v2 memory.max),
// unless GOMEMLIMIT says otherwise: the collector works harder before the kernel kills the node's
// enforcer.
func softMemoryLimit(memoryMax string) (int64, bool) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, false
	}
	raw, err := os.ReadFile(memoryMax)
	if err != nil {
		return 0, false
	}
	max, err := strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil || max <= 0 { // "max": no limit
		return 0, false
	}
	limit := max / 10 * 9
	debug.SetMemoryLimit(limit)
	return limit, true
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster configuration (or pass --kubeconfig): %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}
