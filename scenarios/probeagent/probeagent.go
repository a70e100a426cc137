// Package probeagent runs inside a pod of a cluster: Serve answers on the ports a scenario pod
// declares (TCP echo, HTTP 200 on every path, UDP echo), Run makes a batch of probes at once and
// reports each outcome. The kind backend of the scenario runner execs `netpact probe` once per
// source pod and step, with every probe of that pod on stdin, as cyclonus' agnhost workers do.
package probeagent

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Request is one probe.
type Request struct {
	ID    int    `json:"id"`
	Proto string `json:"proto"` // TCP, UDP or SCTP (an INIT on a raw socket: SCTPSent)
	Host  string `json:"host"`
	Port  uint16 `json:"port"`
	// HTTP makes a TCP probe an HTTP request with Method (GET when empty) and Path ("/"), the
	// Host header VHost (the address when empty) and Headers; Seen are the headers the
	// destination must say it received ("" for absent: see EchoHeader).
	HTTP    bool              `json:"http,omitempty"`
	Method  string            `json:"method,omitempty"`
	Path    string            `json:"path,omitempty"`
	VHost   string            `json:"vhost,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	Seen    map[string]string `json:"seen,omitempty"`
	// DNS makes the probe a real DNS query for Name (type A), over UDP or TCP: a resolver
	// answers it.
	DNS  bool   `json:"dns,omitempty"`
	Name string `json:"name,omitempty"`
	// Lookup resolves Name with the pod's own resolver (its /etc/resolv.conf: kube-dns's
	// ClusterIP, search domains, ndots) instead; Host and Port are not used. allow: it answered,
	// with addresses or NXDOMAIN (dns-nxdomain when ExactRCode); dns-refused and the like for
	// other answers (LookupOutcome).
	Lookup     bool `json:"lookup,omitempty"`
	ExactRCode bool `json:"exactRCode,omitempty"`
	// TLS makes a TCP probe an HTTPS GET / to an external host (TLSGet): its certificate must be
	// for ServerName and signed by CA (PEM), its answer Want. With Lookup, the probe connects to
	// the first address Name resolves to with the pod's resolver instead of Host.
	TLS        bool   `json:"tls,omitempty"`
	ServerName string `json:"serverName,omitempty"`
	CA         string `json:"ca,omitempty"`
	Want       string `json:"want,omitempty"`
	// Kafka makes a TCP probe a Kafka client's (KafkaProbe): produce (KafkaProduce) or consume
	// (KafkaConsume) one record on Topic, with client ID ClientID.
	Kafka    string `json:"kafka,omitempty"`
	Topic    string `json:"topic,omitempty"`
	ClientID string `json:"clientID,omitempty"`
	// TimeoutMS bounds the connection attempt; 3000 when zero.
	TimeoutMS int `json:"timeoutMS,omitempty"`
}

// Result is a probe's outcome: allow, refused, timeout, http-<code>, dns-<rcode> or error, with
// a note; a lookup's answer also gives its rcode (NOERROR, NXDOMAIN, REFUSED...).
type Result struct {
	ID      int    `json:"id"`
	Outcome string `json:"outcome"`
	Note    string `json:"note,omitempty"`
	RCode   string `json:"rcode,omitempty"`
	// SPort and Tag are an SCTP probe's source port and initiate tag, by which the destination's
	// probe server knows its INIT (SCTPInit).
	SPort uint16 `json:"sport,omitempty"`
	Tag   uint32 `json:"tag,omitempty"`
}

// Run makes every probe concurrently (at most 64 at a time) and returns the results in order.
func Run(reqs []Request) []Result {
	out := make([]Result, len(reqs))
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if r.TLS {
				out[i] = tlsProbe(r, r.timeout())
				return
			}
			if r.Lookup {
				out[i] = lookup(r)
				return
			}
			if r.Kafka != "" {
				out[i] = kafka(r)
				return
			}
			if strings.EqualFold(r.Proto, "SCTP") {
				out[i] = sctpProbe(r)
				return
			}
			o, note := probe(r)
			out[i] = Result{ID: r.ID, Outcome: o, Note: note}
		}()
	}
	wg.Wait()
	return out
}

// timeout bounds a probe's connection attempt.
func (r Request) timeout() time.Duration {
	if r.TimeoutMS > 0 {
		return time.Duration(r.TimeoutMS) * time.Millisecond
	}
	return 3 * time.Second
}

func classify(err error) (string, string) {
	switch {
	case err == nil:
		return "allow", ""
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused", err.Error()
	}
	return "timeout", err.Error()
}

func probe(r Request) (string, string) {
	timeout := r.timeout()
	addr := net.JoinHostPort(r.Host, strconv.Itoa(int(r.Port)))
	switch strings.ToUpper(r.Proto) {
	case "TCP", "":
		if r.HTTP {
			return httpProbe(addr, r, timeout)
		}
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return classify(err)
		}
		defer c.Close()
		// Data must go through too: a flow revoked mid-stream drops.
		_ = c.SetDeadline(time.Now().Add(timeout))
		if r.DNS {
			q := DNSQuery(r.Name)
			msg := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
			if _, err := c.Write(append(msg, q...)); err != nil {
				return classify(err)
			}
			reply := make([]byte, 2+12)
			if _, err := io.ReadFull(c, reply); err != nil {
				return classify(err)
			}
			return DNSReply(reply[2:], q)
		}
		if _, err := c.Write([]byte("probe\n")); err != nil {
			return classify(err)
		}
		buf := make([]byte, 6)
		if _, err := io.ReadFull(c, buf); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return classify(err)
		}
		return "allow", ""
	case "UDP":
		c, err := net.Dial("udp", addr)
		if err != nil {
			return classify(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		msg := []byte("probe")
		if r.DNS {
			msg = DNSQuery(r.Name)
		}
		if _, err := c.Write(msg); err != nil {
			return classify(err)
		}
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		if err != nil {
			return classify(err)
		}
		if r.DNS {
			return DNSReply(buf[:n], msg)
		}
		return "allow", ""
	}
	return "error", "unsupported protocol " + r.Proto
}

// lookup resolves a name as the pod's stub resolver does, from /etc/resolv.conf, and reports
// the answer's rcode.
func lookup(r Request) Result {
	timeout := r.timeout()
	data, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return Result{ID: r.ID, Outcome: "error", Note: err.Error()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*timeout)
	defer cancel()
	a, err := Resolve(ctx, ParseResolvConf(data), r.Name, (&net.Dialer{}).DialContext)
	res := Result{ID: r.ID, Outcome: LookupOutcome(a, err, r.ExactRCode), Note: a.Note()}
	if err != nil {
		res.Note = err.Error()
	} else {
		res.RCode = RCodeName(a.RCode)
	}
	return res
}

// kafka makes a Kafka probe within twice the connection timeout, as an HTTP request has.
func kafka(r Request) Result {
	timeout := r.timeout()
	ctx, cancel := context.WithTimeout(context.Background(), 2*timeout)
	defer cancel()
	addr := net.JoinHostPort(r.Host, strconv.Itoa(int(r.Port)))
	o, note := KafkaProbe(ctx, (&net.Dialer{Timeout: timeout}).DialContext, addr, r.Kafka, r.Topic, r.ClientID)
	return Result{ID: r.ID, Outcome: o, Note: note}
}

func httpProbe(addr string, r Request, timeout time.Duration) (string, string) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: (&net.Dialer{Timeout: timeout}).DialContext}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * timeout}
	method, path := r.Method, r.Path
	if method == "" {
		method = http.MethodGet
	}
	if path == "" {
		path = "/"
	}
	req, err := http.NewRequestWithContext(context.Background(), method, "http://"+addr+path, nil)
	if err != nil {
		return "error", err.Error()
	}
	SetRequest(req, r.VHost, r.Headers, r.Seen)
	resp, err := client.Do(req)
	if err != nil {
		return classify(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if DroppedBehindProxy(resp.StatusCode, body) {
		return "timeout", "the L7 proxy's connection was dropped: " + strings.TrimSpace(string(body))
	}
	return SeenOutcome(resp.StatusCode, r.Seen, Saw(resp.Header, r.Seen)), ""
}

// SetRequest gives an HTTP probe its Host, its headers, and the question of what the
// destination saw.
func SetRequest(req *http.Request, vhost string, headers, seen map[string]string) {
	if vhost != "" {
		req.Host = vhost
	}
	for k, v := range headers {
		req.Header.Add(k, v)
	}
	AskSaw(req.Header, seen)
}

// DNSQuery is a probe's DNS query (type A) for name, kubernetes.default.svc.cluster.local when
// empty: a probe of a DNS server's port is a query, as a server (or the node's DNS proxy) answers
// nothing else.
func DNSQuery(name string) []byte {
	if name == "" {
		name = "kubernetes.default.svc.cluster.local"
	}
	q := []byte{0x4e, 0x50, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		q = append(q, byte(len(label)))
		q = append(q, label...)
	}
	return append(q, 0, 0, 1, 0, 1)
}

// DNSReply: any reply to the query's id is the resolver answering (NXDOMAIN included).
func DNSReply(reply, query []byte) (string, string) {
	if len(reply) < 12 || binary.BigEndian.Uint16(reply) != binary.BigEndian.Uint16(query) || reply[2]&0x80 == 0 {
		return "error", "not a DNS reply to the query"
	}
	return "allow", fmt.Sprintf("rcode %d", reply[3]&0x0f)
}

// Port is a port a pod serves: "80/TCP", "53/UDP".
type Port struct {
	Port  uint16
	Proto string
}

// ParsePort reads "80/TCP" (TCP when the protocol is left out).
func ParsePort(s string) (Port, error) {
	num, proto, _ := strings.Cut(s, "/")
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return Port{}, fmt.Errorf("port %q: want NUMBER/TCP, NUMBER/UDP or NUMBER/SCTP", s)
	}
	proto = strings.ToUpper(proto)
	if proto == "" {
		proto = "TCP"
	}
	if proto != "TCP" && proto != "UDP" && proto != "SCTP" {
		return Port{}, fmt.Errorf("port %q: only TCP, UDP and SCTP are served", s)
	}
	return Port{Port: uint16(n), Proto: proto}, nil
}

// ServeLogging listens on every port (IPv4 and IPv6) and, once all are bound, creates readyFile
// (when not empty). TCP connections get HTTP 200 to an HTTP request, else an echo; UDP datagrams
// are echoed; with SCTP ports, raw SCTP sockets record the INITs that arrive, and SCTPSocket
// answers which did (AskSCTPArrivals). It writes "from ADDR" to log (when not nil) the first time a source address
// reaches it (TCP connection or UDP datagram). It returns when ctx ends or a listener fails.
func ServeLogging(ctx context.Context, ports []Port, readyFile string, log io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sources := &sourceLog{w: log, seen: map[string]bool{}}
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	errs := make(chan error, len(ports))
	sctp := false
	for _, p := range ports {
		addr := net.JoinHostPort("", strconv.Itoa(int(p.Port)))
		if p.Proto == "SCTP" {
			if !sctp {
				if err := serveSCTP(ctx, SCTPSocket); err != nil {
					return err
				}
				sctp = true
			}
			continue
		}
		if p.Proto == "UDP" {
			c, err := net.ListenPacket("udp", addr)
			if err != nil {
				return fmt.Errorf("listen %d/UDP: %w", p.Port, err)
			}
			closers = append(closers, c)
			go func() { errs <- echoUDP(c, sources) }()
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen %d/TCP: %w", p.Port, err)
		}
		closers = append(closers, ln)
		go func() { errs <- serveTCP(ln, sources) }()
	}
	if readyFile != "" {
		if err := os.WriteFile(readyFile, []byte("ready\n"), 0o644); err != nil {
			return fmt.Errorf("ready file: %w", err)
		}
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errs:
		return err
	}
}

// sourceLog writes each source address once.
type sourceLog struct {
	mu   sync.Mutex
	w    io.Writer
	seen map[string]bool
}

func (l *sourceLog) saw(a net.Addr) {
	if l.w == nil {
		return
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.seen[host] {
		l.seen[host] = true
		fmt.Fprintf(l.w, "from %s\n", host)
	}
}

func echoUDP(c net.PacketConn, sources *sourceLog) error {
	buf := make([]byte, 65535)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("udp: %w", err)
		}
		sources.saw(from)
		_, _ = c.WriteTo(buf[:n], from)
	}
}

func serveTCP(ln net.Listener, sources *sourceLog) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("tcp: %w", err)
		}
		sources.saw(c.RemoteAddr())
		go handle(c)
	}
}

var methods = []string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "PATCH ", "OPTIONS "}

func handle(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	// A first line longer than the buffer is not an HTTP request line: echoed, never grown.
	br := bufio.NewReaderSize(c, 4096)
	line, err := br.ReadSlice('\n')
	if err != nil && !errors.Is(err, bufio.ErrBufferFull) && len(line) == 0 {
		return
	}
	first := string(line)
	for _, m := range methods {
		if strings.HasPrefix(first, m) {
			req := http.Header{}
			for n := 0; n < 100; n++ {
				line, err := br.ReadString('\n')
				if err != nil || strings.TrimRight(line, "\r\n") == "" {
					break
				}
				if k, v, ok := strings.Cut(strings.TrimRight(line, "\r\n"), ":"); ok {
					req.Add(strings.TrimSpace(k), strings.TrimSpace(v))
				}
			}
			saw := http.Header{}
			WriteSaw(saw, req)
			var extra strings.Builder
			for k, vs := range saw {
				fmt.Fprintf(&extra, "%s: %s\r\n", k, vs[0])
			}
			body := "ok\n"
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n", len(body), extra.String())
			if !strings.HasPrefix(first, "HEAD ") {
				_, _ = io.WriteString(c, body)
			}
			return
		}
	}
	_, _ = io.WriteString(c, first)
	_, _ = io.Copy(c, br)
}

// Flood sends a UDP datagram to addr every interval and opens a TCP connection every tenth,
// from its first instant, for d; it returns how many datagrams it sent. A pod that runs it from
// its start tests that it has no network before its policy.
func Flood(ctx context.Context, addr string, interval, d time.Duration) int {
	end := time.Now().Add(d)
	sent := 0
	var udp net.Conn
	for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
		if udp == nil {
			udp, _ = net.Dial("udp", addr)
		}
		if udp != nil {
			if _, err := udp.Write([]byte("flood")); err == nil {
				sent++
			}
		}
		if i%10 == 0 {
			if c, err := net.DialTimeout("tcp", addr, interval); err == nil {
				c.Close()
			}
		}
		time.Sleep(interval)
	}
	if udp != nil {
		udp.Close()
	}
	return sent
}
