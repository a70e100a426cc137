package scenarios

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/netpact/netpact/policy"
)

// addressFuncs are the functions of a pod address expression: the pod's IPv4 or IPv6 address,
// bare or as a one-address CIDR.
var addressFuncs = map[string]struct{ v6, cidr bool }{
	"ip":    {},
	"ip6":   {v6: true},
	"cidr":  {cidr: true},
	"cidr6": {v6: true, cidr: true},
}

// addressFuncRE is an expression's function name; addressArgRE what follows it: one
// double-quoted string.
var (
	addressFuncRE = regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_]*)`)
	addressArgRE  = regexp.MustCompile(`^\s+("(?:[^"\\]|\\.)*")\s*$`)
)

// addresses expands the pod address expressions of the policies a step applies, {{ ip "ns/pod" }},
// {{ ip6 "ns/pod" }}, {{ cidr "ns/pod" }} and {{ cidr6 "ns/pod" }}, into the pods' addresses in
// this run: those of the cluster the backend's Start returned, so that the engine and the
// enforcement read the same policy. It is an exact parser, not text/template: every {{ in a
// policy is an expression, on one line, and what it is replaced with never holds a newline, so
// every line stays where it was and errors keep pointing into the file as written.
type addresses struct {
	cluster *policy.Cluster
	// context names the scenario and step in messages about a policy file, whose name does not
	// (an inline policy's does).
	context string
}

// expand is a policy.LoadOptions.Expand: data with every expression replaced, or every bad
// expression as an error located at it.
func (a addresses) expand(file string, data []byte) ([]byte, error) {
	if !bytes.Contains(data, []byte("{{")) {
		return data, nil
	}
	var out bytes.Buffer
	var errs policy.ErrorList
	for n, line := range strings.SplitAfter(string(data), "\n") {
		for {
			start := strings.Index(line, "{{")
			if start < 0 {
				break
			}
			out.WriteString(line[:start])
			end := strings.Index(line[start:], "}}")
			if end < 0 {
				expr := strings.TrimRight(line[start:], "\r\n")
				errs = append(errs, a.fail(file, n+1, start+1, expr, `has no "}}" on its line: an expression is {{ ip "namespace/pod" }}, on one line`))
				out.WriteString(line[start:])
				line = ""
				break
			}
			end += start + 2
			expr := line[start:end]
			value, err := a.eval(expr)
			if err != nil {
				errs = append(errs, a.fail(file, n+1, start+1, expr, err.Error()))
				value = expr
			}
			out.WriteString(value)
			line = line[end:]
		}
		out.WriteString(line)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return out.Bytes(), nil
}

func (a addresses) fail(file string, line, col int, expr, msg string) *policy.Error {
	return &policy.Error{File: file, Line: line, Column: col, Message: expr + a.context + ": " + msg}
}

// eval is the address an expression ({{ ... }}, braces included) names.
func (a addresses) eval(expr string) (string, error) {
	inner := expr[2 : len(expr)-2]
	name := addressFuncRE.FindStringSubmatch(inner)
	if name == nil {
		return "", errors.New(`not a pod address expression: write {{ ip "namespace/pod" }} (or ip6, cidr, cidr6)`)
	}
	fn, ok := addressFuncs[name[1]]
	if !ok {
		return "", fmt.Errorf("unknown function %q: use ip, ip6, cidr or cidr6", name[1])
	}
	arg := addressArgRE.FindStringSubmatch(inner[len(name[0]):])
	if arg == nil {
		return "", fmt.Errorf(`%s takes one pod, quoted: {{ %s "namespace/pod" }}`, name[1], name[1])
	}
	key, err := strconv.Unquote(arg[1])
	if err != nil {
		return "", fmt.Errorf("pod %s: %w", arg[1], err)
	}
	ip, err := a.addr(key, fn.v6)
	if err != nil {
		return "", err
	}
	if fn.cidr {
		return netip.PrefixFrom(ip, ip.BitLen()).String(), nil
	}
	return ip.String(), nil
}

// addr is the pod's address of a family, from the cluster: the pod's endpoint's IPs.
func (a addresses) addr(key string, v6 bool) (netip.Addr, error) {
	if a.cluster != nil {
		for _, ep := range a.cluster.Endpoints {
			if ep.Key().String() != key {
				continue
			}
			for _, ip := range ep.IPs {
				if ip = ip.Unmap(); ip.Is6() == v6 {
					return ip, nil
				}
			}
			family := "IPv4"
			if v6 {
				family = "IPv6"
			}
			return netip.Addr{}, fmt.Errorf("pod %s has no %s address in this run", key, family)
		}
	}
	return netip.Addr{}, fmt.Errorf("no pod %q in the scenario (pods are namespace/name)", key)
}
