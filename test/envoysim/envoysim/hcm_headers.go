package envoysim

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// What HCM does to a request before any filter sees it: header sanitizing for
// use_remote_address (ConnectionManagerUtility::mutateRequestHeaders in
// source/common/http/conn_manager_utility.cc) and path normalization
// (maybeNormalizePath).

// mutateRequestHeaders with xff_num_trusted_hops 0. No request is internal:
// with use_remote_address the sim takes internal_address_config unset to mean
// that no address is internal (runtime guard
// envoy.reloadable_features.explicit_internal_address_config; older builds
// trusted RFC 1918 and loopback peers) [UNVERIFIED: the release that made it
// the default]; without use_remote_address and without XFF a request is
// external too. So with use_remote_address every request is an edge request.
//
// An upgrade request keeps Connection and Upgrade: they go upstream verbatim
// (whether or not HCM then accepts the upgrade type). Older builds also
// added content-length: 0 to a bodiless upgrade (runtime
// http_skip_adding_content_length_to_upgrade, [UNVERIFIED] in 1.40); the sim
// does not.
func (s *httpStream) mutateRequestHeaders(h *headerMap) {
	if !isUpgrade(h) {
		h.remove("connection")
		h.remove("upgrade")
	}
	for _, k := range []string{"x-envoy-internal", "keep-alive", "proxy-connection", "transfer-encoding"} {
		h.remove(k)
	}
	proto := "http"
	if s.dc.tls != nil {
		proto = "https"
	}
	remote := hostOf(s.dc.remote)
	edge := s.hcm.useRemoteAddress
	if edge {
		xff := remote
		if ip := net.ParseIP(remote); ip != nil && ip.IsLoopback() {
			// A loopback peer appends Envoy's own address (config.localAddress());
			// the sim uses the connection's local address.
			xff = hostOf(s.dc.local)
		}
		if cur, ok := h.get("x-forwarded-for"); ok && cur != "" {
			h.set("x-forwarded-for", cur+","+xff)
		} else {
			h.set("x-forwarded-for", xff)
		}
		h.set("x-forwarded-proto", proto)
	} else if !h.has("x-forwarded-proto") {
		h.set("x-forwarded-proto", proto)
	}
	cleanInternalHeaders(h, edge)
	if edge {
		h.set("x-envoy-external-address", remote)
	}
	if s.hcm.generateRequestID && (edge || !h.has("x-request-id")) {
		h.set("x-request-id", uuid4()) // an edge request's id is always replaced
	}
}

// cleanInternalHeaders is ConnectionManagerUtility::cleanInternalHeaders.
func cleanInternalHeaders(h *headerMap, edge bool) {
	if edge {
		for _, k := range []string{"x-envoy-decorator-operation", "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node"} {
			h.remove(k)
		}
	}
	for _, k := range []string{
		"x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-retry-on",
		"x-envoy-retry-grpc-on", "x-envoy-max-retries", "x-envoy-upstream-alt-stat-name",
		"x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
		"x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms", "x-envoy-force-trace",
		"x-envoy-ip-tags", "x-envoy-original-url", "x-envoy-hedge-on-per-try-timeout",
	} {
		h.remove(k)
	}
}

func hostOf(a net.Addr) string {
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// uuid4 is a random RFC 4122 version 4 UUID, as Envoy's UUID request-id
// extension generates.
func uuid4() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

var errPathNormalization = errors.New("path normalization failed")

// normalizePath is ConnectionManagerUtility::maybeNormalizePath on the path
// part of :path (the query is left alone): escaped slashes first
// (path_with_escaped_slashes_action), then normalize_path (RFC 3986 dot
// segments; the sim also decodes percent-encoded unreserved characters and
// upper-cases the other escapes, which is what Envoy's Chromium-derived
// canonicalizer does for these inputs), then merge_slashes.
func (hc *hcmConfig) normalizePath(h *headerMap) error {
	full := h.value(":path")
	if h.value(":method") == "CONNECT" || full == "*" {
		return nil
	}
	path, query, hasQuery := strings.Cut(full, "?")
	if !strings.HasPrefix(path, "/") {
		return errPathNormalization
	}
	lower := strings.ToLower(path)
	if strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") {
		switch hc.escapedSlashes {
		case hcmv3.HttpConnectionManager_REJECT_REQUEST:
			return errPathNormalization
		case hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD:
			for _, r := range [][2]string{{"%2F", "/"}, {"%2f", "/"}, {"%5C", "\\"}, {"%5c", "\\"}} {
				path = strings.ReplaceAll(path, r[0], r[1])
			}
		}
	}
	if hc.normalizePaths {
		var err error
		if path, err = canonicalPath(path); err != nil {
			return err
		}
	}
	if hc.mergeSlashes {
		for strings.Contains(path, "//") {
			path = strings.ReplaceAll(path, "//", "/")
		}
	}
	if hasQuery {
		path += "?" + query
	}
	h.set(":path", path)
	return nil
}

// canonicalPath decodes escaped unreserved characters, upper-cases other
// escapes and removes dot segments (RFC 3986 section 5.2.4). A malformed
// escape fails, as in PathUtil::canonicalPath.
func canonicalPath(p string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
			return "", errPathNormalization
		}
		v := unhex(p[i+1])<<4 | unhex(p[i+2])
		if isUnreserved(v) {
			b.WriteByte(v)
		} else {
			b.WriteString("%" + strings.ToUpper(p[i+1:i+3]))
		}
		i += 2
	}
	in := strings.Split(b.String(), "/")[1:]
	out := []string{}
	for i, seg := range in {
		last := i == len(in)-1
		switch seg {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, seg)
		}
	}
	return "/" + strings.Join(out, "/"), nil
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func isUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~", c) >= 0
}
