package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halt-envoy/halt-envoy/internal/stats/statsdtest"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// statsConfig has a rule of 10 an hour (threshold floor(10 x ratio)), one whose
// request value goes into its key, and one keyed by the whole request descriptor.
const statsConfig = `domain: st
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: route
    value_to_metric: true
    descriptors:
      - key: method
        rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: ip
    detailed_metric: true
    rate_limit: {unit: hour, requests_per_unit: 1000}
`

// startStatsRef starts halt from the reference's variables (a memory store through
// HALT_STORE: no peer needed) with statsConfig, its decision clock at clockStart (the 12
// calls against 10 an hour must not straddle the hour's edge).
func startStatsRef(t *testing.T, kv ...string) rlspb.RateLimitServiceClient {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "ratelimit", "config")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, dir, "st.yaml", statsConfig)
	base := []string{"REDIS_SOCKET_TYPE", "tcp", "REDIS_URL", "127.0.0.1:1", "RUNTIME_ROOT", root, "RUNTIME_SUBDIRECTORY", "ratelimit",
		"STATS_FLUSH_INTERVAL", "100ms", "HALT_STORE", "memory://", testClockEnv, clockStart}
	_, c := startRef(t, append(base, kv...)...)
	return c
}

// hits sends one call of hits (hits_addend) on one descriptor.
func hits(t *testing.T, c rlspb.RateLimitServiceClient, n uint32, kv ...string) rlspb.RateLimitResponse_Code {
	t.Helper()
	d := &rlcommon.RateLimitDescriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.ShouldRateLimit(ctx, &rlspb.RateLimitRequest{Domain: "st", HitsAddend: n, Descriptors: []*rlcommon.RateLimitDescriptor{d}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.OverallCode
}

// statsTraffic: 12 single hits on 10 an hour, then 3 calls of 2 hits with request values.
func statsTraffic(t *testing.T, c rlspb.RateLimitServiceClient) {
	t.Helper()
	for i := range 12 {
		want := rlspb.RateLimitResponse_OK
		if i >= 10 {
			want = rlspb.RateLimitResponse_OVER_LIMIT
		}
		if got := hits(t, c, 1, "user", "alice"); got != want {
			t.Fatalf("call %d: %v, want %v", i, got, want)
		}
	}
	hits(t, c, 2, "route", "api", "method", "GET")
	hits(t, c, 2, "route", "web", "method", "GET")
	hits(t, c, 2, "ip", "10.0.0.1")
}

// TestReferenceStatsd: USE_STATSD (the reference's default) with STATSD_HOST/PORT,
// EXTRA_TAGS and NEAR_LIMIT_RATIO, against a real statsd server: the reference's exact
// stat names and counts in hits, and the same counters on halt's /metrics.
func TestReferenceStatsd(t *testing.T) {
	srv := statsdtest.Start(t, "tcp", false)
	host, port, _ := strings.Cut(srv.Addr, ":")
	c := startStatsRef(t, "USE_STATSD", "true", "STATSD_HOST", host, "STATSD_PORT", port, "EXTRA_TAGS", "cluster:eu1", "NEAR_LIMIT_RATIO", "0.5")
	statsTraffic(t, c)
	const p, tag = "ratelimit.service.rate_limit.st.", ".__cluster=eu1"
	// Threshold floor(10 x 0.5) = 5: hits 6..10 are near; 11 and 12 over.
	for name, want := range map[string]float64{
		p + "user.total_hits" + tag:                             12,
		p + "user.within_limit" + tag:                           10,
		p + "user.near_limit" + tag:                             5,
		p + "user.over_limit" + tag:                             2,
		p + "route_api.method.total_hits" + tag:                 2,
		p + "route_web.method.total_hits" + tag:                 2,
		p + "ip_10.0.0.1.total_hits" + tag:                      2,
		"ratelimit_server.ShouldRateLimit.total_requests" + tag: 15,
	} {
		srv.WaitCounter(t, 10*time.Second, want, name)
	}
	if got := srv.Timings("ratelimit_server.ShouldRateLimit.response_time" + tag); got < 0 {
		t.Errorf("response_time %v", got)
	}
}

// TestRuleCountersOnMetrics: halt's own names on /metrics, without any statsd.
func TestRuleCountersOnMetrics(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "st.yaml", statsConfig)
	p := testutil.StartHalt(t, testutil.HaltOptions{Args: []string{"--config", dir, "--near-limit-ratio", "0.5"},
		Env: append(os.Environ(), testClockEnv+"="+clockStart)}) // as startStatsRef
	cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	c := rlspb.NewRateLimitServiceClient(cc)
	statsTraffic(t, c)
	body := get(t, "http://"+p.HTTPAddr+"/metrics")
	for _, w := range []string{
		`halt_rule_hits_total{domain="st",key="user"} 12`,
		`halt_rule_within_limit_hits_total{domain="st",key="user"} 10`,
		`halt_rule_near_limit_hits_total{domain="st",key="user"} 5`,
		`halt_rule_over_limit_hits_total{domain="st",key="user"} 2`,
		`halt_rule_hits_total{domain="st",key="route_api.method"} 2`,
		`halt_rule_hits_total{domain="st",key="ip_10.0.0.1"} 2`,
		`halt_request_keys{metric="halt_rule_hits_total"} 3`,
	} {
		if !strings.Contains(body, w+"\n") {
			t.Errorf("/metrics lacks %s", w)
		}
	}
}

// TestReferencePrometheus: USE_PROMETHEUS as Envoy Gateway sets it (USE_STATSD=false,
// PROMETHEUS_ADDR, a PROMETHEUS_MAPPER_YAML in the reference's format with a final drop
// rule), and with the built-in mapping.
func TestReferencePrometheus(t *testing.T) {
	mapper := filepath.Join(t.TempDir(), "conf.yaml")
	if err := os.WriteFile(mapper, []byte(`mappings:
  - match: "ratelimit.service.rate_limit.*.*.total_hits"
    name: "ratelimit_service_rate_limit_total_hits"
    timer_type: "histogram"
    labels:
      domain: "$1"
      key1: "$2"
  - match: "ratelimit.service.rate_limit.*.*.*.total_hits"
    name: "ratelimit_service_rate_limit_total_hits"
    timer_type: "histogram"
    labels:
      domain: "$1"
      key1: "$2"
      key2: "$3"
  - match: "ratelimit_server.*.total_requests"
    name: "ratelimit_service_total_requests"
    match_metric_type: counter
    labels:
      grpc_method: "$1"
  - match: "."
    match_type: "regex"
    action: "drop"
    name: "dropped"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{mapper, ""} {
		addr := testutil.FreeAddr(t)
		kv := []string{"USE_STATSD", "false", "USE_PROMETHEUS", "true", "PROMETHEUS_ADDR", addr}
		if file != "" {
			kv = append(kv, "PROMETHEUS_MAPPER_YAML", file)
		}
		c := startStatsRef(t, kv...)
		statsTraffic(t, c)
		want := []string{
			`ratelimit_service_rate_limit_total_hits{domain="st",key1="user"} 12`,
			`ratelimit_service_rate_limit_total_hits{domain="st",key1="route_api",key2="method"} 2`,
			`ratelimit_service_total_requests{grpc_method="ShouldRateLimit"} 15`,
		}
		if file == "" {
			want = append(want, `ratelimit_service_rate_limit_near_limit{domain="st",key1="user"} 2`)
		}
		var body string
		testutil.WaitFor(t, 10*time.Second, func() bool {
			body = get(t, "http://"+addr+"/metrics")
			for _, w := range want {
				if !strings.Contains(body, w+"\n") {
					return false
				}
			}
			return true
		})
		if file != "" && strings.Contains(body, "within_limit") {
			t.Errorf("the drop rule did not drop:\n%s", body)
		}
	}
}

// TestReferenceDogStatsd: USE_DOG_STATSD with a mogrifier set by its variables, to a
// real DogStatsD reader.
func TestReferenceDogStatsd(t *testing.T) {
	srv := statsdtest.Start(t, "udp", true)
	host, port, _ := strings.Cut(srv.Addr, ":")
	c := startStatsRef(t, "USE_STATSD", "false", "USE_DOG_STATSD", "true", "STATSD_HOST", host, "STATSD_PORT", port,
		"EXTRA_TAGS", "cluster:eu1", "USE_DOG_STATSD_MOGRIFIERS", "RL",
		"DOG_STATSD_MOGRIFIER_RL_PATTERN", `^ratelimit\.service\.rate_limit\.([^.]+)\.(.+)\.([a-z_]+)$`,
		"DOG_STATSD_MOGRIFIER_RL_NAME", "ratelimit.service.rate_limit.$3",
		"DOG_STATSD_MOGRIFIER_RL_TAGS", "domain:$1,descriptor:$2")
	statsTraffic(t, c)
	srv.WaitCounter(t, 10*time.Second, 12, "ratelimit.service.rate_limit.total_hits", "cluster=eu1", "descriptor=user", "domain=st")
	srv.WaitCounter(t, 10*time.Second, 2, "ratelimit.service.rate_limit.over_limit", "cluster=eu1", "descriptor=user", "domain=st")
	srv.WaitCounter(t, 10*time.Second, 15, "ratelimit_server.ShouldRateLimit.total_requests", "cluster=eu1")
}

// TestReferenceStatsStartupErrors: two outputs at once (USE_STATSD is true unless set
// false), a mogrifier without its variables, an unreadable mapper file and a ratio
// outside 0..1 stop startup naming the variables.
func TestReferenceStatsStartupErrors(t *testing.T) {
	bin := testutil.Binary(t)
	for _, c := range []struct {
		kv   []string
		want []string
	}{
		{[]string{"USE_STATSD", "", "USE_PROMETHEUS", "true"}, []string{"USE_STATSD and USE_PROMETHEUS", "USE_STATSD is true when unset"}},
		{[]string{"USE_STATSD", "false", "USE_DOG_STATSD", "true", "USE_PROMETHEUS", "true"}, []string{"USE_DOG_STATSD and USE_PROMETHEUS"}},
		{[]string{"USE_STATSD", "false", "USE_DOG_STATSD", "true", "USE_DOG_STATSD_MOGRIFIERS", "X"}, []string{"DOG_STATSD_MOGRIFIER_X_PATTERN"}},
		{[]string{"USE_STATSD", "false", "USE_DOG_STATSD", "true", "USE_DOG_STATSD_MOGRIFIERS", "X", "DOG_STATSD_MOGRIFIER_X_PATTERN", "(", "DOG_STATSD_MOGRIFIER_X_NAME", "n"}, []string{"DOG_STATSD_MOGRIFIER_X_PATTERN"}},
		{[]string{"USE_STATSD", "false", "USE_PROMETHEUS", "true", "PROMETHEUS_MAPPER_YAML", "/nonexistent.yaml"}, []string{"PROMETHEUS_MAPPER_YAML"}},
		{[]string{"NEAR_LIMIT_RATIO", "1.5"}, []string{"NEAR_LIMIT_RATIO"}},
		{[]string{"STATSD_PROTOCOL", "sctp"}, []string{"STATSD_PROTOCOL"}},
	} {
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, "config"), 0o755); err != nil {
			t.Fatal(err)
		}
		writeConfig(t, filepath.Join(root, "config"), "st.yaml", statsConfig)
		env, _, _ := refProcessEnv(t, append([]string{"REDIS_SOCKET_TYPE", "tcp", "REDIS_URL", "127.0.0.1:1", "HALT_STORE", "memory://", "RUNTIME_ROOT", root}, c.kv...)...)
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
