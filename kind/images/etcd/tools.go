//go:build tools

// Package etcd names the etcd command the node image needs, so `go mod tidy` keeps it.
package etcd

import _ "go.etcd.io/etcd/server/v3"
