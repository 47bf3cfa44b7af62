package main

import (
	"flag"
	"fmt"
	"strings"

	"github.com/halt-envoy/halt-envoy/internal/refenv"
	"github.com/halt-envoy/halt-envoy/internal/reload"
)

// givenFlags names the flags set on the command line or by their HALT_<NAME> variable:
// these win over the reference service's variables.
func givenFlags(fs *flag.FlagSet, getenv func(string) string) map[string]bool {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	fs.VisitAll(func(f *flag.Flag) {
		if getenv("HALT_"+strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))) != "" {
			given[f.Name] = true
		}
	})
	return given
}

// applyReference reads the reference service's variables (internal/refenv) and applies
// them to every setting that halt's own flags and HALT_* variables leave unset. Each
// reference variable a given halt setting overrides is named in a note. A variable is
// "set" when it is not empty (getenv cannot tell empty from unset).
func (f *serveFlags) applyReference(given map[string]bool, getenv func(string) string) error {
	env := map[string]string{}
	for _, v := range refenv.Vars() {
		if val := getenv(v.Name); val != "" {
			env[v.Name] = val
		}
	}
	for _, name := range refenv.MogrifierVars(getenv("USE_DOG_STATSD_MOGRIFIERS")) {
		if val := getenv(name); val != "" {
			env[name] = val
		}
	}
	ref, err := refenv.ReadWith(env, refenv.Options{
		ReadFile: func(p string) ([]byte, error) {
			return reload.ReadFile(p, maxSecretFileBytes, "")
		},
		// halt's store setting replaces the reference's store variables: their defaults
		// (REDIS_SOCKET_TYPE=unix and its socket) must not stop a deployment that gives
		// HALT_STORE, such as the Helm chart's with config.source xds.
		StoreGiven: given["store"] || given["store-file"],
	})
	if err != nil {
		return fmt.Errorf("the reference service's variables (envoyproxy/ratelimit):\n%w", err)
	}
	if len(ref.Ignored) > 0 {
		f.notes = append(f.notes, "ignored "+strings.Join(ref.Ignored, ", ")+": no other variable of the reference service is set, so halt's own settings apply")
	}
	if !ref.Active {
		return nil
	}
	f.ref = ref
	f.notes = append(f.notes, ref.Warnings...)
	isSet := map[string]bool{}
	for _, n := range ref.Set {
		isSet[n] = true
	}
	// apply sets *dst from the reference unless one of halt's flags is given; a given
	// flag overriding set reference variables is noted.
	apply := func(flags []string, dst *string, val string, from ...string) {
		var over []string
		for _, n := range from {
			if isSet[n] {
				over = append(over, n)
			}
		}
		for _, fl := range flags {
			if given[fl] {
				if len(over) > 0 {
					f.notes = append(f.notes, fmt.Sprintf("--%s (or HALT_%s) overrides %s", fl, strings.ToUpper(strings.ReplaceAll(fl, "-", "_")), strings.Join(over, ", ")))
				}
				return
			}
		}
		if val != "" {
			*dst = val
		}
	}
	apply([]string{"grpc-addr"}, &f.grpcAddr, ref.GRPCAddr, "GRPC_HOST", "GRPC_PORT", "GRPC_UDS")
	apply([]string{"http-addr"}, &f.httpAddr, ref.HTTPAddr, "HOST", "PORT")
	apply([]string{"admin-addr"}, &f.adminAddr, ref.AdminAddr, "DEBUG_HOST", "DEBUG_PORT")
	apply([]string{"log-level"}, &f.logLevel, ref.LogLevel, "LOG_LEVEL")
	apply([]string{"log-format"}, &f.logFormat, ref.LogFormat, "LOG_FORMAT")
	storeVars := append([]string{"REDIS_AUTH", "REDIS_AUTH_FILE", "REDIS_POOL_SIZE", "REDIS_TLS", "REDIS_TIMEOUT", "MEMCACHE_MAX_IDLE_CONNS"}, ref.StoreFrom...)
	apply([]string{"store", "store-file"}, &f.store, ref.Store, storeVars...)
	apply([]string{"store-per-second", "store", "store-file"}, &f.storePerSecond, ref.PerSecondStore, "REDIS_PERSECOND")
	apply([]string{"store-key-prefix"}, &f.keyPrefix, ref.KeyPrefix, "CACHE_KEY_PREFIX")
	if given["store-local-cache"] {
		if isSet["LOCAL_CACHE_SIZE_IN_BYTES"] {
			f.notes = append(f.notes, "--store-local-cache (or HALT_STORE_LOCAL_CACHE) overrides LOCAL_CACHE_SIZE_IN_BYTES")
		}
	} else {
		f.localCache = ref.LocalCacheBytes
	}
	if ref.StoreTimeout > 0 && !given["store-timeout"] && !given["store"] && !given["store-file"] {
		f.storeTimeout = ref.StoreTimeout
	}
	runtime := []string{"CONFIG_TYPE", "RUNTIME_ROOT", "RUNTIME_SUBDIRECTORY", "RUNTIME_APPDIRECTORY"}
	if ref.XDS != nil {
		// The reference reads no file with xDS; halt adds the files of --config when given.
		apply([]string{"config"}, &f.config, "-", runtime[1:]...)
		if !given["config"] {
			f.config = ""
		}
	} else {
		apply([]string{"config"}, &f.config, ref.ConfigDir, runtime...)
	}
	f.stats.applyReference(ref.Stats, given)
	applyBool := func(flag string, dst *bool, val bool, from string) {
		if given[flag] {
			if isSet[from] {
				f.notes = append(f.notes, fmt.Sprintf("--%s (or HALT_%s) overrides %s", flag, strings.ToUpper(strings.ReplaceAll(flag, "-", "_")), from))
			}
			return
		}
		*dst = val
	}
	applyBool("shadow-mode", &f.shadowMode, ref.ShadowMode, "SHADOW_MODE")
	applyBool("stop-increment-over-limit", &f.stopIncrement, ref.StopIncrement, "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT")
	applyBool("merge-domains", &f.caps.merge, ref.MergeDomains, "MERGE_DOMAIN_CONFIG")
	if given["store-expiry-jitter"] {
		if isSet["EXPIRATION_JITTER_MAX_SECONDS"] {
			f.notes = append(f.notes, "--store-expiry-jitter (or HALT_STORE_EXPIRY_JITTER) overrides EXPIRATION_JITTER_MAX_SECONDS")
		}
	} else {
		f.expiryJitter = ref.ExpiryJitter
	}
	if n := ref.HeaderNames; n != nil {
		// The reference's headers are halt's X-RateLimit family under its names.
		if given["headers"] {
			f.notes = append(f.notes, "--headers (or HALT_HEADERS) overrides LIMIT_RESPONSE_HEADERS_ENABLED")
		} else {
			f.headers = "x-ratelimit"
		}
		apply([]string{"x-ratelimit-names"}, &f.xNames, strings.Join(n[:], ","), "LIMIT_LIMIT_HEADER", "LIMIT_REMAINING_HEADER", "LIMIT_RESET_HEADER")
	}
	applyBool("response-dynamic-metadata", &f.dynamicMetadata, ref.DynamicMetadata, "RESPONSE_DYNAMIC_METADATA")
	f.trace.applyReference(ref.Tracing, given)
	if ref.TLS != nil {
		tlsGiven := given["tls-cert"] || given["tls-key"] || given["tls-client-ca"] || given["tls-client-san"]
		apply([]string{"tls-cert", "tls-key", "tls-client-ca", "tls-client-san"}, new(string), "", "GRPC_SERVER_USE_TLS", "GRPC_SERVER_TLS_CERT", "GRPC_SERVER_TLS_KEY", "GRPC_CLIENT_TLS_CACERT", "GRPC_CLIENT_TLS_SAN")
		if !tlsGiven {
			f.tlsCert, f.tlsKey, f.tlsClientCA, f.tlsClientSAN = ref.TLS.Cert, ref.TLS.Key, ref.TLS.ClientCA, ref.TLS.ClientSAN
			f.tlsGRPCOnly = true
		}
	}
	return nil
}
