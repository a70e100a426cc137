package probeagent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestTLSProbe: a probe request with TLS reaches an external host's tls workload on loopback:
// allow with its CA and name, "reached" for another host's answer, tls-error with another CA,
// refused on a closed port.
func TestTLSProbe(t *testing.T) {
	ca, caKey := newCert(t, nil, nil, true)
	leaf, leafKey := newCert(t, ca, caKey, false)
	cert := tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: leafKey}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewTLSServer("stripe", cert)
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })
	port := netip.MustParseAddrPort(l.Addr().String()).Port()
	other, _ := newCert(t, nil, nil, true)
	pemOf := func(c *x509.Certificate) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := netip.MustParseAddrPort(closed.Addr().String()).Port()
	closed.Close()
	req := func(id int, port uint16, ca, want string) Request {
		return Request{ID: id, Proto: "TCP", Host: "127.0.0.1", Port: port, TLS: true, ServerName: "api.stripe.com",
			CA: ca, Want: want, TimeoutMS: 1000}
	}
	got := Run([]Request{
		req(0, port, pemOf(ca), ExternalBody("stripe")),
		req(1, port, pemOf(ca), ExternalBody("other")),
		req(2, port, pemOf(other), ExternalBody("stripe")),
		req(3, closedPort, pemOf(ca), ExternalBody("stripe")),
	})
	for i, want := range []string{"allow", "reached external host stripe", "tls-error", "refused"} {
		if got[i].Outcome != want {
			t.Errorf("request %d: %s (%s), want %s", i, got[i].Outcome, got[i].Note, want)
		}
	}
}

// newCert is a CA (parent nil) or a server certificate for api.stripe.com and 127.0.0.1.
func newCert(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
		parent, parentKey = tmpl, key
	} else {
		tmpl.DNSNames, tmpl.IPAddresses = []string{"api.stripe.com"}, []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}
