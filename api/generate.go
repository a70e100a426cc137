// Package api holds netpact's API types: ciliumv2 (the cilium.io/v2 policy kinds, read unchanged)
// and v1alpha1 (netpact.io's own). The CRDs in deploy/crds are generated from them.
package api

// netpact.io's CRDs carry the Go types' comments as descriptions (kubectl explain shows them);
// the cilium.io ones are structural, without (Cilium's own CRD is about 400 KB). Both are
// applied server-side.
//go:generate go tool controller-gen crd paths=./v1alpha1/... output:crd:dir=../deploy/crds
//go:generate go tool controller-gen crd:maxDescLen=0 paths=./ciliumv2/... output:crd:dir=../deploy/crds
//go:generate sh -c "rm -f ../deploy/chart/netpact/crds/*.yaml && cp ../deploy/crds/*.yaml ../deploy/chart/netpact/crds/"
