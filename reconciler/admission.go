package reconciler

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netpact/netpact/policy"
)

// AdmissionHandler is the validating webhook that refuses a CiliumNetworkPolicy,
// CiliumClusterwideNetworkPolicy or NetworkPolicy that netpact's loader refuses, with the
// loader's field path and message. Cilium accepts such objects and fails open when it enforces
// them; netpact refuses them at the API server.
type AdmissionHandler struct {
	Load policy.LoadOptions
	// NamespaceCIDRs counts the CIDRs the namespace's other policies name (all but except;
	// namespace "": the cluster-wide ones), for the budget of policy.MaxCIDRsPerNamespace. nil:
	// only the policy's own budget is checked.
	NamespaceCIDRs func(ctx context.Context, namespace string, except policy.Key) (int, error)
}

// NamespaceCIDRCounter counts a namespace's CIDRs from the API server, as the loader reads
// each policy there: for AdmissionHandler.NamespaceCIDRs.
func NamespaceCIDRCounter(c client.Reader) func(ctx context.Context, namespace string, except policy.Key) (int, error) {
	return func(ctx context.Context, namespace string, except policy.Key) (int, error) {
		kinds := []schema.GroupVersionKind{{Group: "cilium.io", Version: "v2", Kind: "CiliumNetworkPolicyList"},
			{Group: "networking.k8s.io", Version: "v1", Kind: "NetworkPolicyList"}}
		if namespace == "" {
			kinds = []schema.GroupVersionKind{{Group: "cilium.io", Version: "v2", Kind: "CiliumClusterwideNetworkPolicyList"}}
		}
		total := 0
		for _, gvk := range kinds {
			list := &unstructured.UnstructuredList{}
			list.SetGroupVersionKind(gvk)
			if err := c.List(ctx, list, client.InNamespace(namespace)); err != nil {
				if meta.IsNoMatchError(err) {
					continue // Cilium's CRDs not installed: none of theirs
				}
				return 0, fmt.Errorf("list %s in %q: %w", gvk.Kind, namespace, err)
			}
			for i := range list.Items {
				raw, err := list.Items[i].MarshalJSON()
				if err != nil {
					return 0, err
				}
				b, err := policy.LoadBytes(list.Items[i].GetName(), raw, policy.LoadOptions{})
				if err != nil || len(b.Policies) != 1 || b.Policies[0].Key == except {
					continue // refused by netpact, or the object being replaced
				}
				total += b.Policies[0].CIDRs
			}
		}
		return total, nil
	}
}

// maxAdmissionBody bounds an AdmissionReview (the API server's own limit for an object is 3 MiB).
const maxAdmissionBody = 4 << 20

func (h *AdmissionHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		http.Error(w, "an AdmissionReview in JSON only", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxAdmissionBody+1))
	if err != nil || len(body) > maxAdmissionBody {
		http.Error(w, "body unreadable or too large", http.StatusRequestEntityTooLarge)
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
		return
	}
	resp := h.review(review.Request)
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	if out.APIVersion == "" {
		out.APIVersion, out.Kind = "admission.k8s.io/v1", "AdmissionReview"
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// review validates the object of a CREATE or UPDATE as `netpact validate` does.
func (h *AdmissionHandler) review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return resp
	}
	name := req.Name
	if req.Namespace != "" {
		name = req.Namespace + "/" + req.Name
	}
	source := fmt.Sprintf("%s %s", req.Kind.Kind, name)
	obj := bytes.TrimSpace(req.Object.Raw)
	if len(obj) == 0 {
		return deny(resp, source+": no object in the request")
	}
	b, err := policy.LoadBytes(source, obj, h.Load)
	if err != nil {
		return deny(resp, "netpact refuses this policy (netpact validate says the same): "+err.Error())
	}
	if len(b.Policies) != 1 {
		return deny(resp, fmt.Sprintf("%s: not one policy object (%d)", source, len(b.Policies)))
	}
	if p := b.Policies[0]; p.CIDRs > 0 && h.NamespaceCIDRs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		before, err := h.NamespaceCIDRs(ctx, p.Namespace, p.Key)
		if err != nil {
			return deny(resp, fmt.Sprintf("%s: netpact cannot count the CIDRs of the namespace's other policies (%v): refused, as it cannot check the namespace's budget", source, err))
		}
		if before+p.CIDRs > policy.MaxCIDRsPerNamespace {
			return deny(resp, "netpact refuses this policy: "+source+": "+policy.NamespaceBudgetError(p.Namespace, before, p.CIDRs))
		}
	}
	// The client knows the object: a warning names the field (kubectl prints "Warning: " before
	// it). Warnings that take the whole bundle (toFQDNs without a dns rule) need the cluster's
	// other policies, and are validate's and the reconciler's.
	for _, n := range b.Notices {
		if n.Field != "" {
			resp.Warnings = append(resp.Warnings, n.Field+": "+n.Message)
		} else {
			resp.Warnings = append(resp.Warnings, n.Message)
		}
	}
	return resp
}

func deny(resp *admissionv1.AdmissionResponse, msg string) *admissionv1.AdmissionResponse {
	resp.Allowed = false
	resp.Result = &metav1.Status{Status: metav1.StatusFailure, Message: msg, Reason: metav1.StatusReasonInvalid, Code: http.StatusUnprocessableEntity}
	return resp
}

// CertManager keeps the webhook's serving certificate: a CA and a leaf for the webhook's DNS
// names, kept in a Secret (so that every replica serves the same), renewed when a third of
// its life is left, and the CA put in the ValidatingWebhookConfiguration's caBundle. The CA
// (its key in ca.key) lives three times as long and signs the renewals, so that a renewal
// leaves the caBundle as it is; a new CA keeps the previous one in the bundle (ca.crt holds the
// new CA, then the old one), so the replicas that still serve the old certificate until they
// read the Secret again stay trusted.
type CertManager struct {
	Client kubernetes.Interface
	// Secret holds ca.crt, tls.crt and tls.key.
	Namespace, Secret string
	// Webhook is the ValidatingWebhookConfiguration whose webhooks get the CA.
	Webhook string
	// DNSNames and IPs the leaf is valid for (the Service's names; 127.0.0.1 in tests).
	DNSNames []string
	IPs      []net.IP
	// Validity of a new certificate; one year when zero.
	Validity time.Duration
	Now      func() time.Time

	mu   sync.Mutex
	cert *tls.Certificate
	ca   []byte
	leaf *x509.Certificate
}

func (m *CertManager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// GetCertificate serves the current certificate (tls.Config.GetCertificate).
func (m *CertManager) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cert == nil {
		return nil, errors.New("no serving certificate yet")
	}
	return m.cert, nil
}

// CA is the PEM of the CA in use.
func (m *CertManager) CA() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.ca...)
}

// Ensure reads the Secret, renews or creates the certificate when needed, stores it, loads it to
// serve, and patches the caBundle of every webhook of the configuration that lacks it.
func (m *CertManager) Ensure(ctx context.Context) error {
	secrets := m.Client.CoreV1().Secrets(m.Namespace)
	sec, err := secrets.Get(ctx, m.Secret, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("webhook certificate: read secret %s/%s: %w", m.Namespace, m.Secret, err)
	}
	exists := err == nil
	var ca, crt, key []byte
	if exists {
		ca, crt, key = sec.Data["ca.crt"], sec.Data["tls.crt"], sec.Data["tls.key"]
	}
	if !m.fresh(ca, crt, key) {
		var caKeyPEM []byte
		if exists {
			caKeyPEM = sec.Data["ca.key"]
		}
		if ca, caKeyPEM, crt, key, err = m.renew(ca, caKeyPEM); err != nil {
			return fmt.Errorf("webhook certificate: issue: %w", err)
		}
		data := map[string][]byte{"ca.crt": ca, "ca.key": caKeyPEM, "tls.crt": crt, "tls.key": key}
		if !exists {
			_, err = secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: m.Secret, Namespace: m.Namespace},
				Type: corev1.SecretTypeTLS, Data: data}, metav1.CreateOptions{})
		} else {
			sec.Data = data
			_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
		}
		if apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err) {
			return m.Ensure(ctx) // another replica wrote it first: use theirs
		}
		if err != nil {
			return fmt.Errorf("webhook certificate: store secret: %w", err)
		}
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		return fmt.Errorf("webhook certificate: load: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("webhook certificate: parse: %w", err)
	}
	m.mu.Lock()
	m.cert, m.ca, m.leaf = &pair, ca, leaf
	m.mu.Unlock()
	return m.patchCABundle(ctx, ca)
}

// fresh says whether the stored pair is valid now, for the names, with a third of its life left,
// and signed by the bundle's CA (a pair and a bundle that do not belong together, however they
// came to be stored, would have the API server refuse every handshake).
func (m *CertManager) fresh(bundle, crt, key []byte) bool {
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		return false
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return false
	}
	cb, _ := pem.Decode(bundle)
	if cb == nil {
		return false
	}
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil || leaf.CheckSignatureFrom(ca) != nil {
		return false
	}
	now := m.now()
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter.Add(-life/3)) {
		return false
	}
	for _, n := range m.DNSNames {
		if leaf.VerifyHostname(n) != nil {
			return false
		}
	}
	for _, ip := range m.IPs {
		if leaf.VerifyHostname(ip.String()) != nil {
			return false
		}
	}
	return true
}

// stillValidCA is the first certificate of a stored bundle (the CA that signed the certificate
// replicas serve) as PEM, when it is a CA and still valid; nothing otherwise.
func (m *CertManager) stillValidCA(bundle []byte) []byte {
	block, _ := pem.Decode(bundle)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !c.IsCA || m.now().After(c.NotAfter) {
		return nil
	}
	return pem.EncodeToMemory(block)
}

// renew issues a new serving certificate. The stored CA signs it while it will outlive it, so
// the caBundle does not change and the API server trusts the new certificate at once; otherwise
// a new CA does, and the bundle keeps the previous one for the replicas that serve the
// certificate it signed until they read the Secret again (ECDSA P-256 throughout).
func (m *CertManager) renew(bundle, caKeyPEM []byte) (caBundle, caKeyOut, crtPEM, keyPEM []byte, err error) {
	validity := m.Validity
	if validity == 0 {
		validity = 365 * 24 * time.Hour
	}
	caCert, caKey := m.usableCA(bundle, caKeyPEM, validity)
	caBundle, caKeyOut = bundle, caKeyPEM
	if caCert == nil {
		if caCert, caKey, err = m.newCA(3 * validity); err != nil {
			return nil, nil, nil, nil, err
		}
		if caKeyOut, err = marshalKey(caKey); err != nil {
			return nil, nil, nil, nil, err
		}
		caBundle = append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw}), m.stillValidCA(bundle)...)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	cn := "netpact-webhook"
	if len(m.DNSNames) > 0 {
		cn = m.DNSNames[0]
	}
	now := m.now()
	tmpl := &x509.Certificate{SerialNumber: serialNumber(), Subject: pkix.Name{CommonName: cn}, DNSNames: m.DNSNames,
		IPAddresses: m.IPs, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(validity),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if keyPEM, err = marshalKey(key); err != nil {
		return nil, nil, nil, nil, err
	}
	return caBundle, caKeyOut, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// usableCA is the bundle's first certificate and its stored key, when they belong together and
// the CA will outlive a certificate issued now for validity; nil otherwise.
func (m *CertManager) usableCA(bundle, keyPEM []byte, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey) {
	cb, _ := pem.Decode(bundle)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil || cb.Type != "CERTIFICATE" || kb.Type != "EC PRIVATE KEY" {
		return nil, nil
	}
	c, err := x509.ParseCertificate(cb.Bytes)
	if err != nil || !c.IsCA {
		return nil, nil
	}
	k, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil || !k.PublicKey.Equal(c.PublicKey) {
		return nil, nil
	}
	now := m.now()
	if now.Before(c.NotBefore) || now.Add(validity).After(c.NotAfter) {
		return nil, nil
	}
	return c, k
}

// newCA makes a self-signed CA valid for validity.
func (m *CertManager) newCA(validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := m.now()
	tmpl := &x509.Certificate{SerialNumber: serialNumber(), Subject: pkix.Name{CommonName: "netpact webhook CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(validity), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

func serialNumber() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func marshalKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// patchCABundle puts the CA into every webhook of the configuration whose caBundle differs.
func (m *CertManager) patchCABundle(ctx context.Context, ca []byte) error {
	if m.Webhook == "" {
		return nil
	}
	api := m.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations()
	vwc, err := api.Get(ctx, m.Webhook, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("webhook configuration %s: %w", m.Webhook, err)
	}
	var patch []map[string]any
	for i, wh := range vwc.Webhooks {
		if !bytes.Equal(wh.ClientConfig.CABundle, ca) {
			patch = append(patch, map[string]any{"op": "replace", "path": fmt.Sprintf("/webhooks/%d/clientConfig/caBundle", i), "value": ca})
		}
	}
	if len(patch) == 0 {
		return nil
	}
	data, _ := json.Marshal(patch)
	if _, err := api.Patch(ctx, m.Webhook, types.JSONPatchType, data, metav1.PatchOptions{FieldManager: "netpact"}); err != nil {
		return fmt.Errorf("patch caBundle of %s: %w", m.Webhook, err)
	}
	return nil
}

// Run keeps the certificate fresh until ctx ends, checking every interval.
// EnsureRetrying is Ensure until it succeeds (or ctx ends), waiting 1 s, then twice as long each
// time up to 16 s: at start-up the API server may not answer yet, or the webhook configuration
// not exist yet, and a controller that exited would wait the kubelet's growing back-off instead.
func (m *CertManager) EnsureRetrying(ctx context.Context, onErr func(error)) error {
	wait := time.Second
	for {
		err := m.Ensure(ctx)
		if err == nil {
			return nil
		}
		if onErr != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		if wait *= 2; wait > 16*time.Second {
			wait = 16 * time.Second
		}
	}
}

func (m *CertManager) Run(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := m.Ensure(ctx); err != nil && onErr != nil {
				onErr(err)
			}
		}
	}
}
