//go:build tools

// Package coredns names the CoreDNS command the node image needs, so `go mod tidy` keeps it.
package coredns

import _ "github.com/coredns/coredns"
