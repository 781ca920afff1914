package envoysim

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	"google.golang.org/protobuf/proto"
)

// Route configurations (RDS, or an HCM's inline route_config) and route
// matching, following source/common/router/config_impl.cc for the subset the
// sim implements: virtual hosts by domain (exact, then the longest "*.suffix",
// then the longest "prefix.*", then "*"), routes in order by prefix or exact
// path, and a route action with a cluster, a timeout and host_rewrite_literal.

// defaultRouteTimeout is RouteAction.timeout's default.
const defaultRouteTimeout = 15 * time.Second

type routeTable struct {
	name   string
	proto  *routev3.RouteConfiguration
	vhosts []*virtualHost
}

type virtualHost struct {
	name    string
	domains []string
	routes  []*routeEntry
}

// routeEntry is an accepted Route.
type routeEntry struct {
	name        string
	prefix      string
	path        string
	exact       bool
	cluster     string
	timeout     time.Duration // 0: no timeout
	hostRewrite string
	// perFilter holds typed_per_filter_config by filter name.
	perFilter map[string]proto.Message
}

func buildRouteTable(rc *routev3.RouteConfiguration) (*routeTable, error) {
	if err := validate(rc); err != nil {
		return nil, err
	}
	if err := checkFields(rc, "name", "virtual_hosts", "validate_clusters"); err != nil {
		return nil, err
	}
	rt := &routeTable{name: rc.GetName(), proto: rc}
	seen := map[string]string{}
	for _, vh := range rc.GetVirtualHosts() {
		if err := checkFields(vh, "name", "domains", "routes"); err != nil {
			return nil, err
		}
		v := &virtualHost{name: vh.GetName()}
		for _, d := range vh.GetDomains() {
			d = strings.ToLower(d)
			if other, dup := seen[d]; dup {
				return nil, fmt.Errorf("Only unique values for domains are permitted. Duplicate entry of domain %s in route %s (virtual hosts %s and %s)", d, rc.GetName(), other, vh.GetName())
			}
			seen[d] = vh.GetName()
			v.domains = append(v.domains, d)
		}
		for _, r := range vh.GetRoutes() {
			re, err := buildRoute(r)
			if err != nil {
				return nil, fmt.Errorf("virtual host %s: %w", vh.GetName(), err)
			}
			v.routes = append(v.routes, re)
		}
		rt.vhosts = append(rt.vhosts, v)
	}
	return rt, nil
}

func buildRoute(r *routev3.Route) (*routeEntry, error) {
	if err := checkFields(r, "name", "match", "route", "typed_per_filter_config"); err != nil {
		return nil, err
	}
	m := r.GetMatch()
	if err := checkFields(m, "prefix", "path", "case_sensitive"); err != nil {
		return nil, err
	}
	if cs := m.GetCaseSensitive(); cs != nil && !cs.GetValue() {
		return nil, errors.New("RouteMatch.case_sensitive=false is not implemented by envoysim")
	}
	re := &routeEntry{name: r.GetName(), timeout: defaultRouteTimeout, perFilter: map[string]proto.Message{}}
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		re.prefix = ps.Prefix
	case *routev3.RouteMatch_Path:
		re.path, re.exact = ps.Path, true
	default:
		return nil, errors.New("RouteMatch: only prefix and path are implemented by envoysim")
	}
	a := r.GetRoute()
	if a == nil {
		return nil, fmt.Errorf("route %q: only a route action is implemented by envoysim", r.GetName())
	}
	if err := checkFields(a, "cluster", "timeout", "host_rewrite_literal"); err != nil {
		return nil, err
	}
	re.cluster = a.GetCluster()
	re.hostRewrite = a.GetHostRewriteLiteral()
	if a.GetTimeout() != nil {
		re.timeout = a.GetTimeout().AsDuration()
	}
	for name, cfg := range r.GetTypedPerFilterConfig() {
		pm, err := unpackTyped(name, cfg)
		if err != nil {
			return nil, err
		}
		switch pm := pm.(type) {
		case *httpauthzv3.ExtAuthzPerRoute:
			if err := checkFields(pm, "disabled", "check_settings"); err != nil {
				return nil, err
			}
			if err := checkFields(pm.GetCheckSettings(), "context_extensions"); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("typed_per_filter_config[%s] of type %s is not implemented by envoysim", name, typeName(cfg))
		}
		re.perFilter[name] = pm
	}
	return re, nil
}

// selectVirtualHost picks the virtual host for an :authority.
func (rt *routeTable) selectVirtualHost(authority string) *virtualHost {
	host := strings.ToLower(authority)
	var best *virtualHost
	bestRank, bestLen := -1, -1
	for _, v := range rt.vhosts {
		for _, d := range v.domains {
			rank, n := -1, len(d)
			switch {
			case d == host:
				rank = 3
			case strings.HasPrefix(d, "*") && len(d) > 1 && strings.HasSuffix(host, d[1:]) && len(host) > len(d)-1:
				rank = 2
			case strings.HasSuffix(d, "*") && len(d) > 1 && strings.HasPrefix(host, d[:len(d)-1]) && len(host) > len(d)-1:
				rank = 1
			case d == "*":
				rank = 0
			}
			if rank > bestRank || rank == bestRank && n > bestLen {
				best, bestRank, bestLen = v, rank, n
			}
		}
	}
	if bestRank < 0 {
		return nil
	}
	return best
}

func (v *virtualHost) match(path string) *routeEntry {
	path, _, _ = strings.Cut(path, "?")
	for _, r := range v.routes {
		if r.exact && path == r.path || !r.exact && strings.HasPrefix(path, r.prefix) {
			return r
		}
	}
	return nil
}

// matchRoute resolves a request's route with its HCM's current route table.
func (s *Sim) matchRoute(hc *hcmConfig, h *headerMap) *routeEntry {
	rt := hc.inlineRoutes
	if rt == nil {
		s.mu.Lock()
		rt = s.routes[hc.rdsName]
		s.mu.Unlock()
	}
	if rt == nil || h == nil {
		return nil
	}
	vh := rt.selectVirtualHost(h.value(":authority"))
	if vh == nil {
		return nil
	}
	return vh.match(h.value(":path"))
}

// ApplyRoutes replaces the RDS route configurations, state-of-the-world
// style, as an RDS response over ADS would. Valid configurations are applied
// even when others are rejected; the error names every rejected one.
// Listeners whose HCM names a route configuration warm until it is present.
func (s *Sim) ApplyRoutes(routes []*routev3.RouteConfiguration) error {
	err := s.applyRoutes(routes)
	s.activateWarmingListeners()
	return err
}

func (s *Sim) applyRoutes(routes []*routev3.RouteConfiguration) error {
	next := map[string]*routeTable{}
	var msgs []string
	for _, rc := range routes {
		rt, err := buildRouteTable(rc)
		if err == nil {
			if _, dup := next[rc.GetName()]; dup {
				err = fmt.Errorf("duplicate route configuration %s", rc.GetName())
			}
		}
		s.rdsStat(rc.GetName(), err == nil)
		if err != nil {
			msgs = append(msgs, fmt.Sprintf("%s: %v", rc.GetName(), err))
			s.mu.Lock()
			if old := s.routes[rc.GetName()]; old != nil {
				next[rc.GetName()] = old // a rejected update keeps the old routes
			}
			s.mu.Unlock()
			continue
		}
		next[rc.GetName()] = rt
	}
	s.mu.Lock()
	s.routes = next
	s.notifyLocked()
	s.mu.Unlock()
	if len(msgs) > 0 {
		return fmt.Errorf("Error adding/updating route configuration(s) %s", strings.Join(msgs, "\n"))
	}
	return nil
}

// rdsStat counts http.<stat_prefix>.rds.<name>.update_success/update_rejected
// for every HCM that uses the route configuration.
func (s *Sim) rdsStat(name string, ok bool) {
	which := "update_rejected"
	if ok {
		which = "update_success"
	}
	for _, hc := range s.hcmConfigs() {
		if hc.rdsName == name {
			s.stats.counter(hc.statPrefix + "rds." + name + "." + which).Add(1)
		}
	}
}

// hcmConfigs lists the HCMs of the active and warming listeners.
func (s *Sim) hcmConfigs() []*hcmConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*hcmConfig
	for _, le := range s.listeners {
		for _, lc := range []*listenerConfig{le.active.Load(), le.warming} {
			if lc == nil {
				continue
			}
			for _, c := range append(append([]*filterChainConfig(nil), lc.chains...), lc.defaultChain) {
				if c != nil && c.hcm != nil {
					out = append(out, c.hcm)
				}
			}
		}
	}
	return out
}

// referencedRoutes lists, sorted, the RDS names the listeners need.
func (s *Sim) referencedRoutes() []string {
	set := map[string]bool{}
	for _, hc := range s.hcmConfigs() {
		if hc.rdsName != "" {
			set[hc.rdsName] = true
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
