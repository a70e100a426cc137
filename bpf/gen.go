// Package bpf holds netpact's eBPF programs and the Go that bpf2go generates for them.
package bpf

// One object per attach family: the tc programs, the socket programs of Service translation, and
// the proxy's listener lookup. Go mirrors of the C types come from the object that uses them
// (the socket and lookup objects' shared types come from the tc object: -no-global-types).
//go:generate go tool bpf2go -cc $BPF_CLANG -strip $BPF_STRIP -cflags $BPF_CFLAGS -target bpfel -type endpoint_info -type ipcache_key -type ipcache_value -type policy_key -type policy_value -type prefix_policy_key -type ct_key -type ct_value -type frag_key -type flow_event -type config -type counter -type reason -type endpoint_flag -type svc_key -type svc_value -type svc_flow_key -type endpoint_addr_key -type l7_parser -type ratelimit Tc tc.c -- -nostdinc -I./headers
//go:generate go tool bpf2go -cc $BPF_CLANG -strip $BPF_STRIP -cflags $BPF_CFLAGS -target bpfel -no-global-types -type backend_key -type backend_value -type revnat_key -type revnat_value Sock sock.c -- -nostdinc -I./headers
//go:generate go tool bpf2go -cc $BPF_CLANG -strip $BPF_STRIP -cflags $BPF_CFLAGS -target bpfel -no-global-types Lookup lookup.c -- -nostdinc -I./headers
