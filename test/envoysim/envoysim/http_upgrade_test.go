package envoysim

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// --- helpers --------------------------------------------------------------

// upgradeListener is hcmListener with upgrade_configs.
func upgradeListener(t *testing.T, upgrades []*hcmv3.HttpConnectionManager_UpgradeConfig, filters ...*hcmv3.HttpFilter) *listenerv3.Listener {
	t.Helper()
	l := hcmListener(t, "api", filters...)
	h := &hcmv3.HttpConnectionManager{}
	if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	h.UpgradeConfigs = upgrades
	l.FilterChains[0].Filters[0] = netFilter(t, "envoy.filters.network.http_connection_manager", h)
	return l
}

// setupUpgrade is setupHTTP with upgrade_configs (route timeout 2 s).
func setupUpgrade(t *testing.T, up *httpUpstream, authzAddr, procAddr string, upgrades []*hcmv3.HttpConnectionManager_UpgradeConfig, filters ...*hcmv3.HttpFilter) *httpSetup {
	t.Helper()
	return setupUpgradeTimeout(t, up, authzAddr, procAddr, 2*time.Second, upgrades, filters...)
}

func setupUpgradeTimeout(t *testing.T, up *httpUpstream, authzAddr, procAddr string, timeout time.Duration, upgrades []*hcmv3.HttpConnectionManager_UpgradeConfig, filters ...*hcmv3.HttpFilter) *httpSetup {
	t.Helper()
	hs := &httpSetup{up: up, logs: make(chan HTTPStreamInfo, 100)}
	hs.sim = newSim(t, WithHTTPLog(func(i HTTPStreamInfo) { hs.logs <- i }))
	clusters := []*clusterv3.Cluster{staticCluster(t, "upstream", up.addr(), false)}
	if authzAddr != "" {
		clusters = append(clusters, staticCluster(t, "authz", authzAddr, true))
	}
	if procAddr != "" {
		clusters = append(clusters, staticCluster(t, "processor", procAddr, true))
	}
	if err := hs.sim.ApplyRoutes([]*routev3.RouteConfiguration{routeTo(t, "upstream", timeout)}); err != nil {
		t.Fatal(err)
	}
	if err := hs.sim.Apply([]*listenerv3.Listener{upgradeListener(t, upgrades, filters...)}, clusters, nil); err != nil {
		t.Fatal(err)
	}
	hs.addr = hs.sim.ListenerAddr("api")
	if hs.addr == "" {
		t.Fatal("listener api is not active")
	}
	return hs
}

// upstreamMode says how the upgrade upstream answers.
type upstreamMode struct {
	status int    // 101 switches protocols and echoes
	body   string // body of a non-101 answer
	bye    string // 101: written right after the switch, then the upstream closes
}

// upgradeHandler answers an upgrade request as mode says. After a 101 it
// echoes what it reads in upper case, until the peer closes, and reports
// that close on closed.
func upgradeHandler(mode upstreamMode, closed chan<- error) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, _ string) {
		if mode.status != http.StatusSwitchingProtocols {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(mode.status)
			_, _ = io.WriteString(w, mode.body)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			closed <- err
			return
		}
		defer c.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\nX-Upstream: yes\r\n\r\n", r.Header.Get("Upgrade"))
		if mode.bye != "" {
			_, _ = brw.WriteString(mode.bye)
			_ = brw.Flush()
			return
		}
		_ = brw.Flush()
		buf := make([]byte, 1024)
		for {
			n, err := brw.Read(buf)
			if n > 0 {
				_, _ = c.Write(bytes.ToUpper(buf[:n]))
			}
			if err != nil {
				closed <- err
				return
			}
		}
	}
}

// upgradeClient is an agent's raw HTTP/1.1 connection.
type upgradeClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

// dialUpgrade sends an upgrade request of type upgrade and reads the
// response head.
func dialUpgrade(t *testing.T, addr, method, path, upgrade string) (*upgradeClient, *http.Response) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(testTimeout))
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: agent.test\r\nConnection: Upgrade\r\nUpgrade: %s\r\nAuthorization: Bearer agent\r\n\r\n", method, path, upgrade)
	c := &upgradeClient{t: t, conn: conn, br: bufio.NewReader(conn)}
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the response to the upgrade: %v", err)
	}
	return c, resp
}

// roundTrip writes msg into the tunnel and reads the upstream's echo.
func (c *upgradeClient) roundTrip(msg string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, msg); err != nil {
		c.t.Fatal(err)
	}
	want := strings.ToUpper(msg)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c.br, got); err != nil || string(got) != want {
		c.t.Fatalf("tunnel echo of %d bytes: %d bytes back (%v), equal %v", len(msg), len(got), err, string(got) == want)
	}
}

// readToEOF reads what the peer sends until it closes the connection.
func (c *upgradeClient) readToEOF() (string, error) {
	b, err := io.ReadAll(c.br)
	return string(b), err
}

func upgradeType(typ string, filters ...*hcmv3.HttpFilter) *hcmv3.HttpConnectionManager_UpgradeConfig {
	return &hcmv3.HttpConnectionManager_UpgradeConfig{UpgradeType: typ, Filters: filters}
}

// upgradeProcConfig is ext_proc as sluice configures it for upgrades:
// headers both ways, no body (the tunnel) in either direction.
func upgradeProcConfig() *httpextprocv3.ExternalProcessor {
	c := procHTTPConfig("processor")
	c.ProcessingMode.RequestBodyMode = httpextprocv3.ProcessingMode_NONE
	c.ProcessingMode.ResponseBodyMode = httpextprocv3.ProcessingMode_NONE
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// --- tests ----------------------------------------------------------------

// An accepted upgrade runs its own filter chain: ext_authz checks the
// request with its Connection and Upgrade headers, ext_proc sees the request
// headers (not ending the stream) and the 101, the router relays the 101 and
// then the bytes both ways; the type matches ignoring case. When the agent
// closes mid-tunnel the upstream connection closes too.
func TestHTTPUpgradeTunnel(t *testing.T) {
	for _, tc := range []struct{ configured, requested, method string }{
		{"websocket", "websocket", http.MethodGet},
		{"spdy/3.1", "SPDY/3.1", http.MethodPost}, // kubectl exec
	} {
		t.Run(tc.requested, func(t *testing.T) {
			closed := make(chan error, 1)
			up := startHTTPUpstream(t, nil, upgradeHandler(upstreamMode{status: http.StatusSwitchingProtocols}, closed))
			a, authzAddr := startAuthorizer(t, okCheck(&authv3.OkHttpResponse{}))
			p, procAddr := startHTTPProcessor(t, httpRespond(passThrough))
			chain := []*hcmv3.HttpFilter{authzHTTPFilter(t, authzHTTPConfig("authz")), procHTTPFilter(t, upgradeProcConfig()), routerHTTPFilter(t)}
			// The default chain buffers request bodies: an upgrade must not
			// run through it (see TestHTTPUpgradeThroughBufferingProcessorHangs).
			defaultChain := []*hcmv3.HttpFilter{authzHTTPFilter(t, authzHTTPConfig("authz")), procHTTPFilter(t, procHTTPConfig("processor")), routerHTTPFilter(t)}
			hs := setupUpgrade(t, up, authzAddr, procAddr,
				[]*hcmv3.HttpConnectionManager_UpgradeConfig{upgradeType(tc.configured, chain...)}, defaultChain...)

			c, resp := dialUpgrade(t, hs.addr, tc.method, "/api/v1/namespaces/default/pods/web/exec?command=sh", tc.requested)
			if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != tc.requested ||
				!strings.EqualFold(resp.Header.Get("Connection"), "upgrade") || resp.Header.Get("X-Upstream") != "yes" {
				t.Fatalf("response %d %v", resp.StatusCode, resp.Header)
			}
			seen := up.next(t)
			if seen.method != tc.method || seen.host != "api.upstream.test" || seen.header.Get("Upgrade") != tc.requested ||
				!strings.EqualFold(seen.header.Get("Connection"), "upgrade") {
				t.Errorf("upstream saw %+v", seen)
			}
			c.roundTrip("ls -l\n")
			c.roundTrip(strings.Repeat("x", 40000))
			if v := hs.sim.Stats().Get("http.api.downstream_cx_upgrades_active"); v != 1 {
				t.Errorf("downstream_cx_upgrades_active %d while the tunnel is open", v)
			}

			hdrs := recvCheck(t, a).GetAttributes().GetRequest().GetHttp().GetHeaders()
			if hdrs["upgrade"] != tc.requested || hdrs["connection"] != "Upgrade" {
				t.Errorf("CheckRequest headers %v", hdrs)
			}
			var first *extprocv3.ProcessingRequest
			select {
			case first = <-p.reqs:
			case <-time.After(testTimeout):
				t.Fatal("no ext_proc message")
			}
			if rh := first.GetRequestHeaders(); rh == nil || rh.GetEndOfStream() {
				t.Errorf("first ext_proc message %v, want request_headers without end_of_stream", first)
			}
			if pc := first.GetProtocolConfig(); pc.GetRequestBodyMode() != httpextprocv3.ProcessingMode_NONE {
				t.Errorf("protocol_config %v", pc)
			}
			waitFor(t, "response headers at the processor", func() bool { return len(p.reqs) > 0 })
			rh := (<-p.reqs).GetResponseHeaders()
			if st, _ := headerOf(rh.GetHeaders(), ":status"); st != "101" || rh.GetEndOfStream() {
				t.Errorf("response_headers %v", rh)
			}
			if k := drainKinds(p); len(k) != 0 {
				t.Errorf("tunnel bytes reached the processor: %v", k)
			}

			c.conn.Close() // the agent leaves mid-tunnel
			select {
			case err := <-closed:
				if !errors.Is(err, io.EOF) {
					t.Errorf("upstream saw %v, want EOF", err)
				}
			case <-time.After(testTimeout):
				t.Fatal("the upstream connection stayed open after the agent closed")
			}
			l := hs.log(t)
			if l.ResponseCode != http.StatusSwitchingProtocols || !l.Reset || l.ResponseCodeDetails != "via_upstream" {
				t.Errorf("stream log %+v", l)
			}
			st := hs.sim.Stats()
			if st.Get("http.api.downstream_cx_upgrades_total") != 1 || st.Get("http.api.downstream_cx_upgrades_active") != 0 ||
				st.Get("http.api.downstream_rq_1xx") != 1 {
				t.Errorf("stats: upgrades_total %d, upgrades_active %d, rq_1xx %d", st.Get("http.api.downstream_cx_upgrades_total"),
					st.Get("http.api.downstream_cx_upgrades_active"), st.Get("http.api.downstream_rq_1xx"))
			}
			hs.sim.RequireNoViolations(t)
		})
	}
}

// An upgrade HCM does not accept is answered 403 before any filter forwards
// it, and the connection closes: no upgrade_configs, another type, or the
// type disabled.
func TestHTTPUpgradeNotConfigured(t *testing.T) {
	for _, tc := range []struct {
		name     string
		upgrades []*hcmv3.HttpConnectionManager_UpgradeConfig
	}{
		{"no upgrade_configs", nil},
		{"another type", []*hcmv3.HttpConnectionManager_UpgradeConfig{upgradeType("websocket")}},
		{"disabled", []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "spdy/3.1", Enabled: wrapperspb.Bool(false)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startHTTPUpstream(t, nil, okHandler("{}"))
			hs := setupUpgrade(t, up, "", "", tc.upgrades, routerHTTPFilter(t))
			c, resp := dialUpgrade(t, hs.addr, http.MethodPost, "/api/v1/namespaces/default/pods/p/exec", "SPDY/3.1")
			if resp.StatusCode != http.StatusForbidden || !resp.Close {
				t.Errorf("status %d, close %v; want 403 and Connection: close", resp.StatusCode, resp.Close)
			}
			if rest, err := c.readToEOF(); rest != "" || err != nil {
				t.Errorf("after the 403: %q, %v; want the connection closed", rest, err)
			}
			if len(up.reqs) != 0 {
				t.Error("the upstream saw the request")
			}
			if l := hs.log(t); l.ResponseCodeDetails != "upgrade_failed" {
				t.Errorf("stream log %+v", l)
			}
			if hs.sim.Stats().Get("http.api.downstream_rq_ws_on_non_ws_route") != 1 {
				t.Error("downstream_rq_ws_on_non_ws_route not counted")
			}
		})
	}
}

// An upstream that does not switch protocols: a WebSocket handshake answered
// 200 becomes a local reply with that status and no body
// (websocket_handshake_unsuccessful); one answered 403 passes with its body;
// any other upgrade type's answer passes as it is. The connection closes
// after each, since the request never completed.
func TestHTTPUpgradeUpstreamRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, upgrade string
		mode          upstreamMode
		wantBody      string
		wantDetails   string
	}{
		{"websocket 200", "websocket", upstreamMode{status: 200, body: `{"ok":true}`}, "", "websocket_handshake_unsuccessful"},
		{"websocket 403", "websocket", upstreamMode{status: 403, body: `{"kind":"Status"}`}, `{"kind":"Status"}`, "via_upstream"},
		{"spdy 200", "SPDY/3.1", upstreamMode{status: 200, body: `{"ok":true}`}, `{"ok":true}`, "via_upstream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startHTTPUpstream(t, nil, upgradeHandler(tc.mode, make(chan error, 1)))
			hs := setupUpgrade(t, up, "", "", []*hcmv3.HttpConnectionManager_UpgradeConfig{
				upgradeType("websocket"), upgradeType("SPDY/3.1")}, routerHTTPFilter(t))
			c, resp := dialUpgrade(t, hs.addr, http.MethodGet, "/ws", tc.upgrade)
			body, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != tc.mode.status || string(body) != tc.wantBody || !resp.Close {
				t.Errorf("response %d %q (%v), close %v", resp.StatusCode, body, err, resp.Close)
			}
			if resp.Header.Get("Upgrade") != "" {
				t.Errorf("a refused upgrade kept Upgrade: %v", resp.Header)
			}
			if rest, err := c.readToEOF(); rest != "" || err != nil {
				t.Errorf("after the response: %q, %v; want the connection closed", rest, err)
			}
			if l := hs.log(t); l.ResponseCode != tc.mode.status || l.ResponseCodeDetails != tc.wantDetails {
				t.Errorf("stream log %+v", l)
			}
		})
	}
}

// When the upstream closes the tunnel, what it sent first still reaches the
// agent, then the agent's connection closes.
func TestHTTPUpgradeUpstreamCloses(t *testing.T) {
	up := startHTTPUpstream(t, nil, upgradeHandler(upstreamMode{status: http.StatusSwitchingProtocols, bye: "session ended\n"}, nil))
	hs := setupUpgrade(t, up, "", "", []*hcmv3.HttpConnectionManager_UpgradeConfig{upgradeType("websocket")}, routerHTTPFilter(t))
	c, resp := dialUpgrade(t, hs.addr, http.MethodGet, "/ws", "websocket")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if rest, err := c.readToEOF(); rest != "session ended\n" || err != nil {
		t.Errorf("tunnel %q, %v", rest, err)
	}
	if l := hs.log(t); !l.Reset || !strings.HasPrefix(l.ResponseCodeDetails, "via_upstream") {
		t.Errorf("stream log %+v", l)
	}
}

// Through a processor that buffers request bodies the upgrade never reaches
// the upstream: the headers wait for the end of a body that, for an
// upgrade, only comes after the 101 (processor_state.cc holds BUFFERED
// headers until the body is complete). That is why sluice gives upgrades a
// chain of their own.
func TestHTTPUpgradeThroughBufferingProcessorHangs(t *testing.T) {
	up := startHTTPUpstream(t, nil, upgradeHandler(upstreamMode{status: http.StatusSwitchingProtocols}, make(chan error, 1)))
	p, procAddr := startHTTPProcessor(t, httpRespond(passThrough))
	hs := setupUpgrade(t, up, "", procAddr, []*hcmv3.HttpConnectionManager_UpgradeConfig{upgradeType("websocket")},
		procHTTPFilter(t, procHTTPConfig("processor")), routerHTTPFilter(t))
	conn, err := net.Dial("tcp", hs.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err := conn.Read(make([]byte, 1)); n != 0 || !isTimeout(err) {
		t.Errorf("read %d bytes, %v; want nothing before the deadline", n, err)
	}
	if len(up.reqs) != 0 {
		t.Error("the upstream saw the request")
	}
	if k := drainKinds(p); len(k) != 1 || k[0] != "request_headers" {
		t.Errorf("processor saw %v", k)
	}
}

// A processor that streams response bodies is sent the upstream's tunnel
// bytes as body chunks without end_of_stream, each forwarded once
// answered, as Envoy does with any data frame.
func TestHTTPUpgradeStreamedBodyReachesProcessor(t *testing.T) {
	up := startHTTPUpstream(t, nil, upgradeHandler(upstreamMode{status: http.StatusSwitchingProtocols}, make(chan error, 1)))
	p, procAddr := startHTTPProcessor(t, httpRespond(passThrough))
	cfg := upgradeProcConfig()
	cfg.ProcessingMode.ResponseBodyMode = httpextprocv3.ProcessingMode_STREAMED
	hs := setupUpgrade(t, up, "", procAddr, []*hcmv3.HttpConnectionManager_UpgradeConfig{upgradeType("websocket")},
		procHTTPFilter(t, cfg), routerHTTPFilter(t))
	c, resp := dialUpgrade(t, hs.addr, http.MethodGet, "/ws", "websocket")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c.roundTrip("hello")
	want := []string{"request_headers", "response_headers", "response_body(HELLO)"}
	waitFor(t, "three processor messages", func() bool { return len(p.reqs) >= 3 })
	if k := drainKinds(p); strings.Join(k, "|") != strings.Join(want, "|") {
		t.Errorf("processor saw %v, want %v", k, want)
	}
	hs.sim.RequireNoViolations(t)
}

// Closing the sim closes an open tunnel instead of waiting for it.
func TestHTTPUpgradeSimCloseEndsTunnel(t *testing.T) {
	up := startHTTPUpstream(t, nil, upgradeHandler(upstreamMode{status: http.StatusSwitchingProtocols}, make(chan error, 1)))
	hs := setupUpgrade(t, up, "", "", []*hcmv3.HttpConnectionManager_UpgradeConfig{upgradeType("websocket")}, routerHTTPFilter(t))
	c, resp := dialUpgrade(t, hs.addr, http.MethodGet, "/ws", "websocket")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c.roundTrip("x")
	done := make(chan struct{})
	go func() { _ = hs.sim.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Sim.Close waited for the open tunnel")
	}
	if _, err := c.readToEOF(); err != nil {
		t.Errorf("agent's connection: %v", err)
	}
}

// The route timeout runs while a WebSocket upgrade waits for its answer
// (504), and a 101 stops it: a tunnel outlives it. Other upgrades never
// complete their request, so the timeout never starts.
func TestHTTPUpgradeRouteTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	release := make(chan struct{})
	slow := startHTTPUpstream(t, nil, func(w http.ResponseWriter, r *http.Request, body string) {
		if r.URL.Path == "/slow" {
			<-release
			return
		}
		upgradeHandler(upstreamMode{status: http.StatusSwitchingProtocols}, make(chan error, 1))(w, r, body)
	})
	t.Cleanup(func() { close(release) }) // before the server's Close, which waits for its handlers
	hs := setupUpgradeTimeout(t, slow, "", "", timeout, []*hcmv3.HttpConnectionManager_UpgradeConfig{
		upgradeType("websocket"), upgradeType("SPDY/3.1")}, routerHTTPFilter(t))

	_, resp := dialUpgrade(t, hs.addr, http.MethodGet, "/slow", "websocket")
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("WebSocket upgrade never answered: %d, want 504", resp.StatusCode)
	}
	if l := hs.log(t); l.ResponseCodeDetails != "upstream_response_timeout" {
		t.Errorf("stream log %+v", l)
	}

	c, resp := dialUpgrade(t, hs.addr, http.MethodGet, "/ws", "websocket")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	time.Sleep(2 * timeout)
	c.roundTrip("still open")

	conn, err := net.Dial("tcp", hs.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "POST /slow HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(3 * timeout))
	if n, err := conn.Read(make([]byte, 1)); n != 0 || !isTimeout(err) {
		t.Errorf("SPDY upgrade never answered: read %d bytes, %v; want no answer (no route timeout)", n, err)
	}
}
