package refenv

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func noFiles(string) ([]byte, error) { return nil, errors.New("no file in this test") }

// base is the smallest environment a Redis deployment of the reference has.
func base(extra ...string) map[string]string {
	env := map[string]string{"REDIS_SOCKET_TYPE": "tcp", "REDIS_URL": "127.0.0.1:6379", "USE_STATSD": "false"}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

func mustRead(t *testing.T, env map[string]string) *Settings {
	t.Helper()
	s, err := Read(env, noFiles)
	if err != nil {
		t.Fatalf("Read(%v): %v", env, err)
	}
	return s
}

func mustFail(t *testing.T, env map[string]string, want ...string) {
	t.Helper()
	_, err := Read(env, noFiles)
	if err == nil {
		t.Fatalf("Read(%v): no error, want one naming %q", env, want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("Read(%v): error %q does not say %q", env, err, w)
		}
	}
}

// defaultUnsupported are the rows whose reference default halt cannot honour: unset,
// halt does its own thing, as their notes say (none at present).
var defaultUnsupported = map[string]bool{}

// TestTable checks the table itself: unique names, every default parses as its kind
// (as envconfig would), every NotYet row says what it means, and no row of another status
// carries an Unsupported test.
func TestTable(t *testing.T) {
	seen := map[string]bool{}
	for _, v := range Vars() {
		if seen[v.Name] {
			t.Errorf("%s listed twice", v.Name)
		}
		seen[v.Name] = true
		if v.Default != "" {
			if err := parse(v.Kind, v.Default); err != nil {
				t.Errorf("%s: default %q does not parse: %v", v.Name, v.Default, err)
			}
		}
		if v.Note == "" {
			t.Errorf("%s: no note", v.Name)
		}
		if v.Status != NotYet && v.Unsupported != nil {
			t.Errorf("%s: Unsupported set on a %s row", v.Name, v.Status)
		}
		if v.Status == NotYet && v.Unsupported != nil && v.Unsupported(v.Default) && !defaultUnsupported[v.Name] {
			t.Errorf("%s: its default %q counts as unsupported: leaving it unset would be no different from setting it", v.Name, v.Default)
		}
	}
}

func TestInactive(t *testing.T) {
	for _, env := range []map[string]string{
		{},
		{"PATH": "/bin", "HALT_STORE": "memory://"},
		{"PORT": "8080", "LOG_LEVEL": "debug", "HOST": "h", "LOG_FORMAT": "json", "REDIS_ADDR": "x"},
	} {
		s := mustRead(t, env)
		if s.Active || s.Store != "" || s.GRPCAddr != "" || s.ConfigDir != "" || s.XDS != nil {
			t.Errorf("Read(%v) = %+v, want inactive and empty", env, s)
		}
	}
	s := mustRead(t, map[string]string{"PORT": "1", "LOG_LEVEL": "x"})
	if !reflect.DeepEqual(s.Ignored, []string{"LOG_LEVEL", "PORT"}) {
		t.Errorf("Ignored = %v", s.Ignored)
	}
}

func TestDefaults(t *testing.T) {
	s := mustRead(t, base())
	want := &Settings{
		Active:                true,
		Set:                   []string{"REDIS_SOCKET_TYPE", "REDIS_URL", "USE_STATSD"},
		GRPCAddr:              "0.0.0.0:8081",
		HTTPAddr:              "0.0.0.0:8080",
		AdminAddr:             "0.0.0.0:6070",
		LogLevel:              "warn",
		LogFormat:             "text",
		Store:                 "redis://127.0.0.1:6379?pool_size=10",
		StoreFrom:             []string{"BACKEND_TYPE", "REDIS_SOCKET_TYPE", "REDIS_TYPE", "REDIS_URL"},
		ConfigDir:             "/srv/runtime_data/current/config",
		ExpiryJitter:          5 * time.Minute, // EXPIRATION_JITTER_MAX_SECONDS's default
		MaxConnectionAge:      24 * time.Hour,
		MaxConnectionAgeGrace: time.Hour,
		Stats: Stats{Addr: "localhost:8125", Protocol: "tcp", FlushInterval: 10 * time.Second,
			PrometheusAddr: ":9090", PrometheusPath: "/metrics", NearLimitRatio: 0.8},
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("Read(base) =\n%+v\nwant\n%+v", s, want)
	}
}

func TestListenersAndLogs(t *testing.T) {
	s := mustRead(t, base("HOST", "127.0.0.1", "PORT", "9000", "GRPC_HOST", "::1", "GRPC_PORT", "0x2329",
		"DEBUG_HOST", "127.0.0.2", "DEBUG_PORT", "7000", "GRPC_MAX_CONNECTION_AGE", "5m", "GRPC_MAX_CONNECTION_AGE_GRACE", "7s",
		"GRPC_MAX_CONCURRENT_STREAMS", "100", "LOG_FORMAT", "json", "LOG_LEVEL", "Debug"))
	if s.HTTPAddr != "127.0.0.1:9000" || s.GRPCAddr != "[::1]:9001" || s.AdminAddr != "127.0.0.2:7000" {
		t.Errorf("addresses %q %q %q", s.HTTPAddr, s.GRPCAddr, s.AdminAddr)
	}
	if s.MaxConnectionAge != 5*time.Minute || s.MaxConnectionAgeGrace != 7*time.Second || s.MaxConcurrentStreams != 100 {
		t.Errorf("keepalive %v %v %d", s.MaxConnectionAge, s.MaxConnectionAgeGrace, s.MaxConcurrentStreams)
	}
	if s.LogFormat != "json" || s.LogLevel != "debug" {
		t.Errorf("log %q %q", s.LogLevel, s.LogFormat)
	}
	for in, want := range map[string]string{"trace": "debug", "DEBUG": "debug", "info": "info", "WARN": "warn", "warning": "warn", "error": "error", "fatal": "error", "panic": "error"} {
		if got := mustRead(t, base("LOG_LEVEL", in)).LogLevel; got != want {
			t.Errorf("LOG_LEVEL=%s -> %s, want %s", in, got, want)
		}
	}
	mustFail(t, base("LOG_LEVEL", "loud"), "LOG_LEVEL")
	mustFail(t, base("LOG_FORMAT", "logfmt"), "LOG_FORMAT")
	mustFail(t, base("PORT", "70000"), "PORT")
	mustFail(t, base("GRPC_PORT", "-1"), "GRPC_PORT")
	mustFail(t, base("GRPC_MAX_CONNECTION_AGE", "0s"), "GRPC_MAX_CONNECTION_AGE")
	mustFail(t, base("GRPC_MAX_CONCURRENT_STREAMS", "-3"), "GRPC_MAX_CONCURRENT_STREAMS")
}

// TestParseErrors: every typed variable given a value the reference's envconfig would
// not parse (it would panic at startup) is an error naming it; so is an empty value.
func TestParseErrors(t *testing.T) {
	for _, v := range Vars() {
		if v.Kind == String || v.Kind == List {
			continue
		}
		mustFail(t, base(v.Name, "not-a-value"), v.Name)
		if v.Kind != Map {
			mustFail(t, base(v.Name, ""), v.Name)
		}
	}
}

// TestNotYet: every variable halt cannot honour yet stops startup, naming itself and
// saying so, as soon as it holds a value that would change the reference's behaviour,
// and does not when it holds the harmless value.
func TestNotYet(t *testing.T) {
	candidates := map[Kind][]string{
		Bool: {"true"}, Int: {"5"}, Float: {"0.5"}, Duration: {"5s"},
		String: {"x", "unix", "ERROR"}, List: {"a,b"}, Map: {"a:b"},
	}
	n := 0
	for _, v := range Vars() {
		if v.Status != NotYet {
			continue
		}
		n++
		failed := false
		for _, c := range candidates[v.Kind] {
			if v.Unsupported != nil && !v.Unsupported(c) {
				continue
			}
			mustFail(t, base(v.Name, c), v.Name+"=", "not supported by halt yet")
			failed = true
		}
		if !failed {
			t.Errorf("%s: no candidate value is refused", v.Name)
		}
		if v.Default != "" || v.Kind == String {
			env := base(v.Name, v.Default)
			if defaultUnsupported[v.Name] {
				continue // covered by TestRedis and TestStatsdWarning
			}
			if _, err := Read(env, noFiles); err != nil {
				t.Errorf("%s=%q (the default) refused: %v", v.Name, v.Default, err)
			}
		}
	}
	if n == 0 {
		t.Fatal("no NotYet rows")
	}
	// Several at once: all reported together.
	mustFail(t, base("QUOTA_MODE", "true", "REDIS_POOL_ON_EMPTY_BEHAVIOR", "ERROR"), "QUOTA_MODE", "REDIS_POOL_ON_EMPTY_BEHAVIOR")
}

func TestRedis(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{base("REDIS_POOL_SIZE", "32", "REDIS_AUTH", "s3cret"), "redis://:s3cret@127.0.0.1:6379?pool_size=32"},
		{base("REDIS_AUTH", "user:p@ss"), "redis://user:p%40ss@127.0.0.1:6379?pool_size=10"},
		{base("REDIS_TYPE", "CLUSTER", "REDIS_URL", "a:1, b:2,c:3"), "redis+cluster://a:1,b:2,c:3?pool_size=10"},
		{base("REDIS_TYPE", "sentinel", "REDIS_URL", "mymaster,s1:26379,s2:26379", "REDIS_SENTINEL_AUTH", "sp"),
			"redis+sentinel://s1:26379,s2:26379?master=mymaster&pool_size=10&sentinel_password=sp"},
		{base("REDIS_TLS", "true", "REDIS_TLS_CACERT", "/ca.pem", "REDIS_TLS_CLIENT_CERT", "/c.pem", "REDIS_TLS_CLIENT_KEY", "/k.pem"),
			"rediss://127.0.0.1:6379?pool_size=10&tls_ca=%2Fca.pem&tls_cert=%2Fc.pem&tls_key=%2Fk.pem"},
		{base("REDIS_TIMEOUT", "250ms"), "redis://127.0.0.1:6379?pool_size=10&timeout=250ms"},
		{base("REDIS_PERSECOND_URL", "x:1", "REDIS_PERSECOND_POOL_SIZE", "3"), "redis://127.0.0.1:6379?pool_size=10"},
	} {
		s := mustRead(t, c.env)
		if s.Store != c.want {
			t.Errorf("Read(%v).Store = %s, want %s", c.env, s.Store, c.want)
		}
	}
	if s := mustRead(t, base("REDIS_TIMEOUT", "2s")); s.StoreTimeout != 2*time.Second {
		t.Errorf("StoreTimeout %v", s.StoreTimeout)
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("filepass\n"), 0o600)
	s, err := Read(base("REDIS_AUTH_FILE", pw), os.ReadFile)
	if err != nil || s.Store != "redis://:filepass@127.0.0.1:6379?pool_size=10" {
		t.Errorf("REDIS_AUTH_FILE: %v %v", s, err)
	}
	if _, err := Read(base("REDIS_AUTH_FILE", filepath.Join(dir, "missing")), os.ReadFile); err == nil || !strings.Contains(err.Error(), "REDIS_AUTH_FILE") {
		t.Errorf("missing REDIS_AUTH_FILE: %v", err)
	}
	mustFail(t, base("REDIS_AUTH", "a", "REDIS_AUTH_FILE", pw), "REDIS_AUTH and REDIS_AUTH_FILE")
	// The reference's defaults: a unix socket (twemproxy's path).
	if s := mustRead(t, map[string]string{"USE_STATSD": "false"}); s.Store != "redis+unix:///var/run/nutcracker/ratelimit.sock?pool_size=10" {
		t.Errorf("the reference's default store: %s", s.Store)
	}
	if s := mustRead(t, base("REDIS_SOCKET_TYPE", "unix", "REDIS_URL", "/run/redis.sock", "REDIS_AUTH", "pw", "REDIS_TIMEOUT", "1s")); s.Store != "redis+unix://:pw@/run/redis.sock?pool_size=10&timeout=1s" {
		t.Errorf("unix socket store: %s", s.Store)
	}
	mustFail(t, base("REDIS_SOCKET_TYPE", "unix"), "REDIS_URL", "socket's absolute path")
	mustFail(t, base("REDIS_SOCKET_TYPE", "unix", "REDIS_URL", "/s.sock", "REDIS_TYPE", "cluster"), "REDIS_SOCKET_TYPE=unix with REDIS_TYPE=cluster")
	mustFail(t, base("REDIS_SOCKET_TYPE", "unix", "REDIS_URL", "/s.sock", "REDIS_TLS", "true"), "not reached over TLS")
	mustFail(t, base("REDIS_SOCKET_TYPE", "udp"), "REDIS_SOCKET_TYPE", "tcp or unix")
	// TLS to Sentinel and Cluster; the name check skipped, the chain not.
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{base("REDIS_TYPE", "cluster", "REDIS_TLS", "true", "REDIS_URL", "a:1,b:2", "REDIS_TLS_CACERT", "/ca.pem"), "rediss+cluster://a:1,b:2?pool_size=10&tls_ca=%2Fca.pem"},
		{base("REDIS_TYPE", "sentinel", "REDIS_TLS", "true", "REDIS_URL", "m,s:1"), "rediss+sentinel://s:1?master=m&pool_size=10"},
		{base("REDIS_TLS", "true", "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "true"), "rediss://127.0.0.1:6379?pool_size=10&tls_skip_hostname_verification=true"},
	} {
		if s := mustRead(t, c.env); s.Store != c.want {
			t.Errorf("Read(%v).Store = %s, want %s", c.env, s.Store, c.want)
		}
	}
	mustFail(t, base("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "true"), "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION is set but REDIS_TLS is false")
	mustFail(t, base("REDIS_TYPE", "ring"), "REDIS_TYPE")
	mustFail(t, base("REDIS_URL", "a:1,b:2"), "REDIS_URL")
	mustFail(t, base("REDIS_URL", "nohostport"), "REDIS_URL")
	mustFail(t, base("REDIS_TYPE", "sentinel", "REDIS_URL", "onlymaster"), "REDIS_URL")
	mustFail(t, base("REDIS_TLS_CACERT", "/ca"), "REDIS_TLS_CACERT", "REDIS_TLS is false")
	mustFail(t, base("REDIS_POOL_SIZE", "0"), "REDIS_POOL_SIZE")
	mustFail(t, base("REDIS_TIMEOUT", "0s"), "REDIS_TIMEOUT")
	mustFail(t, base("BACKEND_TYPE", "dynamo"), "BACKEND_TYPE")
	// Pipelining settings are accepted, and said to be unused.
	s = mustRead(t, base("REDIS_PIPELINE_WINDOW", "150us", "REDIS_PIPELINE_LIMIT", "8"))
	if len(s.Warnings) != 2 || !strings.Contains(s.Warnings[0], "REDIS_PIPELINE_WINDOW") {
		t.Errorf("warnings %q", s.Warnings)
	}
}

func TestMemcache(t *testing.T) {
	env := map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_HOST_PORT": "m1:11211,m2:11211", "CACHE_KEY_PREFIX": "p:"}
	s := mustRead(t, env)
	if s.Store != "memcached://m1:11211,m2:11211?max_idle_conns=2" || s.KeyPrefix != "p:" {
		t.Errorf("memcache: %q %q", s.Store, s.KeyPrefix)
	}
	env["MEMCACHE_MAX_IDLE_CONNS"] = "9"
	if s := mustRead(t, env); !strings.HasSuffix(s.Store, "max_idle_conns=9") {
		t.Errorf("max idle: %s", s.Store)
	}
	mustFail(t, map[string]string{"BACKEND_TYPE": "memcache"}, "MEMCACHE_HOST_PORT")
	mustFail(t, map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_HOST_PORT": "m1"}, "MEMCACHE_HOST_PORT")
	mustFail(t, map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_HOST_PORT": "m:1", "MEMCACHE_MAX_IDLE_CONNS": "0"}, "MEMCACHE_MAX_IDLE_CONNS")
	// A unix-socket Redis default does not matter with memcache.
	if s := mustRead(t, map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_HOST_PORT": "m:1"}); s.Store == "" {
		t.Error("no store")
	}
}

func TestConfigSource(t *testing.T) {
	s := mustRead(t, base("RUNTIME_ROOT", "/data", "RUNTIME_SUBDIRECTORY", "ratelimit"))
	if s.ConfigDir != "/data/ratelimit/config" || s.XDS != nil {
		t.Errorf("file: %q %v", s.ConfigDir, s.XDS)
	}
	if s := mustRead(t, base("RUNTIME_ROOT", "rt", "RUNTIME_APPDIRECTORY", "app")); s.ConfigDir != "rt/app" {
		t.Errorf("no subdirectory: %q", s.ConfigDir)
	}
	s = mustRead(t, base("CONFIG_TYPE", "GRPC_XDS_SOTW", "RUNTIME_ROOT", "/data"))
	want := &XDS{
		Server: "localhost:18000", NodeID: "default", NodeMetadata: map[string]string{}, Headers: map[string]string{},
		ConnectRetry: 3 * time.Second, BackoffInitial: 10 * time.Second, BackoffMax: time.Minute, BackoffRandom: 0.5, BackoffJitter: true,
	}
	if s.ConfigDir != "" || !reflect.DeepEqual(s.XDS, want) || !s.WaitForConfig {
		t.Errorf("xds defaults: dir %q wait %v\n%+v\nwant\n%+v", s.ConfigDir, s.WaitForConfig, s.XDS, want)
	}
	s = mustRead(t, base("CONFIG_TYPE", "GRPC_XDS_SOTW", "CONFIG_GRPC_XDS_SERVER_URL", "cp:18001", "CONFIG_GRPC_XDS_NODE_ID", "rl",
		"CONFIG_GRPC_XDS_NODE_METADATA", "a=1,b=x=y,junk", "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS", "X-Token:t,k:v",
		"CONFIG_GRPC_XDS_SERVER_USE_TLS", "true", "CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "/c", "CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "/k",
		"CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "/ca", "CONFIG_GRPC_XDS_SERVER_TLS_SAN", "cp.example", "FORCE_START_WITHOUT_INITIAL_CONFIG", "true",
		"XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "100ms", "XDS_CLIENT_BACKOFF_MAX_INTERVAL", "1s", "XDS_CLIENT_BACKOFF_JITTER", "false",
		"XDS_CLIENT_BACKOFF_RANDOM_FACTOR", "0.1", "XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES", "1048576", "CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL", "50ms"))
	want = &XDS{
		Server: "cp:18001", NodeID: "rl", NodeMetadata: map[string]string{"a": "1", "b": "x=y"}, Headers: map[string]string{"x-token": "t", "k": "v"},
		UseTLS: true, Cert: "/c", Key: "/k", CA: "/ca", ServerName: "cp.example",
		ConnectRetry: 50 * time.Millisecond, BackoffInitial: 100 * time.Millisecond, BackoffMax: time.Second, BackoffRandom: 0.1, MaxRecvMsgSize: 1 << 20,
	}
	if !reflect.DeepEqual(s.XDS, want) || s.WaitForConfig {
		t.Errorf("xds: wait %v\n%+v\nwant\n%+v", s.WaitForConfig, s.XDS, want)
	}
	x := func(kv ...string) map[string]string {
		return base(append([]string{"CONFIG_TYPE", "GRPC_XDS_SOTW"}, kv...)...)
	}
	mustFail(t, base("CONFIG_TYPE", "REST"), "CONFIG_TYPE")
	mustFail(t, x("CONFIG_GRPC_XDS_SERVER_URL", ""), "CONFIG_GRPC_XDS_SERVER_URL")
	mustFail(t, x("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true", "CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "/c"), "CONFIG_GRPC_XDS_CLIENT_TLS_KEY")
	mustFail(t, x("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "/ca"), "CONFIG_GRPC_XDS_SERVER_USE_TLS is false")
	mustFail(t, x("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "2m"), "XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "XDS_CLIENT_BACKOFF_MAX_INTERVAL")
	mustFail(t, x("XDS_CLIENT_BACKOFF_RANDOM_FACTOR", "2"), "XDS_CLIENT_BACKOFF_RANDOM_FACTOR")
	mustFail(t, x("CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL", "0s"), "CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL")
	mustFail(t, x("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS", "nocolon"), "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS")
	mustFail(t, x("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES", "-1"), "XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES")
	mustFail(t, base("TRACING_EXPORTER_PROTOCOL", "zipkin"), "TRACING_EXPORTER_PROTOCOL")
	mustFail(t, base("TRACING_SAMPLING_RATE", "1.5"), "TRACING_SAMPLING_RATE")
}

func TestTLSAndHealth(t *testing.T) {
	s := mustRead(t, base("GRPC_SERVER_USE_TLS", "true", "GRPC_SERVER_TLS_CERT", "/c", "GRPC_SERVER_TLS_KEY", "/k", "GRPC_CLIENT_TLS_CACERT", "/ca",
		"HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true", "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", "1"))
	if !reflect.DeepEqual(s.TLS, &TLS{Cert: "/c", Key: "/k", ClientCA: "/ca"}) || !s.HealthNeedsConfig || !s.HealthPingsStore {
		t.Errorf("%+v %v %v", s.TLS, s.HealthNeedsConfig, s.HealthPingsStore)
	}
	mustFail(t, base("GRPC_SERVER_USE_TLS", "true", "GRPC_SERVER_TLS_CERT", "/c"), "GRPC_SERVER_TLS_KEY")
	mustFail(t, base("GRPC_SERVER_TLS_CERT", "/c"), "GRPC_SERVER_TLS_CERT", "GRPC_SERVER_USE_TLS is false")
	mustFail(t, base("GRPC_SERVER_USE_TLS", "true", "GRPC_SERVER_TLS_CERT", "/c", "GRPC_SERVER_TLS_KEY", "/k", "GRPC_CLIENT_TLS_SAN", "x"), "GRPC_CLIENT_TLS_SAN")
}

// TestTracing: TRACING_ENABLED and its settings; the exporter's OTEL_* variables do not
// switch the reference's environment on, and are checked when it is.
func TestTracing(t *testing.T) {
	if s := mustRead(t, base()); s.Tracing != nil {
		t.Errorf("tracing without TRACING_ENABLED: %+v", s.Tracing)
	}
	s := mustRead(t, base("TRACING_ENABLED", "true", "TRACING_SERVICE_NAME", "envoy-ratelimit", "TRACING_SERVICE_NAMESPACE", "envoy-gateway-system",
		"TRACING_SERVICE_INSTANCE_ID", "pod-1", "TRACING_SAMPLING_RATE", "0.25", "TRACING_EXPORTER_PROTOCOL", "grpc",
		"OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"))
	want := &Tracing{Protocol: "grpc", ServiceName: "envoy-ratelimit", ServiceNamespace: "envoy-gateway-system", ServiceInstanceID: "pod-1", SamplingRate: 0.25}
	if !reflect.DeepEqual(s.Tracing, want) {
		t.Errorf("%+v, want %+v", s.Tracing, want)
	}
	if d := mustRead(t, base("TRACING_ENABLED", "true")); !reflect.DeepEqual(d.Tracing, &Tracing{Protocol: "http", ServiceName: "RateLimit", SamplingRate: 1}) {
		t.Errorf("defaults %+v", d.Tracing)
	}
	for _, v := range slices.Collect(maps.Keys(map[string]bool{"OTEL_EXPORTER_OTLP_ENDPOINT": true, "OTEL_EXPORTER_OTLP_HEADERS": true})) {
		if s := mustRead(t, map[string]string{v: "x=y"}); s.Active || len(s.Ignored) > 0 {
			t.Errorf("%s alone: %+v", v, s)
		}
	}
	mustFail(t, base("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"), "OTEL_EXPORTER_OTLP_TIMEOUT")
	mustFail(t, base("TRACING_ENABLED", "yes please"), "TRACING_ENABLED")
}

// TestStats: the stats output the reference's runner would choose, and its settings.
func TestStats(t *testing.T) {
	s := mustRead(t, base())
	want := Stats{Addr: "localhost:8125", Protocol: "tcp", FlushInterval: 10 * time.Second,
		PrometheusAddr: ":9090", PrometheusPath: "/metrics", NearLimitRatio: 0.8}
	if !reflect.DeepEqual(s.Stats, want) {
		t.Errorf("USE_STATSD=false: %+v, want %+v", s.Stats, want)
	}
	// USE_STATSD is true unless set: statsd, as the reference sends it.
	env := base("STATSD_HOST", "statsd.local", "STATSD_PORT", "9125", "STATSD_PROTOCOL", "udp", "EXTRA_TAGS", "a:1,b:2",
		"STATS_FLUSH_INTERVAL", "2s", "NEAR_LIMIT_RATIO", "0.5")
	delete(env, "USE_STATSD")
	s = mustRead(t, env)
	if st := s.Stats; st.Output != StatsStatsd || st.Addr != "statsd.local:9125" || st.Protocol != "udp" ||
		!reflect.DeepEqual(st.ExtraTags, map[string]string{"a": "1", "b": "2"}) || st.FlushInterval != 2*time.Second || st.NearLimitRatio != 0.5 {
		t.Errorf("statsd: %+v", st)
	}
	if len(s.Warnings) != 0 {
		t.Errorf("warnings %q", s.Warnings)
	}
	// USE_PROMETHEUS as Envoy Gateway sets it.
	s = mustRead(t, base("USE_PROMETHEUS", "true", "PROMETHEUS_ADDR", ":19001", "PROMETHEUS_MAPPER_YAML", "/etc/statsd-exporter/conf.yaml",
		"PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS", "true", "PROMETHEUS_PATH", "/m"))
	if st := s.Stats; st.Output != StatsPrometheus || st.PrometheusAddr != ":19001" || st.PrometheusMapper != "/etc/statsd-exporter/conf.yaml" ||
		!st.PrometheusMillis || st.PrometheusPath != "/m" {
		t.Errorf("prometheus: %+v", st)
	}
	// DogStatsD with mogrifiers.
	s = mustRead(t, base("USE_DOG_STATSD", "true", "USE_DOG_STATSD_MOGRIFIERS", "A,B",
		"DOG_STATSD_MOGRIFIER_A_PATTERN", `^ratelimit\.(.*)$`, "DOG_STATSD_MOGRIFIER_A_NAME", "rl.$1", "DOG_STATSD_MOGRIFIER_A_TAGS", "k:$1",
		"DOG_STATSD_MOGRIFIER_B_PATTERN", "x", "DOG_STATSD_MOGRIFIER_B_NAME", "y"))
	wantMog := []Mogrifier{{Label: "A", Pattern: `^ratelimit\.(.*)$`, Name: "rl.$1", Tags: map[string]string{"k": "$1"}}, {Label: "B", Pattern: "x", Name: "y"}}
	if st := s.Stats; st.Output != StatsDogStatsd || !reflect.DeepEqual(st.Mogrifiers, wantMog) {
		t.Errorf("dogstatsd: %+v", st)
	}
	if got := MogrifierVars(" A, B"); !reflect.DeepEqual(got, []string{"DOG_STATSD_MOGRIFIER_A_PATTERN", "DOG_STATSD_MOGRIFIER_A_NAME", "DOG_STATSD_MOGRIFIER_A_TAGS",
		"DOG_STATSD_MOGRIFIER_B_PATTERN", "DOG_STATSD_MOGRIFIER_B_NAME", "DOG_STATSD_MOGRIFIER_B_TAGS"}) {
		t.Errorf("MogrifierVars: %q", got)
	}
	// DISABLE_STATS wins over every output.
	if s := mustRead(t, base("DISABLE_STATS", "true", "USE_STATSD", "true", "USE_PROMETHEUS", "true")); s.Stats.Output != StatsNone {
		t.Errorf("DISABLE_STATS: %+v", s.Stats)
	}
	noStatsd := func(kv ...string) map[string]string {
		e := base(kv...)
		delete(e, "USE_STATSD")
		return e
	}
	mustFail(t, noStatsd("USE_PROMETHEUS", "true"), "USE_STATSD and USE_PROMETHEUS", "USE_STATSD is true when unset")
	mustFail(t, base("USE_DOG_STATSD", "true", "USE_STATSD", "true"), "USE_DOG_STATSD and USE_STATSD")
	mustFail(t, base("USE_DOG_STATSD", "true", "USE_DOG_STATSD_MOGRIFIERS", "M"), "DOG_STATSD_MOGRIFIER_M_PATTERN")
	mustFail(t, base("USE_DOG_STATSD", "true", "USE_DOG_STATSD_MOGRIFIERS", "M", "DOG_STATSD_MOGRIFIER_M_PATTERN", "a(", "DOG_STATSD_MOGRIFIER_M_NAME", "n"), "DOG_STATSD_MOGRIFIER_M_PATTERN")
	mustFail(t, base("USE_DOG_STATSD", "true", "USE_DOG_STATSD_MOGRIFIERS", "M", "DOG_STATSD_MOGRIFIER_M_PATTERN", "a"), "DOG_STATSD_MOGRIFIER_M_NAME")
	mustFail(t, base("USE_DOG_STATSD", "true", "USE_DOG_STATSD_MOGRIFIERS", "M", "DOG_STATSD_MOGRIFIER_M_PATTERN", "a", "DOG_STATSD_MOGRIFIER_M_NAME", "n", "DOG_STATSD_MOGRIFIER_M_TAGS", "nocolon"), "DOG_STATSD_MOGRIFIER_M_TAGS")
	mustFail(t, base("NEAR_LIMIT_RATIO", "2"), "NEAR_LIMIT_RATIO")
	mustFail(t, base("NEAR_LIMIT_RATIO", "-0.1"), "NEAR_LIMIT_RATIO")
	mustFail(t, base("STATSD_PORT", "70000"), "STATSD_PORT")
	mustFail(t, base("STATSD_PROTOCOL", "sctp"), "STATSD_PROTOCOL")
	mustFail(t, base("STATS_FLUSH_INTERVAL", "0s"), "STATS_FLUSH_INTERVAL")
	mustFail(t, base("EXTRA_TAGS", "novalue"), "EXTRA_TAGS")
	mustFail(t, base("PROMETHEUS_PATH", "metrics"), "PROMETHEUS_PATH")
	mustFail(t, base("PROMETHEUS_ADDR", "9090"), "PROMETHEUS_ADDR")
}

// TestStoreGiven: with halt's own store setting given, the reference's store variables
// (defaults included: REDIS_SOCKET_TYPE=unix and its socket path) are replaced, not
// refused; they must still parse, and StoreFrom names those that were set so the binary
// can say the store setting overrides them.
func TestStoreGiven(t *testing.T) {
	given := func(env map[string]string) (*Settings, error) {
		return ReadWith(env, Options{ReadFile: noFiles, StoreGiven: true})
	}
	// The Helm chart's xDS mode: CONFIG_TYPE and the xDS server, no store variable.
	s, err := given(map[string]string{"CONFIG_TYPE": "GRPC_XDS_SOTW", "CONFIG_GRPC_XDS_SERVER_URL": "xds:18000"})
	if err != nil {
		t.Fatalf("xDS variables with the store given: %v", err)
	}
	if s.Store != "" || len(s.StoreFrom) != 0 || s.XDS == nil {
		t.Errorf("Store %q StoreFrom %v XDS %v: want no store, no store variable named, xDS on", s.Store, s.StoreFrom, s.XDS)
	}
	// Without the store given, the same environment builds the reference's default store.
	if _, err := Read(map[string]string{"CONFIG_TYPE": "GRPC_XDS_SOTW", "BACKEND_TYPE": "memcache"}, noFiles); err == nil {
		t.Error("BACKEND_TYPE=memcache without MEMCACHE_HOST_PORT accepted with no store given")
	}
	// Store variables halt cannot honour, or that would not build a store, are replaced.
	s, err = given(map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_TLS": "true", "REDIS_PERSECOND": "true",
		"REDIS_POOL_ON_EMPTY_BEHAVIOR": "ERROR", "CACHE_KEY_PREFIX": "p_", "USE_STATSD": "false"})
	if err != nil {
		t.Fatalf("store variables with the store given: %v", err)
	}
	if want := []string{"BACKEND_TYPE", "MEMCACHE_TLS", "REDIS_PERSECOND", "REDIS_POOL_ON_EMPTY_BEHAVIOR"}; !reflect.DeepEqual(s.StoreFrom, want) {
		t.Errorf("StoreFrom %v, want %v", s.StoreFrom, want)
	}
	if s.KeyPrefix != "p_" {
		t.Errorf("KeyPrefix %q: CACHE_KEY_PREFIX applies to halt's store too", s.KeyPrefix)
	}
	// They must still parse as the reference parses them (it would panic).
	if _, err := given(map[string]string{"REDIS_POOL_SIZE": "many"}); err == nil || !strings.Contains(err.Error(), "REDIS_POOL_SIZE") {
		t.Errorf("REDIS_POOL_SIZE=many with the store given: %v, want an error naming it", err)
	}
	// Variables that are not the store's are still refused when halt cannot honour them.
	if _, err := given(map[string]string{"QUOTA_MODE": "true"}); err == nil || !strings.Contains(err.Error(), "QUOTA_MODE") {
		t.Errorf("QUOTA_MODE=true with the store given: %v", err)
	}
	for _, n := range []string{"BACKEND_TYPE", "REDIS_URL", "REDIS_PERSECOND_URL", "MEMCACHE_SRV"} {
		if !IsStoreVar(n) {
			t.Errorf("%s is a store variable", n)
		}
	}
	for _, n := range []string{"REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", "CACHE_KEY_PREFIX", "SHADOW_MODE"} {
		if IsStoreVar(n) {
			t.Errorf("%s is not a store variable", n)
		}
	}
}

// TestModes: SHADOW_MODE and RESPONSE_DYNAMIC_METADATA are read as booleans; QUOTA_MODE,
// which the reference does not have, is refused rather than ignored.
func TestModes(t *testing.T) {
	s := mustRead(t, base())
	if s.ShadowMode || s.DynamicMetadata {
		t.Errorf("defaults: shadow %v metadata %v, want both off", s.ShadowMode, s.DynamicMetadata)
	}
	s = mustRead(t, base("SHADOW_MODE", "true", "RESPONSE_DYNAMIC_METADATA", "1"))
	if !s.ShadowMode || !s.DynamicMetadata {
		t.Errorf("set: shadow %v metadata %v, want both on", s.ShadowMode, s.DynamicMetadata)
	}
	mustFail(t, base("QUOTA_MODE", "true"), "QUOTA_MODE", "Not a variable of the reference")
	mustRead(t, base("QUOTA_MODE", "false"))
	if s := mustRead(t, base()); s.StopIncrement {
		t.Error("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT on by default")
	}
	if s := mustRead(t, base("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true")); !s.StopIncrement {
		t.Error("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT=true not read")
	}
	mustFail(t, base("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "sometimes"), "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT")
	if s := mustRead(t, base("MERGE_DOMAIN_CONFIG", "true")); !s.MergeDomains {
		t.Error("MERGE_DOMAIN_CONFIG=true not read")
	}
	if s := mustRead(t, base("LOCAL_CACHE_SIZE_IN_BYTES", "1000000")); s.LocalCacheBytes != 1000000 {
		t.Errorf("LOCAL_CACHE_SIZE_IN_BYTES: %d", s.LocalCacheBytes)
	}
	if s := mustRead(t, base()); s.LocalCacheBytes != 0 {
		t.Errorf("LOCAL_CACHE_SIZE_IN_BYTES by default: %d, want 0 (none)", s.LocalCacheBytes)
	}
	mustFail(t, base("LOCAL_CACHE_SIZE_IN_BYTES", "-1"), "LOCAL_CACHE_SIZE_IN_BYTES")
	mustFail(t, base("LOCAL_CACHE_SIZE_IN_BYTES", "1MB"), "LOCAL_CACHE_SIZE_IN_BYTES")
}

// TestGRPCUDSAndSAN: GRPC_UDS moves the gRPC listener to a unix socket; GRPC_CLIENT_TLS_SAN
// pins the client certificate's name, and needs the client CA.
func TestGRPCUDSAndSAN(t *testing.T) {
	if s := mustRead(t, base("GRPC_UDS", "/run/rl.sock")); s.GRPCAddr != "unix:/run/rl.sock" {
		t.Errorf("GRPC_UDS: GRPCAddr %q", s.GRPCAddr)
	}
	s := mustRead(t, base("GRPC_SERVER_USE_TLS", "true", "GRPC_SERVER_TLS_CERT", "/c", "GRPC_SERVER_TLS_KEY", "/k",
		"GRPC_CLIENT_TLS_CACERT", "/ca", "GRPC_CLIENT_TLS_SAN", "envoy.mesh"))
	if s.TLS == nil || s.TLS.ClientSAN != "envoy.mesh" || s.TLS.ClientCA != "/ca" {
		t.Errorf("TLS %+v", s.TLS)
	}
	mustFail(t, base("GRPC_SERVER_USE_TLS", "true", "GRPC_SERVER_TLS_CERT", "/c", "GRPC_SERVER_TLS_KEY", "/k", "GRPC_CLIENT_TLS_SAN", "x"),
		"GRPC_CLIENT_TLS_SAN is set without GRPC_CLIENT_TLS_CACERT")
	mustFail(t, base("GRPC_CLIENT_TLS_SAN", "x"), "GRPC_CLIENT_TLS_SAN is set but GRPC_SERVER_USE_TLS is false")
}

// TestPerSecond: REDIS_PERSECOND builds a second store URL from the REDIS_PERSECOND_*
// variables as the main one is built from REDIS_*; without it they are only checked.
func TestPerSecond(t *testing.T) {
	s := mustRead(t, base("REDIS_PERSECOND", "true", "REDIS_PERSECOND_SOCKET_TYPE", "tcp", "REDIS_PERSECOND_URL", "ps:6380",
		"REDIS_PERSECOND_AUTH", "pw", "REDIS_PERSECOND_POOL_SIZE", "4", "REDIS_PERSECOND_TIMEOUT", "50ms"))
	if s.PerSecondStore != "redis://:pw@ps:6380?pool_size=4&timeout=50ms" || s.Store != "redis://127.0.0.1:6379?pool_size=10" {
		t.Errorf("stores %s and %s", s.Store, s.PerSecondStore)
	}
	// Its defaults are the reference's: a unix socket.
	if s := mustRead(t, base("REDIS_PERSECOND", "true")); s.PerSecondStore != "redis+unix:///var/run/nutcracker/ratelimitpersecond.sock?pool_size=10" {
		t.Errorf("default per-second store %s", s.PerSecondStore)
	}
	// TLS and Sentinel, the TLS files shared with the main Redis.
	if s := mustRead(t, base("REDIS_PERSECOND", "true", "REDIS_PERSECOND_SOCKET_TYPE", "tcp", "REDIS_PERSECOND_TYPE", "sentinel",
		"REDIS_PERSECOND_URL", "m,s:1", "REDIS_PERSECOND_TLS", "true", "REDIS_TLS_CACERT", "/ca", "REDIS_PERSECOND_SENTINEL_AUTH", "sp")); s.PerSecondStore != "rediss+sentinel://s:1?master=m&pool_size=10&sentinel_password=sp&tls_ca=%2Fca" || s.Store != "redis://127.0.0.1:6379?pool_size=10" {
		t.Errorf("TLS sentinel per-second store %s (main %s)", s.PerSecondStore, s.Store)
	}
	if s := mustRead(t, base("REDIS_PERSECOND_URL", "x:1")); s.PerSecondStore != "" {
		t.Errorf("without REDIS_PERSECOND: %s", s.PerSecondStore)
	}
	mustFail(t, base("REDIS_PERSECOND", "true", "REDIS_PERSECOND_SOCKET_TYPE", "tcp", "REDIS_PERSECOND_URL", "a:1,b:2"), "REDIS_PERSECOND_URL")
	mustFail(t, base("REDIS_PERSECOND", "true", "REDIS_PERSECOND_POOL_ON_EMPTY_BEHAVIOR", "ERROR"), "REDIS_PERSECOND_POOL_ON_EMPTY_BEHAVIOR")
}

// TestResponseHeaders: LIMIT_RESPONSE_HEADERS_ENABLED turns the reference's headers on,
// under its default names or LIMIT_*_HEADER's; an invalid name is an error naming it.
func TestResponseHeaders(t *testing.T) {
	if s := mustRead(t, base("LIMIT_LIMIT_HEADER", "L")); s.HeaderNames != nil {
		t.Errorf("names without LIMIT_RESPONSE_HEADERS_ENABLED: %v", s.HeaderNames)
	}
	if s := mustRead(t, base("LIMIT_RESPONSE_HEADERS_ENABLED", "true")); s.HeaderNames == nil || *s.HeaderNames != [3]string{"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} {
		t.Errorf("default names: %v", s.HeaderNames)
	}
	if s := mustRead(t, base("LIMIT_RESPONSE_HEADERS_ENABLED", "true", "LIMIT_RESET_HEADER", "X-Reset-In")); s.HeaderNames[2] != "X-Reset-In" {
		t.Errorf("LIMIT_RESET_HEADER: %v", s.HeaderNames)
	}
	mustFail(t, base("LIMIT_RESPONSE_HEADERS_ENABLED", "true", "LIMIT_REMAINING_HEADER", "bad name"), "LIMIT_REMAINING_HEADER")
}

// TestExpiryJitter: EXPIRATION_JITTER_MAX_SECONDS, 300 by default as in the reference.
func TestExpiryJitter(t *testing.T) {
	if s := mustRead(t, base("EXPIRATION_JITTER_MAX_SECONDS", "0")); s.ExpiryJitter != 0 {
		t.Errorf("0: %v", s.ExpiryJitter)
	}
	if s := mustRead(t, base("EXPIRATION_JITTER_MAX_SECONDS", "12")); s.ExpiryJitter != 12*time.Second {
		t.Errorf("12: %v", s.ExpiryJitter)
	}
	mustFail(t, base("EXPIRATION_JITTER_MAX_SECONDS", "-1"), "EXPIRATION_JITTER_MAX_SECONDS")
}

// TestMemcacheSRV: MEMCACHE_SRV (and MEMCACHE_SRV_REFRESH) become the memcached URL's
// srv= (and srv_refresh=); with MEMCACHE_HOST_PORT too, startup stops.
func TestMemcacheSRV(t *testing.T) {
	s := mustRead(t, map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_SRV": "_memcache._tcp.cache.svc", "MEMCACHE_SRV_REFRESH": "30s", "USE_STATSD": "false"})
	if s.Store != "memcached:///?max_idle_conns=2&srv=_memcache._tcp.cache.svc&srv_refresh=30s" {
		t.Errorf("store %s", s.Store)
	}
	if s := mustRead(t, map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_SRV": "_m._tcp.x", "USE_STATSD": "false"}); s.Store != "memcached:///?max_idle_conns=2&srv=_m._tcp.x" {
		t.Errorf("store without refresh %s", s.Store)
	}
	mustFail(t, map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_SRV": "_m._tcp.x", "MEMCACHE_HOST_PORT": "h:1"}, "MEMCACHE_SRV and MEMCACHE_HOST_PORT")
}

// TestMemcacheTLS: MEMCACHE_TLS and its files become the memcached URL's tls=true and
// tls_* options, with MEMCACHE_HOST_PORT and with MEMCACHE_SRV; a file without
// MEMCACHE_TLS stops startup rather than connect in plaintext.
func TestMemcacheTLS(t *testing.T) {
	tlsVars := map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_HOST_PORT": "mc.example:11211", "MEMCACHE_TLS": "true",
		"MEMCACHE_TLS_CACERT": "/ca.pem", "MEMCACHE_TLS_CLIENT_CERT": "/c.pem", "MEMCACHE_TLS_CLIENT_KEY": "/k.pem", "MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION": "true", "USE_STATSD": "false"}
	s := mustRead(t, tlsVars)
	if want := "memcached://mc.example:11211?max_idle_conns=2&tls=true&tls_ca=%2Fca.pem&tls_cert=%2Fc.pem&tls_key=%2Fk.pem&tls_skip_hostname_verification=true"; s.Store != want {
		t.Errorf("store %s\nwant  %s", s.Store, want)
	}
	srv := map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_SRV": "_m._tcp.x", "MEMCACHE_TLS": "true", "USE_STATSD": "false"}
	if s := mustRead(t, srv); s.Store != "memcached:///?max_idle_conns=2&srv=_m._tcp.x&tls=true" {
		t.Errorf("SRV with TLS: %s", s.Store)
	}
	mustFail(t, map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_HOST_PORT": "m:1", "MEMCACHE_TLS_CACERT": "/ca.pem"}, "MEMCACHE_TLS_CACERT is set but MEMCACHE_TLS is false")
	mustFail(t, map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_HOST_PORT": "m:1", "MEMCACHE_TLS": "true", "MEMCACHE_TLS_CLIENT_CERT": "/c.pem"}, "MEMCACHE_TLS_CLIENT_CERT and MEMCACHE_TLS_CLIENT_KEY")
	mustFail(t, map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_SRV": "cache.example.org"}, "MEMCACHE_SRV")
	mustFail(t, map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_SRV": "_m._tcp.x", "MEMCACHE_SRV_REFRESH": "-1s"}, "MEMCACHE_SRV_REFRESH")
	mustFail(t, map[string]string{"BACKEND_TYPE": "memcache", "MEMCACHE_SRV": "_m._tcp.x", "MEMCACHE_SRV_REFRESH": "soon"}, "MEMCACHE_SRV_REFRESH")
}
