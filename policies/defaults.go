package policies

import "time"

// Defaults applied to fields the file leaves out. They are the values a
// single-node try-out on one machine needs; production files set them.
const (
	DefaultXDSAddr               = "127.0.0.1:18000"
	DefaultAuthzAddr             = "127.0.0.1:9001"
	DefaultExtProcAddr           = "127.0.0.1:9002"
	DefaultAPIAddr               = "127.0.0.1:8080"
	DefaultNode                  = "edge"
	DefaultListenAddress         = "0.0.0.0"
	DefaultAdminAddress          = "127.0.0.1:9901"
	DefaultAuthzTimeout          = time.Second
	DefaultExtProcMessageTimeout = 5 * time.Second
	DefaultConnectTimeout        = 5 * time.Second
	DefaultGroupsClaim           = "groups"
	DefaultGrantsStore           = "embedded"
	DefaultGrantMaxDuration      = 8 * time.Hour
	DefaultAuditStore            = "sqlite://sluice-audit.db"
	DefaultAuditRetention        = 2160 * time.Hour
	DefaultCheckpointEvery       = 1000
	DefaultCheckpointInterval    = 10 * time.Second
	DefaultServiceName           = "sluice"
	DefaultLogLevel              = "info"
	DefaultLogFormat             = "json"
	DefaultIdleTimeout           = time.Hour
	DefaultHTTPRequestTimeout    = 30 * time.Second
)

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

func applyDefaults(c *Config) {
	setDefault(&c.Server.XDS, DefaultXDSAddr)
	setDefault(&c.Server.Authz, DefaultAuthzAddr)
	setDefault(&c.Server.ExtProc, DefaultExtProcAddr)
	setDefault(&c.Server.API, DefaultAPIAddr)

	setDefault(&c.Envoy.Node, DefaultNode)
	setDefault(&c.Envoy.ListenAddress, DefaultListenAddress)
	setDefault(&c.Envoy.AdminAddress, DefaultAdminAddress)
	setDefault(&c.Envoy.AuthzTimeout, DefaultAuthzTimeout)
	setDefault(&c.Envoy.ExtProcMessageTimeout, DefaultExtProcMessageTimeout)
	setDefault(&c.Envoy.ConnectTimeout, DefaultConnectTimeout)

	for i := range c.Identity.Issuers {
		setDefault(&c.Identity.Issuers[i].GroupsClaim, DefaultGroupsClaim)
	}
	setDefault(&c.Grants.Store, DefaultGrantsStore)
	setDefault(&c.Grants.MaxDuration, DefaultGrantMaxDuration)
	setDefault(&c.Audit.Store, DefaultAuditStore)
	setDefault(&c.Audit.Retention, DefaultAuditRetention)
	setDefault(&c.Audit.CheckpointEvery, DefaultCheckpointEvery)
	setDefault(&c.Audit.CheckpointInterval, DefaultCheckpointInterval)
	setDefault(&c.Telemetry.ServiceName, DefaultServiceName)
	setDefault(&c.Telemetry.LogLevel, DefaultLogLevel)
	setDefault(&c.Telemetry.LogFormat, DefaultLogFormat)

	for i := range c.Targets {
		t := &c.Targets[i]
		switch t.Kind {
		case KindPostgres:
			setDefault(&t.IdleTimeout, DefaultIdleTimeout)
		case KindHTTP:
			if t.RequestTimeout == nil {
				d := DefaultHTTPRequestTimeout
				t.RequestTimeout = &d
			}
		}
	}
}
