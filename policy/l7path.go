package policy

import (
	"errors"
	"net/url"
	"strings"
)

// NormalizeHTTPTarget is the request target HTTP rules see and the destination gets, with Cilium's
// default (http-normalize-path) applied to its path: percent-encodings upper-cased and those of
// unreserved characters decoded (RFC 3986 6.2.2), backslashes made slashes, dot segments
// removed (RFC 3986 5.2.4), runs of slashes merged. The query is kept as sent. An escaped slash
// or backslash (%2F, %5C) gives redirect: the client is sent to the unescaped path, as Envoy's
// UNESCAPE_AND_REDIRECT does. An absolute-form target keeps only its path and query; "*" stays.
func NormalizeHTTPTarget(target string) (out string, redirect bool, err error) {
	if target == "*" {
		return target, false, nil
	}
	if !strings.HasPrefix(target, "/") {
		u, perr := url.ParseRequestURI(target)
		if perr != nil || u.Host == "" {
			return "", false, errors.New("request target is neither a path nor an absolute URL")
		}
		target = u.EscapedPath()
		if target == "" {
			target = "/"
		}
		if u.RawQuery != "" || u.ForceQuery {
			target += "?" + u.RawQuery
		}
	}
	path, query, hasQuery := strings.Cut(target, "?")
	var b strings.Builder
	for i := 0; i < len(path); i++ {
		ch := path[i]
		if ch != '%' {
			if ch == '\\' {
				ch = '/'
			}
			b.WriteByte(ch)
			continue
		}
		if i+2 >= len(path) || !isHex(path[i+1]) || !isHex(path[i+2]) {
			return "", false, errors.New("invalid percent-encoding in the path")
		}
		v := unhex(path[i+1])<<4 | unhex(path[i+2])
		i += 2
		switch {
		case v == '/' || v == '\\':
			redirect = true
			b.WriteByte('/')
		case isUnreserved(v):
			b.WriteByte(v)
		default:
			b.WriteByte('%')
			b.WriteString(strings.ToUpper(path[i-1 : i+1]))
		}
	}
	p := mergeSlashes(removeDotSegments(b.String()))
	if hasQuery {
		p += "?" + query
	}
	return p, redirect, nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// removeDotSegments is RFC 3986 section 5.2.4 on an absolute path.
func removeDotSegments(in string) string {
	var out []string
	segs := strings.Split(in, "/")
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 1 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	p := strings.Join(out, "/")
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return p
}

func mergeSlashes(p string) string {
	for strings.Contains(p, "//") {
		p = strings.ReplaceAll(p, "//", "/")
	}
	return p
}
