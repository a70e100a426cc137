package probeagent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
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
