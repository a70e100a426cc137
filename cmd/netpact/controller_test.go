package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/netpact/netpact/reconciler"
)

// TestClusterHookMux: the receiver per source refuses what is not signed with the receiver's
// secret (and everything while there is none), unknown providers and paths, and accepts a
// signed push for NAMESPACE/NAME.
func TestClusterHookMux(t *testing.T) {
	secret := []byte("")
	mux := clusterHookMux(&reconciler.Controller{}, func() []byte { return secret })
	body := []byte(fmt.Sprintf(`{"ref":"refs/heads/main","timestamp":%d}`, time.Now().Unix()))
	sign := func(key []byte) string {
		m := hmac.New(sha256.New, key)
		m.Write(body)
		return "sha256=" + hex.EncodeToString(m.Sum(nil))
	}
	post := func(path, sig, id string) int {
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("X-Signature", sig)
		req.Header.Set("X-Delivery-ID", id)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		return rec.Code
	}
	if c := post("/hook/ns/src/generic-hmac", sign([]byte("")), "1"); c != http.StatusUnauthorized {
		t.Errorf("no secret yet: %d, want 401", c)
	}
	secret = []byte("s3cret")
	for _, c := range []struct {
		path, sig, id string
		want          int
	}{
		{"/hook/ns/src/generic-hmac", sign([]byte("wrong")), "2", http.StatusUnauthorized},
		{"/hook/ns/src/carrier-pigeon", sign(secret), "3", http.StatusNotFound},
		{"/hook/ns/generic-hmac", sign(secret), "4", http.StatusNotFound},
		{"/hook/ns/src/generic-hmac", sign(secret), "5", http.StatusAccepted},
		{"/hook/ns/src/generic-hmac", sign(secret), "5", http.StatusConflict}, // replayed
	} {
		if got := post(c.path, c.sig, c.id); got != c.want {
			t.Errorf("%s (delivery %s): %d, want %d", c.path, c.id, got, c.want)
		}
	}
}
