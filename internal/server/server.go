// Package server assembles halt-envoy's listeners: the gRPC port (RateLimitService,
// health, reflection) and the HTTP port (metrics, health, readiness, effective config,
// the reference service's /healthcheck and /json endpoints), and optionally a separate
// admin port for pprof and the admin API, so profiling never shares a port with scrapers
// (without one, pprof is served on the HTTP port only behind the admin token).
package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/lograte"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/redact"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/wire"
)

// Options configure a Server.
type Options struct {
	// GRPCAddr and HTTPAddr are listen addresses; ":0" picks a free port. GRPCAddr may
	// also be "unix:/path/to.sock" (the reference's GRPC_UDS): gRPC on a unix socket.
	GRPCAddr, HTTPAddr string
	// Engine decides; Service is its gRPC front.
	Engine  *engine.Engine
	Service *rlsv3.Service
	// Register adds more gRPC services (ext_authz) to the same port.
	Register []func(*grpc.Server)
	// Metrics is served on /metrics; nil means the engine's.
	Metrics *metrics.Metrics
	// Config returns the current configuration for /config and readiness.
	Config func() *config.Set
	// Logger defaults to a discarding logger.
	Logger *slog.Logger
	// MaxInFlight bounds concurrent calls; past it calls fail fast with RESOURCE_EXHAUSTED
	// instead of queueing without limit. Zero means 4096.
	MaxInFlight int
	// MaxRecvBytes bounds one request message. Zero means 1 MiB.
	MaxRecvBytes int
	// DrainTimeout bounds graceful shutdown. Zero means 10 s.
	DrainTimeout time.Duration
	// DisablePprof removes /debug/pprof everywhere.
	DisablePprof bool
	// PprofGuard, when there is no AdminAddr, puts /debug/pprof on the HTTP port behind
	// it (the admin token: admin.Handler.Protect). Nil serves pprof on AdminAddr only: a
	// profiler on the port scrapers reach would let anyone who can scrape run profiles
	// and read the command line.
	PprofGuard func(http.Handler) http.Handler
	// ReadyTimeout bounds the store ping of /readyz. Zero means 1 s.
	ReadyTimeout time.Duration
	// TLS, when set, serves every listener over TLS (its GetConfigForClient may swap
	// certificates at run time; see tlsutil). Nil means plaintext.
	TLS *tls.Config
	// AdminAddr, when set, serves /debug/pprof and the Admin handlers on this address,
	// e.g. 127.0.0.1:9090, instead of the HTTP port.
	AdminAddr string
	// Admin registers more handlers on the admin mux (the HTTP port's when AdminAddr is
	// empty).
	Admin []func(*http.ServeMux)
	// TLSGRPCOnly serves TLS on the gRPC port only, the HTTP port staying plaintext (the
	// reference's GRPC_SERVER_USE_TLS: probes of /healthcheck stay plain HTTP).
	TLSGRPCOnly bool
	// MaxConnectionAge and MaxConnectionAgeGrace bound a gRPC connection's life (grpc-go
	// adds ±10% jitter). Zero means 30 min and 30 s.
	MaxConnectionAge, MaxConnectionAgeGrace time.Duration
	// MaxConcurrentStreams bounds the calls of one gRPC connection, and with it the
	// handlers grpc-go runs for one connection at once; zero means DefaultMaxStreams.
	MaxConcurrentStreams uint32
	// GRPCMaxConns and HTTPMaxConns bound the connections open at once on the gRPC port
	// and on each HTTP port (the HTTP and the admin port); past them a new connection
	// waits in the kernel's accept queue. Zero means DefaultGRPCMaxConns and
	// DefaultHTTPMaxConns.
	GRPCMaxConns, HTTPMaxConns int
	// HTTPReadTimeout bounds reading one request, body included, HTTPWriteTimeout its
	// handling and answer, and HTTPIdleTimeout how long a keep-alive connection may sit
	// idle, on every HTTP port. Zero means DefaultHTTPReadTimeout,
	// DefaultHTTPWriteTimeout and DefaultHTTPIdleTimeout.
	HTTPReadTimeout, HTTPWriteTimeout, HTTPIdleTimeout time.Duration
	// Now is the clock of the rapid-reset windows and cooldowns; nil means time.Now.
	Now func() time.Time
	// Ready, when set, is one more condition of /readyz: a non-nil error makes it answer
	// 503 with that error (the xDS source: no config received yet).
	Ready func() error
	// Health configures /healthcheck, the reference service's health check.
	Health Health
	// Interceptors run on every unary call after the in-flight bound, in order (the
	// reference's server stats, tracing). Only the outputs asked for install one, so an
	// unused one costs nothing.
	Interceptors []grpc.UnaryServerInterceptor
}

// Health is what /healthcheck checks besides the drain, as the reference's settings say.
// The zero value answers 200 until SIGTERM: a store outage does not fail it (the
// reference's default), so a liveness probe does not restart pods during one.
type Health struct {
	// NeedConfig: 500 until a config with at least one domain is loaded, and again while
	// the config has none (HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED).
	NeedConfig bool
	// PingStore: 500 while the store does not answer a ping
	// (REDIS_HEALTH_CHECK_ACTIVE_CONNECTION).
	PingStore bool
}

// Defaults of the connection bounds (Options), documented in docs/operations.md's
// threat model.
const (
	DefaultMaxStreams       = 256
	DefaultGRPCMaxConns     = 1024
	DefaultHTTPMaxConns     = 256
	DefaultHTTPReadTimeout  = 10 * time.Second
	DefaultHTTPWriteTimeout = 60 * time.Second
	DefaultHTTPIdleTimeout  = 120 * time.Second
	// headerTimeout bounds reading a request's headers (at most HTTPReadTimeout).
	headerTimeout = 5 * time.Second
	// maxHeaderBytes bounds the headers of one HTTP request and of one gRPC call (grpc-go
	// would take 16 MiB a stream, Go's HTTP server 1 MiB); Envoy sends a few hundred bytes.
	maxHeaderBytes = 64 << 10
	// handshakeTimeout bounds a new gRPC connection's TLS handshake and HTTP/2 preface
	// (grpc-go's default is 2 minutes: a connection that says nothing would hold a place
	// under the connection cap that long). Generous: under heavy load 1,000 connections
	// at once took over 10 s to set up (TestManyConnections under -race).
	handshakeTimeout = 30 * time.Second
)

// Server runs both listeners.
type Server struct {
	opt      Options
	grpc     *grpc.Server
	health   *health.Server
	http     *http.Server
	admin    *http.Server // nil unless AdminAddr is set
	grpcLn   net.Listener
	httpLn   net.Listener
	adminLn  net.Listener
	inflight atomic.Int64
	places   placeList
	// overload is what a refusal under MaxInFlight costs, prepared once: refusals come
	// in floods, and the gRPC ones are made on the connection's reader goroutine.
	overload struct {
		err              error
		rejected         prometheus.Counter
		rls, authz, json prometheus.Counter
	}
	cool     *cooldowns
	abuseLog *lograte.Limiter
	draining sync.Once
	drained  atomic.Bool // set when Shutdown starts: /healthcheck fails from then on
}

// New listens on both addresses (so the caller knows the ports before Serve).
func New(opt Options) (*Server, error) {
	if opt.Engine == nil || opt.Service == nil {
		return nil, errors.New("server: engine and service are required")
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.MaxInFlight <= 0 {
		opt.MaxInFlight = 4096
	}
	if opt.MaxRecvBytes <= 0 {
		opt.MaxRecvBytes = 1 << 20
	}
	if opt.DrainTimeout <= 0 {
		opt.DrainTimeout = 10 * time.Second
	}
	if opt.ReadyTimeout <= 0 {
		opt.ReadyTimeout = time.Second
	}
	if opt.Metrics == nil {
		opt.Metrics = opt.Engine.Metrics()
	}
	if opt.MaxConcurrentStreams == 0 {
		opt.MaxConcurrentStreams = DefaultMaxStreams
	}
	if opt.GRPCMaxConns <= 0 {
		opt.GRPCMaxConns = DefaultGRPCMaxConns
	}
	if opt.HTTPMaxConns <= 0 {
		opt.HTTPMaxConns = DefaultHTTPMaxConns
	}
	if opt.HTTPReadTimeout <= 0 {
		opt.HTTPReadTimeout = DefaultHTTPReadTimeout
	}
	if opt.HTTPWriteTimeout <= 0 {
		opt.HTTPWriteTimeout = DefaultHTTPWriteTimeout
	}
	if opt.HTTPIdleTimeout <= 0 {
		opt.HTTPIdleTimeout = DefaultHTTPIdleTimeout
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	s := &Server{opt: opt, cool: newCooldowns(opt.Now), abuseLog: lograte.New(lograte.DefaultInterval)}
	exhausted := codes.ResourceExhausted.String()
	s.overload.err = status.Errorf(codes.ResourceExhausted, "more than %d calls in flight", opt.MaxInFlight)
	s.overload.rejected = opt.Metrics.Rejected.WithLabelValues("overload")
	s.overload.rls = opt.Metrics.Requests.WithLabelValues(methodLabel(rlsMethod), exhausted)
	s.overload.authz = opt.Metrics.Requests.WithLabelValues(methodLabel(authzMethod), exhausted)
	s.overload.json = s.overload.rls // /json is ShouldRateLimit over HTTP
	conns := opt.Metrics.Connections
	listen := func(name, addr string, max int, refuse func(net.Conn) bool) (net.Listener, error) {
		l, err := listenAddr(addr)
		if err != nil {
			return nil, fmt.Errorf("listen %s %s: %w", name, addr, err)
		}
		return newCappedListener(l, max, refuse, conns.WithLabelValues(name)), nil
	}
	var err error
	if s.grpcLn, err = listen("grpc", opt.GRPCAddr, opt.GRPCMaxConns, s.inCooldown); err != nil {
		return nil, err
	}
	if s.httpLn, err = listen("http", opt.HTTPAddr, opt.HTTPMaxConns, nil); err != nil {
		s.grpcLn.Close()
		return nil, err
	}
	if opt.AdminAddr != "" {
		if s.adminLn, err = listen("admin", opt.AdminAddr, opt.HTTPMaxConns, nil); err != nil {
			s.grpcLn.Close()
			s.httpLn.Close()
			return nil, err
		}
	}
	if opt.MaxConnectionAge <= 0 {
		opt.MaxConnectionAge = 30 * time.Minute // rebalance long-lived Envoy connections
	}
	if opt.MaxConnectionAgeGrace <= 0 {
		opt.MaxConnectionAgeGrace = 30 * time.Second
	}
	s.opt = opt
	creds := insecure.NewCredentials()
	if opt.TLS != nil {
		creds = credentials.NewTLS(opt.TLS)
	}
	// Requests whose strings are not UTF-8 are decoded as bytes and decided (internal/wire):
	// refused by protobuf-go, they were answered INTERNAL, which Envoy lets through.
	codec := wire.New(func(m protoreflect.FullName) { opt.Metrics.InvalidUTF8.WithLabelValues(string(m)).Inc() })
	s.grpc = grpc.NewServer(
		// Every connection's client frames are followed for rapid resets (conns.go),
		// after the TLS handshake.
		grpc.Creds(watchedCreds{TransportCredentials: creds, s: s}),
		grpc.MaxConcurrentStreams(opt.MaxConcurrentStreams),
		grpc.MaxHeaderListSize(maxHeaderBytes),
		grpc.ConnectionTimeout(handshakeTimeout),
		grpc.InTapHandle(s.tap),
		grpc.ForceServerCodecV2(codec),
		grpc.MaxRecvMsgSize(opt.MaxRecvBytes),
		grpc.ChainUnaryInterceptor(append([]grpc.UnaryServerInterceptor{s.bound}, opt.Interceptors...)...),
		grpc.NumStreamWorkers(streamWorkers()),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle:     15 * time.Minute,
			MaxConnectionAge:      opt.MaxConnectionAge,
			MaxConnectionAgeGrace: opt.MaxConnectionAgeGrace,
			Time:                  2 * time.Minute,
			Timeout:               20 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	rlspb.RegisterRateLimitServiceServer(s.grpc, opt.Service)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	for _, reg := range opt.Register {
		reg(s.grpc)
	}
	httpTLS := opt.TLS
	if opt.TLSGRPCOnly {
		httpTLS = nil
	}
	s.http = s.httpServer(s.mux(), httpTLS)
	if s.adminLn != nil {
		am := http.NewServeMux()
		s.adminRoutes(am)
		s.admin = s.httpServer(am, httpTLS)
	}
	return s, nil
}

// httpServer is an HTTP server with every timeout set: a slow body, a slow reader of the
// answer or an idle keep-alive connection is closed, never kept forever.
func (s *Server) httpServer(h http.Handler, tlsCfg *tls.Config) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: min(headerTimeout, s.opt.HTTPReadTimeout),
		ReadTimeout:       s.opt.HTTPReadTimeout,
		WriteTimeout:      s.opt.HTTPWriteTimeout,
		IdleTimeout:       s.opt.HTTPIdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.opt.Logger.Handler(), slog.LevelDebug),
	}
}

// AdminAddr is the bound admin address, nil when there is no separate admin port.
func (s *Server) AdminAddr() net.Addr {
	if s.adminLn == nil {
		return nil
	}
	return s.adminLn.Addr()
}

// serveHTTP serves one HTTP listener, over TLS when configured.
func (s *Server) serveHTTP(srv *http.Server, ln net.Listener) error {
	var err error
	if srv.TLSConfig != nil {
		err = srv.ServeTLS(ln, "", "") // certificates come from TLSConfig
	} else {
		err = srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// GRPCAddr is the bound gRPC address.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLn.Addr() }

// HTTPAddr is the bound HTTP address.
func (s *Server) HTTPAddr() net.Addr { return s.httpLn.Addr() }

// admit takes one place under MaxInFlight, or reports that there is none: every entry
// point (a gRPC call as soon as its headers arrive, POST /json) shares this one bound.
// Under overload a fast refusal lets Envoy apply its failure mode instead of every call
// timing out. A counter, not a semaphore channel: two channel operations (each taking
// the channel's lock) on every call cost more than the check is worth.
func (s *Server) admit() bool {
	if s.inflight.Add(1) > int64(s.opt.MaxInFlight) {
		s.inflight.Add(-1)
		s.overload.rejected.Inc()
		return false
	}
	return true
}

func (s *Server) release() { s.inflight.Add(-1) }

// healthService is exempt from the in-flight bound: probes must be answered, overload
// or not (they are cheap, and bounded per connection like every stream).
const healthService = "/grpc.health.v1.Health/"

// tap admits a gRPC call as soon as its headers arrive, before its message (which a
// slow or hostile client may never send): a stream waiting for its message holds a place
// like a call being decided. The place is given back when the call's handler returns
// (bound), or, for a stream that never gets that far, by the sweep once the stream has
// ended (grpc-go cancels every stream's context then).
func (s *Server) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if strings.HasPrefix(info.FullMethodName, healthService) {
		return ctx, nil
	}
	if !s.admit() {
		switch info.FullMethodName {
		case rlsMethod:
			s.overload.rls.Inc()
		case authzMethod:
			s.overload.authz.Inc()
		default:
			s.opt.Metrics.Requests.WithLabelValues(methodLabel(info.FullMethodName), codes.ResourceExhausted.String()).Inc()
		}
		return nil, s.overload.err
	}
	p := &placeCtx{Context: ctx, s: s}
	s.places.add(p)
	return p, nil
}

// placeCtx is a stream's context holding its place under MaxInFlight, released once.
type placeCtx struct {
	context.Context
	s        *Server
	released atomic.Bool
}

type placeKey struct{}

// Value finds the place through the contexts grpc-go derives from the stream's.
func (p *placeCtx) Value(key any) any {
	if key == (placeKey{}) {
		return p
	}
	return p.Context.Value(key)
}

func (p *placeCtx) release() {
	if p.released.CompareAndSwap(false, true) {
		p.s.release()
	}
}

// sweepEvery is how often the places of streams that ended without reaching their
// handler (reset before their message, or timed out) are given back.
const sweepEvery = 100 * time.Millisecond

// placeList holds the places taken, for the sweep: a place added on every call costs an
// append under one of several locks, not a context watch (context.AfterFunc cost more
// than a microsecond a call, measured by BenchmarkTap).
type placeList struct {
	next   atomic.Uint32
	shards [16]struct {
		mu    sync.Mutex
		items []*placeCtx
		_     [32]byte // keep shards on separate cache lines
	}
}

func (l *placeList) add(p *placeCtx) {
	sh := &l.shards[l.next.Add(1)%uint32(len(l.shards))]
	sh.mu.Lock()
	sh.items = append(sh.items, p)
	sh.mu.Unlock()
}

// sweep gives back the places of streams that ended without being released, and drops
// the released ones; the others stay.
func (l *placeList) sweep() {
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		items := sh.items
		sh.items = make([]*placeCtx, 0, len(items)/2)
		sh.mu.Unlock()
		var keep []*placeCtx
		for _, p := range items {
			if p.released.Load() {
				continue
			}
			if p.Err() != nil {
				p.release()
				continue
			}
			keep = append(keep, p)
		}
		if len(keep) > 0 {
			sh.mu.Lock()
			sh.items = append(sh.items, keep...)
			sh.mu.Unlock()
		}
	}
}

// sweepPlaces runs the sweep until done is closed.
func (s *Server) sweepPlaces(done <-chan struct{}) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			s.places.sweep()
		}
	}
}

// bound runs a call in the place tap took for it, given back when the handler returns.
// It refuses a call whose caller already gave up (its deadline passed while its message
// arrived): deciding it would count a hit nobody waits for.
func (s *Server) bound(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if p, ok := ctx.Value(placeKey{}).(*placeCtx); ok {
		defer p.release()
	}
	if ctx.Err() != nil {
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return handler(ctx, req)
}

// methodLabel is halt_requests_total's method label of a gRPC method: the method's
// name for the RateLimitService and ext_authz (as their handlers count it), the full
// name for any other service.
func methodLabel(full string) string {
	switch full {
	case rlsMethod:
		return "ShouldRateLimit"
	case authzMethod:
		return "Check"
	}
	return full
}

const (
	rlsMethod   = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
	authzMethod = "/envoy.service.auth.v3.Authorization/Check"
)

// UnixPrefix starts a listen address that is a unix socket's path ("unix:/run/halt.sock").
const UnixPrefix = "unix:"

// listenAddr listens on a TCP address, or on a unix socket for "unix:PATH". A socket
// file left by a previous run (nothing accepts on it) is replaced; any other file at PATH
// is an error, never removed.
func listenAddr(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, UnixPrefix)
	if !ok {
		return net.Listen("tcp", addr)
	}
	if path == "" {
		return nil, errors.New("unix: wants a socket path (unix:/run/halt.sock)")
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process is listening on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	return l, nil
}

// inCooldown refuses a new gRPC connection whose source address was caught resetting
// streams (rapid reset) a moment ago.
func (s *Server) inCooldown(c net.Conn) bool {
	if !s.cool.blocked(sourceOf(c)) {
		return false
	}
	s.opt.Metrics.ConnectionsRefused.WithLabelValues("grpc", "cooldown").Inc()
	return true
}

// abusive is told of a gRPC connection caught resetting streams: its source goes into
// cooldown, and the event is counted and logged (throttled: an attacker makes many).
func (s *Server) abusive(c net.Conn) {
	d := s.cool.offend(sourceOf(c))
	s.opt.Metrics.ConnectionsRefused.WithLabelValues("grpc", "rapid_reset").Inc()
	if ok, held := s.abuseLog.Allow(s.opt.Now()); ok {
		s.opt.Logger.Warn("gRPC connection closed: rapid resets (streams reset before their request, CVE-2023-44487); its source is refused for a while",
			"remote", c.RemoteAddr().String(), "resets_per_second_over", RapidResetsPerSecond, "cooldown", d, "similar_suppressed", held)
	}
}

// watchedCreds is the gRPC port's transport credentials (TLS or none) with every
// connection's client frames followed for rapid resets once the handshake is done.
type watchedCreds struct {
	credentials.TransportCredentials
	s *Server
}

// ServerHandshake does the handshake of the wrapped credentials, then watches the
// connection.
func (c watchedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return conn, info, err
	}
	return &watchedConn{Conn: conn, w: newH2Watcher(c.s.opt.Now), onAbuse: c.s.abusive}, info, nil
}

// Clone keeps the watching.
func (c watchedCreds) Clone() credentials.TransportCredentials {
	return watchedCreds{TransportCredentials: c.TransportCredentials.Clone(), s: c.s}
}

// Serve serves until ctx is done, then drains in-flight calls and returns.
func (s *Server) Serve(ctx context.Context) error {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(rlspb.RateLimitService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	errc := make(chan error, 3)
	sweepDone := make(chan struct{})
	defer close(sweepDone)
	go s.sweepPlaces(sweepDone)
	go func() { errc <- s.grpc.Serve(s.grpcLn) }()
	go func() { errc <- s.serveHTTP(s.http, s.httpLn) }()
	if s.admin != nil {
		go func() { errc <- s.serveHTTP(s.admin, s.adminLn) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.Shutdown()
	return err
}

// Shutdown stops accepting calls, lets in-flight ones finish (up to DrainTimeout) and
// closes both listeners.
func (s *Server) Shutdown() {
	s.draining.Do(func() {
		s.drained.Store(true)
		s.health.Shutdown() // health checks now say NOT_SERVING so balancers move away
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(s.opt.DrainTimeout):
			s.opt.Logger.Warn("drain timeout; closing remaining calls", "timeout", s.opt.DrainTimeout)
			s.grpc.Stop()
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.opt.DrainTimeout)
		defer cancel()
		_ = s.http.Shutdown(ctx)
		if s.admin != nil {
			_ = s.admin.Shutdown(ctx)
		}
	})
}

func (s *Server) mux() *http.ServeMux {
	m := http.NewServeMux()
	m.Handle("GET /metrics", promhttp.HandlerFor(s.opt.Metrics.Registry, promhttp.HandlerOpts{}))
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	m.HandleFunc("GET /readyz", s.ready)
	m.HandleFunc("GET /healthcheck", s.healthcheck) // the reference service's path and meaning
	m.HandleFunc("GET /config", s.config)
	m.HandleFunc("POST /json", s.json)
	if s.opt.AdminAddr == "" {
		s.adminRoutes(m)
	}
	return m
}

// adminRoutes are the handlers that reveal internals: on AdminAddr when set, else on the
// HTTP port, where pprof is served only behind Options.PprofGuard.
func (s *Server) adminRoutes(m *http.ServeMux) {
	guard := func(h http.Handler) http.Handler { return h }
	if s.opt.AdminAddr == "" {
		guard = s.opt.PprofGuard
	}
	if !s.opt.DisablePprof && guard != nil {
		m.Handle("/debug/pprof/", guard(http.HandlerFunc(pprof.Index)))
		m.Handle("/debug/pprof/cmdline", guard(http.HandlerFunc(redactedCmdline)))
		m.Handle("/debug/pprof/profile", guard(http.HandlerFunc(pprof.Profile)))
		m.Handle("/debug/pprof/symbol", guard(http.HandlerFunc(pprof.Symbol)))
		m.Handle("/debug/pprof/trace", guard(http.HandlerFunc(pprof.Trace)))
	}
	for _, reg := range s.opt.Admin {
		reg(m)
	}
}

// redactedCmdline is pprof's /debug/pprof/cmdline without secrets (redact.Args): a
// --store URL on the command line must not be readable by whoever can reach the profiler.
func redactedCmdline(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, strings.Join(redact.Args(os.Args), "\x00"))
}

// ready answers 200 only when a config is loaded (and Options.Ready agrees) and the store
// answers a ping.
func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	if s.opt.Config != nil && s.opt.Config() == nil {
		http.Error(w, "not ready: no configuration loaded", http.StatusServiceUnavailable)
		return
	}
	if s.opt.Ready != nil {
		if err := s.opt.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opt.ReadyTimeout)
	defer cancel()
	if err := s.opt.Engine.Store().Ping(ctx); err != nil {
		http.Error(w, "not ready: store: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("OK\n"))
}

// healthcheck is the reference service's /healthcheck: 200 "OK" while every component it
// checks is healthy, else 500 with no body, as there. The components are the drain
// (SIGTERM), and, when Options.Health asks, a config with at least one domain and the
// store's ping. Readiness (config and store together) is /readyz.
func (s *Server) healthcheck(w http.ResponseWriter, r *http.Request) {
	ok := !s.drained.Load()
	if ok && s.opt.Health.NeedConfig {
		var set *config.Set
		if s.opt.Config != nil {
			set = s.opt.Config()
		}
		ok = set != nil && len(set.Domains()) > 0
	}
	if ok && s.opt.Health.PingStore {
		ctx, cancel := context.WithTimeout(r.Context(), s.opt.ReadyTimeout)
		ok = s.opt.Engine.Store().Ping(ctx) == nil
		cancel()
	}
	if !ok {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	w.Write([]byte("OK"))
}

func (s *Server) config(w http.ResponseWriter, r *http.Request) {
	var set *config.Set
	if s.opt.Config != nil {
		set = s.opt.Config()
	}
	if set == nil {
		http.Error(w, "no configuration loaded", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	eff := set.Effective()
	// The adaptive rules' factors are state, not configuration: added to a copy.
	if e, ok := eff.(*config.EffectiveConfig); ok && s.opt.Engine != nil {
		if rules := set.AdaptiveRules(); len(rules) > 0 {
			c := *e
			for _, r := range rules {
				c.Adaptive = append(c.Adaptive, config.AdaptiveInForce{Domain: r.Domain, Rule: r.Name, Path: r.Path, Factor: s.opt.Engine.AdaptiveFactor(r)})
			}
			eff = &c
		}
	}
	_ = enc.Encode(eff)
}

// json is the reference service's POST /json: a RateLimitRequest in protobuf JSON in, a
// RateLimitResponse out, 429 when over limit.
func (s *Server) json(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(s.opt.MaxRecvBytes)))
	if err != nil {
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			http.Error(w, "read body: "+err.Error(), http.StatusRequestEntityTooLarge)
		case os.IsTimeout(err):
			http.Error(w, "read body: timed out", http.StatusRequestTimeout)
		default:
			http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		}
		return
	}
	var req rlspb.RateLimitRequest
	if err := protojson.Unmarshal(body, &req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	// The body is read (bounded by the read timeout) before a place is taken, so a slow
	// sender holds an HTTP connection, never a place of the calls being decided.
	if !s.admit() {
		s.overload.json.Inc()
		http.Error(w, fmt.Sprintf("more than %d calls in flight", s.opt.MaxInFlight), http.StatusServiceUnavailable)
		return
	}
	defer s.release()
	resp, err := s.opt.Service.ShouldRateLimit(r.Context(), &req)
	if err != nil {
		code := http.StatusInternalServerError
		switch status.Code(err) {
		case codes.InvalidArgument:
			code = http.StatusBadRequest
		case codes.Unavailable, codes.ResourceExhausted:
			code = http.StatusServiceUnavailable
		}
		http.Error(w, status.Convert(err).Message(), code)
		return
	}
	out, err := protojson.Marshal(resp)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if resp.OverallCode == rlspb.RateLimitResponse_OVER_LIMIT {
		w.WriteHeader(http.StatusTooManyRequests)
	}
	w.Write(out)
}

// streamWorkers is how many goroutines grpc-go keeps to run calls. A call that finds a
// worker idle reuses its already-grown stack: with a fresh goroutine per call, stack growth
// (runtime.newstack/copystack) was 6% of the server's CPU on the Redis path, where a
// handler waits for a shared pipeline. Calls beyond the pool still get a goroutine each.
func streamWorkers() uint32 {
	return uint32(max(64, 32*runtime.GOMAXPROCS(0)))
}
