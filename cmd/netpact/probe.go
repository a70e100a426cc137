//go:build linux

package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"

	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// newProbeCommand and newProbeServerCommand run in the pods the kind backend of `netpact test`
// creates: the server answers on the scenario pod's ports, the prober makes a batch of probes.
func newProbeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "probe",
		Short: "Make the probes read as JSON on stdin, concurrently, and print their outcomes as JSON",
		Long: `probe reads a JSON array of probes ({"id","proto","host","port","http","method","path","dns",
"name","timeoutMS"}) on stdin, makes them all at once from this pod, and prints a JSON array of
{"id","outcome","note"}: allow, refused, timeout or http-<status>; an SCTP probe is an INIT sent on
a raw socket, "sctp-sent" with its "tag", which probe-sctp-arrived asks the destination about. The
scenario runner's cluster backend calls it once per source pod and step.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 8<<20))
			if err != nil {
				return fmt.Errorf("read probes: %w", err)
			}
			var reqs []probeagent.Request
			if err := json.Unmarshal(raw, &reqs); err != nil {
				return fmt.Errorf("read probes: %w", err)
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(probeagent.Run(reqs))
		},
	}
}

// newProbeSCTPArrivedCommand asks this pod's probe server which SCTP INITs arrived: the second
// half of an SCTP probe on a cluster.
func newProbeSCTPArrivedCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "probe-sctp-arrived",
		Short: "Say which SCTP INITs reached this pod's probe server",
		Long: `probe-sctp-arrived reads {"inits":[{"src","sport","dport","tag"}...],"timeoutMS":N} on stdin,
asks this pod's probe server (which records the INITs its raw SCTP sockets receive) which of them
arrived, waiting up to timeoutMS for the others, and prints {"arrived":[true|false...]} in their order.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Read to the end of stdin before answering, as probe does: the exec's stdin is closed
			// by the time the command prints and exits.
			raw, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
			if err != nil {
				return fmt.Errorf("read the question: %w", err)
			}
			var q probeagent.SCTPQuestion
			if err := json.Unmarshal(raw, &q); err != nil {
				return fmt.Errorf("read the question: %w", err)
			}
			got, err := probeagent.AskSCTPArrivals(probeagent.SCTPSocket, q.Inits, time.Duration(q.TimeoutMS)*time.Millisecond)
			if err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(probeagent.SCTPAnswer{Arrived: got})
		},
	}
}

func newProbeServerCommand() *cobra.Command {
	var ports []string
	var ready string
	var logSources bool
	cmd := &cobra.Command{
		Use:   "probe-server",
		Short: "Answer on a scenario pod's ports: TCP echo, HTTP 200 on every path, UDP echo, SCTP INITs recorded",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ps []probeagent.Port
			for _, s := range ports {
				p, err := probeagent.ParsePort(s)
				if err != nil {
					return err
				}
				ps = append(ps, p)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			var log io.Writer
			if logSources {
				log = cmd.OutOrStdout()
			}
			return probeagent.ServeLogging(ctx, ps, ready, log)
		},
	}
	cmd.Flags().BoolVar(&logSources, "log", false, `print "from ADDR" the first time each source address reaches a port`)
	cmd.Flags().StringArrayVar(&ports, "port", nil, "a port to serve, NUMBER/TCP, NUMBER/UDP or NUMBER/SCTP (repeatable)")
	cmd.Flags().StringVar(&ready, "ready-file", "", "file created once every port is bound (a readiness probe reads it)")
	return cmd
}

// newProbeKafkaBrokerCommand is the kafka workload of a scenario pod on a cluster: a Kafka broker
// (franz-go's kfake) on the pod's port, telling clients to connect to the pod's address.
func newProbeKafkaBrokerCommand() *cobra.Command {
	var port, ready, advertise string
	var topics []string
	cmd := &cobra.Command{
		Use:   "probe-kafka-broker",
		Short: "Serve a scenario pod's kafka workload: one Kafka broker, its topics holding a record each",
		Long: `probe-kafka-broker runs a Kafka broker (franz-go's kfake) on --port, on every address of the pod,
and tells clients (Metadata, FindCoordinator) to connect to --advertise on that port, the pod's address.
Its topics are orders, notifications, payments and each --topic, of one partition holding one record.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := probeagent.ParsePort(port)
			if err != nil {
				return err
			}
			if p.Proto != "TCP" {
				return fmt.Errorf("--port %s: a broker listens on TCP", port)
			}
			addr, err := netip.ParseAddr(advertise)
			if err != nil {
				return fmt.Errorf("--advertise %q: the pod's IP address: %w", advertise, err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			start, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			b, err := probeagent.StartKafkaBroker(start, net.Listen, netip.AddrPortFrom(addr, p.Port), topics, (&net.Dialer{}).DialContext)
			if err != nil {
				return err
			}
			defer b.Close()
			if ready != "" {
				if err := os.WriteFile(ready, []byte("ready\n"), 0o644); err != nil {
					return fmt.Errorf("ready file: %w", err)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "kafka broker on %s, topics %v and %v\n", netip.AddrPortFrom(addr, p.Port), probeagent.KafkaSeedTopics, topics)
			<-ctx.Done()
			return nil
		},
	}
	cmd.Flags().StringVar(&port, "port", "9092/TCP", "the port to serve, NUMBER/TCP")
	cmd.Flags().StringVar(&advertise, "advertise", "", "the pod's IP address, which clients are told to connect to")
	cmd.Flags().StringArrayVar(&topics, "topic", nil, "a topic besides the seed ones (repeatable)")
	cmd.Flags().StringVar(&ready, "ready-file", "", "file created once the topics hold their records (a readiness probe reads it)")
	return cmd
}

func newProbeFloodCommand() *cobra.Command {
	var to string
	var interval, d time.Duration
	cmd := &cobra.Command{
		Use:   "probe-flood",
		Short: "Send to HOST:PORT over UDP (and TCP) from the first instant, for a while",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to == "" {
				return fmt.Errorf("--to HOST:PORT is required")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			n := probeagent.Flood(ctx, to, interval, d)
			fmt.Fprintf(cmd.OutOrStdout(), "sent %d datagrams to %s\n", n, to)
			// Stay, so that the pod stays Running and its address known.
			<-ctx.Done()
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "HOST:PORT to send to")
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Millisecond, "time between datagrams")
	cmd.Flags().DurationVar(&d, "for", 30*time.Second, "how long to send")
	return cmd
}

// newExternalServerCommand is an external host of a scenario on kind: a container on the kind
// Docker network that carries the external's fixed addresses on its loopback (the nodes route
// them to it) and serves the tls workload on its ports.
func newExternalServerCommand() *cobra.Command {
	var name string
	var ports []uint
	var addrs []string
	cmd := &cobra.Command{
		Use:    "external-server",
		Short:  "Serve a scenario's external host: HTTPS on its ports, its addresses on the loopback",
		Long:   "The certificate and key (PEM) are read from the NETPACT_TLS_CERT and NETPACT_TLS_KEY environment variables.",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cert, err := tls.X509KeyPair([]byte(os.Getenv("NETPACT_TLS_CERT")), []byte(os.Getenv("NETPACT_TLS_KEY")))
			if err != nil {
				return fmt.Errorf("certificate from NETPACT_TLS_CERT and NETPACT_TLS_KEY: %w", err)
			}
			if err := addLoopbackAddrs(addrs); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			errs := make(chan error, len(ports))
			for _, p := range ports {
				l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
				if err != nil {
					return fmt.Errorf("listen %d/TCP: %w", p, err)
				}
				srv := probeagent.NewTLSServer(name, cert)
				defer srv.Close()
				go func() { errs <- srv.ServeTLS(l, "", "") }()
			}
			fmt.Fprintf(cmd.OutOrStdout(), "serving external %s on %v at %v\n", name, ports, addrs)
			select {
			case <-ctx.Done():
				return nil
			case err := <-errs:
				return fmt.Errorf("serve: %w", err)
			}
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the external host's name (GET / answers with it)")
	cmd.Flags().UintSliceVar(&ports, "port", nil, "a TCP port to serve HTTPS on (repeatable)")
	cmd.Flags().StringArrayVar(&addrs, "address", nil, "an address to add to the loopback (repeatable)")
	return cmd
}

// addLoopbackAddrs puts the addresses on lo (a host route each), where packets routed to this
// container for them are delivered.
func addLoopbackAddrs(addrs []string) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	for _, s := range addrs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("address %q: %w", s, err)
		}
		if err := netlink.AddrReplace(lo, &netlink.Addr{IPNet: podnet.HostPrefix(a)}); err != nil {
			return fmt.Errorf("add %s to lo (the container needs NET_ADMIN): %w", a, err)
		}
	}
	return nil
}
