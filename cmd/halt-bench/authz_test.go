package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"

	"github.com/halt-envoy/halt-envoy/internal/authz"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/server"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// benchPlanRules is a domain whose plan "bench" allows n calls an hour per customer.
func benchPlanRules(n int) string {
	return `
domain: saas
plans:
  bench:
    rate_limit: {unit: hour, requests_per_unit: ` + strconv.Itoa(n) + `, algorithm: token_bucket}
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
`
}

// startHaltAuthz runs an in-process halt-envoy (memory store) with ext_authz: the keys
// halt-bench sends for keys key indexes, on plan bench, and one route.
func startHaltAuthz(t *testing.T, rules string, keys int) string {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"saas.yaml": []byte(rules)})
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	dir := t.TempDir()
	a := defaultAuthz()
	var kf bytes.Buffer
	if err := a.writeAPIKeys(&kf, keys, "bench"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys.yaml"), kf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	authzYAML := "domain: saas\napi_keys_file: keys.yaml\nroutes:\n  - {method: GET, path: \"/v1/items/{id}\", cost: 1}\n"
	if err := os.WriteFile(filepath.Join(dir, "authz.yaml"), []byte(authzYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	acfg, err := authz.LoadConfig(filepath.Join(dir, "authz.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	store := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { store.Close() })
	rulesFn := func() *config.Set { return set }
	m := metrics.New(nil)
	e, err := engine.New(engine.Config{Store: store, StoreName: "memory", Rules: rulesFn, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	az := authz.New(e, rulesFn, func() *authz.Config { return acfg }, nil, m)
	srv, err := server.New(server.Options{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Engine: e, Service: rlsv3.NewService(e, headers.Families{}),
		Register: []func(*grpc.Server){func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, az) }},
		Metrics:  m, Config: rulesFn, DrainTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return srv.GRPCAddr().String()
}

// TestAuthzSpreadsKeys loads halt's ext_authz with distinct API keys: every key is its
// own customer, so the tally is exact (one worker cycles the keys in order).
func TestAuthzSpreadsKeys(t *testing.T) {
	const n, keys = 3, 5
	addr := startHaltAuthz(t, benchPlanRules(n), keys)
	r, err := runLoad(context.Background(), &loadConfig{
		Addr: addr, Method: methodAuthz, Keys: keys, Concurrency: 1, Connections: 1,
		Duration: 500 * time.Millisecond, Authz: defaultAuthz(),
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, r)
	if r.Errors != 0 {
		t.Fatalf("%d errors: %+v", r.Errors, r.ErrorMsgs)
	}
	var want uint64
	for k := range uint64(keys) {
		asked := r.Requests / keys
		if k < r.Requests%keys {
			asked++
		}
		want += min(asked, n)
	}
	if r.OK != want || r.OverLimit != r.Requests-want {
		t.Errorf("ok %d denied %d, want %d and %d (%d requests over %d keys of %d)", r.OK, r.OverLimit, want, r.Requests-want, r.Requests, keys, n)
	}
}

// TestAuthzUnknownKeyIsError sends keys halt does not know: 401 is a set-up error, not
// a rate-limit refusal.
func TestAuthzUnknownKeyIsError(t *testing.T) {
	addr := startHaltAuthz(t, benchPlanRules(100), 2)
	a := defaultAuthz()
	a.KeyValue = "other-{key}"
	r, err := runLoad(context.Background(), &loadConfig{
		Addr: addr, Method: methodAuthz, Keys: 2, Concurrency: 2, Connections: 1,
		Duration: 200 * time.Millisecond, Authz: a,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, r)
	if r.Errors != r.Requests || len(r.ErrorMsgs) != 1 || !strings.Contains(r.ErrorMsgs[0].Message, "HTTP 401") {
		t.Errorf("errors %d of %d, samples %+v: want every call an HTTP 401 error", r.Errors, r.Requests, r.ErrorMsgs)
	}
}

// TestAuthzRequests checks what a CheckRequest carries.
func TestAuthzRequests(t *testing.T) {
	a := defaultAuthz()
	a.SourceBase = "198.18.0.254"
	reqs := a.checkRequests(3)
	for k, want := range []string{"198.18.0.254", "198.18.0.255", "198.18.1.0"} {
		attrs := reqs[k].GetAttributes()
		if got := attrs.GetSource().GetAddress().GetSocketAddress().GetAddress(); got != want {
			t.Errorf("request %d: source %s, want %s", k, got, want)
		}
		h := attrs.GetRequest().GetHttp()
		if h.GetHeaders()["x-api-key"] != "bench-key-"+strconv.Itoa(k) || h.GetPath() != "/v1/items/"+strconv.Itoa(k) ||
			h.GetHeaders()[":path"] != h.GetPath() || h.GetMethod() != "GET" {
			t.Errorf("request %d: %v", k, h)
		}
	}
	a.SourceBase = "255.255.255.255" // the last address: the next one wraps to the base
	if got := a.checkRequests(2)[1].GetAttributes().GetSource().GetAddress().GetSocketAddress().GetAddress(); got != "255.255.255.255" {
		t.Errorf("wrapped source %s", got)
	}
}

// TestEmptyAuthz loads the baseline ext_authz handler, and writes a key file through run.
func TestEmptyAuthz(t *testing.T) {
	addr := startEmpty(t)
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"--addr", addr, "--method", "authz", "--json", "--duration", "300ms",
		"--warmup", "0", "--concurrency", "3", "--keys", "4", "--pid", strconv.Itoa(os.Getpid())}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d; stderr: %s", code, errOut.String())
	}
	var r report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("json: %v\n%s", err, out.String())
	}
	if r.Method != methodAuthz || r.Requests == 0 || r.OK != r.Requests || r.Path != "/v1/items/{key}" || r.ServerCPUPerReqUS == nil {
		t.Errorf("report %+v", r)
	}

	file := filepath.Join(t.TempDir(), "keys.yaml")
	if code := run(context.Background(), []string{"--method", "authz", "--keys", "3", "--plan", "gold", "--write-api-keys", file}, &out, &errOut); code != 0 {
		t.Fatalf("--write-api-keys: exit %d; stderr: %s", code, errOut.String())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// The file is what --authz-config loads: three keys on plan gold.
	dir := filepath.Dir(file)
	if err := os.WriteFile(filepath.Join(dir, "authz.yaml"), []byte("domain: saas\napi_keys_file: keys.yaml\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := authz.LoadConfig(filepath.Join(dir, "authz.yaml")); err != nil {
		t.Fatalf("written key file does not load: %v\n%s", err, b)
	}
	if got := strings.Count(string(b), "plan: gold}"); got != 3 {
		t.Errorf("%d keys on plan gold, want 3:\n%s", got, b)
	}
}

// TestAuthzFlagErrors checks that bad authz flags exit 2.
func TestAuthzFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--method", "authz", "--api-key-header", "X-Api-Key"},
		{"--method", "authz", "--api-key-header", ""},
		{"--method", "authz", "--path", "nopath"},
		{"--method", "authz", "--source", "not-an-ip"},
		{"--method", "authz", "--http-method", ""},
		{"--method", "authz", "--keys", "0", "--write-api-keys", "/nonexistent/x"},
		{"--method", "authz", "--plan", "", "--write-api-keys", "/nonexistent/x"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %s)", args, code, errOut.String())
		}
	}
}
