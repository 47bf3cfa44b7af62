package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	rlsconf "github.com/envoyproxy/go-control-plane/ratelimit/config/ratelimit/v3"
	goredis "github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halt-envoy/halt-envoy/internal/refenv"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/internal/tlsutil/tlstest"
	"github.com/halt-envoy/halt-envoy/internal/xds/xdstest"
)

// The reference's integration configs (test/integration/runtime/current/ratelimit), the
// data its assertions are about.
var refConfigs = map[string]string{
	"basic.yaml": `domain: basic
descriptors:
  - key: key1
    rate_limit: {unit: second, requests_per_unit: 50}
  - key: one_per_minute
    rate_limit: {unit: minute, requests_per_unit: 1}
`,
	"another.yaml": `domain: another
descriptors:
  - key: key2
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: key3
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: key4
    rate_limit: {unit: day, requests_per_unit: 20}
`,
	"share_threshold.yaml": `domain: share-threshold-test
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: files_no_share
    value: files_no_share/*
    rate_limit: {unit: hour, requests_per_unit: 10}
`,
}

const reloadConfig = `domain: reload
descriptors:
  - key: key1
    rate_limit: {unit: second, requests_per_unit: 50}
  - key: block
    rate_limit: {unit: second, requests_per_unit: 0}
`

// refProcessEnv is the environment of a halt-envoy started from the reference's
// variables only: the test's environment without HALT_* and without any reference
// variable, plus listeners on free loopback ports and kv.
func refProcessEnv(t *testing.T, kv ...string) (env []string, grpcAddr, httpAddr string) {
	t.Helper()
	known := map[string]bool{}
	for _, v := range refenv.Vars() {
		known[v.Name] = true
	}
	for _, e := range testutil.EnvWithoutHalt() {
		name, _, _ := strings.Cut(e, "=")
		if !known[name] {
			env = append(env, e)
		}
	}
	gp, hp, dp := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	env = append(env, "GRPC_HOST=127.0.0.1", fmt.Sprintf("GRPC_PORT=%d", gp), "HOST=127.0.0.1", fmt.Sprintf("PORT=%d", hp),
		"DEBUG_HOST=127.0.0.1", fmt.Sprintf("DEBUG_PORT=%d", dp), "USE_STATSD=false", "LOG_LEVEL=info")
	for i := 0; i+1 < len(kv); i += 2 {
		env = append(env, kv[i]+"="+kv[i+1])
	}
	return env, fmt.Sprintf("127.0.0.1:%d", gp), fmt.Sprintf("127.0.0.1:%d", hp)
}

func startRef(t *testing.T, kv ...string) (*testutil.Process, rlspb.RateLimitServiceClient) {
	t.Helper()
	env, g, h := refProcessEnv(t, kv...)
	p := testutil.StartHalt(t, testutil.HaltOptions{Env: env, NoAddrFlags: true, GRPCAddr: g, HTTPAddr: h, StopSignal: os.Interrupt})
	cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return p, rlspb.NewRateLimitServiceClient(cc)
}

func call(t *testing.T, c rlspb.RateLimitServiceClient, domain string, descs ...[2]string) *rlspb.RateLimitResponse {
	t.Helper()
	req := &rlspb.RateLimitRequest{Domain: domain, HitsAddend: 1}
	for _, d := range descs {
		req.Descriptors = append(req.Descriptors, &rlcommon.RateLimitDescriptor{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: d[0], Value: d[1]}}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.ShouldRateLimit(ctx, req)
	if err != nil {
		t.Fatalf("%s %v: %v", domain, descs, err)
	}
	return resp
}

// status checks one descriptor status as the reference's assertions do: code, limit and
// remaining exactly; the duration until reset present and within the unit (the
// reference compares the whole seconds of the response's own duration: halt's has
// sub-second precision, a documented difference).
func status(t *testing.T, what string, s *rlspb.RateLimitResponse_DescriptorStatus, code rlspb.RateLimitResponse_Code, rpu uint32, unit rlspb.RateLimitResponse_RateLimit_Unit, remaining uint32) {
	t.Helper()
	secs := map[rlspb.RateLimitResponse_RateLimit_Unit]int64{rlspb.RateLimitResponse_RateLimit_SECOND: 1, rlspb.RateLimitResponse_RateLimit_MINUTE: 60, rlspb.RateLimitResponse_RateLimit_HOUR: 3600, rlspb.RateLimitResponse_RateLimit_DAY: 86400}[unit]
	d := s.GetDurationUntilReset().AsDuration()
	if s.GetCode() != code || s.GetCurrentLimit().GetRequestsPerUnit() != rpu || s.GetCurrentLimit().GetUnit() != unit ||
		s.GetLimitRemaining() != remaining || d <= 0 || d > time.Duration(secs)*time.Second {
		t.Fatalf("%s: got %v, want %v %d/%v remaining %d and a reset within the unit", what, s, code, rpu, unit, remaining)
	}
}

// referenceAssertions re-implements, black-box, the response checks of the reference's
// test/integration: basic, several descriptors, duration countdown, share_threshold.
func referenceAssertions(t *testing.T, c rlspb.RateLimitServiceClient) {
	const (
		OK   = rlspb.RateLimitResponse_OK
		OVER = rlspb.RateLimitResponse_OVER_LIMIT
		SEC  = rlspb.RateLimitResponse_RateLimit_SECOND
		MIN  = rlspb.RateLimitResponse_RateLimit_MINUTE
		HOUR = rlspb.RateLimitResponse_RateLimit_HOUR
		DAY  = rlspb.RateLimitResponse_RateLimit_DAY
	)
	// Unknown domain: OK, no limit.
	r := call(t, c, "foo", [2]string{"hello", "world"})
	if r.OverallCode != OK || len(r.Statuses) != 1 || r.Statuses[0].Code != OK || r.Statuses[0].CurrentLimit != nil || r.Statuses[0].LimitRemaining != 0 {
		t.Fatalf("unknown domain: %v", r)
	}
	// basic: 50 a second.
	r = call(t, c, "basic", [2]string{"key1", "foo"})
	if r.OverallCode != OK || len(r.Statuses) != 1 {
		t.Fatalf("basic: %v", r)
	}
	status(t, "basic", r.Statuses[0], OK, 50, SEC, 49)

	// 25 calls against 20 a minute: 20 OK counting down, then over limit. The server's
	// clock started on a minute (minuteClock), so these loops do not straddle two windows.
	v := fmt.Sprint(rand.Int64())
	for i := range 25 {
		r := call(t, c, "another", [2]string{"key2", v})
		want, rem := OK, uint32(20-(i+1))
		if i >= 20 {
			want, rem = OVER, 0
		}
		if r.OverallCode != want {
			t.Fatalf("key2 call %d: overall %v, want %v", i, r.OverallCode, want)
		}
		status(t, fmt.Sprintf("key2 call %d", i), r.Statuses[0], want, 20, MIN, rem)
	}
	// Several descriptors in one call: key2 (20/min) and key3 (10/hour).
	v = fmt.Sprint(rand.Int64())
	for i := range 15 {
		r := call(t, c, "another", [2]string{"key2", v}, [2]string{"key3", v})
		want, rem2 := OK, uint32(10-(i+1))
		if i >= 10 {
			want, rem2 = OVER, 0
		}
		if r.OverallCode != want || len(r.Statuses) != 2 {
			t.Fatalf("two keys call %d: %v", i, r)
		}
		status(t, fmt.Sprintf("two keys call %d, key2", i), r.Statuses[0], OK, 20, MIN, uint32(20-(i+1)))
		status(t, fmt.Sprintf("two keys call %d, key3", i), r.Statuses[1], want, 10, HOUR, rem2)
	}
	// The duration until reset counts down.
	v = "durTest" + fmt.Sprint(rand.Int64())
	r1 := call(t, c, "another", [2]string{"key4", v})
	time.Sleep(2 * time.Second)
	r2 := call(t, c, "another", [2]string{"key4", v})
	status(t, "key4", r2.Statuses[0], OK, 20, DAY, 18)
	if r2.Statuses[0].DurationUntilReset.GetSeconds() >= r1.Statuses[0].DurationUntilReset.GetSeconds() {
		t.Fatalf("duration did not count down: %v then %v", r1.Statuses[0].DurationUntilReset, r2.Statuses[0].DurationUntilReset)
	}
	// share_threshold: every value under files/* shares one counter...
	for i := range 10 {
		r := call(t, c, "share-threshold-test", [2]string{"files", "files/a.pdf"})
		if r.OverallCode != OK && r.OverallCode != OVER {
			t.Fatalf("files call %d: %v", i, r)
		}
	}
	r = call(t, c, "share-threshold-test", [2]string{"files", "files/b.csv"})
	if r.OverallCode != OVER {
		t.Fatalf("files/b.csv shares the threshold: %v", r)
	}
	status(t, "files/b.csv", r.Statuses[0], OVER, 10, HOUR, 0)
	// ... and without it every value has its own.
	for i := range 10 {
		r := call(t, c, "share-threshold-test", [2]string{"files_no_share", fmt.Sprintf("files_no_share/%d-%d", i, rand.Int64())})
		status(t, fmt.Sprintf("files_no_share %d", i), r.Statuses[0], OK, 10, HOUR, 9)
	}
}

func writeRuntime(t *testing.T) (root, configDir string) {
	t.Helper()
	root = t.TempDir()
	configDir = filepath.Join(root, "current", "ratelimit", "config")
	if err := os.MkdirAll(configDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range refConfigs {
		writeConfig(t, configDir, name, body)
	}
	return filepath.Join(root, "current"), configDir
}

func reloads(t *testing.T, p *testutil.Process) string {
	t.Helper()
	for _, l := range strings.Split(get(t, "http://"+p.HTTPAddr+"/metrics"), "\n") {
		if strings.HasPrefix(l, `halt_config_reloads_total{result="success"}`) {
			return l
		}
	}
	return ""
}

// minuteClock starts the server's decision clock on the current minute's first second
// (HALT_TEST_CLOCK_START), so the assertions' loops against minute and hour windows have
// a whole minute before a window ends, whatever the time of day, without sleeping. That
// clock runs up to a minute behind the wall clock: fit only for stores whose keys expire
// relative to their writing (Redis, memcached). The memory store's sweeper (and the
// PostgreSQL cleaner) expire keys on the wall clock and would remove live ones: use
// clockStart, ahead of the wall clock, with them.
func minuteClock() []string {
	return []string{"HALT_TEST_CLOCK_START", time.Now().UTC().Truncate(time.Minute).Format(time.RFC3339)}
}

// TestReferenceIntegration runs the reference's integration assertions against halt
// started from the reference's variables only, on Redis and on memcached, then its
// reload check.
func TestReferenceIntegration(t *testing.T) {
	for _, backend := range []string{"redis", "redis-unix", "memcache"} {
		t.Run(backend, func(t *testing.T) {
			root, configDir := writeRuntime(t)
			kv := []string{"RUNTIME_ROOT", root, "RUNTIME_SUBDIRECTORY", "ratelimit", "RUNTIME_WATCH_ROOT", "false", "RUNTIME_IGNOREDOTFILES", "true",
				"CACHE_KEY_PREFIX", fmt.Sprintf("reftest-%d:", rand.Int64())}
			switch backend {
			case "redis":
				// REDIS_TIMEOUT: halt keeps its 15 ms store timeout otherwise, too short under -race on two shared cores.
				kv = append(kv, "BACKEND_TYPE", "redis", "REDIS_SOCKET_TYPE", "tcp", "REDIS_URL", testutil.Peer(t, "REDIS_ADDR"), "REDIS_TIMEOUT", "2s")
			case "redis-unix":
				// The reference's default socket type: REDIS_URL is the socket's path.
				kv = append(kv, "REDIS_SOCKET_TYPE", "unix", "REDIS_URL", startUnixRedis(t), "REDIS_TIMEOUT", "2s")
			default:
				// HALT_STORE_TIMEOUT: the reference has no memcached timeout, and halt's 15 ms
				// default is too short under -race on two shared cores.
				kv = append(kv, "BACKEND_TYPE", "memcache", "MEMCACHE_HOST_PORT", testutil.Peer(t, "MEMCACHED_ADDR"), "HALT_STORE_TIMEOUT", "2s")
			}
			p, c := startRef(t, append(kv, minuteClock()...)...)
			referenceAssertions(t, c)

			// reload: a file added to the config directory is loaded, and removing it reloads.
			r := call(t, c, "reload", [2]string{"block", "foo"})
			if r.OverallCode != rlspb.RateLimitResponse_OK || r.Statuses[0].CurrentLimit != nil {
				t.Fatalf("reload domain before the file: %v", r)
			}
			before := reloads(t, p)
			writeConfig(t, configDir, "reload.yaml", reloadConfig)
			testutil.WaitFor(t, 20*time.Second, func() bool { return reloads(t, p) != before })
			r = call(t, c, "reload", [2]string{"key1", "foo"})
			status(t, "reload key1", r.Statuses[0], rlspb.RateLimitResponse_OK, 50, rlspb.RateLimitResponse_RateLimit_SECOND, 49)
			before = reloads(t, p)
			if err := os.Remove(filepath.Join(configDir, "reload.yaml")); err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, 20*time.Second, func() bool { return reloads(t, p) != before })
			if r := call(t, c, "reload", [2]string{"key1", "foo"}); r.Statuses[0].CurrentLimit != nil {
				t.Fatalf("the removed file's domain must go: %v", r)
			}
			// The reference's /healthcheck and the debug port.
			if body := get(t, "http://"+p.HTTPAddr+"/healthcheck"); body != "OK" {
				t.Fatalf("/healthcheck: %q", body)
			}
		})
	}
}

// TestReferenceXDS: halt started with only the reference's variables and
// CONFIG_TYPE=GRPC_XDS_SOTW takes its config from a go-control-plane management server,
// applies an update within 2 s, NACKs and logs a broken descriptor with its resource
// and field, and keeps the last config while the server is away.
func TestReferenceXDS(t *testing.T) {
	redisAddr := testutil.Peer(t, "REDIS_ADDR")
	srv := xdstest.Start(t, "127.0.0.1:0", "envoy-ratelimit", nil)
	lim := func(rpu uint32, unit rlsconf.RateLimitUnit) *rlsconf.RateLimitConfig {
		return &rlsconf.RateLimitConfig{Name: "basic", Domain: "basic", Descriptors: []*rlsconf.RateLimitDescriptor{
			{Key: "key1", RateLimit: &rlsconf.RateLimitPolicy{Unit: unit, RequestsPerUnit: rpu}}}}
	}
	srv.Set(t, "1", lim(50, rlsconf.RateLimitUnit_SECOND))
	p, c := startRef(t, "CONFIG_TYPE", "GRPC_XDS_SOTW", "CONFIG_GRPC_XDS_SERVER_URL", srv.Addr, "CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit",
		"XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "100ms", "XDS_CLIENT_BACKOFF_MAX_INTERVAL", "500ms", "CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL", "100ms",
		"RUNTIME_ROOT", "/nonexistent", "REDIS_SOCKET_TYPE", "tcp", "REDIS_URL", redisAddr, "REDIS_TIMEOUT", "2s", "CACHE_KEY_PREFIX", fmt.Sprintf("xdstest-%d:", rand.Int64()))
	v := fmt.Sprint(rand.Int64())
	r := call(t, c, "basic", [2]string{"key1", v})
	status(t, "xds v1", r.Statuses[0], rlspb.RateLimitResponse_OK, 50, rlspb.RateLimitResponse_RateLimit_SECOND, 49)

	// An update is applied within 2 s.
	srv.Set(t, "2", lim(7, rlsconf.RateLimitUnit_MINUTE))
	start := time.Now()
	for call(t, c, "basic", [2]string{"key1", fmt.Sprint(rand.Int64())}).Statuses[0].GetCurrentLimit().GetRequestsPerUnit() != 7 {
		if time.Since(start) > 2*time.Second {
			t.Fatal("update not applied within 2 s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A broken descriptor: NACKed to the server and logged, with the resource and field.
	broken := &rlsconf.RateLimitConfig{Name: "broken", Domain: "broken", Descriptors: []*rlsconf.RateLimitDescriptor{
		{Key: "k", RateLimit: &rlsconf.RateLimitPolicy{RequestsPerUnit: 5}}}}
	srv.Set(t, "3", lim(8, rlsconf.RateLimitUnit_MINUTE), broken)
	testutil.WaitFor(t, 10*time.Second, func() bool { return len(srv.NACKs()) > 0 })
	if msg := srv.NACKs()[0].GetErrorDetail().GetMessage(); !strings.Contains(msg, "xds:broken") || !strings.Contains(msg, "descriptors[0].rate_limit.unit") {
		t.Fatalf("NACK detail %q", msg)
	}
	testutil.WaitFor(t, 10*time.Second, func() bool {
		l := p.Log.String()
		return strings.Contains(l, "NACK") && strings.Contains(l, "xds:broken") && strings.Contains(l, "descriptors[0].rate_limit.unit")
	})
	if got := call(t, c, "basic", [2]string{"key1", v + "x"}).Statuses[0].GetCurrentLimit().GetRequestsPerUnit(); got != 7 {
		t.Fatalf("after the NACK: %d, want the last good 7", got)
	}

	// The management server goes away: the last config serves, and readiness holds.
	srv.Stop()
	time.Sleep(time.Second)
	if got := call(t, c, "basic", [2]string{"key1", v + "y"}).Statuses[0].GetCurrentLimit().GetRequestsPerUnit(); got != 7 {
		t.Fatalf("server away: %d, want 7", got)
	}
	if resp, err := http.Get("http://" + p.HTTPAddr + "/readyz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/readyz with the server away: %v %v", resp, err)
	}
	srv.Restart(t)
	srv.Set(t, "4", lim(9, rlsconf.RateLimitUnit_MINUTE))
	testutil.WaitFor(t, 10*time.Second, func() bool {
		return call(t, c, "basic", [2]string{"key1", fmt.Sprint(rand.Int64())}).Statuses[0].GetCurrentLimit().GetRequestsPerUnit() == 9
	})
	if strings.Contains(p.Log.String(), "panic") {
		t.Fatalf("panic in the log:\n%s", p.Log.String())
	}
}

// TestReferenceStartupErrors: a variable halt cannot honour, a value the reference
// refuses, and contradictory variables stop startup with a message naming them, without
// a panic.
func TestReferenceStartupErrors(t *testing.T) {
	bin := testutil.Binary(t)
	pw := filepath.Join(t.TempDir(), "pw")
	writeConfig(t, filepath.Dir(pw), "pw", "secret")
	for _, c := range []struct {
		kv   []string
		want []string
	}{
		{[]string{"QUOTA_MODE", "true"}, []string{"QUOTA_MODE", "Not a variable of the reference"}},
		{[]string{"USE_STATSD", "true", "USE_PROMETHEUS", "true"}, []string{"USE_STATSD and USE_PROMETHEUS"}},
		{[]string{"BACKEND_TYPE", "dynamo"}, []string{"BACKEND_TYPE"}},
		{[]string{"REDIS_SOCKET_TYPE", "unix"}, []string{"REDIS_SOCKET_TYPE"}},
		{[]string{"REDIS_AUTH", "a", "REDIS_AUTH_FILE", pw}, []string{"REDIS_AUTH and REDIS_AUTH_FILE"}},
		{[]string{"BACKEND_TYPE", "memcache", "MEMCACHE_SRV", "_m._tcp.example", "MEMCACHE_HOST_PORT", "127.0.0.1:1"}, []string{"MEMCACHE_SRV and MEMCACHE_HOST_PORT"}},
		{[]string{"GRPC_PORT", "http"}, []string{"GRPC_PORT"}},
		{[]string{"CONFIG_TYPE", "GRPC_XDS_DELTA"}, []string{"CONFIG_TYPE"}},
	} {
		env, _, _ := refProcessEnv(t, append([]string{"REDIS_SOCKET_TYPE", "tcp", "REDIS_URL", "127.0.0.1:1", "CONFIG_TYPE", "GRPC_XDS_SOTW"}, c.kv...)...)
		cmd := exec.Command(bin)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("%v: started", c.kv)
		}
		for _, w := range c.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("%v: output does not say %q:\n%s", c.kv, w, out)
			}
		}
		if strings.Contains(string(out), "panic") {
			t.Errorf("%v: panic:\n%s", c.kv, out)
		}
	}
}

// TestHaltFlagsWin: halt's own flags and HALT_* win over the reference's variables, and
// the log names what they override.
func TestHaltFlagsWin(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "a.yaml", "domain: own\n")
	env, _, _ := refProcessEnv(t, "REDIS_SOCKET_TYPE", "tcp", "REDIS_URL", "127.0.0.1:1", "SHADOW_MODE", "false", "RUNTIME_ROOT", "/nonexistent")
	env = append(env, "HALT_STORE=memory://", "HALT_CONFIG="+dir)
	p := testutil.StartHalt(t, testutil.HaltOptions{Env: env})
	for _, w := range []string{"--grpc-addr (or HALT_GRPC_ADDR) overrides GRPC_HOST, GRPC_PORT", "--store (or HALT_STORE) overrides", "REDIS_URL", "--config (or HALT_CONFIG) overrides"} {
		if !strings.Contains(p.Log.String(), w) {
			t.Errorf("log does not say %q:\n%s", w, p.Log.String())
		}
	}
	if !strings.Contains(get(t, "http://"+p.HTTPAddr+"/config"), `"own"`) {
		t.Fatal("HALT_CONFIG's domain not served")
	}
	if _, err := net.DialTimeout("tcp", p.GRPCAddr, time.Second); err != nil {
		t.Fatalf("gRPC not on --grpc-addr: %v", err)
	}
}

// TestReferenceModes starts halt from the reference's variables with SHADOW_MODE and
// RESPONSE_DYNAMIC_METADATA (and HALT_STORE, which replaces the reference's store
// variables, defaults included): the call over limit is answered OK with the
// descriptor's own status OVER_LIMIT, quota_mode and metadata load from the runtime
// directory and come back in the dynamic metadata, and an unlimited descriptor answers
// with the reference's limit_remaining.
func TestReferenceModes(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "config")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, dir, "modes.yaml", `
domain: modes
descriptors:
  - key: q
    quota_mode: true
    metadata: {pool: primary}
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: free
    rate_limit: {unlimited: true}
`)
	env, g, h := refProcessEnv(t, "RUNTIME_ROOT", root, "SHADOW_MODE", "true", "RESPONSE_DYNAMIC_METADATA", "true")
	// The decision clock at clockStart: the two calls against one an hour must not
	// straddle the hour's edge.
	env = append(env, "HALT_STORE=memory://", testClockEnv+"="+clockStart)
	p := testutil.StartHalt(t, testutil.HaltOptions{Env: env, NoAddrFlags: true, GRPCAddr: g, HTTPAddr: h, StopSignal: os.Interrupt})
	cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := rlspb.NewRateLimitServiceClient(cc)
	r := call(t, c, "modes", [2]string{"q", "a"})
	if r.OverallCode != rlspb.RateLimitResponse_OK || r.GetDynamicMetadata().GetFields()["metadata"].GetStructValue().GetFields()["pool"].GetStringValue() != "primary" ||
		!r.GetDynamicMetadata().GetFields()["quotaModeEnabled"].GetBoolValue() {
		t.Fatalf("first call: %v", r)
	}
	r = call(t, c, "modes", [2]string{"q", "a"})
	if r.OverallCode != rlspb.RateLimitResponse_OK || r.Statuses[0].Code != rlspb.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("over limit in global shadow mode: overall %v status %v, want OK and OVER_LIMIT", r.OverallCode, r.Statuses[0].Code)
	}
	if v := r.GetDynamicMetadata().GetFields()["quotaModeViolations"].GetListValue().AsSlice(); len(v) != 1 || v[0] != 0.0 {
		t.Errorf("quotaModeViolations %v, want [0]", v)
	}
	if r := call(t, c, "modes", [2]string{"free", "x"}); r.Statuses[0].LimitRemaining != 1<<32-1 || r.Statuses[0].CurrentLimit != nil {
		t.Errorf("unlimited: %v, want limit_remaining 4294967295 and no current limit", r.Statuses[0])
	}
	if !strings.Contains(p.Log.String(), "global shadow mode") {
		t.Errorf("the log does not warn of global shadow mode:\n%s", p.Log.String())
	}
}

// startUnixRedis starts a redis-server of the test's own listening only on a unix socket,
// and returns the socket's path.
func startUnixRedis(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		testutil.Missing(t, "redis-server not installed")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.Command("redis-server", "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testutil.WaitFor(t, 10*time.Second, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return sock
}

// TestReferenceGRPCUDS: with GRPC_UDS halt serves gRPC on that unix socket (instead of
// GRPC_HOST:GRPC_PORT), replacing a socket file a previous run left behind.
func TestReferenceGRPCUDS(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ratelimit.sock")
	// A stale socket: bound once, nobody accepting on it any more.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, filepath.Join(root, "config"), "uds.yaml", "domain: uds\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1}\n")
	env, _, h := refProcessEnv(t, "RUNTIME_ROOT", root, "GRPC_UDS", sock)
	// The decision clock at clockStart: the two calls against one an hour must not
	// straddle the hour's edge.
	env = append(env, "HALT_STORE=memory://", testClockEnv+"="+clockStart)
	testutil.StartHalt(t, testutil.HaltOptions{Env: env, NoAddrFlags: true, GRPCAddr: "unix:" + sock, HTTPAddr: h, StopSignal: os.Interrupt})
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := rlspb.NewRateLimitServiceClient(cc)
	if r := call(t, c, "uds", [2]string{"k", "v"}); r.OverallCode != rlspb.RateLimitResponse_OK {
		t.Fatalf("first call over the socket: %v", r)
	}
	if r := call(t, c, "uds", [2]string{"k", "v"}); r.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("second call over the socket: %v", r)
	}
}

// TestReferenceClientSAN: with GRPC_SERVER_USE_TLS, GRPC_CLIENT_TLS_CACERT and
// GRPC_CLIENT_TLS_SAN, halt answers only clients whose certificate (of that CA) holds the
// name.
func TestReferenceClientSAN(t *testing.T) {
	dir := t.TempDir()
	ca, err := tlstest.NewCA("rl test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue("ratelimit", false, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := srv.Write(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(dir, "ca.pem")
	if err := tlstest.WriteFile(caPath, ca.PEM); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, filepath.Join(root, "config"), "san.yaml", "domain: san\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 5}\n")
	env, g, h := refProcessEnv(t, "RUNTIME_ROOT", root, "GRPC_SERVER_USE_TLS", "true", "GRPC_SERVER_TLS_CERT", cert, "GRPC_SERVER_TLS_KEY", key,
		"GRPC_CLIENT_TLS_CACERT", caPath, "GRPC_CLIENT_TLS_SAN", "envoy.mesh.local")
	env = append(env, "HALT_STORE=memory://")
	testutil.StartHalt(t, testutil.HaltOptions{Env: env, NoAddrFlags: true, GRPCAddr: g, HTTPAddr: h, StopSignal: os.Interrupt})
	try := func(hosts ...string) error {
		c, err := ca.Issue("envoy", true, hosts...)
		if err != nil {
			t.Fatal(err)
		}
		creds := credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{c.TLS()}, MinVersion: tls.VersionTLS12})
		cc, err := grpc.NewClient(g, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = rlspb.NewRateLimitServiceClient(cc).ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "san", Descriptors: []*rlcommon.RateLimitDescriptor{
			{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "k", Value: "v"}}}}})
		return err
	}
	if err := try("envoy.mesh.local"); err != nil {
		t.Errorf("the pinned name: %v", err)
	}
	if err := try("intruder.mesh.local"); err == nil {
		t.Error("a certificate of the CA without the pinned name was answered")
	}
}

// TestReferencePerSecond: with REDIS_PERSECOND the one-second limits are counted in the
// per-second Redis (here on a unix socket, the reference's default socket type) and the
// others in the main one.
func TestReferencePerSecond(t *testing.T) {
	mainAddr := testutil.Peer(t, "REDIS_ADDR")
	sock := startUnixRedis(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, filepath.Join(root, "config"), "ps.yaml", `
domain: ps
descriptors:
  - key: fast
    rate_limit: {unit: second, requests_per_unit: 1000}
  - key: slow
    rate_limit: {unit: minute, requests_per_unit: 1000}
`)
	prefix := fmt.Sprintf("pstest-%d:", rand.Int64())
	_, c := startRef(t, "RUNTIME_ROOT", root, "REDIS_SOCKET_TYPE", "tcp", "REDIS_URL", mainAddr, "REDIS_TIMEOUT", "2s",
		"REDIS_PERSECOND", "true", "REDIS_PERSECOND_URL", sock, "REDIS_PERSECOND_TIMEOUT", "2s", "CACHE_KEY_PREFIX", prefix)
	if r := call(t, c, "ps", [2]string{"fast", "a"}, [2]string{"slow", "b"}); r.OverallCode != rlspb.RateLimitResponse_OK {
		t.Fatalf("call: %v", r)
	}
	keys := func(network, addr string) []string {
		t.Helper()
		rc := goredis.NewClient(&goredis.Options{Network: network, Addr: addr})
		defer rc.Close()
		ks, err := rc.Keys(context.Background(), prefix+"*").Result()
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}
	mainKeys, secondKeys := keys("tcp", mainAddr), keys("unix", sock)
	if len(secondKeys) != 1 || !strings.Contains(secondKeys[0], "fast") {
		t.Errorf("per-second Redis holds %q, want the one-second limit's key alone", secondKeys)
	}
	if len(mainKeys) != 1 || !strings.Contains(mainKeys[0], "slow") {
		t.Errorf("main Redis holds %q, want the minute limit's key alone", mainKeys)
	}
}

// TestReferenceResponseHeaders: with LIMIT_RESPONSE_HEADERS_ENABLED the response carries
// the reference's three headers under LIMIT_*_HEADER's names: the limit, what remains
// and the whole seconds until the window resets.
func TestReferenceResponseHeaders(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, filepath.Join(root, "config"), "h.yaml", "domain: h\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n")
	env, g, h := refProcessEnv(t, "RUNTIME_ROOT", root, "LIMIT_RESPONSE_HEADERS_ENABLED", "true", "LIMIT_REMAINING_HEADER", "X-Left")
	env = append(env, "HALT_STORE=memory://")
	testutil.StartHalt(t, testutil.HaltOptions{Env: env, NoAddrFlags: true, GRPCAddr: g, HTTPAddr: h, StopSignal: os.Interrupt})
	cc, err := grpc.NewClient(g, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	r := call(t, rlspb.NewRateLimitServiceClient(cc), "h", [2]string{"k", "v"})
	got := map[string]string{}
	for _, hv := range r.ResponseHeadersToAdd {
		got[hv.Key] = hv.Value
	}
	reset, err := strconv.Atoi(got["RateLimit-Reset"])
	if got["RateLimit-Limit"] != "5" || got["X-Left"] != "4" || err != nil || reset < 1 || reset > 60 || len(got) != 3 {
		t.Errorf("headers %v: want RateLimit-Limit 5, X-Left 4, RateLimit-Reset 1..60 and nothing else", got)
	}
}

// TestReferenceExpiryJitter: from the reference's variables, EXPIRATION_JITTER_MAX_SECONDS
// reaches the store: Redis keys of a one-second limit are kept well past their 2 s.
func TestReferenceExpiryJitter(t *testing.T) {
	sock := startUnixRedis(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, filepath.Join(root, "config"), "j.yaml", "domain: j\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 100}\n")
	_, c := startRef(t, "RUNTIME_ROOT", root, "REDIS_SOCKET_TYPE", "unix", "REDIS_URL", sock, "REDIS_TIMEOUT", "2s", "EXPIRATION_JITTER_MAX_SECONDS", "3600")
	for i := range 20 {
		call(t, c, "j", [2]string{"k", fmt.Sprint(i)})
	}
	rc := goredis.NewClient(&goredis.Options{Network: "unix", Addr: sock})
	defer rc.Close()
	ctx := context.Background()
	keys, err := rc.Keys(ctx, "*").Result()
	if err != nil || len(keys) != 20 {
		t.Fatalf("keys %v %v", keys, err)
	}
	long := 0
	for _, k := range keys {
		if d, _ := rc.PTTL(ctx, k).Result(); d > 10*time.Second {
			long++
		}
	}
	if long < 15 {
		t.Errorf("%d of 20 keys kept past 10 s with an hour of jitter", long)
	}
}

// TestReferenceStopIncrement: with STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT, on Redis, the
// calls that one descriptor refuses are not charged to the other: what the other has left
// shows it. CACHE_KEY_PREFIX keeps the run's keys apart (and is checked to be applied).
func TestReferenceStopIncrement(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, filepath.Join(root, "config"), "s.yaml", `
domain: stop
descriptors:
  - key: small
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: big
    rate_limit: {unit: minute, requests_per_unit: 10}
`)
	prefix := fmt.Sprintf("stoptest-%d:", rand.Int64())
	_, c := startRef(t, "RUNTIME_ROOT", root, "REDIS_SOCKET_TYPE", "tcp", "REDIS_URL", addr, "REDIS_TIMEOUT", "2s",
		"CACHE_KEY_PREFIX", prefix, "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true", testClockEnv, clockStart)
	for i := range 4 {
		r := call(t, c, "stop", [2]string{"small", "a"}, [2]string{"big", "a"})
		if (r.OverallCode == rlspb.RateLimitResponse_OVER_LIMIT) != (i >= 2) || r.Statuses[1].Code != rlspb.RateLimitResponse_OK {
			t.Fatalf("call %d: %v", i+1, r)
		}
	}
	// Two charged calls and this one: 7 left (without the setting, 5).
	r := call(t, c, "stop", [2]string{"big", "a"})
	status(t, "big after two refused calls", r.Statuses[0], rlspb.RateLimitResponse_OK, 10, rlspb.RateLimitResponse_RateLimit_MINUTE, 7)
	rc := goredis.NewClient(&goredis.Options{Addr: addr})
	defer rc.Close()
	if ks, err := rc.Keys(context.Background(), prefix+"*").Result(); err != nil || len(ks) != 2 {
		t.Errorf("keys under CACHE_KEY_PREFIX %q: %q %v, want small's and big's", prefix, ks, err)
	}
}

// TestStoreKeyPrefixFlag: --store-key-prefix (HALT_STORE_KEY_PREFIX) reaches the store
// and wins over CACHE_KEY_PREFIX.
func TestStoreKeyPrefixFlag(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, filepath.Join(root, "config"), "p.yaml", "domain: p\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n")
	prefix := fmt.Sprintf("flagprefix-%d:", rand.Int64())
	_, c := startRef(t, "RUNTIME_ROOT", root, "REDIS_SOCKET_TYPE", "tcp", "REDIS_URL", addr, "REDIS_TIMEOUT", "2s",
		"CACHE_KEY_PREFIX", "ignored-"+prefix, "HALT_STORE_KEY_PREFIX", prefix)
	call(t, c, "p", [2]string{"k", "v"})
	rc := goredis.NewClient(&goredis.Options{Addr: addr})
	defer rc.Close()
	ctx := context.Background()
	if ks, err := rc.Keys(ctx, prefix+"*").Result(); err != nil || len(ks) != 1 {
		t.Errorf("keys under --store-key-prefix %q: %q %v", prefix, ks, err)
	}
	if ks, _ := rc.Keys(ctx, "ignored-"+prefix+"*").Result(); len(ks) != 0 {
		t.Errorf("CACHE_KEY_PREFIX used although HALT_STORE_KEY_PREFIX was given: %q", ks)
	}
}

// startMemcached starts a memcached of the test's own on a free loopback port (with
// extra arguments), and returns its address and a function that stops it.
func startMemcached(t *testing.T, extra ...string) (addr string, stop func()) {
	t.Helper()
	if _, err := exec.LookPath("memcached"); err != nil {
		testutil.Missing(t, "memcached not installed")
	}
	addr = fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	_, port, _ := net.SplitHostPort(addr)
	args := append([]string{"-l", "127.0.0.1", "-p", port, "-U", "0"}, extra...)
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	cmd := exec.Command("memcached", args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() { once.Do(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) }
	t.Cleanup(stop)
	testutil.WaitFor(t, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr, stop
}

// TestReferenceLocalCache: with LOCAL_CACHE_SIZE_IN_BYTES on memcached, a key over its
// limit is answered OVER_LIMIT without the store: after memcached is stopped, that key
// is still refused (only the local cache can say so) while a fresh key fails open.
func TestReferenceLocalCache(t *testing.T) {
	addr, stop := startMemcached(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, filepath.Join(root, "config"), "lc.yaml", "domain: lc\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n")
	p, c := startRef(t, "RUNTIME_ROOT", root, "BACKEND_TYPE", "memcache", "MEMCACHE_HOST_PORT", addr, "HALT_STORE_TIMEOUT", "2s",
		"LOCAL_CACHE_SIZE_IN_BYTES", "1000000", testClockEnv, clockStart)
	for i := range 3 {
		r := call(t, c, "lc", [2]string{"k", "hot"})
		if (r.OverallCode == rlspb.RateLimitResponse_OVER_LIMIT) != (i == 2) {
			t.Fatalf("call %d: %v", i+1, r)
		}
	}
	stop()
	r := call(t, c, "lc", [2]string{"k", "hot"})
	status(t, "the over-limit key with memcached stopped", r.Statuses[0], rlspb.RateLimitResponse_OVER_LIMIT, 2, rlspb.RateLimitResponse_RateLimit_MINUTE, 0)
	if r := call(t, c, "lc", [2]string{"k", "cold"}); r.OverallCode != rlspb.RateLimitResponse_OK {
		t.Errorf("a fresh key with memcached stopped: %v, want OK (failure mode allow): memcached was not down", r)
	}
	if !strings.Contains(p.Log.String(), "local over-limit cache in front of the store") {
		t.Errorf("the log does not say the cache was added:\n%s", p.Log.String())
	}
}

// TestReferenceMemcacheTLS: BACKEND_TYPE=memcache with MEMCACHE_TLS and its files decides
// on a memcached that speaks only TLS and requires a client certificate; the server's
// certificate names localhost only, so the name given in MEMCACHE_HOST_PORT is what is
// verified (the client dials its address).
func TestReferenceMemcacheTLS(t *testing.T) {
	ca, err := tlstest.NewCA("memcached test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue("memcached", false, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Issue("halt", true)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key, err := srv.Write(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	clientCert, clientKey, err := cli.Write(dir, "client")
	if err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(dir, "ca.pem")
	if err := tlstest.WriteFile(caPath, ca.PEM); err != nil {
		t.Fatal(err)
	}
	addr, _ := startMemcached(t, "-Z", "-o", fmt.Sprintf("ssl_chain_cert=%s,ssl_key=%s,ssl_ca_cert=%s,ssl_verify_mode=2", cert, key, caPath))
	_, port, _ := net.SplitHostPort(addr)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, filepath.Join(root, "config"), "t.yaml", "domain: t\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n")
	_, c := startRef(t, "RUNTIME_ROOT", root, "BACKEND_TYPE", "memcache", "MEMCACHE_HOST_PORT", "localhost:"+port, "HALT_STORE_TIMEOUT", "2s",
		"MEMCACHE_TLS", "true", "MEMCACHE_TLS_CACERT", caPath, "MEMCACHE_TLS_CLIENT_CERT", clientCert, "MEMCACHE_TLS_CLIENT_KEY", clientKey,
		testClockEnv, clockStart)
	// The third call is over limit only if the store counted the first two (a store that
	// cannot be reached fails open).
	for i := range 3 {
		r := call(t, c, "t", [2]string{"k", "v"})
		if (r.OverallCode == rlspb.RateLimitResponse_OVER_LIMIT) != (i == 2) {
			t.Fatalf("call %d: %v", i+1, r)
		}
	}
}

// TestReferenceMergeDomains: with MERGE_DOMAIN_CONFIG two files of one domain serve
// together (each one's limit applies); without it the same files stop startup naming
// both files and the variable.
func TestReferenceMergeDomains(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "config")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, dir, "team-a.yaml", "domain: shared\ndescriptors:\n  - key: a\n    rate_limit: {unit: minute, requests_per_unit: 1}\n")
	writeConfig(t, dir, "team-b.yaml", "domain: shared\ndescriptors:\n  - key: b\n    rate_limit: {unit: minute, requests_per_unit: 2}\n")
	env, g, h := refProcessEnv(t, "RUNTIME_ROOT", root, "MERGE_DOMAIN_CONFIG", "true", testClockEnv, clockStart)
	env = append(env, "HALT_STORE=memory://")
	testutil.StartHalt(t, testutil.HaltOptions{Env: env, NoAddrFlags: true, GRPCAddr: g, HTTPAddr: h, StopSignal: os.Interrupt})
	cc, err := grpc.NewClient(g, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := rlspb.NewRateLimitServiceClient(cc)
	for _, k := range []struct {
		key  string
		over int // the call that is over limit
	}{{"a", 2}, {"b", 3}} {
		for i := 1; i <= k.over; i++ {
			r := call(t, c, "shared", [2]string{k.key, "v"})
			if (r.OverallCode == rlspb.RateLimitResponse_OVER_LIMIT) != (i == k.over) {
				t.Fatalf("%s, call %d: %v", k.key, i, r)
			}
		}
	}
	// Without the variable: a startup error naming both files and the way to merge.
	env, _, _ = refProcessEnv(t, "RUNTIME_ROOT", root)
	env = append(env, "HALT_STORE=memory://")
	cmd := exec.Command(testutil.Binary(t), "serve")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "team-a.yaml") || !strings.Contains(string(out), "team-b.yaml") || !strings.Contains(string(out), "MERGE_DOMAIN_CONFIG") {
		t.Errorf("without MERGE_DOMAIN_CONFIG: %v\n%s", err, out)
	}
}
