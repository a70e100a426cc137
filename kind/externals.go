package kind

// External hosts of a cluster: containers on kind's Docker network, each carrying fixed
// addresses (not of the network's subnet) on its loopback, and every node of the cluster routes
// those addresses to it, as a data centre's routers reach a host outside the cluster. Pods reach
// them through their node (masqueraded by netpact); no node, pod or service has their addresses.

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"
)

// externalLabel marks an external host's container with its cluster's name.
const externalLabel = "netpact.io/external-of"

// externalRouteProto is the route protocol of the nodes' routes to external hosts, apart from
// the enforcer's own (0x6e), so that each flushes only its own.
const externalRouteProto = "0x6f"

// ExternalHost is a host outside the cluster serving HTTPS (netpact external-server).
type ExternalHost struct {
	Name  string
	Addrs []netip.Addr
	Ports []uint16
	// CertPEM and KeyPEM are its certificate (for its names and Addrs) and key.
	CertPEM, KeyPEM []byte
}

// StartExternal runs the host in a container of image (the netpact image) on the cluster's
// network, waits until it serves, and routes its addresses to it on every node.
func StartExternal(cluster, image string, h ExternalHost) error {
	UsePrivateDocker()
	name := cluster + "-external-" + h.Name
	args := []string{"run", "-d", "--name", name, "--network", "kind", "--label", externalLabel + "=" + cluster,
		"--cap-add", "NET_ADMIN", "-e", "NETPACT_TLS_CERT", "-e", "NETPACT_TLS_KEY", image,
		"external-server", "--name", h.Name}
	for _, a := range h.Addrs {
		args = append(args, "--address", a.String())
	}
	for _, p := range h.Ports {
		args = append(args, fmt.Sprintf("--port=%d", p))
	}
	cmd := exec.Command("docker", args...)
	cmd.Env = append(cmd.Environ(), "NETPACT_TLS_CERT="+string(h.CertPEM), "NETPACT_TLS_KEY="+string(h.KeyPEM))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("external %s: docker run: %w: %s", h.Name, err, out)
	}
	if err := waitServing(name); err != nil {
		return fmt.Errorf("external %s: %w", h.Name, err)
	}
	out, err := exec.Command("docker", "inspect", "-f",
		`{{(index .NetworkSettings.Networks "kind").IPAddress}} {{(index .NetworkSettings.Networks "kind").GlobalIPv6Address}}`,
		name).Output()
	if err != nil {
		return fmt.Errorf("external %s: its address on the kind network: %w", h.Name, err)
	}
	var via4, via6 string
	if f := strings.Fields(string(out)); len(f) > 0 {
		via4 = f[0]
		if len(f) > 1 {
			via6 = f[1]
		}
	}
	nodes, err := provider().ListNodes(cluster)
	if err != nil {
		return fmt.Errorf("external %s: list nodes: %w", h.Name, err)
	}
	for _, n := range nodes {
		for _, a := range h.Addrs {
			via, family := via4, "-4"
			if a.Is6() {
				via, family = via6, "-6"
			}
			if via == "" {
				return fmt.Errorf("external %s: no %s address on the kind network for %s", h.Name, family, a)
			}
			var buf strings.Builder
			cmd := n.Command("ip", family, "route", "replace", netip.PrefixFrom(a, a.BitLen()).String(), "via", via,
				"proto", externalRouteProto)
			cmd.SetStderr(&buf)
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("external %s: route %s via %s on node %s: %w: %s", h.Name, a, via, n.String(), err, buf.String())
			}
		}
	}
	return nil
}

// waitServing waits until the container says it serves, or fails with its log when it stopped.
func waitServing(name string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command("docker", "logs", name).CombinedOutput()
		if err == nil && strings.Contains(string(out), "serving external") {
			return nil
		}
		state, _ := exec.Command("docker", "inspect", "-f", "{{.State.Status}}", name).Output()
		if s := strings.TrimSpace(string(state)); s == "exited" || s == "dead" || time.Now().After(deadline) {
			return fmt.Errorf("container %s does not serve (%s): %s", name, s, strings.TrimSpace(string(out)))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// RemoveExternals removes the cluster's external hosts (those of a killed run too) and the
// nodes' routes to them.
func RemoveExternals(cluster string) error {
	UsePrivateDocker()
	out, err := exec.Command("docker", "ps", "-aq", "--filter", "label="+externalLabel+"="+cluster).Output()
	if err != nil {
		return fmt.Errorf("list external hosts: %w", err)
	}
	ids := strings.Fields(string(out))
	if len(ids) == 0 {
		return nil // nor routes to them: they go after the containers
	}
	var errs []error
	if out, err := exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("remove external hosts: %w: %s", err, out))
	}
	nodes, err := provider().ListNodes(cluster)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list nodes: %w", err))...)
	}
	for _, n := range nodes {
		for _, family := range []string{"-4", "-6"} {
			var buf strings.Builder
			cmd := n.Command("ip", family, "route", "flush", "proto", externalRouteProto)
			cmd.SetStderr(&buf)
			if err := cmd.Run(); err != nil {
				errs = append(errs, fmt.Errorf("flush the routes to external hosts on node %s: %w: %s", n.String(), err, buf.String()))
			}
		}
	}
	return errors.Join(errs...)
}
