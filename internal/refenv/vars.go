// Package refenv reads the environment variables of the reference Envoy rate-limit
// service (envoyproxy/ratelimit, src/settings/settings.go) the way the reference reads
// them, and turns them into halt's settings. It is pure: an environment map in,
// Settings or an error out. cmd/halt-envoy applies the result to every setting that
// halt's own flags and HALT_* variables leave unset.
//
// Every variable the reference reads is in [Vars], with its default and what halt does
// with it. A variable halt cannot honour yet is a startup error naming it as soon as it
// holds a value that would change the reference's behaviour; to wire one later, change its
// row's Status to Honoured, drop its Unsupported test, and read it in Read.
package refenv

import (
	"strconv"
	"strings"
	"time"
)

// Status says what halt does with a reference variable.
type Status int

const (
	// Honoured: halt does what the reference does.
	Honoured Status = iota
	// Differently: halt honours the variable its own way (the row's Note says how).
	Differently
	// NotYet: a value that would change the reference's behaviour stops startup.
	NotYet
)

// String is the status as the migration table words it.
func (s Status) String() string {
	switch s {
	case Honoured:
		return "honoured"
	case Differently:
		return "honoured differently"
	}
	return "not supported yet (startup error)"
}

// Kind is how the reference (kelseyhightower/envconfig) parses a variable.
type Kind int

// The kinds of envconfig fields the reference's settings use.
const (
	String Kind = iota
	Bool
	Int
	Float
	Duration
	List // comma-separated
	Map  // key:value,key:value
)

// Var is one variable of the reference's settings.
type Var struct {
	Name    string
	Kind    Kind
	Default string
	Status  Status
	// Note says what halt does with it (the migration table's text).
	Note string
	// Unsupported, for NotYet rows, reports whether the (parsed, valid) value is one halt
	// cannot honour yet. Nil means any value given is.
	Unsupported func(v string) bool
	// Library: a library reads the variable from the process environment (the
	// OpenTelemetry exporter), in the reference as in halt. It never switches the
	// reference's environment on and Read neither checks nor reports it.
	Library bool
}

func isTrue(v string) bool { b, _ := strconv.ParseBool(v); return b }

// Vars is the reference's settings table, in its order, with halt's answer for each.
// It is data: the migration table in docs/migration.md is checked against it.
func Vars() []Var {
	return []Var{
		// Listeners.
		{Name: "HOST", Default: "0.0.0.0", Note: "HTTP listener host (`/healthcheck`, `/json`, `/metrics`, `/readyz`, `/config`)."},
		{Name: "PORT", Kind: Int, Default: "8080", Note: "HTTP listener port."},
		{Name: "DEBUG_HOST", Default: "0.0.0.0", Status: Differently, Note: "Host of the admin listener (`--admin-addr`): `/debug/pprof` and the admin API; the reference's `/rlconfig` is `/config` and `/stats` is `/metrics` on the HTTP port."},
		{Name: "DEBUG_PORT", Kind: Int, Default: "6070", Status: Differently, Note: "Port of the admin listener (see DEBUG_HOST)."},
		{Name: "GRPC_UDS", Note: "gRPC on this unix socket instead of GRPC_HOST:GRPC_PORT (`--grpc-addr unix:PATH`); a socket left by an earlier run is replaced, any other file there is an error."},
		{Name: "GRPC_HOST", Default: "0.0.0.0", Note: "gRPC listener host."},
		{Name: "GRPC_PORT", Kind: Int, Default: "8081", Note: "gRPC listener port."},
		{Name: "GRPC_MAX_CONNECTION_AGE", Kind: Duration, Default: "24h", Note: "gRPC keepalive MaxConnectionAge (grpc-go adds ±10% jitter, as the reference says)."},
		{Name: "GRPC_MAX_CONNECTION_AGE_GRACE", Kind: Duration, Default: "1h", Note: "gRPC keepalive MaxConnectionAgeGrace."},
		{Name: "GRPC_MAX_CONCURRENT_STREAMS", Kind: Int, Default: "0", Status: Differently, Note: "Streams per gRPC connection (`--grpc-max-streams`); 0 or unset is halt's default of 256, not grpc-go's unbounded one: a bound is what keeps a rapid-reset client's handlers bounded."},
		{Name: "GRPC_SERVER_USE_TLS", Kind: Bool, Default: "false", Note: "TLS on the gRPC port only (the HTTP port stays plaintext, as the reference's); certificates are reloaded when the files change."},
		{Name: "GRPC_SERVER_TLS_CERT", Note: "Server certificate chain (PEM) when GRPC_SERVER_USE_TLS."},
		{Name: "GRPC_SERVER_TLS_KEY", Note: "Server key (PEM) when GRPC_SERVER_USE_TLS."},
		{Name: "GRPC_CLIENT_TLS_CACERT", Note: "Client CA: with it, client certificates are required and verified (mTLS)."},
		{Name: "GRPC_CLIENT_TLS_SAN", Note: "With GRPC_CLIENT_TLS_CACERT: the client certificate must also hold this name among its DNS or IP SANs (`--tls-client-san`)."},
		// Logging.
		{Name: "LOG_LEVEL", Default: "WARN", Note: "logrus levels: trace and debug are debug, info, warn/warning, error/fatal/panic are error; case-insensitive."},
		{Name: "LOG_FORMAT", Default: "text", Note: "`text` or `json` (slog's text and JSON handlers: the field names are slog's). Another value is an error (the reference falls back to text)."},
		// Configuration source.
		{Name: "CONFIG_TYPE", Default: "FILE", Note: "`FILE` (the runtime directory below) or `GRPC_XDS_SOTW` (xDS, State of the World over ADS). Another value is an error."},
		{Name: "FORCE_START_WITHOUT_INITIAL_CONFIG", Kind: Bool, Default: "false", Status: Differently, Note: "With xDS: false waits for the first pushed config before listening; true listens at once (calls match no rule, so they pass, where the reference answers an error) and `/readyz` says 503 until a config arrives. With files the config loads before listening either way."},
		{Name: "CONFIG_GRPC_XDS_NODE_ID", Default: "default", Note: "xDS node id."},
		{Name: "CONFIG_GRPC_XDS_NODE_METADATA", Note: "xDS node metadata, `k1=v1,k2=v2` (entries without `=` are skipped, as there)."},
		{Name: "CONFIG_GRPC_XDS_SERVER_URL", Default: "localhost:18000", Note: "Management server address."},
		{Name: "CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL", Kind: Duration, Default: "3s", Note: "Base delay of the gRPC connection's dial backoff."},
		{Name: "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS", Kind: Map, Note: "Metadata sent on the ADS stream, `k1:v1,k2:v2`."},
		{Name: "CONFIG_GRPC_XDS_SERVER_USE_TLS", Kind: Bool, Default: "false", Note: "TLS to the management server (system roots unless CONFIG_GRPC_XDS_SERVER_TLS_CACERT)."},
		{Name: "CONFIG_GRPC_XDS_CLIENT_TLS_CERT", Note: "Client certificate for mTLS to the management server."},
		{Name: "CONFIG_GRPC_XDS_CLIENT_TLS_KEY", Note: "Its key."},
		{Name: "CONFIG_GRPC_XDS_SERVER_TLS_CACERT", Note: "CA that verifies the management server."},
		{Name: "CONFIG_GRPC_XDS_SERVER_TLS_SAN", Note: "Name verified in the management server's certificate (and sent as SNI)."},
		{Name: "XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", Kind: Duration, Default: "10s", Note: "First wait before re-opening a failed ADS stream; doubles up to the max."},
		{Name: "XDS_CLIENT_BACKOFF_MAX_INTERVAL", Kind: Duration, Default: "60s", Note: "Longest wait between ADS attempts."},
		{Name: "XDS_CLIENT_BACKOFF_RANDOM_FACTOR", Kind: Float, Default: "0.5", Note: "Each wait is randomized by ± this share when XDS_CLIENT_BACKOFF_JITTER."},
		{Name: "XDS_CLIENT_BACKOFF_JITTER", Kind: Bool, Default: "true", Note: "Randomize the waits."},
		{Name: "XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES", Kind: Int, Note: "Largest DiscoveryResponse accepted (0: gRPC's 4 MiB)."},
		// Stats.
		{Name: "USE_DOG_STATSD", Kind: Bool, Default: "false", Note: "The reference's stats to a DogStatsD agent at STATSD_HOST:STATSD_PORT (UDP, datadog-go), EXTRA_TAGS as DogStatsD tags. Only one of USE_DOG_STATSD, USE_STATSD, USE_PROMETHEUS may be true (USE_STATSD is true unless set false), as in the reference."},
		{Name: "USE_DOG_STATSD_MOGRIFIERS", Kind: List, Note: "Names of DogStatsD mogrifiers, each set by DOG_STATSD_MOGRIFIER_<NAME>_PATTERN (a regular expression on the stat name), _NAME (the new name, $1.. the pattern's groups) and _TAGS (key:$1,key2:value); the first matching mogrifier rewrites a stat. A missing or invalid one stops startup naming it."},
		{Name: "USE_STATSD", Kind: Bool, Default: "true", Note: "The reference's stats (ratelimit.service.rate_limit.DOMAIN.KEY.total_hits, ...) to statsd at STATSD_HOST:STATSD_PORT over TCP (STATSD_PROTOCOL), flushed every STATS_FLUSH_INTERVAL, as the reference sends them (gostats). halt's own metrics stay on `/metrics`."},
		{Name: "STATSD_HOST", Default: "localhost", Note: "statsd or DogStatsD host."},
		{Name: "STATSD_PORT", Kind: Int, Default: "8125", Note: "statsd or DogStatsD port."},
		{Name: "STATSD_PROTOCOL", Default: "tcp", Note: "Read by the reference's stats library (gostats), not its settings: `tcp` or `udp` for USE_STATSD."},
		{Name: "EXTRA_TAGS", Kind: Map, Note: "Tags added to every stat: in statsd names as gostats writes them (NAME.__key=value), DogStatsD tags with USE_DOG_STATSD."},
		{Name: "STATS_FLUSH_INTERVAL", Kind: Duration, Default: "10s", Note: "How often the stats are sent (statsd, DogStatsD) or published (USE_PROMETHEUS)."},
		{Name: "DISABLE_STATS", Kind: Bool, Default: "false", Note: "No stats output (statsd, DogStatsD, the USE_PROMETHEUS endpoint); halt's own metrics stay on `/metrics`."},
		{Name: "USE_PROMETHEUS", Kind: Bool, Default: "false", Note: "The reference's Prometheus endpoint on PROMETHEUS_ADDR at PROMETHEUS_PATH: its stats mapped by statsd_exporter's mapper (ratelimit_service_rate_limit_total_hits{domain,key1,key2}, ...), as Envoy Gateway scrapes it. Needs USE_STATSD=false."},
		{Name: "PROMETHEUS_ADDR", Default: ":9090", Note: "Listen address of the USE_PROMETHEUS endpoint."},
		{Name: "PROMETHEUS_PATH", Default: "/metrics", Note: "Path of the USE_PROMETHEUS endpoint."},
		{Name: "PROMETHEUS_MAPPER_YAML", Note: "A statsd_exporter mapping file replacing the built-in mapping; unreadable or invalid, startup stops naming it (the reference then exports nothing)."},
		{Name: "PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS", Kind: Bool, Default: "false", Note: "With the built-in mapping, ratelimit_service_response_time_seconds is observed in milliseconds instead of seconds."},
		// Files.
		{Name: "RUNTIME_ROOT", Default: "/srv/runtime_data/current", Note: "With CONFIG_TYPE=FILE, configs load from RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY, recursively."},
		{Name: "RUNTIME_SUBDIRECTORY", Note: "See RUNTIME_ROOT."},
		{Name: "RUNTIME_APPDIRECTORY", Default: "config", Note: "See RUNTIME_ROOT."},
		{Name: "RUNTIME_IGNOREDOTFILES", Kind: Bool, Default: "false", Status: Differently, Note: "halt always skips dot files and dot directories (so a Kubernetes ConfigMap's `..data` is not read twice), and reads only `*.yaml`/`*.yml` files; the reference with false reads every file."},
		{Name: "RUNTIME_WATCH_ROOT", Kind: Bool, Default: "true", Status: Differently, Note: "halt watches the config directory itself (symlink swaps inside it included) and reloads on SIGHUP, either way; a swap of the RUNTIME_ROOT symlink itself is seen on SIGHUP."},
		{Name: "MERGE_DOMAIN_CONFIG", Kind: Bool, Default: "false", Note: "`--merge-domains`: the files (and xDS resources) of one domain are merged in name order; a top-level descriptor in two of them is an error naming both, as there. halt also requires the merged files to agree on the domain's `failure_mode` and `time_zone` (its own keys). Without it a domain defined twice is an error naming both files."},
		// Every store.
		{Name: "EXPIRATION_JITTER_MAX_SECONDS", Kind: Int, Default: "300", Note: "Up to this many seconds of random extra expiry on every key the store expires (`--store-expiry-jitter`), the reference's default 300 included: Redis, memcached, MongoDB, DynamoDB (PostgreSQL and the memory store sweep expired keys themselves and need none)."},
		{Name: "LOCAL_CACHE_SIZE_IN_BYTES", Kind: Int, Default: "0", Status: Differently, Note: "`--store-local-cache`: a local over-limit cache of this many bytes in front of memcached, PostgreSQL, MongoDB and DynamoDB: fixed-window and calendar keys with nothing left are answered without the store until their window ends (the buckets, sliding windows and penalties always go to the store). halt's Redis store keeps its own, sized in keys and on even at 0 (`local_cache=false` in its URL turns it off). Decisions are the store's; what a local cache cannot see (another replica's reset) is in [backends.md](backends.md#local-over-limit-cache)."},
		{Name: "NEAR_LIMIT_RATIO", Kind: Float, Default: "0.8", Note: "Share of a limit past which admitted hits count as near_limit (halt_rule_near_limit_hits_total and the reference's stat), floor(limit x ratio) as the reference computes it; `--near-limit-ratio`."},
		{Name: "CACHE_KEY_PREFIX", Note: "`--store-key-prefix`: prefix of every key of every network store (Redis, the per-second Redis, memcached, PostgreSQL, MongoDB, DynamoDB; the memory store is the process's own). halt's keys differ from the reference's: counters start fresh."},
		{Name: "BACKEND_TYPE", Default: "redis", Note: "`redis` or `memcache`: builds halt's store URL from the REDIS_* or MEMCACHE_* variables. Another value is an error."},
		{Name: "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", Kind: Bool, Default: "false", Status: Differently, Note: "`--stop-increment-over-limit`: a call its rate limits refuse is not charged to the limits that would have let it through (other descriptors', other limits of the rule); the refusing limits are charged as without it. A call with several rate limits reads them first, one more store round, as the reference's GET before INCRBY (and as racy). Unlike the reference, a call that passes (`quota_mode`, a `shadow_mode` rule's denial) is charged in full."},
		// Response headers.
		{Name: "LIMIT_RESPONSE_HEADERS_ENABLED", Kind: Bool, Default: "false", Note: "The reference's three response headers (limit, remaining, seconds to reset) of the descriptor closest to its limit: halt's X-RateLimit family (`--headers x-ratelimit`) under the names below (`--x-ratelimit-names`)."},
		{Name: "LIMIT_LIMIT_HEADER", Default: "RateLimit-Limit", Note: "Name of the limit header, with LIMIT_RESPONSE_HEADERS_ENABLED; an invalid header name is an error."},
		{Name: "LIMIT_REMAINING_HEADER", Default: "RateLimit-Remaining", Note: "Name of the remaining header, with LIMIT_RESPONSE_HEADERS_ENABLED."},
		{Name: "LIMIT_RESET_HEADER", Default: "RateLimit-Reset", Note: "Name of the reset header (whole seconds), with LIMIT_RESPONSE_HEADERS_ENABLED."},
		// Health.
		{Name: "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", Kind: Bool, Default: "false", Note: "`/healthcheck` answers 500 until a config with at least one domain is loaded, and again whenever the config has none."},
		// Redis.
		{Name: "REDIS_SOCKET_TYPE", Default: "unix", Note: "`tcp` (REDIS_URL is HOST:PORT) or `unix` (REDIS_URL is the socket's path: `redis+unix:///PATH`, the reference's default `/var/run/nutcracker/ratelimit.sock` included), with REDIS_TYPE=single; another value is an error."},
		{Name: "REDIS_TYPE", Default: "SINGLE", Note: "`single`, `sentinel` or `cluster` (any case): `redis://`, `redis+sentinel://`, `redis+cluster://`."},
		{Name: "REDIS_URL", Default: "/var/run/nutcracker/ratelimit.sock", Note: "single: HOST:PORT; sentinel: MASTER,S1:PORT,...; cluster: N1:PORT,N2:PORT,..."},
		{Name: "REDIS_POOL_SIZE", Kind: Int, Default: "10", Note: "`pool_size` of the store URL (connections per server)."},
		{Name: "REDIS_AUTH", Note: "`password` or `user:password`: the store URL's user info (never logged)."},
		{Name: "REDIS_AUTH_FILE", Note: "Read REDIS_AUTH from this file; with REDIS_AUTH too, startup stops naming both."},
		{Name: "REDIS_TLS", Kind: Bool, Default: "false", Note: "TLS: `rediss://` for a single Redis, `rediss+sentinel://` (the Sentinels and the master) and `rediss+cluster://` (every node); not with a unix socket."},
		{Name: "REDIS_TLS_CLIENT_CERT", Note: "`tls_cert` of the store URL."},
		{Name: "REDIS_TLS_CLIENT_KEY", Note: "`tls_key` of the store URL."},
		{Name: "REDIS_TLS_CACERT", Note: "`tls_ca` of the store URL."},
		{Name: "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", Kind: Bool, Default: "false", Note: "`tls_skip_hostname_verification=true` of the store URL: the chain is verified (REDIS_TLS_CACERT, else the system's roots), the name is not."},
		{Name: "REDIS_PIPELINE_WINDOW", Kind: Duration, Default: "0", Status: Differently, Note: "halt's Redis store pipelines concurrent calls by itself: the window needs no setting and is not used."},
		{Name: "REDIS_PIPELINE_LIMIT", Kind: Int, Default: "0", Status: Differently, Note: "As REDIS_PIPELINE_WINDOW (unused in the reference too)."},
		{Name: "REDIS_USE_EXPLICIT_PIPELINE", Kind: Bool, Default: "false", Status: Differently, Note: "As REDIS_PIPELINE_WINDOW."},
		{Name: "REDIS_CLUSTER_PIPELINE_PARALLELISM", Kind: Int, Default: "1", Status: Differently, Note: "As REDIS_PIPELINE_WINDOW."},
		{Name: "REDIS_PERSECOND", Kind: Bool, Default: "false", Note: "A second Redis for the limits of one second (`--store-per-second`), built from the REDIS_PERSECOND_* variables as the main one from REDIS_* (the TLS files REDIS_TLS_* are shared, as there); every other op stays in the main store, each op atomic in its store."},
		{Name: "REDIS_PERSECOND_SOCKET_TYPE", Default: "unix", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_TYPE", Default: "SINGLE", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_URL", Default: "/var/run/nutcracker/ratelimitpersecond.sock", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_POOL_SIZE", Kind: Int, Default: "10", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_AUTH", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_AUTH_FILE", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_TLS", Kind: Bool, Default: "false", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_SENTINEL_AUTH", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_PIPELINE_WINDOW", Kind: Duration, Default: "0", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_PIPELINE_LIMIT", Kind: Int, Default: "0", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_USE_EXPLICIT_PIPELINE", Kind: Bool, Default: "false", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_CLUSTER_PIPELINE_PARALLELISM", Kind: Int, Default: "1", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_TIMEOUT", Kind: Duration, Default: "10s", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_PERSECOND_POOL_ON_EMPTY_BEHAVIOR", Default: "WAIT", Note: "Used only with REDIS_PERSECOND."},
		{Name: "REDIS_SENTINEL_AUTH", Note: "`sentinel_password` of a `redis+sentinel://` URL."},
		{Name: "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", Kind: Bool, Default: "false", Note: "`/healthcheck` also pings the store and answers 500 when it does not answer."},
		{Name: "REDIS_TIMEOUT", Kind: Duration, Default: "10s", Status: Differently, Note: "Set, it bounds every Redis call (`timeout` of the store URL); unset, halt keeps its store timeout (`--store-timeout`, 15 ms) rather than wait 10 s after Envoy has given up."},
		{Name: "REDIS_POOL_ON_EMPTY_BEHAVIOR", Default: "WAIT", Status: NotYet, Unsupported: func(v string) bool { return !strings.EqualFold(v, "WAIT") }, Note: "`WAIT` is what halt does; CREATE and ERROR are refused (the reference refuses them too)."},
		// Memcached.
		{Name: "MEMCACHE_HOST_PORT", Kind: List, Note: "`memcached://` servers."},
		{Name: "MEMCACHE_MAX_IDLE_CONNS", Kind: Int, Default: "2", Note: "`max_idle_conns` of the store URL."},
		{Name: "MEMCACHE_SRV", Note: "The servers are the targets of this DNS SRV record (`memcached:///?srv=NAME`), looked up at start; excludes MEMCACHE_HOST_PORT."},
		{Name: "MEMCACHE_SRV_REFRESH", Kind: Duration, Default: "0", Note: "With MEMCACHE_SRV: look the record up again this often (`srv_refresh`; 0: never); a changed record swaps the servers, a failed lookup keeps them."},
		{Name: "MEMCACHE_TLS", Kind: Bool, Default: "false", Note: "TLS to every memcached server (`tls=true` in the store URL), each certificate verified for the server's name as written in MEMCACHE_HOST_PORT or as the SRV record gives it; a MEMCACHE_TLS_* file set while it is false stops startup (the reference would connect in plaintext)."},
		{Name: "MEMCACHE_TLS_CLIENT_CERT", Note: "`tls_cert` of the store URL (with MEMCACHE_TLS_CLIENT_KEY)."},
		{Name: "MEMCACHE_TLS_CLIENT_KEY", Note: "`tls_key` of the store URL."},
		{Name: "MEMCACHE_TLS_CACERT", Note: "`tls_ca` of the store URL (else the system's roots)."},
		{Name: "MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION", Kind: Bool, Default: "false", Note: "`tls_skip_hostname_verification=true` of the store URL: the chain is verified, the name is not."},
		// Behaviour.
		{Name: "SHADOW_MODE", Kind: Bool, Default: "false", Note: "Global shadow mode (`--shadow-mode`): every call is answered OK; each descriptor is still decided, counted and reported (its status `OVER_LIMIT` when over), as the reference does."},
		{Name: "QUOTA_MODE", Kind: Bool, Default: "false", Status: NotYet, Unsupported: isTrue, Note: "Not a variable of the reference: its settings (`src/settings/settings.go`) have no global quota mode, only the per-descriptor `quota_mode` key, which halt honours. Set to true, it stops startup rather than be ignored."},
		{Name: "RESPONSE_DYNAMIC_METADATA", Kind: Bool, Default: "false", Note: "`--response-dynamic-metadata`: every response carries the reference's dynamic metadata (`domain`, `descriptors`, `hitsAddend`, `quotaModeEnabled`, `quotaModeViolations`, and the `metadata` of the matched rules that passed), which Envoy stores under `envoy.filters.http.ratelimit`."},
		// Tracing.
		{Name: "TRACING_ENABLED", Kind: Bool, Default: "false", Note: "OTLP trace export (`--trace-otlp-endpoint`): a server span per gRPC call, child of the caller's W3C or B3 trace context, with the decisions as events and each store round as a child span."},
		{Name: "TRACING_SERVICE_NAME", Default: "RateLimit", Note: "The resource's service.name."},
		{Name: "TRACING_SERVICE_NAMESPACE", Note: "The resource's service.namespace."},
		{Name: "TRACING_SERVICE_INSTANCE_ID", Note: "The resource's service.instance.id; a random one when empty, as the reference's."},
		{Name: "TRACING_EXPORTER_PROTOCOL", Default: "http", Note: "`http` (OTLP/HTTP protobuf) or `grpc`; `--trace-protocol`."},
		{Name: "TRACING_SAMPLING_RATE", Kind: Float, Default: "1", Note: "0..1: the share of traces started here that are sampled; a call with a parent follows its parent's choice (parent-based), as the reference's; `--trace-sample-ratio`."},
		// The OpenTelemetry exporter's own variables, which the reference relies on for the
		// collector's address: read by the exporter from the process environment.
		{Name: "OTEL_EXPORTER_OTLP_ENDPOINT", Library: true, Note: "The collector (e.g. `http://collector:4318`); read by the OTLP exporter as in the reference. `--trace-otlp-endpoint` wins over it."},
		{Name: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", Library: true, Note: "The traces endpoint, full URL (wins over OTEL_EXPORTER_OTLP_ENDPOINT); read by the OTLP exporter."},
		{Name: "OTEL_EXPORTER_OTLP_HEADERS", Library: true, Note: "Headers sent to the collector (`k=v,k2=v2`); read by the OTLP exporter, never logged."},
		{Name: "OTEL_EXPORTER_OTLP_TRACES_HEADERS", Library: true, Note: "As OTEL_EXPORTER_OTLP_HEADERS, for traces."},
		{Name: "OTEL_EXPORTER_OTLP_CERTIFICATE", Library: true, Note: "CA (PEM) verifying the collector; read by the OTLP exporter."},
		{Name: "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", Library: true, Note: "As OTEL_EXPORTER_OTLP_CERTIFICATE, for traces."},
		{Name: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", Library: true, Note: "Client certificate (PEM) for mTLS to the collector; read by the OTLP exporter."},
		{Name: "OTEL_EXPORTER_OTLP_CLIENT_KEY", Library: true, Note: "Its key."},
		{Name: "OTEL_EXPORTER_OTLP_TIMEOUT", Kind: Int, Library: true, Note: "Export timeout in milliseconds (10000); read by the OTLP exporter."},
		{Name: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", Kind: Int, Library: true, Note: "As OTEL_EXPORTER_OTLP_TIMEOUT, for traces."},
		{Name: "OTEL_EXPORTER_OTLP_COMPRESSION", Library: true, Note: "`gzip` or none; read by the OTLP exporter."},
		{Name: "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", Library: true, Note: "As OTEL_EXPORTER_OTLP_COMPRESSION, for traces."},
		{Name: "OTEL_EXPORTER_OTLP_INSECURE", Kind: Bool, Library: true, Note: "Plaintext to an endpoint without a scheme; read by the OTLP exporter."},
		{Name: "OTEL_EXPORTER_OTLP_TRACES_INSECURE", Kind: Bool, Library: true, Note: "As OTEL_EXPORTER_OTLP_INSECURE, for traces."},
	}
}

// parse checks v as the reference's envconfig would parse a field of kind k.
func parse(k Kind, v string) error {
	var err error
	if v == "" && (k == String || k == List || k == Map) {
		return nil
	}
	switch k {
	case Bool:
		_, err = strconv.ParseBool(v)
	case Int:
		_, err = strconv.ParseInt(v, 0, 64)
	case Float:
		_, err = strconv.ParseFloat(v, 64)
	case Duration:
		_, err = time.ParseDuration(v)
	case Map:
		for _, kv := range strings.Split(v, ",") {
			if _, _, ok := strings.Cut(kv, ":"); !ok {
				return errMap
			}
		}
	}
	return err
}

type constErr string

func (e constErr) Error() string { return string(e) }

const errMap constErr = "want key:value pairs separated by commas"
