package probeagent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"
)

// ExternalBody is what an external host's tls workload answers to GET /: its name, so that a
// probe knows which host it reached.
func ExternalBody(name string) string { return "external host " + name + "\n" }

// TLSGet makes a GET / over HTTPS to addr through a connection dial opens, checking the
// server's certificate for serverName (a DNS name, or an address) against roots, and reports:
// allow for a 200 with the body want, "reached ..." for another body (the name led to another
// host), http-CODE for another status, tls-error for a certificate or handshake that failed,
// refused or timeout when the connection did not go through. ctx bounds the whole exchange.
func TLSGet(ctx context.Context, dial Dialer, addr netip.AddrPort, serverName string, roots *x509.CertPool, want string) (string, string) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dial(ctx, network, addr.String())
		},
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr.String()+"/", nil)
	if err != nil {
		return "error", err.Error()
	}
	req.Host = serverName
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		var cv *tls.CertificateVerificationError
		var alert tls.AlertError
		var rh tls.RecordHeaderError
		switch {
		case errors.As(err, &cv), errors.As(err, &alert), errors.As(err, &rh):
			return "tls-error", err.Error()
		case isRefused(err):
			return "refused", err.Error()
		}
		return "timeout", err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return "timeout", "reading the answer: " + err.Error()
	}
	switch {
	case resp.StatusCode != http.StatusOK:
		return fmt.Sprintf("http-%d", resp.StatusCode), strings.TrimSpace(string(body))
	case string(body) != want:
		return "reached " + strings.TrimSpace(string(body)), fmt.Sprintf("wanted %q", strings.TrimSpace(want))
	}
	return "allow", strings.TrimSpace(string(body))
}

// NewTLSServer is an external host's tls workload: HTTPS with cert, GET / answering 200 and
// ExternalBody(name), any other path 404. Serve it with ServeTLS(listener, "", "").
func NewTLSServer(name string, cert tls.Certificate) *http.Server {
	body := ExternalBody(name)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, body)
	})
	return &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		// A probe's handshake that a policy cuts short is not worth a log line.
		ErrorLog: log.New(io.Discard, "", 0)}
}

// tlsProbe is a Request with TLS set: an HTTPS GET / (TLSGet) to Host, or, with Lookup, to the
// first address Name resolves to with the pod's resolver (the lookup's failure is the outcome).
func tlsProbe(r Request, timeout time.Duration) Result {
	ctx, cancel := context.WithTimeout(context.Background(), 4*timeout)
	defer cancel()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(r.CA)) {
		return Result{ID: r.ID, Outcome: "error", Note: "no CA certificate in the request"}
	}
	host, err := netip.ParseAddr(r.Host)
	if r.Lookup {
		conf, rerr := os.ReadFile("/etc/resolv.conf")
		if rerr != nil {
			return Result{ID: r.ID, Outcome: "error", Note: rerr.Error()}
		}
		lctx, lcancel := context.WithTimeout(ctx, 2*timeout)
		a, lerr := Resolve(lctx, ParseResolvConf(conf), r.Name, (&net.Dialer{}).DialContext)
		lcancel()
		addr, o := ConnectTarget(a, lerr)
		if o != "" {
			note := a.Note()
			if lerr != nil {
				note = lerr.Error()
			}
			return Result{ID: r.ID, Outcome: o, Note: "lookup " + r.Name + ": " + note}
		}
		host, err = addr, nil
	}
	if err != nil {
		return Result{ID: r.ID, Outcome: "error", Note: fmt.Sprintf("host %q: %v", r.Host, err)}
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
	}
	o, note := TLSGet(ctx, dial, netip.AddrPortFrom(host, r.Port), r.ServerName, roots, r.Want)
	return Result{ID: r.ID, Outcome: o, Note: fmt.Sprintf("https://%s/ (%s): %s", netip.AddrPortFrom(host, r.Port), r.ServerName, note)}
}
