package reconciler

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/netpact/netpact/api/v1alpha1"
)

// redactURL drops the user information (user:token@) of a URL; scp-like SSH addresses
// (git@host:path) keep their user, which is not a secret.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	u.User = nil
	return u.String()
}

// redactStatus removes the source's credentials from everything a status shows: the URL, and
// any message or error that quotes the URL, its user information or the password.
func redactStatus(obj *v1alpha1.PolicySource, src *Source) {
	urls := []string{obj.Spec.URL}
	var secrets []string
	if src != nil {
		urls = append(urls, src.URL)
		if src.Auth.Password != "" {
			secrets = append(secrets, src.Auth.Password)
		}
	}
	for _, raw := range urls {
		if u, err := url.Parse(raw); err == nil && u.User != nil {
			secrets = append(secrets, u.User.String())
			if p, ok := u.User.Password(); ok {
				secrets = append(secrets, p, url.QueryEscape(p))
			}
		}
	}
	clean := func(s string) string {
		for _, raw := range urls {
			if raw != "" {
				s = strings.ReplaceAll(s, raw, redactURL(raw))
			}
		}
		for _, sec := range secrets {
			if len(sec) >= 3 {
				s = strings.ReplaceAll(s, sec, "REDACTED")
			}
		}
		return s
	}
	for i := range obj.Status.Conditions {
		obj.Status.Conditions[i].Message = clean(obj.Status.Conditions[i].Message)
	}
	for i := range obj.Status.Errors {
		obj.Status.Errors[i] = clean(obj.Status.Errors[i])
	}
	for i := range obj.Status.Warnings {
		obj.Status.Warnings[i] = clean(obj.Status.Warnings[i])
	}
	obj.Spec.URL = redactURL(obj.Spec.URL)
}

// ReadSecretFile reads a password, token or webhook secret from a file. A file written by an
// editor or by echo ends with a newline that is not part of the secret: trailing CR and LF are
// dropped (nothing else is).
func ReadSecretFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read secret file: %w", err)
	}
	return bytes.TrimRight(data, "\r\n"), nil
}
