package envoysim

import (
	"errors"
	"fmt"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// http_connection_manager (envoy.filters.network.http_connection_manager).
// The sim serves it with net/http: HTTP/1.1, and HTTP/2 over TLS (ALPN) or
// in cleartext (prior knowledge) for codec_type AUTO. Each request becomes an
// httpStream (httpstream.go) that runs the configured HTTP filters.
// HCM is implemented only as the sole network filter of its chain, which is
// how sluice and almost every Envoy configuration use it.

var hcmConfigName = (&hcmv3.HttpConnectionManager{}).ProtoReflect().Descriptor().FullName()

// HTTPStreamInfo describes a finished HTTP stream, like a line of Envoy's HTTP
// access log.
type HTTPStreamInfo struct {
	Listener            string
	Method, Path        string
	Authority           string
	ResponseCode        int
	ResponseCodeDetails string // e.g. ext_authz_denied, via_upstream
	Reset               bool
	DynamicMetadata     *corev3.Metadata
}

// WithHTTPLog calls log for every HTTP stream when it ends.
func WithHTTPLog(log func(HTTPStreamInfo)) Option {
	return func(o *options) { o.streamLog = log }
}

func (s *httpStream) info() HTTPStreamInfo {
	code := 0
	if s.respHeaders != nil && s.headersSent {
		fmt.Sscan(s.respHeaders.value(":status"), &code)
	}
	return HTTPStreamInfo{
		Listener: s.dc.listener, Method: s.dec.hdrs.value(":method"), Path: s.dec.hdrs.value(":path"),
		Authority: s.dec.hdrs.value(":authority"), ResponseCode: code, ResponseCodeDetails: s.details,
		Reset: s.reset, DynamicMetadata: proto.Clone(s.dynamicMetadata).(*corev3.Metadata),
	}
}

// hcmConfig is an accepted HttpConnectionManager.
type hcmConfig struct {
	sim               *Sim
	statPrefix        string // "http.<stat_prefix>."
	codec             hcmv3.HttpConnectionManager_CodecType
	rdsName           string      // RDS route_config_name, or
	inlineRoutes      *routeTable // route_config
	filters           []httpFilterFactory
	useRemoteAddress  bool
	normalizePaths    bool
	mergeSlashes      bool
	escapedSlashes    hcmv3.HttpConnectionManager_PathWithEscapedSlashesAction
	generateRequestID bool
	// upgrades are upgrade_configs by lower-cased upgrade_type
	// (hcm_upgrade.go).
	upgrades map[string]*upgradeConfig
	stats    *hcmStats
}

// httpFilterFactory creates one configured HTTP filter for a stream. name is
// the HttpFilter name, the key of route typed_per_filter_config.
type httpFilterFactory struct {
	name   string
	create func(s *httpStream, name string) any
}

type hcmStats struct {
	cxTotal, cxActive, rqTotal, rqActive, rqHTTP1, rqHTTP2, rqCompleted, rqTxReset, rqRxReset,
	failedPathNormalization, noRoute, wsOnNonWSRoute, upgradesTotal, upgradesActive *atomic.Int64
	codes [6]*atomic.Int64 // downstream_rq_1xx .. 5xx
}

func newHCMStats(st *Stats, p string) *hcmStats {
	c := func(n string) *atomic.Int64 { return st.counter(p + n) }
	hs := &hcmStats{
		cxTotal: c("downstream_cx_total"), cxActive: st.gauge(p + "downstream_cx_active"),
		rqTotal: c("downstream_rq_total"), rqActive: st.gauge(p + "downstream_rq_active"),
		rqHTTP1: c("downstream_rq_http1_total"), rqHTTP2: c("downstream_rq_http2_total"),
		rqCompleted: c("downstream_rq_completed"), rqTxReset: c("downstream_rq_tx_reset"),
		rqRxReset:               c("downstream_rq_rx_reset"),
		failedPathNormalization: c("downstream_rq_failed_path_normalization"), noRoute: c("no_route"),
		wsOnNonWSRoute: c("downstream_rq_ws_on_non_ws_route"),
		upgradesTotal:  c("downstream_cx_upgrades_total"), upgradesActive: st.gauge(p + "downstream_cx_upgrades_active"),
	}
	for i := 1; i <= 5; i++ {
		hs.codes[i] = c(fmt.Sprintf("downstream_rq_%dxx", i))
	}
	return hs
}

func (hs *hcmStats) rqCode(code int) {
	if i := code / 100; i >= 1 && i <= 5 {
		hs.codes[i].Add(1)
	}
}

// buildHCM is the config-time part of HttpConnectionManager.
func buildHCM(cb *chainBuild, _ string, m proto.Message) (filterFactory, error) {
	pc := m.(*hcmv3.HttpConnectionManager)
	if err := checkFields(pc, "codec_type", "stat_prefix", "rds", "route_config", "http_filters",
		"use_remote_address", "normalize_path", "merge_slashes", "path_with_escaped_slashes_action",
		"generate_request_id", "upgrade_configs",
		// Access logging does not change what a stream observes.
		"access_log", "access_log_flush_interval", "access_log_options"); err != nil {
		return nil, err
	}
	hc := &hcmConfig{
		sim: cb.sim, statPrefix: "http." + pc.GetStatPrefix() + ".", codec: pc.GetCodecType(),
		useRemoteAddress: pc.GetUseRemoteAddress().GetValue(), normalizePaths: pc.GetNormalizePath().GetValue(),
		mergeSlashes: pc.GetMergeSlashes(), escapedSlashes: pc.GetPathWithEscapedSlashesAction(),
		generateRequestID: pc.GetGenerateRequestId() == nil || pc.GetGenerateRequestId().GetValue(),
	}
	switch hc.escapedSlashes {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcmv3.HttpConnectionManager_KEEP_UNCHANGED,
		hcmv3.HttpConnectionManager_REJECT_REQUEST, hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD:
	default:
		return nil, fmt.Errorf("path_with_escaped_slashes_action %s is not implemented by envoysim", hc.escapedSlashes)
	}
	if hc.codec == hcmv3.HttpConnectionManager_HTTP3 {
		return nil, errors.New("codec_type HTTP3 is not implemented by envoysim")
	}
	switch rs := pc.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_Rds:
		if err := checkFields(rs.Rds, "config_source", "route_config_name"); err != nil {
			return nil, err
		}
		if src := rs.Rds.GetConfigSource(); src.GetAds() == nil {
			return nil, fmt.Errorf("RDS %q: only an ads config_source is implemented by envoysim", rs.Rds.GetRouteConfigName())
		} else if err := checkFields(src, "ads", "resource_api_version"); err != nil {
			return nil, err
		}
		hc.rdsName = rs.Rds.GetRouteConfigName()
	case *hcmv3.HttpConnectionManager_RouteConfig:
		rt, err := buildRouteTable(rs.RouteConfig)
		if err != nil {
			return nil, err
		}
		hc.inlineRoutes = rt
	default:
		return nil, errors.New("HttpConnectionManager: only rds and route_config are implemented by envoysim")
	}
	filters, err := hc.buildHTTPFilters(cb, pc.GetHttpFilters(), "http")
	if err != nil {
		return nil, err
	}
	hc.filters = filters
	if err := hc.buildUpgrades(cb, pc.GetUpgradeConfigs()); err != nil {
		return nil, err
	}
	hc.stats = newHCMStats(cb.sim.stats, hc.statPrefix)
	cb.hcm = hc
	return func(*conn) {}, nil
}

// httpFilterBuilders maps a typed_config type to its implementation.
func httpFilterBuilders() map[protoreflect.FullName]func(hc *hcmConfig, cb *chainBuild, m proto.Message) (func(s *httpStream, name string) any, error) {
	return map[protoreflect.FullName]func(hc *hcmConfig, cb *chainBuild, m proto.Message) (func(s *httpStream, name string) any, error){
		httpExtAuthzConfigName: buildHTTPExtAuthz,
		httpExtProcConfigName:  buildHTTPExtProc,
		routerConfigName:       buildRouter,
	}
}

// buildHTTPFilters builds one filter chain: the HCM's http_filters, or an
// upgrade config's filters (chain names it in errors, as Envoy's
// processFilters does: "http" or "http upgrade").
func (hc *hcmConfig) buildHTTPFilters(cb *chainBuild, fs []*hcmv3.HttpFilter, chain string) ([]httpFilterFactory, error) {
	builders := httpFilterBuilders()
	var out []httpFilterFactory
	for i, f := range fs {
		if err := checkFields(f, "name", "typed_config"); err != nil {
			return nil, err
		}
		m, err := unpackTyped(f.GetName(), f.GetTypedConfig())
		if err != nil {
			return nil, err
		}
		name := m.ProtoReflect().Descriptor().FullName()
		build, ok := builders[name]
		if !ok {
			return nil, fmt.Errorf("Didn't find a registered implementation for '%s' with type URL: '%s'", f.GetName(), typeName(f.GetTypedConfig()))
		}
		last := i == len(fs)-1
		switch {
		case name == routerConfigName && !last:
			return nil, fmt.Errorf("Error: terminal filter named %s of type %s must be the last filter in a %s filter chain.", f.GetName(), typeName(f.GetTypedConfig()), chain)
		case name != routerConfigName && last:
			return nil, fmt.Errorf("Error: non-terminal filter named %s of type %s is the last filter in a %s filter chain.", f.GetName(), typeName(f.GetTypedConfig()), chain)
		}
		create, err := build(hc, cb, m)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.GetName(), err)
		}
		out = append(out, httpFilterFactory{name: f.GetName(), create: create})
	}
	if len(fs) == 0 {
		return nil, errors.New("HttpConnectionManager: http_filters must end with a router; envoysim does not add one")
	}
	return out, nil
}
