package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/halt-envoy/halt-envoy/internal/authz"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
)

// TestMain removes the binary built for the run.
func TestMain(m *testing.M) { testutil.Main(m) }

func binary(t *testing.T) string {
	t.Helper()
	return testutil.BinaryVersion(t, "v0.0.0-test")
}

// process is a running halt-envoy with its captured log.
type process struct{ *testutil.Process }

// clockStart is where the binary's decision clock starts in these tests: five minutes
// into an hour, mid-month, so that a test's calls never straddle an hourly window or a
// monthly quota, whatever the wall clock says (the window a test counts in would
// otherwise roll over under it once an hour).
const clockStart = testutil.ClockStart

func start(t *testing.T, args ...string) *process {
	t.Helper()
	return &process{testutil.StartHalt(t, testutil.HaltOptions{
		Binary:   binary(t),
		LogLevel: "debug",
		Args:     args,
		// HALT_STORE empty: the flag default, not the caller's env.
		Env: append(os.Environ(), "HALT_STORE=", testClockEnv+"="+clockStart),
	})}
}

func (p *process) client(t *testing.T) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func rlReq(domain string, kv ...string) *rlspb.RateLimitRequest {
	d := &rlcommon.RateLimitDescriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return &rlspb.RateLimitRequest{Domain: domain, Descriptors: []*rlcommon.RateLimitDescriptor{d}}
}

func writeConfig(t *testing.T, dir, name, body string) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

const limitsV1 = `
domain: e2e
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 2}
`

func TestBinaryServesReloadsAndDrains(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", limitsV1)
	p := start(t, "--config", dir, "--reload-debounce", "50ms")
	cc := p.client(t)
	rls := rlspb.NewRateLimitServiceClient(cc)
	ctx := context.Background()

	codes := func(user string, n int) []rlspb.RateLimitResponse_Code {
		var out []rlspb.RateLimitResponse_Code
		for i := 0; i < n; i++ {
			r, err := rls.ShouldRateLimit(ctx, rlReq("e2e", "user", user))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, r.OverallCode)
		}
		return out
	}
	if got := fmt.Sprint(codes("alice", 3)); got != "[OK OK OVER_LIMIT]" {
		t.Fatalf("v1 decisions %s", got)
	}
	// The decision clock started at clockStart (10:05): the hour's window ends 55 minutes
	// later, less the seconds the test has run.
	r, err := rls.ShouldRateLimit(ctx, rlReq("e2e", "user", "clock"))
	if err != nil {
		t.Fatal(err)
	}
	if reset := r.Statuses[0].GetDurationUntilReset().AsDuration(); reset > 55*time.Minute || reset < 50*time.Minute {
		t.Fatalf("duration_until_reset %v: the clock did not start at %s", reset, clockStart)
	}

	// Health and reflection on the same port.
	hr, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hr.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", hr, err)
	}
	stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	rr, err := stream.Recv()
	if err != nil || !strings.Contains(rr.String(), "envoy.service.ratelimit.v3.RateLimitService") {
		t.Fatalf("reflection: %v %v", rr, err)
	}
	stream.CloseSend() // an open stream would (rightly) hold up the drain below

	// HTTP endpoints.
	for path, want := range map[string]string{
		"/healthz":     "ok",
		"/readyz":      "OK",
		"/healthcheck": "OK",
		"/metrics":     "halt_decisions_total",
		"/config":      `"e2e"`,
	} {
		body := get(t, "http://"+p.HTTPAddr+path)
		if !strings.Contains(body, want) {
			t.Errorf("%s: %q not in %.200q", path, want, body)
		}
	}
	// pprof is not on the HTTP port without --admin-addr or an admin token.
	if resp, err := http.Get("http://" + p.HTTPAddr + "/debug/pprof/"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("/debug/pprof/ on the HTTP port without an admin token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	// The reference's POST /json answers 429 when over limit.
	resp, err := http.Post("http://"+p.HTTPAddr+"/json", "application/json", strings.NewReader(`{"domain":"e2e","descriptors":[{"entries":[{"key":"user","value":"alice"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), "OVER_LIMIT") {
		t.Fatalf("/json: %d %s", resp.StatusCode, body)
	}

	// A broken file keeps the last good config and says so.
	writeConfig(t, dir, "limits.yaml", "domain: e2e\ndescriptors:\n  - key: user\n    rate_limit: {unit: fortnight, requests_per_unit: 2}\n")
	waitFor(t, func() bool {
		return strings.Contains(get(t, "http://"+p.HTTPAddr+"/metrics"), `halt_config_reloads_total{result="failure"}`)
	})
	if got := fmt.Sprint(codes("bob", 3)); got != "[OK OK OVER_LIMIT]" {
		t.Fatalf("after a bad reload the old limits must hold: %s", got)
	}
	if !strings.Contains(p.Log.String(), "limits.yaml:4") {
		t.Errorf("reload error does not name file and line:\n%s", p.Log.String())
	}

	// A good file is picked up by the watcher.
	writeConfig(t, dir, "limits.yaml", strings.Replace(limitsV1, "requests_per_unit: 2", "requests_per_unit: 4", 1))
	waitFor(t, func() bool {
		r, err := rls.ShouldRateLimit(ctx, rlReq("e2e", "user", "probe"))
		return err == nil && r.Statuses[0].GetCurrentLimit().GetRequestsPerUnit() == 4
	})

	// SIGHUP reloads too (debounced): a config with a new domain.
	writeConfig(t, dir, "more.yml", "domain: other\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n")
	p.Cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, func() bool {
		r, err := rls.ShouldRateLimit(ctx, rlReq("other", "k", "v"))
		return err == nil && r.Statuses[0].GetCurrentLimit() != nil
	})

	// SIGTERM drains and exits 0.
	p.Cmd.Process.Signal(syscall.SIGTERM)
	start := time.Now()
	select {
	case err := <-p.Done:
		p.Done <- err // for the cleanup
		t.Logf("drained and exited %v after SIGTERM", time.Since(start))
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, p.Log.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no exit 15s after SIGTERM")
	}
}

func TestBinaryEnvFlags(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", limitsV1)
	grpcAddr, httpAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	cmd := exec.Command(binary(t))
	cmd.Env = append(os.Environ(), "HALT_CONFIG="+dir, "HALT_GRPC_ADDR="+grpcAddr, "HALT_HTTP_ADDR="+httpAddr, "HALT_STORE=memory://?max_keys=1000", "HALT_LOG_FORMAT=json")
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitFor(t, func() bool { return strings.Contains(get(t, "http://"+httpAddr+"/readyz"), "OK") })
	if !strings.Contains(out.String(), `"msg":"halt-envoy serving"`) {
		t.Fatalf("json log expected:\n%s", out.String())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
}

func TestTestClockEnv(t *testing.T) {
	var out bytes.Buffer
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", limitsV1)
	getenv := func(k string) string {
		if k == testClockEnv {
			return "yesterday"
		}
		return ""
	}
	code := run(context.Background(), []string{"serve", "--config", dir, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, &out, &out, getenv)
	if code != 2 || !strings.Contains(out.String(), testClockEnv) || !strings.Contains(out.String(), "yesterday") {
		t.Fatalf("a bad %s: exit %d, %q", testClockEnv, code, out.String())
	}
}

func TestBadStartupInput(t *testing.T) {
	var out bytes.Buffer
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", limitsV1)
	for _, args := range [][]string{
		{"serve", "--config", dir, "--store", "nosuch://x"},
		{"serve", "--config", dir, "--store", "redis://user:hunter2@%zz"},
		{"serve", "--config", filepath.Join(dir, "missing")},
		{"serve", "--log-level", "loud"},
		{"serve", "--headers", "fancy"},
		{"frobnicate"},
	} {
		out.Reset()
		code := run(context.Background(), append(args, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"), &out, &out, func(string) string { return "" })
		if code == 0 {
			t.Errorf("%v: exit 0", args)
		}
		if strings.Contains(out.String(), "hunter2") {
			t.Errorf("%v: password in output: %s", args, out.String())
		}
	}
}

func TestValidateCommand(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "good.yaml", limitsV1)
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"validate", "--config", dir}, &stdout, &stderr, os.Getenv); code != 0 {
		t.Fatalf("good config: exit %d: %s", code, stderr.String())
	}
	writeConfig(t, dir, "bad.yaml", "domain: bad\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: -1}\n  - key: b\n    color: blue\n")
	stdout.Reset()
	stderr.Reset()
	if code := run(context.Background(), []string{"validate", "--config", dir}, &stdout, &stderr, os.Getenv); code == 0 {
		t.Fatal("bad config: exit 0")
	}
	// Every problem, each with file and line.
	for _, want := range []string{"bad.yaml:4", "bad.yaml:6", "color"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("%q missing from:\n%s", want, stderr.String())
		}
	}
	// The shipped configs are valid.
	stderr.Reset()
	if code := run(context.Background(), []string{"validate", "--config", "../../config"}, &stdout, &stderr, os.Getenv); code != 0 {
		t.Fatalf("config/: %s", stderr.String())
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(binary(t), "version").Output()
	if err != nil || !strings.Contains(string(out), "v0.0.0-test") {
		t.Fatalf("%s %v", out, err)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, 15*time.Second, cond)
}

func TestProbe(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", limitsV1)
	p := start(t, "--config", dir)
	var out bytes.Buffer
	if code := run(context.Background(), []string{"probe", "--url", "http://" + p.HTTPAddr + "/healthz"}, &out, &out, os.Getenv); code != 0 {
		t.Fatalf("probe of a live server: exit %d %s", code, out.String())
	}
	if code := run(context.Background(), []string{"probe", "--url", "http://" + testutil.FreeAddr(t) + "/healthz", "--timeout", "500ms"}, &out, &out, os.Getenv); code == 0 {
		t.Fatal("probe of nothing: exit 0")
	}
}

func TestBinaryServesExtAuthz(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", `
domain: edge
default_plan: free
plans:
  free:
    rate_limit: {unit: hour, requests_per_unit: 2}
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
`)
	authzDir := t.TempDir()
	sum := sha256.Sum256([]byte("k-123"))
	writeConfig(t, authzDir, "authz.yaml", "domain: edge\napi_keys:\n  - {sha256: "+hex.EncodeToString(sum[:])+", customer: acme, plan: free}\n")
	p := start(t, "--config", dir, "--authz-config", filepath.Join(authzDir, "authz.yaml"))
	client := authv3.NewAuthorizationClient(p.client(t))
	check := func(key string) int {
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
			Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/x", Headers: map[string]string{"x-api-key": key}}}}}
		resp, err := client.Check(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if d := resp.GetDeniedResponse(); d != nil {
			return int(d.GetStatus().GetCode())
		}
		return 200
	}
	if got := []int{check("k-123"), check("k-123"), check("k-123"), check("wrong")}; fmt.Sprint(got) != "[200 200 429 401]" {
		t.Fatalf("ext_authz answers %v", got)
	}
}

func TestGCPercent(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name     string
		args     []string
		getenv   func(string) string
		inHeap   bool
		want     int
		parseErr string
	}{
		{name: "network store", getenv: env(), want: networkGCPercent},
		{name: "memory keeps Go's default", getenv: env(), inHeap: true, want: 0},
		{name: "GOGC wins", getenv: env("GOGC", "150"), want: 0},
		{name: "flag wins over GOGC", args: []string{"--gc-percent", "200"}, getenv: env("GOGC", "150"), want: 200},
		{name: "env flag", getenv: env("HALT_GC_PERCENT", "300"), inHeap: true, want: 300},
		{name: "negative refused", args: []string{"--gc-percent", "-1"}, getenv: env(), parseErr: "gc-percent must be 0 (automatic) or positive, got -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseServe(tc.args, io.Discard, tc.getenv)
			if tc.parseErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.parseErr) {
					t.Fatalf("parseServe error = %v, want %q", err, tc.parseErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := gcPercent(f, tc.inHeap); got != tc.want {
				t.Fatalf("gcPercent = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestLocalFirstFlushedOnSIGTERM: the hits a local-first limit admitted and had not yet
// sent (its sync_interval is the whole window) reach Redis when halt-envoy stops on
// SIGTERM, and --local-first-announce is refused below its floor.
func TestLocalFirstFlushedOnSIGTERM(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"--local-first-announce", "10ms"}, &out, &errb, os.Getenv); code != 2 || !strings.Contains(errb.String(), "--local-first-announce 10ms: must be at least 100ms") {
		t.Fatalf("--local-first-announce 10ms: exit %d, %s", code, errb.String())
	}
	dir := t.TempDir()
	writeConfig(t, dir, "lf.yaml", `domain: lf
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 100000, consistency: local_first, sync_interval: 1m}
`)
	prefix := fmt.Sprintf("lf-sigterm-%d:", time.Now().UnixNano())
	// --store-timeout: a sync that times out after Redis applied it is sent again (its
	// hits counted twice, the safe way); halt's 15 ms default times out under -race on two
	// shared cores (CI counted 205 of 204), and this test counts exactly.
	p := start(t, "--config", dir, "--store", "redis://"+addr+"/0", "--store-key-prefix", prefix, "--local-first-announce", "100ms", "--store-timeout", "2s")
	rls := rlspb.NewRateLimitServiceClient(p.client(t))
	sent := 0
	call := func() {
		t.Helper()
		r, err := rls.ShouldRateLimit(context.Background(), rlReq("lf", "tenant", "t1"))
		if err != nil || r.OverallCode != rlspb.RateLimitResponse_OK {
			t.Fatalf("call %d: %v %v", sent, r, err)
		}
		sent++
	}
	local := func() float64 {
		resp, err := http.Get("http://" + p.HTTPAddr + "/metrics")
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, `halt_local_first_decisions_total{domain="lf",rule="tenant",where="local"}`) {
				v, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
				return v
			}
		}
		return 0
	}
	// Exact until the replica has counted itself in (two announcements), then local.
	testutil.WaitFor(t, 20*time.Second, func() bool { call(); return local() > 0 })
	for range 200 {
		call()
	}
	p.Term(t, 20*time.Second)

	store, err := all.Open(context.Background(), "redis://"+addr+"/0", backends.Options{Timeout: 5 * time.Second, KeyPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	start, _ := time.Parse(time.RFC3339, clockStart)
	key := engine.LimitKey(nil, "lf", []config.Entry{{Key: "tenant", Value: "t1"}}, nil, algorithms.FixedWindow, 60_000_000)
	op := &backends.Op{Key: string(key), Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 100000, Period: 60_000_000}}
	if err := store.Apply(context.Background(), start.Add(time.Second).UnixMicro(), []*backends.Op{op}); err != nil {
		t.Fatal(err)
	}
	if counted := op.Result.Limit - op.Result.Remaining; counted != int64(sent) {
		t.Fatalf("Redis counts %d of the %d admitted hits after SIGTERM", counted, sent)
	}
}

// authzPenaltyLimits defines the penalty an authz file's abuse block names.
const authzPenaltyLimits = "domain: edge\npenalties:\n  abuse: {threshold: 2, ladder: [10m], decay: 1h}\ndescriptors:\n  - key: customer\n    rate_limit: {unit: minute, requests_per_unit: 10}\n"

// TestValidateAuthzPenalty: validate --authz-config resolves the authz file against the
// config, and refuses an abuse.penalty the config does not define, at its line and column.
func TestValidateAuthzPenalty(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", authzPenaltyLimits)
	adir := t.TempDir()
	az := filepath.Join(adir, "authz.yaml")
	var stdout, stderr bytes.Buffer
	os.WriteFile(az, []byte("domain: edge\nabuse:\n  penalty: abuse\n  fanout: {window: 1m, max: 3}\n"), 0o644)
	if code := run(context.Background(), []string{"validate", "--config", dir, "--authz-config", az}, &stdout, &stderr, os.Getenv); code != 0 {
		t.Fatalf("good authz config: exit %d: %s", code, stderr.String())
	}
	os.WriteFile(az, []byte("domain: edge\nabuse:\n  penalty: nope\n  fanout: {window: 1m, max: 3}\n"), 0o644)
	stderr.Reset()
	if code := run(context.Background(), []string{"validate", "--config", dir, "--authz-config", az}, &stdout, &stderr, os.Getenv); code != 1 {
		t.Fatalf("unknown abuse.penalty: exit %d", code)
	}
	if want := az + `:3:12: abuse.penalty: no penalty named "nope"`; !strings.Contains(stderr.String(), want) {
		t.Fatalf("%q missing from:\n%s", want, stderr.String())
	}
}

// TestAuthzPenaltyKeptOnRulesReload: with both configs loaded, a rate-limit config
// reload that removes the penalty the authz file's abuse.penalty names is refused (the
// last good rules stay), as a reload of the authz file naming a missing one is.
func TestAuthzPenaltyKeptOnRulesReload(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", authzPenaltyLimits)
	results := make(chan error, 10)
	ctx := t.Context()
	src, err := config.Options{}.NewSources(ctx, dir, 20*time.Millisecond, func(_ *config.Set, err error) { results <- err }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	az := filepath.Join(t.TempDir(), "authz.yaml")
	os.WriteFile(az, []byte("domain: edge\nabuse:\n  penalty: abuse\n  fanout: {window: 1m, max: 3}\n"), 0o644)
	m := metrics.New(nil)
	x, err := startAuthz(ctx, az, authz.Caps{}, 20*time.Millisecond, nil, src, slog.New(slog.DiscardHandler), m)
	if err != nil {
		t.Fatal(err)
	}
	defer x.close()
	writeConfig(t, dir, "limits.yaml", strings.Replace(authzPenaltyLimits, "  abuse:", "  other:", 1))
	src.Reload()
	select {
	case err := <-results:
		if want := az + `:3:12: abuse.penalty: no penalty named "abuse"`; err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("rules reload: %v, want %q", err, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reload of the rules")
	}
	if _, ok := src.Current().PenaltyPolicy("abuse"); !ok {
		t.Fatal("the last good rules were not kept")
	}
}
