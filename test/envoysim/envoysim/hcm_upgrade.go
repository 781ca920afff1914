package envoysim

import (
	"fmt"
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// HCM upgrade_configs (contract §3, "Upgrades"): which HTTP/1.1 upgrades
// (WebSocket, SPDY/3.1 for Kubernetes exec, any other token) HCM accepts and
// which filter chain runs them, following
// source/extensions/filters/network/http_connection_manager/config.cc
// (the constructor's upgrade_configs loop and createUpgradeFilterChain) and
// FilterManager::createFilterChain in source/common/http/filter_manager.cc.
//
//   - upgrade_type is matched case-insensitively against the whole value of
//     the request's Upgrade header (findUpgradeCaseInsensitive);
//   - enabled defaults to true; a disabled type is refused unless a route
//     enables it (route upgrade_configs are not implemented: rds.go refuses
//     RouteAction.upgrade_configs, so the per-route map is always nil here);
//   - filters, when set, replace http_filters for that upgrade; otherwise the
//     upgrade runs through http_filters;
//   - an upgrade that is not accepted falls through to http_filters and HCM
//     answers 403 (upgrade_failed) and closes the connection (httpstream.go).
//
// CONNECT (upgrade_type CONNECT, connect_config) is not implemented and is
// refused.

// upgradeConfig is one accepted HttpConnectionManager.UpgradeConfig.
type upgradeConfig struct {
	upgradeType string
	enabled     bool
	filters     []httpFilterFactory // nil: the HCM's http_filters
}

// buildUpgrades is the upgrade_configs part of HttpConnectionManagerConfig's
// constructor.
func (hc *hcmConfig) buildUpgrades(cb *chainBuild, ucs []*hcmv3.HttpConnectionManager_UpgradeConfig) error {
	for _, uc := range ucs {
		if err := checkFields(uc, "upgrade_type", "filters", "enabled"); err != nil {
			return err
		}
		name := uc.GetUpgradeType()
		if strings.EqualFold(name, "CONNECT") || strings.EqualFold(name, "CONNECT-UDP") {
			return fmt.Errorf("upgrade_configs: upgrade_type %q (CONNECT) is not implemented by envoysim", name)
		}
		key := strings.ToLower(name)
		if hc.upgrades[key] != nil {
			return fmt.Errorf("Error: multiple upgrade configs with the same name: '%s'", name)
		}
		u := &upgradeConfig{upgradeType: name, enabled: uc.GetEnabled() == nil || uc.GetEnabled().GetValue()}
		if len(uc.GetFilters()) > 0 {
			fs, err := hc.buildHTTPFilters(cb, uc.GetFilters(), "http upgrade")
			if err != nil {
				return fmt.Errorf("upgrade_configs %q: %w", name, err)
			}
			u.filters = fs
		}
		if hc.upgrades == nil {
			hc.upgrades = map[string]*upgradeConfig{}
		}
		hc.upgrades[key] = u
	}
	return nil
}

// upgradeFilters is createUpgradeFilterChain: the filter chain for an upgrade
// of type upgradeType, and whether the upgrade is accepted. routeMap is the
// route's upgrade map (lower-cased type → enabled), nil when the route has
// none. A route that disables the type refuses it; one that enables it
// accepts it even when HCM does not configure the type.
func (hc *hcmConfig) upgradeFilters(upgradeType string, routeMap map[string]bool) ([]httpFilterFactory, bool) {
	key := strings.ToLower(upgradeType)
	routeEnabled := false
	if enabled, ok := routeMap[key]; ok {
		if !enabled {
			return hc.filters, false
		}
		routeEnabled = true
	}
	u := hc.upgrades[key]
	if (u == nil || !u.enabled) && !routeEnabled {
		return hc.filters, false
	}
	if u != nil && u.filters != nil {
		return u.filters, true
	}
	return hc.filters, true
}
