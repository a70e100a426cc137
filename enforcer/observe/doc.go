// Package observe is netpact's flow observability model: Hubble-compatible
// flow records, the filters and printers of `hubble observe`, a bounded ring
// of recent records with followers, and an HTTP stream of them.
//
// # Flow model
//
// Flow, GetFlowsResponse and LostEvent mirror Cilium's api/v1/flow/flow.proto
// and api/v1/observer/observer.proto; their encoding/json output is what
// `hubble observe -o json` prints (protojson with proto field names): enums
// as names, 64-bit integers as strings, zero fields left out, is_reply absent
// when unknown. The package imports neither protobuf nor Cilium: the types
// are plain Go structs, so the datapath, the CLI and the metrics can share
// them without generated code.
//
// # netpact extension
//
// Two additions are netpact's and marked as such where they are declared:
//
//   - Policy carries rule ("ingress[0]", "default deny"), direction and
//     source (repository, path, line, column, git_revision) besides Hubble's
//     name, namespace, labels, revision and kind, so a flow says which rule
//     of which file decided it. Hubble clients ignore the extra keys.
//   - LostEventSource has RATE_LIMITED, for events a per-pod rate limit
//     held back. Hubble has no such value.
//
// # Printers
//
// NewPrinter writes compact (default), json, table or dict output with the
// lines of Hubble's hubble/pkg/printer. With PrinterOptions.PolicyNames
// (--print-policy-names) Hubble appends " BY name (Kind), ..." to the verdict
// of policy-verdict events; netpact appends it to every flow that has
// *_allowed_by or *_denied_by policies (the list of the flow's direction; both,
// egress first, when the direction is unknown), and prints a policy that has
// netpact's extension fields as
//
//	namespace/name (Kind) rule at path:line:column @ git_revision in repository
//
// for example
//
//	Jan  2 15:04:05.000: ns/client:40000 (ID:1001) -> ns/server:80 (ID:1002) Policy denied DROPPED BY ns/deny-all (NetworkPolicy) default deny at policies/ns.yaml:3:1 @ 4e3edc5 (TCP Flags: SYN)
//
// Without PolicyNames the lines are Hubble's.
//
// # Ring and memory bound
//
// A Ring keeps the last Cap() records, DefaultRingCapacity (16383) by
// default; capacities round up to 2^n-1 as Hubble's do. Its memory is one
// pointer per slot plus the records it holds: a flow record takes about
// 1-2 KiB on the heap (more with many labels or HTTP headers), so the default
// ring holds some 16-32 MiB once full, and never more records than its
// capacity. Producers never wait for readers: a follower that falls more than
// the capacity behind gets a HUBBLE_RING_BUFFER lost-events record with the
// number it missed and goes on.
//
// # HTTP
//
// Handler serves GET /flows?<Filter.Query()>&last=N&follow=1 as NDJSON, one
// GetFlowsResponse per line, filtered on the server; Stream and Fetch read
// such a stream.
package observe
