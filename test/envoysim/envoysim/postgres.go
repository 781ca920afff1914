package envoysim

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	pgv3alpha "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/network/postgres_proxy/v3alpha"
	"google.golang.org/protobuf/proto"
)

// postgres_proxy (envoy.filters.network.postgres_proxy, contrib), contract §5,
// following contrib/postgres_proxy/filters/network/source/postgres_filter.cc and
// postgres_decoder.cc (onDataInit).
//
// The sim decodes only what changes the bytes: the first frontend message
// and, with upstream_ssl REQUIRE, the server's answer to the filter's own
// SSLRequest.
//
//   - An SSLRequest it terminates is answered "S", consumed, and the
//     connection switches to TLS through the starttls transport socket;
//     with downstream_ssl REQUIRE a clear-text StartupMessage gets FATAL
//     28000 and a close.
//   - upstream_ssl REQUIRE (onDataInit, onDataInNegotiating,
//     encryptUpstream): the StartupMessage (with whatever follows it in the
//     buffer) is kept, and an 8-byte SSLRequest is injected after the filter
//     towards the server instead. The server's answer must be one byte: "S"
//     makes the filter call startUpstreamSecureTransport (tcp_proxy's
//     starttls cluster socket) and inject the kept bytes; "N", anything
//     else or a failed switch closes the connection (NoFlush). The answer is
//     consumed: the client never sees it. Client bytes arriving meanwhile
//     put the decoder out of sync and pass on in clear text, as in Envoy.
//
// Every other byte passes through untouched and unparsed: the SQL parsing
// that produces dynamic metadata is not implemented (a chain that forwards
// that metadata to an extension service is rejected at config time).
// upstream_ssl ALLOW is refused: Envoy versions differ on it (older ones
// fell back to clear text, newer ones treat it as DISABLE).

var postgresConfigName = (&pgv3alpha.PostgresProxy{}).ProtoReflect().Descriptor().FullName()

// postgresNamespace is NetworkFilterNames::get().PostgresProxy.
const postgresNamespace = "envoy.filters.network.postgres_proxy"

// Protocol constants from postgres_decoder.h / the Postgres protocol docs.
const (
	pgEncryptionRequestBase = 0x04d20000 // 1234 in the most significant 16 bits
	pgSSLRequestCode        = 80877103
	pgMaxStartupPacket      = 10000 // MAX_STARTUP_PACKET_LENGTH
)

type postgresConfig struct {
	downstream   pgv3alpha.PostgresProxy_SSLMode
	upstream     pgv3alpha.PostgresProxy_SSLMode
	terminateSSL bool

	sessions, encrypted, unencrypted, terminated, messagesFrontend *atomic.Int64
	upstreamSSLSuccess, upstreamSSLFailed                          *atomic.Int64
}

func buildPostgres(cb *chainBuild, _ string, m proto.Message) (filterFactory, error) {
	pc := m.(*pgv3alpha.PostgresProxy)
	if err := checkFields(pc, "stat_prefix", "enable_sql_parsing", "terminate_ssl", "upstream_ssl", "downstream_ssl"); err != nil {
		return nil, err
	}
	if pc.GetUpstreamSsl() != pgv3alpha.PostgresProxy_DISABLE && pc.GetUpstreamSsl() != pgv3alpha.PostgresProxy_REQUIRE {
		return nil, fmt.Errorf("upstream_ssl %s is not implemented by envoysim (DISABLE and REQUIRE are)", pc.GetUpstreamSsl())
	}
	if pc.GetEnableSqlParsing() == nil || pc.GetEnableSqlParsing().GetValue() {
		cb.unproduced = append(cb.unproduced, postgresNamespace)
	}
	p := "postgres." + pc.GetStatPrefix() + "."
	st := cb.sim.stats
	cfg := &postgresConfig{
		downstream: pc.GetDownstreamSsl(), upstream: pc.GetUpstreamSsl(),
		terminateSSL: pc.GetTerminateSsl(), //nolint:staticcheck // deprecated, still honoured by Envoy
		sessions:     st.counter(p + "sessions"), encrypted: st.counter(p + "sessions_encrypted"),
		unencrypted: st.counter(p + "sessions_unencrypted"), terminated: st.counter(p + "sessions_terminated_ssl"),
		messagesFrontend:   st.counter(p + "messages_frontend"),
		upstreamSSLSuccess: st.counter(p + "sessions_upstream_ssl_success"),
		upstreamSSLFailed:  st.counter(p + "sessions_upstream_ssl_failed"),
	}
	return func(c *conn) { c.fm.addFilter(&postgresFilter{cfg: cfg, conn: c}) }, nil
}

type pgState int

const (
	pgInit pgState = iota
	pgInSync
	pgEncrypted // opaque from here on (also out of sync)
	// pgNegotiatingUpstream: the filter's SSLRequest is at the server, whose
	// one-byte answer is awaited (NegotiatingUpstreamSSL).
	pgNegotiatingUpstream
)

type postgresFilter struct {
	cfg           *postgresConfig
	conn          *conn
	rcb           *activeReadFilter
	wcb           *activeWriteFilter
	state         pgState
	frontend      buffer // the decoder's private copy
	switchedToTLS bool
	// startup is temp_storage_: the client's bytes from its StartupMessage
	// on, kept while the server is asked for TLS.
	startup []byte
}

func (f *postgresFilter) initializeReadFilterCallbacks(cb *activeReadFilter)   { f.rcb = cb }
func (f *postgresFilter) initializeWriteFilterCallbacks(cb *activeWriteFilter) { f.wcb = cb }
func (f *postgresFilter) onNewConnection() filterStatus                        { return continueIteration }

// onWrite passes the server's bytes on untouched, except the answer to the
// filter's own SSLRequest, which it consumes.
func (f *postgresFilter) onWrite(data *buffer, _ bool) filterStatus {
	if f.state != pgNegotiatingUpstream || data.Len() == 0 {
		return continueIteration
	}
	// onDataInNegotiating: the answer is one byte alone; the backend buffer
	// is drained whatever it held.
	b := data.Bytes()
	agreed := len(b) == 1 && b[0] == 'S'
	f.state = pgInit
	if len(b) != 1 || b[0] != 'S' && b[0] != 'N' {
		f.state = pgEncrypted // OutOfSyncState
	}
	data.drain(data.Len())
	if f.encryptUpstream(agreed) {
		f.state = pgInSync
	}
	return stopIteration
}

// encryptUpstream is PostgresFilter::encryptUpstream: on the server's "S" it
// switches the upstream connection to TLS and sends the kept StartupMessage
// through the filters after this one; otherwise it closes, since REQUIRE
// allows no clear text.
func (f *postgresFilter) encryptUpstream(agreed bool) bool {
	c := f.conn
	if !agreed {
		f.cfg.upstreamSSLFailed.Add(1)
		c.sim.logf("conn %d: postgres_proxy: upstream server rejected request to establish SSL connection. Terminating.", c.id)
		c.close(closeNoFlush, "postgres_upstream_ssl_rejected")
		return false
	}
	if !f.rcb.startUpstreamSecureTransport() {
		f.cfg.upstreamSSLFailed.Add(1)
		c.sim.logf("conn %d: postgres_proxy: cannot enable upstream secure transport. Check configuration. Terminating.", c.id)
		c.close(closeNoFlush, "postgres_upstream_starttls_unavailable")
		return false
	}
	f.cfg.upstreamSSLSuccess.Add(1)
	startup := f.startup
	f.startup = nil
	f.rcb.injectReadDataToFilterChain(startup, false)
	return true
}

// onData copies the bytes into the decoder and normally leaves data untouched,
// so later filters see exactly the client's bytes. It drains and stops only
// for an SSLRequest it terminates and for the StartupMessage it keeps while
// asking the server for TLS.
func (f *postgresFilter) onData(data *buffer, _ bool) filterStatus {
	if f.state == pgNegotiatingUpstream {
		// "No data from downstream is allowed when negotiating upstream
		// SSL": the decoder drops out of sync, and the bytes go on.
		f.state = pgEncrypted
		return continueIteration
	}
	if f.state != pgInit {
		return continueIteration
	}
	f.frontend.add(data.Bytes())
	if f.decodeInit() {
		f.frontend = buffer{}
		data.drain(data.Len())
		return stopIteration
	}
	return continueIteration
}

// decodeInit is DecoderImpl::onDataInit; it reports whether the message was
// consumed (Decoder::Result::Stopped).
func (f *postgresFilter) decodeInit() bool {
	b := f.frontend.Bytes()
	if len(b) < 4 {
		return false
	}
	n := binary.BigEndian.Uint32(b)
	if n > pgMaxStartupPacket || n < 8 {
		f.state = pgEncrypted // OutOfSyncState: bytes are no longer parsed
		return false
	}
	if uint32(len(b)) < n {
		return false // NeedMoreData
	}
	code := binary.BigEndian.Uint32(b[4:])
	if code >= pgEncryptionRequestBase {
		f.cfg.messagesFrontend.Add(1)
		encrypted := true
		if code == pgSSLRequestCode {
			encrypted = f.onSSLRequest()
		}
		if encrypted {
			// SSLRequest passed to the server (DISABLE), GSSENCRequest, CancelRequest.
			f.cfg.sessions.Add(1)
			f.cfg.encrypted.Add(1)
			f.state = pgEncrypted
			return false
		}
		return true // consumed; the decrypted StartupMessage comes next
	}
	f.verifyDownstreamSSL()
	if f.conn.state != stateOpen {
		return false
	}
	if f.cfg.upstream == pgv3alpha.PostgresProxy_REQUIRE {
		// The decoder keeps the whole buffer, not just the message.
		f.startup = append([]byte(nil), b...)
		f.rcb.injectReadDataToFilterChain(sslRequestPacket(), false)
		if f.conn.state == stateOpen {
			f.state = pgNegotiatingUpstream
		}
		return true
	}
	if !f.switchedToTLS {
		f.cfg.sessions.Add(1)
		f.cfg.unencrypted.Add(1)
	}
	f.state = pgInSync
	return false
}

// sslRequestPacket is the SSLRequest the decoder builds: length 8, code
// 80877103.
func sslRequestPacket() []byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 8), 8)
	return binary.BigEndian.AppendUint32(b, pgSSLRequestCode)
}

// onSSLRequest reports whether the SSLRequest passes to the server (true) or
// is terminated here (false).
func (f *postgresFilter) onSSLRequest() bool {
	if f.cfg.downstream == pgv3alpha.PostgresProxy_DISABLE && !f.cfg.terminateSSL {
		return true
	}
	c := f.conn
	c.addBytesSentCallback(func(n int) bool {
		if n < 1 {
			return true
		}
		if !c.startSecureTransport() {
			// The filter chain's transport socket is not starttls.
			f.rcb.fm.c.sim.logf("conn %d: postgres_proxy: cannot enable downstream secure transport", c.id)
			c.close(closeNoFlush, "postgres_starttls_unavailable")
		} else {
			f.cfg.terminated.Add(1)
			f.switchedToTLS = true
		}
		return false
	})
	// Newer code injects "S" after this filter in the write chain; older code
	// used connection().write (the whole write chain).
	f.wcb.injectWriteDataToFilterChain([]byte("S"), false)
	return false
}

// verifyDownstreamSSL refuses a clear-text session when downstream_ssl is REQUIRE.
func (f *postgresFilter) verifyDownstreamSSL() {
	if f.cfg.downstream != pgv3alpha.PostgresProxy_REQUIRE || f.switchedToTLS {
		return
	}
	f.wcb.injectWriteDataToFilterChain(pgErrorResponse("FATAL", "28000",
		"connection denied by Envoy proxy: downstream ssl required."), false)
	f.conn.close(closeNoFlush, "postgres_downstream_ssl_required")
}

// pgErrorResponse encodes an ErrorResponse byte for byte as Envoy's
// Encoder::buildErrorResponse (postgres_encoder.cc): fields S, M, C, then a
// final NUL. Envoy's length counts three NULs, not four, so the declared length
// is one byte short and the final NUL follows the declared message; the sim
// reproduces that, since it is what a client receives.
func pgErrorResponse(severity, code, msg string) []byte {
	length := 4 + 3 + len(severity) + len(msg) + len(code) + 3
	out := []byte{'E', 0, 0, 0, 0}
	binary.BigEndian.PutUint32(out[1:], uint32(length))
	for _, fld := range []struct {
		t byte
		v string
	}{{'S', severity}, {'M', msg}, {'C', code}} {
		out = append(out, fld.t)
		out = append(out, fld.v...)
		out = append(out, 0)
	}
	return append(out, 0)
}
