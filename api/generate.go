// Package api holds netpact's API types: ciliumv2 (the cilium.io/v2 policy kinds, read unchanged)
// and v1alpha1 (netpact.io's own). The CRDs in deploy/crds are generated from them.
package api

// Structural CRDs without descriptions (Cilium's own CRD is about 400 KB); applied server-side.
//go:generate go tool controller-gen crd:maxDescLen=0 paths=./... output:crd:dir=../deploy/crds
//go:generate sh -c "rm -f ../deploy/chart/netpact/crds/*.yaml && cp ../deploy/crds/*.yaml ../deploy/chart/netpact/crds/"
