// Command halt-envoy is a rate-limit service for Envoy and Istio: Envoy's
// RateLimitService v3 on a gRPC port, metrics and health on an HTTP port.
//
// Usage:
//
//	halt-envoy [serve] [flags]          run the server
//	halt-envoy validate --config PATH [--store URL]
//	                                    check a config file or directory, print every error;
//	                                    with --store, check that the store answers in time
//	halt-envoy check --config DIR --domain D --descriptor k=v[,k=v]
//	                                    show which rule applies, without a server
//	halt-envoy simulate [--pattern P]   compare the algorithms on simulated traffic (SVG charts)
//	halt-envoy version                  print the version
//	halt-envoy probe [--url URL]        exit 0 when URL answers 200 (for HEALTHCHECK)
//
// Every flag can also be set through an environment variable HALT_<NAME>, e.g.
// HALT_STORE=redis://127.0.0.1:6379/0. A flag on the command line wins.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/adaptive/control"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/localfirst"
	"github.com/halt-envoy/halt-envoy/internal/lograte"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/redact"
	"github.com/halt-envoy/halt-envoy/internal/refenv"
	"github.com/halt-envoy/halt-envoy/internal/reload"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/server"
	"github.com/halt-envoy/halt-envoy/internal/storefit"
	"github.com/halt-envoy/halt-envoy/internal/tlsutil"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
	"github.com/halt-envoy/halt-envoy/pkg/backends/redis"
)

// maxSecretFileBytes bounds the files that hold one secret (--store-file,
// --admin-token-file, the reference's REDIS_AUTH_FILE): a mistaken path such as a device
// must not be read without end.
const maxSecretFileBytes = 64 << 10

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, args, stdout, stderr, getenv)
	case "validate":
		return validate(args, stdout, stderr, getenv)
	case "version":
		fmt.Fprintln(stdout, "halt-envoy", version)
		return 0
	case "probe":
		return probe(ctx, args, stdout, stderr)
	case "check":
		return check(args, stdout, stderr, getenv)
	case "simulate":
		return simulate(args, stdout, stderr)
	case "migrate":
		return migrate(ctx, args, stdout, stderr, getenv)
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "halt-envoy: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  halt-envoy [serve] [flags]          run the server (flags: halt-envoy serve -h)
  halt-envoy validate --config PATH [--authz-config FILE] [--store URL [--store-timeout D] [--envoy-timeout D]]
                                      check a config file or directory, print every error;
                                      with --authz-config, the ext_authz file too, against it;
                                      with --store, say whether the store answers in time
  halt-envoy check --config DIR --domain D --descriptor k=v[,k=v]
                                      which rule, algorithm, limits, plan, quota and penalty apply
  halt-envoy migrate --store URL      create or upgrade the PostgreSQL schema
  halt-envoy simulate [--pattern P]   compare the algorithms on simulated traffic: SVG charts and totals
  halt-envoy version                  print the version
  halt-envoy probe [--url URL]        exit 0 when URL answers 200 (container health checks: no shell needed)
`)
}

// envFlags fills every flag not given on the command line from HALT_<NAME> (dashes
// become underscores), so containers can be configured without a command line.
func envFlags(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		env := "HALT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(env); v != "" {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", env, err))
			}
		}
	})
	return errors.Join(errs...)
}

type serveFlags struct {
	config, grpcAddr, httpAddr, store, logLevel, logFormat string
	failureMode, headers, xNames                           string
	storeTimeout, envoyTimeout, drainTimeout, debounce     time.Duration
	maxInFlight                                            int
	gcPercent                                              int
	gogcSet                                                bool // GOGC is in the environment
	disablePprof                                           bool
	shadowMode, dynamicMetadata, stopIncrement             bool
	localFirstAnnounce                                     time.Duration
	regions                                                regionFlags
	regionOthers                                           []regionStore // regions.parse's, checked in serve
	authzConfig                                            string
	adaptivePrometheus                                     string
	adaptiveLag                                            time.Duration
	storeFile, adminAddr                                   string
	storePerSecond, keyPrefix                              string
	expiryJitter                                           time.Duration
	localCache                                             int64
	tlsCert, tlsKey, tlsClientCA, tlsMinVersion            string
	tlsClientSAN                                           string
	tlsReload                                              time.Duration
	tlsGRPCOnly                                            bool // TLS from GRPC_SERVER_USE_TLS: the gRPC port only
	saas                                                   saasFlags
	stats                                                  statsFlags
	trace                                                  traceFlags
	caps                                                   configCaps
	edge                                                   edgeFlags
	edgeGiven                                              map[string]bool // flags given, which win over the reference's variables

	// clockStart, from HALT_TEST_CLOCK_START only (no flag), starts the decision clock at
	// a fixed instant for the binary's own tests (see testClock).
	clockStart time.Time

	// Set from the reference service's variables only (see refenv.go).
	ref *refenv.Settings
	// notes are what the reference's variables did, logged once the logger exists.
	notes []string
}

func parseServe(args []string, stderr io.Writer, getenv func(string) string) (*serveFlags, error) {
	f := &serveFlags{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.config, "config", "config", "config file or directory (*.yaml, *.yml, recursively)")
	fs.StringVar(&f.grpcAddr, "grpc-addr", ":8081", "gRPC listen address (RateLimitService, health, reflection); unix:PATH for a unix socket")
	fs.StringVar(&f.httpAddr, "http-addr", ":8080", "HTTP listen address (/metrics, /healthz, /readyz, /healthcheck, /config, /json; /debug/pprof and /admin behind the admin token when there is no --admin-addr)")
	fs.StringVar(&f.store, "store", "memory://", "store URL: memory://, redis://, rediss://, redis+sentinel://, redis+cluster://, postgres://, memcached://, mongodb://, dynamodb://")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&f.failureMode, "failure-mode", "allow", "when the store fails and a rule sets none: allow (fail open), deny (OVER_LIMIT) or error (UNAVAILABLE)")
	fs.StringVar(&f.headers, "headers", "none", "rate-limit response headers: none, ietf, x-ratelimit or ietf,x-ratelimit")
	fs.StringVar(&f.xNames, "x-ratelimit-names", "", "names of the x-ratelimit family's three headers, LIMIT,REMAINING,RESET (default X-RateLimit-Limit,X-RateLimit-Remaining,X-RateLimit-Reset)")
	fs.DurationVar(&f.storeTimeout, "store-timeout", 0, storeTimeoutHelp)
	fs.DurationVar(&f.envoyTimeout, "envoy-timeout", storefit.DefaultEnvoyTimeout, envoyTimeoutHelp)
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 10*time.Second, "how long SIGTERM waits for in-flight calls")
	fs.DurationVar(&f.debounce, "reload-debounce", 300*time.Millisecond, "quiet time after a config change before reloading")
	fs.IntVar(&f.maxInFlight, "max-in-flight", 4096, "calls served at once; beyond it RESOURCE_EXHAUSTED")
	fs.IntVar(&f.gcPercent, "gc-percent", 0, "garbage collector target (as GOGC); 0 = GOGC when set, else 400 with a network store and Go's 100 with memory://")
	fs.BoolVar(&f.disablePprof, "disable-pprof", false, "do not serve /debug/pprof (served on --admin-addr, or on the HTTP port behind the admin token)")
	fs.BoolVar(&f.shadowMode, "shadow-mode", false, "global shadow mode (the reference's SHADOW_MODE): every call is answered OK; descriptors are still decided, counted and reported over limit")
	fs.DurationVar(&f.localFirstAnnounce, "local-first-announce", localfirst.DefaultAnnounceEvery, "how often this replica announces itself in the store to the others (local_first limits count the replicas so): a new replica decides exactly for two of these, a stopped one is counted for two")
	f.regions.register(fs)
	fs.BoolVar(&f.stopIncrement, "stop-increment-over-limit", false, "a call its rate limits refuse is not charged to the limits that would have let it through: they are read first, one more store round for calls with several (the reference's STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT)")
	fs.BoolVar(&f.dynamicMetadata, "response-dynamic-metadata", false, "return the reference's dynamic metadata in every RateLimitResponse (RESPONSE_DYNAMIC_METADATA): the call's descriptors, quota_mode violations, the matched rules' metadata")
	fs.StringVar(&f.authzConfig, "authz-config", "", "ext_authz config file: serve envoy.service.auth.v3.Authorization on the gRPC port")
	fs.StringVar(&f.adaptivePrometheus, "adaptive-prometheus", "", "Prometheus base URL (http://prometheus:9090) that adaptive rules' signals are queried from; without it an adaptive rule applies its configured limits")
	fs.DurationVar(&f.adaptiveLag, "adaptive-lag", control.DefaultLag, "how far behind now the last instant of an adaptive rule's signal is judged: long enough for Prometheus to have scraped it on every replica alike")
	fs.DurationVar(&f.expiryJitter, "store-expiry-jitter", 0, "up to this much random extra expiry on every key the store expires, so keys written together do not expire together (the reference's EXPIRATION_JITTER_MAX_SECONDS)")
	fs.Int64Var(&f.localCache, "store-local-cache", 0, "bytes of a local over-limit cache in front of memcached, PostgreSQL, MongoDB or DynamoDB: fixed-window and calendar keys with nothing left are answered here until their window ends (the reference's LOCAL_CACHE_SIZE_IN_BYTES); 0: none. Redis keeps its own (local_cache in its URL)")
	fs.StringVar(&f.keyPrefix, "store-key-prefix", "", "prefix of every store key, so that deployments sharing one store keep their counters apart (the reference's CACHE_KEY_PREFIX); the per-second store's too")
	fs.StringVar(&f.storePerSecond, "store-per-second", "", "a second store for the limits of one second (the reference's REDIS_PERSECOND): every other op stays in --store")
	fs.StringVar(&f.storeFile, "store-file", "", "read the store URL from this file (a mounted secret); excludes --store")
	fs.StringVar(&f.adminAddr, "admin-addr", "", "serve /debug/pprof and /admin on this address (e.g. 127.0.0.1:9090) instead of the HTTP port (where pprof needs the admin token)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate chain: serve gRPC and HTTP over TLS (reloaded when the file changes)")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM private key for --tls-cert")
	fs.StringVar(&f.tlsClientCA, "tls-client-ca", "", "PEM CA bundle: require client certificates signed by it (mutual TLS)")
	fs.StringVar(&f.tlsClientSAN, "tls-client-san", "", "with --tls-client-ca: the client certificate must hold this DNS or IP name (the reference's GRPC_CLIENT_TLS_SAN)")
	fs.StringVar(&f.tlsMinVersion, "tls-min-version", "1.2", "minimum TLS version: 1.2 or 1.3")
	fs.DurationVar(&f.tlsReload, "tls-reload-interval", tlsutil.DefaultInterval, "how often the TLS files are checked for changes")
	f.saas.register(fs)
	f.stats.register(fs)
	f.caps.register(fs, true)
	f.edge.register(fs)
	f.trace.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	f.gogcSet = getenv("GOGC") != ""
	if v := getenv(testClockEnv); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return nil, fmt.Errorf("%s: want an RFC 3339 time (2030-01-15T10:05:00Z), got %q", testClockEnv, v)
		}
		f.clockStart = t
	}
	given := givenFlags(fs, getenv)
	f.edgeGiven = given
	storeSet := given["store"]
	if err := envFlags(fs, getenv); err != nil {
		return nil, err
	}
	if err := f.applyReference(given, getenv); err != nil {
		return nil, err
	}
	if f.gcPercent < 0 {
		return nil, fmt.Errorf("gc-percent must be 0 (automatic) or positive, got %d", f.gcPercent)
	}
	if f.storeFile != "" {
		if storeSet {
			return nil, errors.New("--store and --store-file exclude each other")
		}
		b, err := reload.ReadFile(f.storeFile, maxSecretFileBytes, "")
		if err != nil {
			return nil, fmt.Errorf("store-file: %w", err)
		}
		f.store = strings.TrimSpace(string(b))
	}
	return f, nil
}

// newLogger returns the process's logger. Every line goes through redact.Handler: store
// URLs' secrets and the given secret values are masked whatever code logs them.
func newLogger(w io.Writer, level, format string, secrets ...string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	switch format {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("log format %q: want text or json", format)
	}
	return slog.New(redact.NewHandler(h, secrets...)), nil
}

func parseHeaders(s, xNames string) (headers.Families, error) {
	h, err := headers.Parse(strings.Split(s, ",")...)
	if err != nil {
		return h, fmt.Errorf("headers: %w", err)
	}
	if xNames != "" {
		if h.XNames, err = headers.ParseXNames(xNames); err != nil {
			return h, fmt.Errorf("x-ratelimit-names: %w", err)
		}
	}
	return h, nil
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	f, err := parseServe(args, stderr, getenv)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "halt-envoy:", err)
		return 2
	}
	// The store URL's secrets and the admin token are masked in every log line, even
	// where a driver quotes one without its URL. A token file that cannot be read is
	// reported when the admin API starts.
	tok, _ := f.saas.token()
	log, err := newLogger(stderr, f.logLevel, f.logFormat, append(append(backends.URLSecrets(f.store), backends.URLSecrets(f.storePerSecond)...), append(f.regions.secrets(), tok)...)...)
	if err != nil {
		fmt.Fprintln(stderr, "halt-envoy:", err)
		return 2
	}
	for _, n := range f.notes {
		log.Warn("reference settings: " + n)
	}
	fams, err := parseHeaders(f.headers, f.xNames)
	if err != nil {
		fmt.Fprintln(stderr, "halt-envoy:", err)
		return 2
	}
	if f.localFirstAnnounce < 100*time.Millisecond {
		fmt.Fprintf(stderr, "halt-envoy: --local-first-announce %s: must be at least 100ms (each replica writes to the store once per period)\n", f.localFirstAnnounce)
		return 2
	}
	if f.regionOthers, err = f.regions.parse(); err != nil {
		fmt.Fprintln(stderr, "halt-envoy:", err)
		return 2
	}
	if err := runServer(ctx, f, fams, log); err != nil {
		log.Error("halt-envoy stopped", "err", err)
		return 1
	}
	return 0
}

func runServer(ctx context.Context, f *serveFlags, fams headers.Families, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var m *metrics.Metrics
	var memStore *memory.Store
	m = metrics.New(func() metrics.MemoryStore {
		if memStore != nil {
			return memStore
		}
		return nil
	})

	// go-redis logs failed dials itself, as raw text on stderr, one line each: route them
	// through slog, each kind at most once per lograte.DefaultInterval.
	redis.RouteDriverLogs(log, lograte.DefaultInterval)
	storeOpt := backends.Options{Timeout: f.storeTimeout, Logger: log, KeyPrefix: f.keyPrefix, ExpiryJitter: f.expiryJitter}
	store, err := all.Open(ctx, f.store, storeOpt)
	if err != nil {
		return fmt.Errorf("open store: %w", backends.Redact(err))
	}
	defer store.Close()
	ownStore := store // the regions replicated into it are read here, past any cache
	checkStoreFit(ctx, f.store, storeOpt, f.envoyTimeout, store, log)
	switch s := store.(type) {
	case *memory.Store:
		memStore = s
	case *memory.Persistent: // memory://?snapshot=PATH: written every interval, and by store.Close below
		memStore = s.Store
	}
	storeName := storeKind(f.store)
	if ev, ok := store.(interface{ ServerEvictions() uint64 }); ok {
		m.WatchStoreEvictions(storeName, ev.ServerEvictions)
	}
	if f.localCache < 0 {
		return fmt.Errorf("--store-local-cache %d: want 0 (none) or a number of bytes", f.localCache)
	}
	store = localCached(store, storeName, f.localCache, log)
	if f.storePerSecond != "" {
		// One-second limits go to a store of their own; each op stays atomic in its store.
		second, err := all.Open(ctx, f.storePerSecond, storeOpt)
		if err != nil {
			return fmt.Errorf("open per-second store: %w", backends.Redact(err))
		}
		defer second.Close()
		checkStoreFit(ctx, f.storePerSecond, storeOpt, f.envoyTimeout, second, log)
		store = &backends.PerSecond{Main: store, Second: localCached(second, storeKind(f.storePerSecond), f.localCache, log)}
	}
	if gc := gcPercent(f, memStore != nil); gc != 0 {
		debug.SetGCPercent(gc)
		log.Debug("garbage collector target set", "gc_percent", gc)
	}

	watcher, ready, err := startConfig(ctx, f, m, log)
	if err != nil {
		return err
	}
	defer watcher.Close()

	tr, err := f.trace.build(ctx, storeName, log)
	if err != nil {
		return err
	}
	observers, stopTracing, err := f.saas.observers(m, tr.tp, log)
	if err != nil {
		return err
	}
	defer func() {
		// The last spans leave, but a collector that is away does not hold the exit.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = stopTracing(sctx)
	}()
	st, err := f.stats.build(m, log)
	if err != nil {
		return err
	}
	observers = append(observers, st.observer)
	// The stats outputs outlive the drain, so that the last calls' counts are sent.
	statsCtx, stopStats := context.WithCancel(context.WithoutCancel(ctx))
	var statsDone sync.WaitGroup
	for _, run := range st.run {
		statsDone.Go(func() { run(statsCtx) })
	}
	defer func() {
		stopStats()
		waitBounded(&statsDone, 5*time.Second)
	}()
	var clock engine.Clock = engine.SystemClock{}
	if !f.clockStart.IsZero() {
		clock = testClock{start: f.clockStart, since: time.Now()}
		log.Warn(testClockEnv+" is set: decisions run on a clock started at that instant (a test setting; never set it in production)", "start", f.clockStart)
	}
	factors, err := startAdaptive(ctx, f.adaptivePrometheus, f.adaptiveLag, watcher.Current, log, m)
	if err != nil {
		return err
	}
	regions, closeRegions, err := f.regions.open(ctx, f.regionOthers, ownStore, f.store, storeOpt, clock.Now, m, log)
	if err != nil {
		return err
	}
	defer closeRegions() // after eng.Close below, which stops the reads
	eng, err := engine.New(engine.Config{
		Regions:     regions,
		Adaptive:    factors,
		Clock:       clock,
		Observers:   observers,
		Store:       tr.store(store),
		StoreName:   storeName,
		Rules:       watcher.Current,
		Metrics:     m,
		Logger:      log,
		FailureMode: config.FailureMode(f.failureMode),
		ShadowMode:  f.shadowMode,

		StopIncrementOverLimit: f.stopIncrement,
		LocalFirstAnnounce:     f.localFirstAnnounce,
	})
	if err != nil {
		return err
	}
	defer func() {
		// After the drain (SIGTERM): local-first limits send the hits they admitted and
		// have not sent yet, before the store closes (deferred earlier, so later).
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := eng.Close(fctx); err != nil {
			log.Warn("local-first: sending the last unsynced hits failed", "err", err)
		}
	}()
	ext, err := startAuthz(ctx, f.authzConfig, f.caps.authz(), f.debounce, eng, watcher, log, m)
	if err != nil {
		return fmt.Errorf("load authz config: %w", err)
	}
	defer ext.close()
	adminRoutes, pprofGuard, err := f.saas.adminRoutes(eng, ext.abuse(), log)
	if err != nil {
		return err
	}
	var tlsCfg *tls.Config
	if f.tlsCert != "" || f.tlsKey != "" || f.tlsClientCA != "" {
		minVersion, err := tlsutil.ParseVersion(f.tlsMinVersion)
		if err != nil {
			return err
		}
		reloader, err := tlsutil.New(tlsutil.Config{
			CertFile: f.tlsCert, KeyFile: f.tlsKey, ClientCAFile: f.tlsClientCA, ClientSAN: f.tlsClientSAN,
			MinVersion: minVersion, Interval: f.tlsReload, Logger: log,
		})
		if err != nil {
			return err
		}
		go reloader.Run(ctx)
		tlsCfg = reloader.ServerConfig("h2", "http/1.1")
	}
	var rlsOptions []rlsv3.Option
	if f.dynamicMetadata {
		rlsOptions = append(rlsOptions, rlsv3.DynamicMetadata())
	}
	if f.shadowMode {
		log.Warn("global shadow mode: every call is answered OK, whatever its limits say (--shadow-mode or SHADOW_MODE)")
	}
	var health server.Health
	var maxAge, maxAgeGrace time.Duration
	maxStreams := uint32(min(f.edge.grpcMaxStreams, 1<<32-1))
	if r := f.ref; r != nil {
		health = server.Health{NeedConfig: r.HealthNeedsConfig, PingStore: r.HealthPingsStore}
		maxAge, maxAgeGrace = r.MaxConnectionAge, r.MaxConnectionAgeGrace
		if r.MaxConcurrentStreams > 0 && !f.edgeGiven["grpc-max-streams"] {
			maxStreams = r.MaxConcurrentStreams
		}
	}
	nofile := raiseFileLimit(log)
	grpcConns, httpConns := f.edge.connCaps(nofile)
	log.Info("connection bounds", "file_descriptors", nofile, "grpc_max_conns", grpcConns, "http_max_conns", httpConns,
		"grpc_max_streams", maxStreams, "max_in_flight", f.maxInFlight, "http_read_timeout", f.edge.httpReadTimeout,
		"http_write_timeout", f.edge.httpWriteTimeout, "http_idle_timeout", f.edge.httpIdleTime)
	srv, err := server.New(server.Options{
		TLSGRPCOnly:           f.tlsGRPCOnly,
		Health:                health,
		Interceptors:          append(tr.interceptor, st.interceptors...),
		Ready:                 ready,
		MaxConnectionAge:      maxAge,
		MaxConnectionAgeGrace: maxAgeGrace,
		MaxConcurrentStreams:  maxStreams,
		GRPCMaxConns:          grpcConns,
		HTTPMaxConns:          httpConns,
		HTTPReadTimeout:       f.edge.httpReadTimeout,
		HTTPWriteTimeout:      f.edge.httpWriteTimeout,
		HTTPIdleTimeout:       f.edge.httpIdleTime,
		GRPCAddr:              f.grpcAddr,
		HTTPAddr:              f.httpAddr,
		Engine:                eng,
		Service:               rlsv3.NewService(eng, fams, rlsOptions...),
		Metrics:               m,
		Config:                watcher.Current,
		Register:              ext.registrations(),
		Logger:                log,
		MaxInFlight:           f.maxInFlight,
		DrainTimeout:          f.drainTimeout,
		DisablePprof:          f.disablePprof,
		PprofGuard:            pprofGuard,
		TLS:                   tlsCfg,
		AdminAddr:             f.adminAddr,
		Admin:                 adminRoutes,
	})
	if err != nil {
		return err
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP: reloading config", "path", f.config)
				watcher.Reload()
				ext.reload()
			}
		}
	}()

	pprofAt := "off (--disable-pprof)"
	switch {
	case f.disablePprof:
	case f.adminAddr != "":
		pprofAt = "admin port"
	case pprofGuard != nil:
		pprofAt = "http port, behind the admin token"
	default:
		pprofAt = "off: set --admin-addr, or an admin token to serve it on the http port"
	}
	log.Info("halt-envoy serving", "version", version, "pprof", pprofAt, "grpc", srv.GRPCAddr().String(), "http", srv.HTTPAddr().String(), "admin", srv.AdminAddr(), "tls", tlsCfg != nil, "store", storeName, "config", f.config, "xds", f.ref != nil && f.ref.XDS != nil)
	err = srv.Serve(ctx)
	log.Info("halt-envoy drained; exiting")
	return err
}

// waitBounded waits for wg, at most d: a stats output that cannot reach its server
// must not hold the process after the drain.
func waitBounded(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// storeKind is the scheme of a store URL: a metric label that never holds a password.
// localCached puts a local over-limit cache of size bytes in front of st, a store of
// kind, when it is a network store without one of its own: Redis keeps its own (exact,
// it knows each key's time), and the memory store is local already.
func localCached(st backends.Store, kind string, size int64, log *slog.Logger) backends.Store {
	if size <= 0 {
		return st
	}
	if kind == "memory" || strings.HasPrefix(kind, "redis") {
		log.Info("local over-limit cache not added: the store answers locally itself", "store", kind, "bytes", size)
		return st
	}
	log.Info("local over-limit cache in front of the store", "store", kind, "bytes", size)
	return backends.NewLocalCache(st, size)
}

func storeKind(raw string) string {
	if i := strings.Index(raw, "://"); i > 0 {
		return raw[:i]
	}
	return "memory"
}

func validate(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "config", "config file or directory")
	authzPath := fs.String("authz-config", "", "ext_authz config file to check too, against the config (as serve loads it)")
	var stores storeList
	fs.Var(&stores, "store", "a store URL to check too (repeatable): does its timeout fit Envoy's, does its round trip fit its timeout")
	storeTimeout := fs.Duration("store-timeout", 0, storeTimeoutHelp)
	envoyTimeout := fs.Duration("envoy-timeout", storefit.DefaultEnvoyTimeout, envoyTimeoutHelp)
	var caps configCaps
	caps.register(fs, true)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := envFlags(fs, getenv); err != nil {
		fmt.Fprintln(stderr, "halt-envoy:", err)
		return 2
	}
	set, ok := loadSet(*path, caps.options(), stderr)
	if !ok {
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (%d domain(s): %s)\n", *path, len(set.Domains()), strings.Join(set.Domains(), ", "))
	if *authzPath != "" {
		ac, err := caps.authz().LoadConfig(*authzPath)
		if err == nil {
			err = ac.Resolve(set)
		}
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s: ok\n", *authzPath)
	}
	if !validateStores(context.Background(), stores, *storeTimeout, *envoyTimeout, stdout, stderr) {
		return 1
	}
	return 0
}

// probe is the container health check: distroless images have no shell or curl.
func probe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:8080/healthz", "URL that must answer 200")
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for the answer")
	caFile := fs.String("ca", "", "PEM CA to verify an https:// URL with (default: system roots)")
	certFile := fs.String("cert", "", "PEM client certificate, for a server run with --tls-client-ca")
	keyFile := fs.String("key", "", "PEM key of --cert")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		fmt.Fprintln(stderr, "probe:", err)
		return 2
	}
	client := http.DefaultClient
	if *caFile != "" || *certFile != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if *caFile != "" {
			pem, err := os.ReadFile(*caFile)
			if err != nil {
				fmt.Fprintln(stderr, "probe:", err)
				return 2
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				fmt.Fprintf(stderr, "probe: %s holds no PEM certificate\n", *caFile)
				return 2
			}
		}
		if *certFile != "" {
			c, err := tls.LoadX509KeyPair(*certFile, *keyFile)
			if err != nil {
				fmt.Fprintln(stderr, "probe:", err)
				return 2
			}
			tc.Certificates = []tls.Certificate{c}
		}
		client = &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "probe:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "probe: %s answered %s\n", *url, resp.Status)
		return 1
	}
	fmt.Fprintln(stdout, "ok")
	return 0
}

// networkGCPercent is the collector target used with a network store. Such a store keeps
// almost nothing live between calls, so at Go's default of 100 the collector ran every
// few megabytes of request garbage: on the Redis path at ~30k calls/s that was 4-5 µs of
// a 25-30 µs call (halt-bench, docs/benchmarks.md), for a heap that stays a few tens of MB.
const networkGCPercent = 400

// gcPercent is the collector target to set, or 0 to leave the runtime's. The in-memory
// store keeps its counters on the heap (hundreds of MB at its key bound), so it keeps Go's
// default rather than let the heap grow to five times the counters.
func gcPercent(f *serveFlags, inHeapStore bool) int {
	switch {
	case f.gcPercent != 0:
		return f.gcPercent
	case f.gogcSet || inHeapStore:
		return 0
	}
	return networkGCPercent
}

// testClockEnv names the variable that starts the decision clock at a fixed instant. It
// exists for the binary's own tests: a call sequence against a calendar window (an hour,
// a month) must not straddle the window's edge, which the wall clock cannot promise.
const testClockEnv = "HALT_TEST_CLOCK_START"

// testClock runs from start at the pace of the wall clock (monotonic), so timeouts and
// refills behave as in production while the calendar position is the test's choice.
type testClock struct{ start, since time.Time }

// Now is start plus the time elapsed since the clock was made.
func (c testClock) Now() time.Time { return c.start.Add(time.Since(c.since)) }
