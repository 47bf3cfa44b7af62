package refenv

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Generic names are the reference's variables whose names other software sets too (a
// platform's PORT, a shell's HOST): alone they do not switch the reference's environment
// on, and Settings.Ignored names them when they were set but nothing else was.
var genericNames = []string{"HOST", "PORT", "LOG_LEVEL", "LOG_FORMAT"}

// memcacheSRVName is the form the reference's srv.ParseSrv accepts for MEMCACHE_SRV.
var memcacheSRVName = regexp.MustCompile(`^_(.+?)\._(.+?)\.(.+)$`)

// Settings is what the reference's variables ask of halt. Empty fields mean "the
// reference's variables say nothing here": halt keeps its own setting.
type Settings struct {
	// Active is true when at least one of the reference's variables (other than the
	// generic HOST, PORT, LOG_LEVEL, LOG_FORMAT) is set: only then do the others, and
	// the reference's defaults, apply.
	Active bool
	// Set lists the reference variables present in the environment, sorted.
	Set []string
	// Ignored lists generic variables that were set while Active is false.
	Ignored []string
	// Warnings are things the operator should know (logged at startup).
	Warnings []string

	GRPCAddr, HTTPAddr, AdminAddr string
	LogLevel, LogFormat           string // slog's names: debug, info, warn, error; text, json

	// Store is halt's store URL (it may hold a password: never log it); StoreFrom names
	// the variables it came from.
	Store     string
	StoreFrom []string
	// PerSecondStore is the store URL of the per-second Redis (REDIS_PERSECOND and its
	// REDIS_PERSECOND_* variables): one-second limits go there. It may hold a password.
	PerSecondStore string
	// StoreTimeout is REDIS_TIMEOUT when set (0 otherwise).
	StoreTimeout time.Duration
	// ExpiryJitter is EXPIRATION_JITTER_MAX_SECONDS.
	ExpiryJitter time.Duration
	// KeyPrefix is CACHE_KEY_PREFIX.
	KeyPrefix string

	// ConfigDir is the runtime directory when CONFIG_TYPE=FILE.
	ConfigDir string
	// XDS is set when CONFIG_TYPE=GRPC_XDS_SOTW.
	XDS *XDS
	// WaitForConfig: with xDS, do not listen before the first config (not
	// FORCE_START_WITHOUT_INITIAL_CONFIG).
	WaitForConfig bool

	// TLS is set when GRPC_SERVER_USE_TLS: it applies to the gRPC port only.
	TLS *TLS

	MaxConnectionAge, MaxConnectionAgeGrace time.Duration
	MaxConcurrentStreams                    uint32

	// Tracing is set when TRACING_ENABLED.
	Tracing *Tracing

	// Stats is where the reference's stats go (USE_STATSD, USE_DOG_STATSD,
	// USE_PROMETHEUS, DISABLE_STATS and their settings) and NEAR_LIMIT_RATIO.
	Stats Stats

	// HeaderNames, when set (LIMIT_RESPONSE_HEADERS_ENABLED), are the names of the
	// reference's limit, remaining and reset headers: halt's X-RateLimit family.
	HeaderNames *[3]string

	// ShadowMode is SHADOW_MODE (the global shadow mode); DynamicMetadata is
	// RESPONSE_DYNAMIC_METADATA.
	ShadowMode, DynamicMetadata bool
	// StopIncrement is STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT; MergeDomains is
	// MERGE_DOMAIN_CONFIG.
	StopIncrement, MergeDomains bool
	// LocalCacheBytes is LOCAL_CACHE_SIZE_IN_BYTES (0: no local over-limit cache).
	LocalCacheBytes int64

	// HealthNeedsConfig is HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED;
	// HealthPingsStore is REDIS_HEALTH_CHECK_ACTIVE_CONNECTION.
	HealthNeedsConfig, HealthPingsStore bool
}

// Tracing is the reference's OTLP tracing; the collector's address and its other
// settings are the exporter's OTEL_EXPORTER_OTLP_* variables.
type Tracing struct {
	Protocol                                         string // http or grpc
	ServiceName, ServiceNamespace, ServiceInstanceID string
	SamplingRate                                     float64
}

// Stats outputs, as the reference chooses one (src/service_cmd/runner).
const (
	StatsNone       = ""           // DISABLE_STATS, or every output false
	StatsStatsd     = "statsd"     // USE_STATSD
	StatsDogStatsd  = "dogstatsd"  // USE_DOG_STATSD
	StatsPrometheus = "prometheus" // USE_PROMETHEUS
)

// Stats is the reference's stats output.
type Stats struct {
	// Output is one of the Stats* constants.
	Output string
	// Addr is STATSD_HOST:STATSD_PORT (statsd and DogStatsD); Protocol is
	// STATSD_PROTOCOL (statsd).
	Addr, Protocol string
	ExtraTags      map[string]string
	FlushInterval  time.Duration
	// Mogrifiers are USE_DOG_STATSD_MOGRIFIERS, in order.
	Mogrifiers []Mogrifier
	// PrometheusAddr, PrometheusPath, PrometheusMapper (a file; "" for the built-in
	// mapping) and PrometheusMillis are the USE_PROMETHEUS endpoint's settings.
	PrometheusAddr, PrometheusPath, PrometheusMapper string
	PrometheusMillis                                 bool
	// NearLimitRatio is NEAR_LIMIT_RATIO.
	NearLimitRatio float64
}

// Mogrifier is one DOG_STATSD_MOGRIFIER_<Label>_* set: Pattern is a valid regular
// expression.
type Mogrifier struct {
	Label, Pattern, Name string
	Tags                 map[string]string
}

// MogrifierVars are the variables of the mogrifiers named in list (the value of
// USE_DOG_STATSD_MOGRIFIERS): the binary passes them to Read with the others.
func MogrifierVars(list string) []string {
	var out []string
	for _, m := range splitList(list) {
		for _, suffix := range []string{"_PATTERN", "_NAME", "_TAGS"} {
			out = append(out, "DOG_STATSD_MOGRIFIER_"+m+suffix)
		}
	}
	return out
}

// TLS is the gRPC listener's TLS. ClientSAN (GRPC_CLIENT_TLS_SAN) pins the client
// certificate's name.
type TLS struct{ Cert, Key, ClientCA, ClientSAN string }

// XDS is the xDS client's settings.
type XDS struct {
	Server         string
	NodeID         string
	NodeMetadata   map[string]string
	Headers        map[string]string
	UseTLS         bool
	Cert, Key, CA  string
	ServerName     string
	ConnectRetry   time.Duration
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	BackoffRandom  float64
	BackoffJitter  bool
	MaxRecvMsgSize int
}

// reader holds one environment and the problems found in it.
type reader struct {
	env      map[string]string
	vars     map[string]Var
	errs     []error
	readFile func(string) ([]byte, error)
}

// present reports whether name is set (even to "").
func (r *reader) present(name string) bool { _, ok := r.env[name]; return ok }

// str returns the variable's value, or its default when it is not set.
func (r *reader) str(name string) string {
	if v, ok := r.env[name]; ok {
		return v
	}
	return r.vars[name].Default
}

func (r *reader) boolean(name string) bool {
	b, _ := strconv.ParseBool(r.str(name)) // checked in Read
	return b
}

func (r *reader) integer(name string) int64 {
	n, _ := strconv.ParseInt(r.str(name), 0, 64)
	return n
}

func (r *reader) float(name string) float64 {
	f, _ := strconv.ParseFloat(r.str(name), 64)
	return f
}

func (r *reader) duration(name string) time.Duration {
	d, _ := time.ParseDuration(r.str(name))
	return d
}

func (r *reader) fail(format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf(format, args...))
}

// Read maps an environment (name -> value) to Settings the way the reference reads its
// settings. Every problem is returned at once, each naming its variable: a value the
// reference would not parse, a value halt cannot honour yet, and variables that
// contradict each other. readFile reads REDIS_AUTH_FILE (os.ReadFile in the binary).
func Read(env map[string]string, readFile func(string) ([]byte, error)) (*Settings, error) {
	return ReadWith(env, Options{ReadFile: readFile})
}

// Options changes how ReadWith reads an environment.
type Options struct {
	// ReadFile reads REDIS_AUTH_FILE (os.ReadFile in the binary).
	ReadFile func(string) ([]byte, error)
	// StoreGiven says halt's own store setting (--store, HALT_STORE, --store-file) is
	// given: it replaces every store variable of the reference, so those are only checked
	// to parse, never built into a store URL nor refused for a value halt cannot honour
	// (the reference's defaults, REDIS_SOCKET_TYPE=unix and its socket path, included).
	// Settings.StoreFrom then names the store variables that were set, for the note that
	// the store setting overrides them.
	StoreGiven bool
}

// IsStoreVar reports whether name is one of the reference's variables that only choose
// or configure its store (BACKEND_TYPE, REDIS_*, MEMCACHE_*): halt's own store setting
// replaces them all. REDIS_HEALTH_CHECK_ACTIVE_CONNECTION is a health setting, not one of
// them.
func IsStoreVar(name string) bool {
	if name == "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION" {
		return false
	}
	return name == "BACKEND_TYPE" || strings.HasPrefix(name, "REDIS_") || strings.HasPrefix(name, "MEMCACHE_")
}

// ReadWith is Read with Options.
func ReadWith(env map[string]string, opt Options) (*Settings, error) {
	readFile := opt.ReadFile
	if readFile == nil {
		readFile = func(p string) ([]byte, error) { return nil, fmt.Errorf("%s: no file reader given", p) }
	}
	r := &reader{env: env, vars: map[string]Var{}, readFile: readFile}
	for _, v := range Vars() {
		r.vars[v.Name] = v
	}
	s := &Settings{}
	for name := range env {
		if v, ok := r.vars[name]; !ok || v.Library {
			continue
		}
		s.Set = append(s.Set, name)
		generic := false
		for _, g := range genericNames {
			generic = generic || g == name
		}
		s.Active = s.Active || !generic
	}
	sort.Strings(s.Set)
	if !s.Active {
		s.Ignored = s.Set
		s.Set = nil
		return s, nil
	}

	// Every given value must parse as the reference parses it (it would panic), the
	// exporter's own variables included (the reference's exporter would ignore a bad one).
	given := append([]string(nil), s.Set...)
	for _, v := range Vars() {
		if _, ok := env[v.Name]; ok && v.Library {
			given = append(given, v.Name)
		}
	}
	for _, name := range given {
		v := r.vars[name]
		val := env[name]
		if val == "" && (v.Kind == String || v.Kind == List || v.Kind == Map) {
			continue
		}
		if err := parse(v.Kind, val); err != nil {
			r.fail("%s=%q: %s", name, val, kindWant(v.Kind))
			continue
		}
		if opt.StoreGiven && IsStoreVar(name) {
			continue // replaced by halt's store setting: parsed, nothing more
		}
		if v.Status == NotYet && (v.Unsupported == nil || v.Unsupported(val)) {
			r.fail("%s=%q: not supported by halt yet (%s)", name, val, strings.TrimSuffix(v.Note, "."))
		}
	}
	if len(r.errs) > 0 {
		return nil, errors.Join(r.errs...)
	}
	r.listeners(s)
	r.logging(s)
	r.config(s)
	if opt.StoreGiven {
		if r.present("CACHE_KEY_PREFIX") {
			s.KeyPrefix = r.str("CACHE_KEY_PREFIX")
		}
		for _, name := range s.Set {
			if IsStoreVar(name) {
				s.StoreFrom = append(s.StoreFrom, name)
			}
		}
	} else {
		r.store(s)
	}
	r.tls(s)
	r.stats(s)
	if r.boolean("LIMIT_RESPONSE_HEADERS_ENABLED") {
		s.HeaderNames = &[3]string{r.str("LIMIT_LIMIT_HEADER"), r.str("LIMIT_REMAINING_HEADER"), r.str("LIMIT_RESET_HEADER")}
		for i, n := range []string{"LIMIT_LIMIT_HEADER", "LIMIT_REMAINING_HEADER", "LIMIT_RESET_HEADER"} {
			if !httpguts.ValidHeaderFieldName(s.HeaderNames[i]) {
				r.fail("%s=%q: not a valid header field name", n, s.HeaderNames[i])
			}
		}
	}
	if j := r.integer("EXPIRATION_JITTER_MAX_SECONDS"); j < 0 || j > 86400*365 {
		r.fail("EXPIRATION_JITTER_MAX_SECONDS=%d: want 0 (none) up to a year of seconds", j)
	} else {
		s.ExpiryJitter = time.Duration(j) * time.Second
	}
	s.ShadowMode = r.boolean("SHADOW_MODE")
	s.StopIncrement = r.boolean("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT")
	s.MergeDomains = r.boolean("MERGE_DOMAIN_CONFIG")
	if n := r.integer("LOCAL_CACHE_SIZE_IN_BYTES"); n < 0 {
		r.fail("LOCAL_CACHE_SIZE_IN_BYTES=%d: want 0 (none) or a number of bytes", n)
	} else {
		s.LocalCacheBytes = n
	}
	s.DynamicMetadata = r.boolean("RESPONSE_DYNAMIC_METADATA")
	s.HealthNeedsConfig = r.boolean("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED")
	s.HealthPingsStore = r.boolean("REDIS_HEALTH_CHECK_ACTIVE_CONNECTION")
	for _, name := range []string{"REDIS_PIPELINE_WINDOW", "REDIS_PIPELINE_LIMIT", "REDIS_USE_EXPLICIT_PIPELINE", "REDIS_CLUSTER_PIPELINE_PARALLELISM"} {
		if r.present(name) {
			s.Warnings = append(s.Warnings, name+" is not used: halt's Redis store pipelines concurrent calls by itself")
		}
	}
	if len(r.errs) > 0 {
		return nil, errors.Join(r.errs...)
	}
	return s, nil
}

func kindWant(k Kind) string {
	switch k {
	case Bool:
		return "want true or false"
	case Int:
		return "want an integer"
	case Float:
		return "want a number"
	case Duration:
		return "want a Go duration such as 10s"
	case Map:
		return errMap.Error()
	}
	return "invalid value"
}

func (r *reader) port(name string) string {
	n := r.integer(name)
	if n < 0 || n > 65535 {
		r.fail("%s=%d: want a port number (0..65535)", name, n)
	}
	return strconv.FormatInt(n, 10)
}

func (r *reader) listeners(s *Settings) {
	s.HTTPAddr = net.JoinHostPort(r.str("HOST"), r.port("PORT"))
	s.GRPCAddr = net.JoinHostPort(r.str("GRPC_HOST"), r.port("GRPC_PORT"))
	if uds := r.str("GRPC_UDS"); uds != "" {
		s.GRPCAddr = "unix:" + uds // the reference listens there instead
	}
	s.AdminAddr = net.JoinHostPort(r.str("DEBUG_HOST"), r.port("DEBUG_PORT"))
	s.MaxConnectionAge = r.duration("GRPC_MAX_CONNECTION_AGE")
	s.MaxConnectionAgeGrace = r.duration("GRPC_MAX_CONNECTION_AGE_GRACE")
	for _, n := range []string{"GRPC_MAX_CONNECTION_AGE", "GRPC_MAX_CONNECTION_AGE_GRACE"} {
		if r.duration(n) <= 0 {
			r.fail("%s=%q: want a positive duration", n, r.str(n))
		}
	}
	streams := r.integer("GRPC_MAX_CONCURRENT_STREAMS")
	if streams < 0 || streams > 1<<32-1 {
		r.fail("GRPC_MAX_CONCURRENT_STREAMS=%d: want 0..4294967295", streams)
	}
	s.MaxConcurrentStreams = uint32(max(0, min(streams, 1<<32-1)))
}

func (r *reader) logging(s *Settings) {
	switch lv := strings.ToLower(r.str("LOG_LEVEL")); lv {
	case "trace", "debug":
		s.LogLevel = "debug"
	case "info":
		s.LogLevel = "info"
	case "warn", "warning":
		s.LogLevel = "warn"
	case "error", "fatal", "panic":
		s.LogLevel = "error"
	default:
		r.fail("LOG_LEVEL=%q: want trace, debug, info, warn, error, fatal or panic", r.str("LOG_LEVEL"))
	}
	switch f := r.str("LOG_FORMAT"); f {
	case "text", "json":
		s.LogFormat = f
	default:
		r.fail("LOG_FORMAT=%q: want text or json", f)
	}
}

func (r *reader) config(s *Settings) {
	switch ct := r.str("CONFIG_TYPE"); ct {
	case "FILE":
		// The reference's goruntime reads RUNTIME_ROOT/RUNTIME_SUBDIRECTORY and keeps the
		// keys under RUNTIME_APPDIRECTORY (watching the root), or reads
		// RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY (not watching it): the
		// same files either way.
		s.ConfigDir = filepath.Join(r.str("RUNTIME_ROOT"), r.str("RUNTIME_SUBDIRECTORY"), r.str("RUNTIME_APPDIRECTORY"))
	case "GRPC_XDS_SOTW":
		x := &XDS{
			Server:         r.str("CONFIG_GRPC_XDS_SERVER_URL"),
			NodeID:         r.str("CONFIG_GRPC_XDS_NODE_ID"),
			NodeMetadata:   map[string]string{},
			Headers:        map[string]string{},
			UseTLS:         r.boolean("CONFIG_GRPC_XDS_SERVER_USE_TLS"),
			Cert:           r.str("CONFIG_GRPC_XDS_CLIENT_TLS_CERT"),
			Key:            r.str("CONFIG_GRPC_XDS_CLIENT_TLS_KEY"),
			CA:             r.str("CONFIG_GRPC_XDS_SERVER_TLS_CACERT"),
			ServerName:     r.str("CONFIG_GRPC_XDS_SERVER_TLS_SAN"),
			ConnectRetry:   r.duration("CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL"),
			BackoffInitial: r.duration("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL"),
			BackoffMax:     r.duration("XDS_CLIENT_BACKOFF_MAX_INTERVAL"),
			BackoffRandom:  r.float("XDS_CLIENT_BACKOFF_RANDOM_FACTOR"),
			BackoffJitter:  r.boolean("XDS_CLIENT_BACKOFF_JITTER"),
			MaxRecvMsgSize: int(r.integer("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES")),
		}
		for _, e := range strings.Split(r.str("CONFIG_GRPC_XDS_NODE_METADATA"), ",") {
			if k, v, ok := strings.Cut(e, "="); ok {
				x.NodeMetadata[k] = v
			}
		}
		if h := r.str("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS"); h != "" {
			for _, e := range strings.Split(h, ",") {
				k, v, _ := strings.Cut(e, ":")
				x.Headers[strings.ToLower(k)] = v
			}
		}
		if x.Server == "" {
			r.fail("CONFIG_GRPC_XDS_SERVER_URL is empty: want the management server's HOST:PORT")
		}
		if (x.Cert == "") != (x.Key == "") {
			r.fail("CONFIG_GRPC_XDS_CLIENT_TLS_CERT and CONFIG_GRPC_XDS_CLIENT_TLS_KEY go together: one is set, the other is not")
		}
		if !x.UseTLS && (x.Cert != "" || x.CA != "") {
			r.fail("CONFIG_GRPC_XDS_CLIENT_TLS_CERT/CONFIG_GRPC_XDS_SERVER_TLS_CACERT are set but CONFIG_GRPC_XDS_SERVER_USE_TLS is false: the connection would be plaintext")
		}
		if x.BackoffInitial <= 0 || x.BackoffMax < x.BackoffInitial {
			r.fail("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL=%v and XDS_CLIENT_BACKOFF_MAX_INTERVAL=%v: want 0 < initial <= max", x.BackoffInitial, x.BackoffMax)
		}
		if x.ConnectRetry <= 0 {
			r.fail("CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL=%v: want a positive duration", x.ConnectRetry)
		}
		if x.BackoffRandom < 0 || x.BackoffRandom > 1 {
			r.fail("XDS_CLIENT_BACKOFF_RANDOM_FACTOR=%v: want 0..1", x.BackoffRandom)
		}
		if x.MaxRecvMsgSize < 0 {
			r.fail("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES=%d: want 0 or a positive size", x.MaxRecvMsgSize)
		}
		s.XDS = x
		s.WaitForConfig = !r.boolean("FORCE_START_WITHOUT_INITIAL_CONFIG")
	default:
		r.fail("CONFIG_TYPE=%q: want FILE or GRPC_XDS_SOTW", ct)
	}
	if f := r.float("TRACING_SAMPLING_RATE"); f < 0 || f > 1 {
		r.fail("TRACING_SAMPLING_RATE=%v: want 0..1", f)
	}
	if p := r.str("TRACING_EXPORTER_PROTOCOL"); p != "http" && p != "grpc" {
		r.fail("TRACING_EXPORTER_PROTOCOL=%q: want http or grpc", p)
	}
	if r.boolean("TRACING_ENABLED") {
		s.Tracing = &Tracing{
			Protocol:          r.str("TRACING_EXPORTER_PROTOCOL"),
			ServiceName:       r.str("TRACING_SERVICE_NAME"),
			ServiceNamespace:  r.str("TRACING_SERVICE_NAMESPACE"),
			ServiceInstanceID: r.str("TRACING_SERVICE_INSTANCE_ID"),
			SamplingRate:      r.float("TRACING_SAMPLING_RATE"),
		}
	}
}

func (r *reader) tls(s *Settings) {
	if !r.boolean("GRPC_SERVER_USE_TLS") {
		for _, n := range []string{"GRPC_SERVER_TLS_CERT", "GRPC_SERVER_TLS_KEY", "GRPC_CLIENT_TLS_CACERT", "GRPC_CLIENT_TLS_SAN"} {
			if r.str(n) != "" {
				r.fail("%s is set but GRPC_SERVER_USE_TLS is false: the gRPC port would be plaintext", n)
			}
		}
		return
	}
	t := &TLS{Cert: r.str("GRPC_SERVER_TLS_CERT"), Key: r.str("GRPC_SERVER_TLS_KEY"), ClientCA: r.str("GRPC_CLIENT_TLS_CACERT"), ClientSAN: r.str("GRPC_CLIENT_TLS_SAN")}
	if t.ClientSAN != "" && t.ClientCA == "" {
		r.fail("GRPC_CLIENT_TLS_SAN is set without GRPC_CLIENT_TLS_CACERT: no client certificate is asked for, so there is no name to check")
	}
	if t.Cert == "" || t.Key == "" {
		r.fail("GRPC_SERVER_USE_TLS=true needs GRPC_SERVER_TLS_CERT and GRPC_SERVER_TLS_KEY")
	}
	s.TLS = t
}

func (r *reader) store(s *Settings) {
	if r.present("CACHE_KEY_PREFIX") {
		s.KeyPrefix = r.str("CACHE_KEY_PREFIX")
	}
	switch bt := r.str("BACKEND_TYPE"); bt {
	case "redis":
		r.redis(s)
	case "memcache":
		r.memcache(s)
	default:
		r.fail("BACKEND_TYPE=%q: want redis or memcache", bt)
	}
}

// auth returns the password of inline or file, failing when both are set.
func (r *reader) auth(inline, file string) string {
	if r.str(inline) != "" && r.str(file) != "" {
		r.fail("%s and %s are both set: they exclude each other", inline, file)
		return ""
	}
	if p := r.str(file); p != "" {
		b, err := r.readFile(p)
		if err != nil {
			r.fail("%s: %v", file, err)
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	return r.str(inline)
}

func (r *reader) redis(s *Settings) {
	s.StoreFrom = []string{"BACKEND_TYPE", "REDIS_SOCKET_TYPE", "REDIS_TYPE", "REDIS_URL"}
	perSecond := r.boolean("REDIS_PERSECOND")
	if !r.boolean("REDIS_TLS") && !(perSecond && r.boolean("REDIS_PERSECOND_TLS")) {
		for _, n := range []string{"REDIS_TLS_CLIENT_CERT", "REDIS_TLS_CLIENT_KEY", "REDIS_TLS_CACERT", "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION"} {
			if v := r.str(n); v != "" && v != "false" {
				r.fail("%s is set but REDIS_TLS is false: the connection would be plaintext", n)
			}
		}
	}
	s.Store = r.redisURL("REDIS_")
	if r.present("REDIS_TIMEOUT") {
		s.StoreTimeout = r.duration("REDIS_TIMEOUT")
	}
	if perSecond {
		if b := r.str("REDIS_PERSECOND_POOL_ON_EMPTY_BEHAVIOR"); !strings.EqualFold(b, "WAIT") {
			r.fail("REDIS_PERSECOND_POOL_ON_EMPTY_BEHAVIOR=%q: only WAIT is supported (the reference refuses the others too)", b)
		}
		s.PerSecondStore = r.redisURL("REDIS_PERSECOND_")
		s.StoreFrom = append(s.StoreFrom, "REDIS_PERSECOND", "REDIS_PERSECOND_SOCKET_TYPE", "REDIS_PERSECOND_TYPE", "REDIS_PERSECOND_URL")
	}
}

// redisURL builds the store URL of the Redis named by the variables starting with p
// ("REDIS_", or "REDIS_PERSECOND_" for the per-second Redis), as the reference reads
// them; the TLS files (REDIS_TLS_*) are shared, as in the reference. "" when a problem was
// recorded.
func (r *reader) redisURL(p string) string {
	unix := false
	switch st := r.str(p + "SOCKET_TYPE"); st {
	case "tcp":
	case "unix":
		unix = true
	default:
		r.fail("%sSOCKET_TYPE=%q: want tcp or unix", p, st)
		return ""
	}
	pass := r.auth(p+"AUTH", p+"AUTH_FILE")
	u := &url.URL{}
	if pass != "" {
		if user, pw, ok := strings.Cut(pass, ":"); ok {
			u.User = url.UserPassword(user, pw)
		} else {
			u.User = url.UserPassword("", pass)
		}
	}
	q := url.Values{}
	q.Set("pool_size", strconv.FormatInt(r.integer(p+"POOL_SIZE"), 10))
	if r.integer(p+"POOL_SIZE") <= 0 {
		r.fail("%sPOOL_SIZE=%q: want a positive integer", p, r.str(p+"POOL_SIZE"))
	}
	if r.present(p + "TIMEOUT") {
		d := r.duration(p + "TIMEOUT")
		if d <= 0 {
			r.fail("%sTIMEOUT=%q: want a positive duration", p, r.str(p+"TIMEOUT"))
		}
		q.Set("timeout", d.String())
	}
	addrs := splitList(r.str(p + "URL"))
	tlsOn := r.boolean(p + "TLS")
	if unix {
		// The reference dials the URL as a socket path (its default,
		// /var/run/nutcracker/ratelimit.sock, is twemproxy's).
		switch {
		case !strings.EqualFold(r.str(p+"TYPE"), "single"):
			r.fail("%[1]sSOCKET_TYPE=unix with %[1]sTYPE=%[2]s: a unix socket reaches one server; use %[1]sTYPE=single or %[1]sSOCKET_TYPE=tcp", p, r.str(p+"TYPE"))
		case tlsOn:
			r.fail("%[1]sSOCKET_TYPE=unix with %[1]sTLS=true: a unix socket is not reached over TLS", p)
		case len(addrs) != 1 || !strings.HasPrefix(addrs[0], "/"):
			r.fail("%[1]sURL=%[2]q: %[1]sSOCKET_TYPE=unix wants the socket's absolute path", p, r.str(p+"URL"))
		default:
			u.Scheme = "redis+unix"
			u.Path = addrs[0]
			u.RawQuery = q.Encode()
			return u.String()
		}
		return ""
	}
	if tlsOn {
		for env, opt := range map[string]string{"REDIS_TLS_CLIENT_CERT": "tls_cert", "REDIS_TLS_CLIENT_KEY": "tls_key", "REDIS_TLS_CACERT": "tls_ca"} {
			if v := r.str(env); v != "" {
				q.Set(opt, v)
			}
		}
		if r.boolean("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION") {
			q.Set("tls_skip_hostname_verification", "true")
		}
	}
	switch typ := strings.ToLower(r.str(p + "TYPE")); typ {
	case "single":
		u.Scheme = "redis"
		if len(addrs) != 1 {
			r.fail("%[1]sURL=%[2]q: %[1]sTYPE=single wants one HOST:PORT", p, r.str(p+"URL"))
			return ""
		}
		if tlsOn {
			u.Scheme = "rediss"
		}
		u.Host = addrs[0]
	case "sentinel":
		u.Scheme = "redis+sentinel"
		if len(addrs) < 2 {
			r.fail("%[1]sURL=%[2]q: %[1]sTYPE=sentinel wants MASTER_NAME,SENTINEL:PORT[,SENTINEL:PORT...]", p, r.str(p+"URL"))
			return ""
		}
		q.Set("master", addrs[0])
		u.Host = strings.Join(addrs[1:], ",")
		if pw := r.str(p + "SENTINEL_AUTH"); pw != "" {
			q.Set("sentinel_password", pw)
		}
	case "cluster":
		u.Scheme = "redis+cluster"
		if len(addrs) == 0 {
			r.fail("%[1]sURL is empty: %[1]sTYPE=cluster wants NODE:PORT[,NODE:PORT...]", p)
			return ""
		}
		u.Host = strings.Join(addrs, ",")
	default:
		r.fail("%sTYPE=%q: want single, sentinel or cluster", p, r.str(p+"TYPE"))
		return ""
	}
	if tlsOn && u.Scheme != "rediss" {
		// TLS to the Sentinels and the master, or to every Cluster node.
		u.Scheme = strings.Replace(u.Scheme, "redis+", "rediss+", 1)
	}
	for _, h := range strings.Split(u.Host, ",") {
		if _, _, err := net.SplitHostPort(h); err != nil {
			r.fail("%sURL=%q: %q is not HOST:PORT", p, r.str(p+"URL"), h)
			return ""
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func (r *reader) memcache(s *Settings) {
	s.StoreFrom = []string{"BACKEND_TYPE", "MEMCACHE_HOST_PORT", "MEMCACHE_SRV"}
	hosts := splitList(r.str("MEMCACHE_HOST_PORT"))
	if srv := r.str("MEMCACHE_SRV"); srv != "" {
		if len(hosts) > 0 {
			r.fail("MEMCACHE_SRV and MEMCACHE_HOST_PORT are both set: the servers come from one of them")
			return
		}
		if !memcacheSRVName.MatchString(srv) {
			r.fail("MEMCACHE_SRV=%q: want _service._proto.name (the reference refuses other forms too)", srv)
			return
		}
		refresh := r.duration("MEMCACHE_SRV_REFRESH")
		if refresh < 0 {
			r.fail("MEMCACHE_SRV_REFRESH=%q: want 0 (never) or a positive duration", r.str("MEMCACHE_SRV_REFRESH"))
			return
		}
		q := url.Values{"srv": {srv}, "max_idle_conns": {strconv.FormatInt(r.integer("MEMCACHE_MAX_IDLE_CONNS"), 10)}}
		if refresh > 0 {
			q.Set("srv_refresh", refresh.String())
		}
		r.memcacheTLS(q)
		s.Store = (&url.URL{Scheme: "memcached", Path: "/", RawQuery: q.Encode()}).String()
		return
	}
	if len(hosts) == 0 {
		r.fail("BACKEND_TYPE=memcache needs MEMCACHE_HOST_PORT (HOST:PORT[,HOST:PORT...])")
		return
	}
	for _, h := range hosts {
		if _, _, err := net.SplitHostPort(h); err != nil {
			r.fail("MEMCACHE_HOST_PORT=%q: %q is not HOST:PORT", r.str("MEMCACHE_HOST_PORT"), h)
			return
		}
	}
	n := r.integer("MEMCACHE_MAX_IDLE_CONNS")
	if n <= 0 {
		r.fail("MEMCACHE_MAX_IDLE_CONNS=%q: want a positive integer", r.str("MEMCACHE_MAX_IDLE_CONNS"))
		return
	}
	q := url.Values{"max_idle_conns": {strconv.FormatInt(n, 10)}}
	r.memcacheTLS(q)
	u := url.URL{Scheme: "memcached", Host: strings.Join(hosts, ","), RawQuery: q.Encode()}
	s.Store = u.String()
}

// memcacheTLS adds MEMCACHE_TLS and its files to a memcached URL's query q; a TLS file
// set while MEMCACHE_TLS is false stops startup (the connection would be plaintext).
func (r *reader) memcacheTLS(q url.Values) {
	if !r.boolean("MEMCACHE_TLS") {
		for _, n := range []string{"MEMCACHE_TLS_CLIENT_CERT", "MEMCACHE_TLS_CLIENT_KEY", "MEMCACHE_TLS_CACERT", "MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION"} {
			if v := r.str(n); v != "" && v != "false" {
				r.fail("%s is set but MEMCACHE_TLS is false: the connection would be plaintext", n)
			}
		}
		return
	}
	q.Set("tls", "true")
	for env, opt := range map[string]string{"MEMCACHE_TLS_CLIENT_CERT": "tls_cert", "MEMCACHE_TLS_CLIENT_KEY": "tls_key", "MEMCACHE_TLS_CACERT": "tls_ca"} {
		if v := r.str(env); v != "" {
			q.Set(opt, v)
		}
	}
	if (r.str("MEMCACHE_TLS_CLIENT_CERT") == "") != (r.str("MEMCACHE_TLS_CLIENT_KEY") == "") {
		r.fail("MEMCACHE_TLS_CLIENT_CERT and MEMCACHE_TLS_CLIENT_KEY go together")
	}
	if r.boolean("MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION") {
		q.Set("tls_skip_hostname_verification", "true")
	}
}

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// stats chooses the stats output as the reference's runner does: DISABLE_STATS wins;
// otherwise at most one of USE_DOG_STATSD, USE_STATSD (true by default) and
// USE_PROMETHEUS may be true.
func (r *reader) stats(s *Settings) {
	st := Stats{
		Addr:             net.JoinHostPort(r.str("STATSD_HOST"), r.port("STATSD_PORT")),
		Protocol:         r.str("STATSD_PROTOCOL"),
		FlushInterval:    r.duration("STATS_FLUSH_INTERVAL"),
		PrometheusAddr:   r.str("PROMETHEUS_ADDR"),
		PrometheusPath:   r.str("PROMETHEUS_PATH"),
		PrometheusMapper: r.str("PROMETHEUS_MAPPER_YAML"),
		PrometheusMillis: r.boolean("PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS"),
		NearLimitRatio:   r.float("NEAR_LIMIT_RATIO"),
	}
	if f := st.NearLimitRatio; f < 0 || f > 1 {
		r.fail("NEAR_LIMIT_RATIO=%v: want a share of the limit, 0..1", f)
	}
	if st.FlushInterval <= 0 {
		r.fail("STATS_FLUSH_INTERVAL=%q: want a positive duration", r.str("STATS_FLUSH_INTERVAL"))
	}
	if p := st.Protocol; p != "tcp" && p != "udp" {
		r.fail("STATSD_PROTOCOL=%q: want tcp or udp", p)
	}
	if t := r.str("EXTRA_TAGS"); t != "" {
		st.ExtraTags = parseMap(t)
	}
	if !strings.HasPrefix(st.PrometheusPath, "/") {
		r.fail("PROMETHEUS_PATH=%q: want a path starting with /", st.PrometheusPath)
	}
	if _, _, err := net.SplitHostPort(st.PrometheusAddr); err != nil {
		r.fail("PROMETHEUS_ADDR=%q: want HOST:PORT or :PORT", st.PrometheusAddr)
	}
	var on []string
	for _, v := range []struct{ name, output string }{
		{"USE_DOG_STATSD", StatsDogStatsd}, {"USE_STATSD", StatsStatsd}, {"USE_PROMETHEUS", StatsPrometheus},
	} {
		if r.boolean(v.name) {
			on = append(on, v.name)
			st.Output = v.output
		}
	}
	switch {
	case r.boolean("DISABLE_STATS"):
		st.Output = StatsNone
	case len(on) > 1:
		why := ""
		if !r.present("USE_STATSD") {
			why = " (USE_STATSD is true when unset)"
		}
		r.fail("%s are all true%s: only one stats output at a time, as in the reference; set the others to false", strings.Join(on, " and "), why)
	}
	if st.Output == StatsDogStatsd {
		st.Mogrifiers = r.mogrifiers()
	}
	s.Stats = st
}

// mogrifiers reads USE_DOG_STATSD_MOGRIFIERS' variables as the reference does
// (envconfig with the prefix DOG_STATSD_MOGRIFIER_<NAME>).
func (r *reader) mogrifiers() []Mogrifier {
	var out []Mogrifier
	for _, label := range splitList(r.str("USE_DOG_STATSD_MOGRIFIERS")) {
		pre := "DOG_STATSD_MOGRIFIER_" + label
		m := Mogrifier{Label: label, Pattern: r.env[pre+"_PATTERN"], Name: r.env[pre+"_NAME"]}
		if m.Pattern == "" {
			r.fail("%s_PATTERN is not set: mogrifier %s needs a pattern", pre, label)
			continue
		}
		if _, err := regexp.Compile(m.Pattern); err != nil {
			r.fail("%s_PATTERN=%q: %v", pre, m.Pattern, err)
			continue
		}
		if m.Name == "" {
			r.fail("%s_NAME is not set: mogrifier %s needs a name", pre, label)
			continue
		}
		if t := r.env[pre+"_TAGS"]; t != "" {
			if err := parse(Map, t); err != nil {
				r.fail("%s_TAGS=%q: %v", pre, t, err)
				continue
			}
			m.Tags = parseMap(t)
			for k, v := range m.Tags {
				if k == "" || v == "" {
					r.fail("%s_TAGS=%q: a tag with an empty key or value", pre, t)
				}
			}
		}
		out = append(out, m)
	}
	return out
}

// parseMap reads an envconfig map (k:v,k2:v2; checked by parse).
func parseMap(v string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(v, ",") {
		k, val, _ := strings.Cut(kv, ":")
		m[k] = val
	}
	return m
}
