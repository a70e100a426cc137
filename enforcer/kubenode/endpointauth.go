package kubenode

import (
	"context"
	"crypto/sha256"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// EndpointAuth guards the node's endpoints (/flows with every pod's requests, /status, /routes,
// /metrics): any pod can reach the node's address. A request from a node's address (the API
// server's pods/proxy, the kubelet, the node itself; a pod cannot send from one, the datapath
// drops spoofed sources) or from loopback passes; any other needs a bearer token the API server
// authenticates (TokenReview) and authorizes for get on the path as a non-resource URL
// (SubjectAccessReview), as kube-rbac-proxy does for metrics. Open paths (/readyz) pass.
type EndpointAuth struct {
	Client  kubernetes.Interface
	Trusted func(netip.Addr) bool
	Open    []string

	mu    sync.Mutex
	cache map[[32]byte]authDecision
}

type authDecision struct {
	code  int // 0: allowed
	until time.Time
}

// authCacheTTL and authCacheMax bound how long a decision is reused and how many are kept.
const (
	authCacheTTL = 30 * time.Second
	authCacheMax = 1024
)

// Wrap serves next behind the check.
func (a *EndpointAuth) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slices.Contains(a.Open, r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			if ip := ap.Addr().Unmap(); ip.IsLoopback() || (a.Trusted != nil && a.Trusted(ip)) {
				next.ServeHTTP(w, r)
				return
			}
		}
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			http.Error(w, "the node's endpoints answer a node's address, or a bearer token allowed to get "+r.URL.Path, http.StatusUnauthorized)
			return
		}
		if code := a.decide(r.Context(), token, r.URL.Path); code != 0 {
			http.Error(w, http.StatusText(code)+": the token may not get "+r.URL.Path, code)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// decide is 0 when the token may get path, else the status to answer; decisions are kept a while.
func (a *EndpointAuth) decide(ctx context.Context, token, path string) int {
	key := sha256.Sum256([]byte(path + "\x00" + token))
	now := time.Now()
	a.mu.Lock()
	if d, ok := a.cache[key]; ok && now.Before(d.until) {
		a.mu.Unlock()
		return d.code
	}
	a.mu.Unlock()
	code := a.review(ctx, token, path)
	a.mu.Lock()
	if a.cache == nil || len(a.cache) >= authCacheMax {
		a.cache = map[[32]byte]authDecision{}
	}
	a.cache[key] = authDecision{code: code, until: now.Add(authCacheTTL)}
	a.mu.Unlock()
	return code
}

func (a *EndpointAuth) review(ctx context.Context, token, path string) int {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tr, err := a.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		return http.StatusServiceUnavailable
	}
	if !tr.Status.Authenticated {
		return http.StatusUnauthorized
	}
	u := tr.Status.User
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	sar, err := a.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra,
		NonResourceAttributes: &authzv1.NonResourceAttributes{Path: path, Verb: "get"}}}, metav1.CreateOptions{})
	if err != nil {
		return http.StatusServiceUnavailable
	}
	if !sar.Status.Allowed {
		return http.StatusForbidden
	}
	return 0
}

// IsTrustedSource says whether ip may read the node's endpoints without a token: an address of
// the API server (the endpoints of default/kubernetes), whose pods/proxy requests carry no
// credentials. Not the node's own addresses, nor other nodes': a pod's connection can come from
// them (the L7 proxy connects to a host from the node's address; a node may masquerade its pods).
// The L7 proxy refuses to connect to a node's endpoint port (IsNodeEndpoint), so that a pod
// cannot borrow the API server node's address either.
func (e *Enforcement) IsTrustedSource(ip netip.Addr) bool {
	if e.slices == nil {
		return false
	}
	for _, obj := range e.slices.GetStore().List() {
		es, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok || es.Namespace != "default" || es.Labels[discoveryv1.LabelServiceName] != "kubernetes" {
			continue
		}
		for _, ep := range es.Endpoints {
			for _, a := range ep.Addresses {
				if p, err := netip.ParseAddr(a); err == nil && p.Unmap() == ip {
					return true
				}
			}
		}
	}
	return false
}

// IsNodeAddr says whether ip is an address (InternalIP or ExternalIP) of any node.
func (e *Enforcement) IsNodeAddr(ip netip.Addr) bool {
	if e.nodes == nil {
		return false
	}
	for _, obj := range e.nodes.GetStore().List() {
		node, ok := obj.(*corev1.Node)
		if !ok {
			continue
		}
		for _, a := range node.Status.Addresses {
			if p, err := netip.ParseAddr(a.Address); err == nil && p.Unmap() == ip.Unmap() {
				return true
			}
		}
	}
	return false
}
