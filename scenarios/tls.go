package scenarios

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/netip"
	"sync"
	"time"
)

// harnessCA is the certificate authority of this process's tls workloads: made at first use,
// trusted by this process's probes and by nothing else (it is never written anywhere).
var harnessCA struct {
	once sync.Once
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	err  error
}

func certificateAuthority() (*x509.Certificate, *ecdsa.PrivateKey, *x509.CertPool, error) {
	harnessCA.once.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			harnessCA.err = fmt.Errorf("scenario CA key: %w", err)
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "netpact scenario CA"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(7 * 24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			harnessCA.err = fmt.Errorf("scenario CA certificate: %w", err)
			return
		}
		cert, _ := x509.ParseCertificate(der)
		harnessCA.cert, harnessCA.key, harnessCA.pool = cert, key, x509.NewCertPool()
		harnessCA.pool.AddCert(cert)
	})
	return harnessCA.cert, harnessCA.key, harnessCA.pool, harnessCA.err
}

// serverCertificate is a certificate from the harness's CA for the DNS names and addresses.
func serverCertificate(names []string, addrs []netip.Addr) (tls.Certificate, error) {
	ca, caKey, _, err := certificateAuthority()
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server certificate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "netpact scenario server"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: names,
	}
	for _, a := range addrs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// externalCertificate is the PEM certificate and key of an external host's tls workload, for
// its names and addresses, and the harness CA's certificate (PEM) that probes trust.
func externalCertificate(e *External, addrs []netip.Addr) (cert, key, ca []byte, err error) {
	c, err := serverCertificate(e.Names, addrs)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("external %s: %w", e.Name, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("external %s: key: %w", e.Name, err)
	}
	caCert, _, _, err := certificateAuthority()
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw}), nil
}
