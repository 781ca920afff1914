package envoysim

// Network::ReadFilterCallbacks::startUpstreamSecureTransport, which
// postgres_proxy calls when the server agreed to TLS: FilterManagerImpl asks
// each read filter in turn (source/common/network/filter_manager_impl.cc),
// and tcp_proxy, the one that owns the upstream connection, switches its
// starttls transport socket (source/extensions/transport_sockets/starttls/
// starttls_socket.cc). The connection side of the switch is in
// connection.go.

// upstreamSecureTransporter is a read filter that owns an upstream
// connection (Network::ReadFilter::startUpstreamSecureTransport; the
// default implementation returns false).
type upstreamSecureTransporter interface {
	startUpstreamSecureTransport() bool
}

// startUpstreamSecureTransport reports whether some read filter switched its
// upstream connection to TLS.
func (a *activeReadFilter) startUpstreamSecureTransport() bool {
	return a.fm.startUpstreamSecureTransport()
}

func (fm *filterManager) startUpstreamSecureTransport() bool {
	for _, a := range fm.readFilters {
		if u, ok := a.f.(upstreamSecureTransporter); ok && u.startUpstreamSecureTransport() {
			return true
		}
	}
	return false
}
