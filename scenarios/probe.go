//go:build linux

package scenarios

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/netpact/netpact/enforcer/podnet"
	"github.com/netpact/netpact/policy"
	"github.com/netpact/netpact/scenarios/probeagent"
)

// classify turns a dial or read error into an outcome: refused when the peer's stack answered,
// timeout for anything that never came back (a policy drop, or an ICMP deny response).
func classify(err error) Outcome {
	var se *probeSocketError
	switch {
	case err == nil:
		return Allow
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused
	case errors.As(err, &se):
		return "error" // the probe could not make its socket: nothing was sent
	}
	return Timeout
}

// servers are the built-in workloads of one pod, running as goroutines whose sockets live in the
// pod's network namespace.
type servers struct {
	closers []io.Closer
}

func (s *servers) Close() {
	for _, c := range s.closers {
		c.Close()
	}
}

// startServers starts the pod's workload: nginx or PostgreSQL from Debian on the TCP ports, a
// Kafka broker on its TCP port with topics (and the seed topics), or a built-in TCP server (echo, or HTTP answering every path for the http workload); and a UDP echo
// server on each UDP port. The dns workload answers DNS on its ports from z (the local node's
// kube-dns).
func startServers(p *podnet.Pod, workload string, ports []Port, z zone, topics []string) (*servers, error) {
	s := &servers{}
	switch workload {
	case "nginx", "postgres":
		proc, err := startWorkload(p, workload, ports)
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, proc)
	case "kafka":
		b, err := startKafka(p, ports[0].Port, topics)
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, b)
	}
	for _, port := range ports {
		addr := fmt.Sprintf(":%d", port.Port)
		switch port.Protocol {
		case policy.ProtoTCP:
			if workload == "nginx" || workload == "postgres" || workload == "kafka" {
				continue // served by the program (startWorkload) or the broker (startKafka)
			}
			var l net.Listener
			if err := p.Do(func() error {
				var err error
				l, err = net.Listen("tcp", addr)
				return err
			}); err != nil {
				s.Close()
				return nil, fmt.Errorf("pod %s: listen %s: %w", p.Name, port, err)
			}
			s.closers = append(s.closers, l)
			if workload == "grpc" {
				srv := grpc.NewServer()
				hs := health.NewServer()
				hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
				healthpb.RegisterHealthServer(srv, hs)
				s.closers = append(s.closers, closerFunc(func() error { srv.Stop(); return nil }))
				go srv.Serve(l)
				continue
			}
			if workload == "http" {
				srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					probeagent.WriteSaw(w.Header(), r.Header)
					fmt.Fprintf(w, "%s %s from %s\n", r.Method, r.URL.Path, p.Name)
				}), ReadHeaderTimeout: 5 * time.Second}
				go srv.Serve(l)
				continue
			}
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					if workload == "dns" {
						go serveDNSStream(c, z)
						continue
					}
					go func() {
						defer c.Close()
						c.SetDeadline(time.Now().Add(10 * time.Second))
						io.Copy(c, c)
					}()
				}
			}()
		case policy.ProtoUDP:
			var pc net.PacketConn
			if err := p.Do(func() error {
				var err error
				pc, err = net.ListenPacket("udp", addr)
				return err
			}); err != nil {
				s.Close()
				return nil, fmt.Errorf("pod %s: listen %s: %w", p.Name, port, err)
			}
			s.closers = append(s.closers, pc)
			if workload == "dns" {
				go serveDNSPacket(pc, z)
				continue
			}
			go func() {
				buf := make([]byte, 1500)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo(buf[:n], from)
				}
			}()
		}
	}
	return s, nil
}

// prober runs probes from pods of a local node. Each probe runs in a context that ends when the
// datapath drops one of its packets (LocalNode.probeContext), or after the probe timeout when
// neither an answer nor a drop came.
type prober struct {
	sctp *sctpListeners
	// sctpPorts numbers the SCTP probes' source ports.
	sctpPorts atomic.Uint32
}

func hostPort(a netip.Addr, port uint16) string {
	return net.JoinHostPort(a.String(), fmt.Sprint(port))
}

func (pr *prober) tcp(ctx context.Context, from *podnet.Pod, to netip.Addr, port uint16) Outcome {
	c, err := pr.dialer(ctx, from)(ctx, "tcp", hostPort(to, port))
	if err != nil {
		return classify(err)
	}
	defer c.Close()
	// The connection is only allowed if data goes through too: revoked flows drop mid-stream.
	defer bound(ctx, c)()
	if port == 53 {
		// A DNS server's port: a query (RFC 1035 4.2.2: length first), as on kind.
		q := probeagent.DNSQuery("")
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)); err != nil {
			return classify(err)
		}
		reply := make([]byte, 2+12)
		if _, err := io.ReadFull(c, reply); err != nil {
			return classify(err)
		}
		o, _ := probeagent.DNSReply(reply[2:], q)
		return Outcome(o)
	}
	if _, err := c.Write([]byte("probe\n")); err != nil {
		return classify(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c, buf); err != nil {
		if errors.Is(err, io.EOF) {
			return Allow // an HTTP server may close on garbage; it answered
		}
		return classify(err)
	}
	return Allow
}

// bound ends c's reads and writes when ctx ends (its deadline, or the datapath's drop of the
// probe); the returned func stops watching ctx.
func bound(ctx context.Context, c net.Conn) func() bool {
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	return context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
}

func (pr *prober) udp(ctx context.Context, from *podnet.Pod, to netip.Addr, port uint16) Outcome {
	c, err := pr.dialer(ctx, from)(ctx, "udp", hostPort(to, port))
	if err != nil {
		return classify(err)
	}
	defer c.Close()
	defer bound(ctx, c)()
	msg := []byte("probe")
	if port == 53 {
		msg = probeagent.DNSQuery("") // a DNS server's port: a query, as on kind
	}
	if _, err := c.Write(msg); err != nil {
		return classify(err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err == nil && port == 53 {
		o, _ := probeagent.DNSReply(buf[:n], msg)
		return Outcome(o)
	}
	return classify(err)
}

func (pr *prober) http(ctx context.Context, from *podnet.Pod, to netip.Addr, port uint16, c Cell) Outcome {
	method, urlPath := c.Method, c.Path
	tr := &http.Transport{DisableKeepAlives: true, DialContext: pr.dialer(ctx, from)}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	if method == "" {
		method = http.MethodGet
	}
	if urlPath == "" {
		urlPath = "/"
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+hostPort(to, port)+urlPath, nil)
	if err != nil {
		return Timeout
	}
	probeagent.SetRequest(req, c.VHost, c.Headers, c.Seen)
	resp, err := client.Do(req)
	if err != nil {
		return classify(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if probeagent.DroppedBehindProxy(resp.StatusCode, body) {
		return Timeout
	}
	return Outcome(probeagent.SeenOutcome(resp.StatusCode, c.Seen, probeagent.Saw(resp.Header, c.Seen)))
}

// grpc makes a unary gRPC call to method (/package.Service/Method; the grpc workload serves
// grpc.health.v1.Health) over h2c from the source pod: grpc-ok when it answered, grpc-denied for
// PermissionDenied (what a gRPC client makes of the L7 proxy's 403).
func (pr *prober) grpc(ctx context.Context, from *podnet.Pod, to netip.Addr, port uint16, method string) Outcome {
	dial := func(dctx context.Context, addr string) (net.Conn, error) {
		return pr.dialer(ctx, from)(dctx, "tcp", addr)
	}
	conn, err := grpc.NewClient("passthrough:///"+hostPort(to, port), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dial))
	if err != nil {
		return Timeout
	}
	defer conn.Close()
	var resp healthpb.HealthCheckResponse
	if method == healthpb.Health_List_FullMethodName {
		err = conn.Invoke(ctx, method, &healthpb.HealthListRequest{}, &healthpb.HealthListResponse{}, grpc.WaitForReady(true))
	} else {
		err = conn.Invoke(ctx, method, &healthpb.HealthCheckRequest{}, &resp, grpc.WaitForReady(true))
	}
	switch status.Code(err) {
	case codes.OK:
		return GRPCOK
	case codes.PermissionDenied:
		return GRPCDenied
	case codes.DeadlineExceeded, codes.Unavailable, codes.Canceled:
		return Timeout
	}
	return Outcome("grpc-" + strings.ToLower(status.Code(err).String()))
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// sctpInit sends a crafted SCTP INIT from the source pod on a raw socket (this kernel has no SCTP
// sockets) and asks the destination pod's raw listener whether it arrived.
func (pr *prober) sctpInit(ctx context.Context, from *podnet.Pod, to netip.Addr, port uint16) Outcome {
	tag := rand.Uint32() | 1
	// Ports taken in turn, not at random: no two probes in flight share one, so the drop of one's
	// INIT is never taken for the other's.
	sport := uint16(30000 + pr.sctpPorts.Add(1)%30000)
	if s := socketsOf(ctx); s != nil {
		s.add(policy.ProtoSCTP, sport, netip.AddrPortFrom(to, port))
	}
	src := from.IPv4
	if to.Is6() && !to.Is4In6() {
		src = from.IPv6
	}
	in := probeagent.SCTPInit{Src: src, SPort: sport, DPort: port, Tag: tag}
	wait := pr.sctp.expect(in)
	defer pr.sctp.forget(in)
	err := from.Do(func() error { return probeagent.SendSCTPInit(to, sport, port, tag) })
	if errors.Is(err, probeagent.ErrRawSCTPSocket) {
		return "error"
	}
	if err != nil {
		return classify(err)
	}
	select {
	case <-wait:
		return Allow
	case <-ctx.Done():
		return Timeout
	}
}

// sctpListeners are raw SCTP sockets in every pod, reporting the INITs that arrive (by source
// address and port, destination port and initiate tag).
type sctpListeners struct {
	mu      sync.Mutex
	waiting map[probeagent.SCTPInit]chan struct{}
	closed  atomic.Bool
}

func newSCTPListeners() *sctpListeners {
	return &sctpListeners{waiting: map[probeagent.SCTPInit]chan struct{}{}}
}

func (l *sctpListeners) expect(in probeagent.SCTPInit) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	ch := make(chan struct{})
	l.waiting[in] = ch
	return ch
}

func (l *sctpListeners) forget(in probeagent.SCTPInit) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.waiting, in)
}

func (l *sctpListeners) arrived(in probeagent.SCTPInit) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ch, ok := l.waiting[in]; ok {
		close(ch)
		delete(l.waiting, in)
	}
}

// listen opens raw SCTP sockets (IPv4 and IPv6) in a pod.
func (l *sctpListeners) listen(p *podnet.Pod) error {
	for _, family := range []int{syscall.AF_INET, syscall.AF_INET6} {
		var fd int
		err := p.Do(func() error {
			var err error
			fd, err = probeagent.RawSCTPSocket(family)
			return err
		})
		if err != nil {
			return fmt.Errorf("pod %s: %w", p.Name, err)
		}
		// A reader that stops on an error leaves the pod's SCTP probes to time out: the probe's
		// note says no drop of theirs was seen, which points here.
		go func() { _ = probeagent.ReadSCTPInits(fd, family, l.closed.Load, l.arrived) }()
	}
	return nil
}

// Close stops the listeners; each closes its socket at its next wake-up.
func (l *sctpListeners) Close() { l.closed.Store(true) }

// dialer opens connections from inside a pod for the probe whose context is probe: each
// socket's port goes to the probe's drop witness (probeSockets), and each attempt is bounded by
// its own context (the probe's, or one a client library derived).
func (pr *prober) dialer(probe context.Context, from *podnet.Pod) probeagent.Dialer {
	d := &net.Dialer{}
	if s := socketsOf(probe); s != nil {
		d.Control = s.control
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := from.Do(func() error {
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// probeSockets are the sockets one probe opened, by protocol and local port, with the address
// each connected to: the datapath's drop of a packet is the probe's witness only when it is one
// of these.
type probeSockets struct {
	mu    sync.Mutex
	ports map[probePort]netip.AddrPort
	err   error // the first socket the probe could not bind
}

// probePort is a socket's protocol and local port.
type probePort struct {
	proto policy.Proto
	port  uint16
}

type probeSocketsKey struct{}

// socketsOf is the probe's sockets, carried by its context; nil outside a probe.
func socketsOf(ctx context.Context) *probeSockets {
	s, _ := ctx.Value(probeSocketsKey{}).(*probeSockets)
	return s
}

func (s *probeSockets) add(proto policy.Proto, port uint16, to netip.AddrPort) {
	s.mu.Lock()
	s.ports[probePort{proto, port}] = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	s.mu.Unlock()
}

// remote is the address and port the probe's socket with this protocol and port connected to.
func (s *probeSockets) remote(proto policy.Proto, port uint16) (netip.AddrPort, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.ports[probePort{proto, port}]
	return a, ok
}

// failed is the error of the first socket the probe could not bind, if any.
func (s *probeSockets) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// probeSocketError is a probe's failure to make its socket: an "error" outcome, not a timeout.
type probeSocketError struct{ err error }

func (e *probeSocketError) Error() string { return "the probe's socket: " + e.err.Error() }
func (e *probeSocketError) Unwrap() error { return e.err }

// control binds a new socket to a port of the kernel's choice before it connects, and records
// the port: without it the port is only known once the connection is made, too late to tell the
// drop of its first packet.
func (s *probeSockets) control(network, address string, c syscall.RawConn) error {
	to, err := netip.ParseAddrPort(address)
	if err != nil {
		return &probeSocketError{fmt.Errorf("remote address %q: %w", address, err)}
	}
	proto := policy.ProtoTCP
	if strings.HasPrefix(network, "udp") {
		proto = policy.ProtoUDP
	}
	cerr := c.Control(func(fd uintptr) {
		var sa unix.Sockaddr = &unix.SockaddrInet4{}
		if strings.HasSuffix(network, "6") {
			sa = &unix.SockaddrInet6{}
		}
		if err = unix.Bind(int(fd), sa); err != nil {
			err = fmt.Errorf("bind the probe's socket: %w", err)
			return
		}
		var got unix.Sockaddr
		if got, err = unix.Getsockname(int(fd)); err != nil {
			err = fmt.Errorf("the probe's socket's port: %w", err)
			return
		}
		switch a := got.(type) {
		case *unix.SockaddrInet4:
			s.add(proto, uint16(a.Port), to)
		case *unix.SockaddrInet6:
			s.add(proto, uint16(a.Port), to)
		}
	})
	if err = errors.Join(cerr, err); err != nil {
		err = &probeSocketError{err}
		s.mu.Lock()
		if s.err == nil {
			s.err = err
		}
		s.mu.Unlock()
	}
	return err
}

// resolve resolves name from inside a pod of namespace ns with the resolv.conf kubelet would
// give it (probeagent.PodResolvConf: the resolver at port 53, the namespace's search list, ndots
// 5), within the probe's context.
func (pr *prober) resolve(ctx context.Context, from *podnet.Pod, ns string, resolver netip.Addr, name string) (probeagent.Answer, error) {
	return probeagent.Resolve(ctx, probeagent.PodResolvConf(resolver, ns), name, pr.dialer(ctx, from))
}

// tlsGet makes an HTTPS GET / from a pod to an external host (probeagent.TLSGet), trusting the
// harness's CA, within the probe's context.
func (pr *prober) tlsGet(ctx context.Context, from *podnet.Pod, to netip.AddrPort, serverName, want string) Outcome {
	_, _, roots, err := certificateAuthority()
	if err != nil {
		return "error"
	}
	o, _ := probeagent.TLSGet(ctx, pr.dialer(ctx, from), to, serverName, roots, want)
	return Outcome(o)
}

// kafka makes a Kafka probe from a pod within the probe's context.
func (pr *prober) kafka(ctx context.Context, from *podnet.Pod, to netip.Addr, port uint16, c Cell) (Outcome, string) {
	o, note := probeagent.KafkaProbe(ctx, pr.dialer(ctx, from), hostPort(to, port), c.Kafka, c.Topic, c.ClientID)
	return Outcome(o), note
}
