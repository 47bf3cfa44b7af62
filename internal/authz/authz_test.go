package authz_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/halt-envoy/halt-envoy/internal/authz"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

const limitsYAML = `
domain: edge
default_plan: free
plans:
  free:
    rate_limit: {unit: minute, requests_per_unit: 3}
  pro:
    rate_limit: {unit: minute, requests_per_unit: 100}
    quota: {period: daily, requests: 4}
penalties:
  guessing:
    threshold: 3
    ladder: [10m, 1h]
    decay: 1h
  abuse:
    threshold: 2
    ladder: [1m, 10m]
    decay: 1h
exemptions:
  paths: [/healthz]
  private_ranges: true
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
        penalty: abuse
`

const (
	proKey      = "sk_live_pro_0123456789"
	freeKey     = "sk_live_free_abcdef"
	platinumKey = "sk_live_platinum_42"
)

func sum(k string) string { s := sha256.Sum256([]byte(k)); return hex.EncodeToString(s[:]) }

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

type env struct {
	client authv3.AuthorizationClient
	clock  *clock
	logs   *bytes.Buffer
	mu     *sync.Mutex
	m      *metrics.Metrics
	eng    *engine.Engine
	srv    *authz.Server
}

func setup(t testing.TB, authzYAML string) *env {
	t.Helper()
	return setupWith(t, limitsYAML, authzYAML)
}

// setupWith serves ext_authz over real gRPC on loopback with the rate-limit config
// limits, the authz config authzYAML and the key file (acme: pro, bob: free, carol: a
// plan no config defines), on a memory store and a fake clock.
func setupWith(t testing.TB, limits, authzYAML string) *env {
	t.Helper()
	return setupFiles(t, limits, authzYAML, nil)
}

// setupFiles is setupWith with more files beside authz.yaml (a GraphQL schema) and
// options for the gRPC server.
func setupFiles(t testing.TB, limits, authzYAML string, files map[string]string, opts ...grpc.ServerOption) *env {
	t.Helper()
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("keys.yaml", "api_keys:\n  - {sha256: "+sum(proKey)+", customer: acme, plan: pro}\n  - {sha256: "+sum(freeKey)+", customer: bob, plan: free}\n"+
		"  - {sha256: "+sum(platinumKey)+", customer: carol, plan: platinum}\n")
	write("authz.yaml", authzYAML)
	for name, body := range files {
		write(name, body)
	}
	cfg, err := authz.LoadConfig(filepath.Join(dir, "authz.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	set, err := config.Parse(map[string][]byte{"limits.yaml": []byte(limits)})
	if err != nil {
		t.Fatal(err)
	}
	store := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { store.Close() })
	c := &clock{now: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := metrics.New(nil)
	eng, err := engine.New(engine.Config{Store: store, Rules: func() *config.Set { return set }, Clock: c, Metrics: m, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := authz.New(eng, func() *config.Set { return set }, func() *authz.Config { return cfg }, log, m)
	gs := grpc.NewServer(opts...)
	authv3.RegisterAuthorizationServer(gs, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &env{client: authv3.NewAuthorizationClient(cc), clock: c, logs: &logs, mu: &mu, m: m, eng: eng, srv: srv}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

const authzYAML = `
domain: edge
identity:
  - api_key: {header: x-api-key, bearer: true}
api_keys_file: keys.yaml
invalid_key_penalty: guessing
routes:
  - {method: GET, path: "/v1/items/{id}", cost: 1}
  - {method: POST, path: /v1/search, cost: 2, policy: EXPENSIVE_OPERATION}
  - {path: /status, exempt: true}
headers: [ietf, x-ratelimit]
`

func req(method, path, source string, headers map[string]string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: source, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40000}}}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Headers: headers}},
	}}
}

func (e *env) check(t *testing.T, r *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	resp, err := e.client.Check(context.Background(), r)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return resp
}

func status(r *authv3.CheckResponse) int {
	if d := r.GetDeniedResponse(); d != nil {
		return int(d.GetStatus().GetCode())
	}
	if r.GetOkResponse() != nil {
		return 200
	}
	return -1
}

func headers(opts []*corev3.HeaderValueOption) map[string]string {
	m := map[string]string{}
	for _, h := range opts {
		m[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return m
}

const public = "198.51.100.20"

func TestAllowedWithHeadersAndIdentity(t *testing.T) {
	e := setup(t, authzYAML)
	r := e.check(t, req("GET", "/v1/items/42?x=1", public, map[string]string{"x-api-key": proKey}))
	if status(r) != 200 || r.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("allowed: %v", r)
	}
	ok := r.GetOkResponse()
	up := headers(ok.GetHeaders())
	if up["x-halt-customer"] != "acme" || up["x-halt-plan"] != "pro" {
		t.Fatalf("upstream headers %v", up)
	}
	down := headers(ok.GetResponseHeadersToAdd())
	if down["X-RateLimit-Limit"] != "4" || down["X-RateLimit-Remaining"] != "3" || !strings.Contains(down["RateLimit"], "r=3") || down["RateLimit-Policy"] == "" {
		t.Fatalf("rate-limit headers %v (the daily quota of 4 is the tightest)", down)
	}
	md := r.GetDynamicMetadata().AsMap()
	if md["customer"] != "acme" || md["plan"] != "pro" || md["route"] != "GET /v1/items/{id}" {
		t.Fatalf("dynamic metadata %v", md)
	}
	// Bearer works too.
	if r := e.check(t, req("GET", "/v1/items/1", public, map[string]string{"authorization": "Bearer " + freeKey})); status(r) != 200 {
		t.Fatalf("bearer: %v", r)
	}
}

func problemBody(t *testing.T, r *authv3.CheckResponse) map[string]any {
	t.Helper()
	var body map[string]any
	if err := json.Unmarshal([]byte(r.GetDeniedResponse().GetBody()), &body); err != nil {
		t.Fatalf("body is not JSON: %q", r.GetDeniedResponse().GetBody())
	}
	return body
}

func TestUnauthorized(t *testing.T) {
	e := setup(t, authzYAML)
	for _, h := range []map[string]string{nil, {"x-api-key": "wrong"}, {"authorization": "Basic abc"}} {
		r := e.check(t, req("GET", "/v1/items/1", public, h))
		if status(r) != 401 {
			t.Fatalf("%v: %v", h, r)
		}
		if body := problemBody(t, r); body["status"] != float64(401) || body["title"] != "Unauthorized" {
			t.Fatalf("problem body %v", body)
		}
		if headers(r.GetDeniedResponse().GetHeaders())["Content-Type"] != "application/problem+json" {
			t.Fatal("content type")
		}
	}
}

func TestBruteForceLockout(t *testing.T) {
	e := setup(t, authzYAML)
	attacker := "203.0.113.66"
	for i := 0; i < 3; i++ {
		r := e.check(t, req("GET", "/v1/items/1", attacker, map[string]string{"x-api-key": "guess-" + string(rune('a'+i))}))
		want := 401
		if i == 2 {
			want = 403 // the third invalid key starts the lockout
		}
		if status(r) != want {
			t.Fatalf("guess %d: %d", i, status(r))
		}
	}
	// Locked out: even a missing key is refused with 403 and Retry-After.
	r := e.check(t, req("GET", "/v1/items/1", attacker, nil))
	if status(r) != 403 || headers(r.GetDeniedResponse().GetHeaders())["Retry-After"] != "600" {
		t.Fatalf("locked: %v", r)
	}
	// Another address is unaffected, and the keys were never logged.
	if r := e.check(t, req("GET", "/v1/items/1", public, map[string]string{"x-api-key": proKey})); status(r) != 200 {
		t.Fatalf("other address: %v", r)
	}
	e.mu.Lock()
	logs := e.logs.String()
	e.mu.Unlock()
	for _, secret := range []string{"guess-a", "guess-b", proKey} {
		if strings.Contains(logs, secret) {
			t.Fatalf("secret %q in logs:\n%s", secret, logs)
		}
	}
	if !strings.Contains(logs, "key_sha256_prefix") {
		t.Fatalf("invalid keys should be logged by hash:\n%s", logs)
	}
}

func TestRateQuotaAndPenalty(t *testing.T) {
	e := setup(t, authzYAML)
	free := map[string]string{"x-api-key": freeKey}
	for i := 0; i < 3; i++ {
		if r := e.check(t, req("GET", "/v1/items/1", public, free)); status(r) != 200 {
			t.Fatalf("free call %d: %v", i, r)
		}
	}
	r := e.check(t, req("GET", "/v1/items/1", public, free))
	if status(r) != 429 {
		t.Fatalf("rate limit: %v", r)
	}
	h := headers(r.GetDeniedResponse().GetHeaders())
	if h["Retry-After"] == "" || h["X-RateLimit-Remaining"] != "0" {
		t.Fatalf("429 headers %v", h)
	}
	if body := problemBody(t, r); body["detail"] != "rate limit exceeded" {
		t.Fatalf("body %v", body)
	}
	// The second violation (abuse threshold 2) locks bob out: 403.
	e.check(t, req("GET", "/v1/items/1", public, free))
	if r := e.check(t, req("GET", "/v1/items/1", public, free)); status(r) != 403 || problemBody(t, r)["violated_policy"] != "penalty:abuse" {
		t.Fatalf("penalty: %v", r)
	}

	// pro: 4 a day quota. The search route costs 2 and adds the EXPENSIVE_OPERATION preset
	// (a bucket of 2): one search fits, the second is refused by the route's policy.
	pro := map[string]string{"x-api-key": proKey}
	if r := e.check(t, req("POST", "/v1/search", public, pro)); status(r) != 200 {
		t.Fatalf("search: %v", r)
	}
	if r := e.check(t, req("POST", "/v1/search", public, pro)); status(r) != 429 {
		t.Fatalf("second search must hit the route policy: %v", r)
	}
	for i := 0; i < 2; i++ {
		if r := e.check(t, req("GET", "/v1/items/9", public, pro)); status(r) != 200 {
			t.Fatalf("item %d: %v", i, r)
		}
	}
	r = e.check(t, req("GET", "/v1/items/9", public, pro))
	if status(r) != 429 || problemBody(t, r)["detail"] != "quota exhausted for this period" {
		t.Fatalf("quota: %v", r)
	}
	if ra := headers(r.GetDeniedResponse().GetHeaders())["Retry-After"]; ra != "43200" {
		t.Fatalf("quota Retry-After %q, want 43200 (midnight UTC)", ra)
	}
}

func TestExemptAndOddInput(t *testing.T) {
	e := setup(t, authzYAML)
	for _, r := range []*authv3.CheckRequest{
		req("GET", "/healthz", public, nil),               // exempt path, no key needed
		req("GET", "/status", public, nil),                // exempt route
		req("GET", "/v1/items/1", "10.0.0.8", nil),        // private source range
		req("GET", "/v1/items/1", "::ffff:10.0.0.8", nil), // mapped IPv4
	} {
		if got := status(e.check(t, r)); got != 200 {
			t.Fatalf("exempt %v: %d", r.GetAttributes().GetRequest().GetHttp().GetPath(), got)
		}
	}
	// Defined answers for hostile input: never a panic.
	huge := strings.Repeat("k", 64<<10)
	odd := "\x00\x1b\n\u202e" // control characters and a bidi override: valid UTF-8, odd key
	cases := []*authv3.CheckRequest{
		{}, // no attributes at all
		req("", "", "", nil),
		req("GET", "/v1/items/1", "198.51.100.31", map[string]string{"x-api-key": huge}),
		req("GET", "/v1/items/1", "198.51.100.32", map[string]string{"x-api-key": odd}),
		req("GET", "/v1/../healthz", public, nil), // not in normal form: never exempt (path_match strict)
		req("GET", "/v1/items/a%2Fb", public, map[string]string{"x-api-key": proKey}),
		req("GET", "/v1/items/1", "not-an-ip", nil),
	}
	raw := req("GET", "/v1/items/1", "198.51.100.33", nil)
	raw.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x-api-key", RawValue: []byte{0xff, 0xfe, 0x00}}}}
	cases = append(cases, raw)
	unix := req("GET", "/v1/items/1", "", nil)
	unix.Attributes.Source.Address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/run/envoy.sock"}}}
	cases = append(cases, unix)
	want := []int{401, 401, 401, 401, 401, 200, 401, 401, 401}
	for i, r := range cases {
		if got := status(e.check(t, r)); got != want[i] {
			t.Errorf("case %d: status %d, want %d", i, got, want[i])
		}
	}
}

func TestAnonymousAndHeaderIdentity(t *testing.T) {
	e := setup(t, `
domain: edge
identity:
  - api_key: {}
  - header: x-user-id
  - source_address: true
anonymous: {plan: free}
api_keys_file: keys.yaml
`)
	r := e.check(t, req("GET", "/x", public, map[string]string{"x-user-id": "jwt-sub-7"}))
	if status(r) != 200 || headers(r.GetOkResponse().GetHeaders())["x-halt-customer"] != "jwt-sub-7" {
		t.Fatalf("header identity: %v", r)
	}
	// An unknown key with anonymous configured: identified by the next source.
	r = e.check(t, req("GET", "/x", public, map[string]string{"x-api-key": "nope"}))
	if status(r) != 200 || headers(r.GetOkResponse().GetHeaders())["x-halt-customer"] != "ip:"+public {
		t.Fatalf("anonymous by address: %v", r)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key":    "domain: edge\ncolour: blue\n",
		"no domain":      "routes: []\n",
		"plain key":      "domain: edge\napi_keys:\n  - {sha256: sk_live_plaintext, customer: a}\n",
		"bad template":   "domain: edge\nroutes:\n  - {path: \"/v1/{id\"}\n",
		"two identities": "domain: edge\nidentity:\n  - {header: a, source_address: true}\n",
		"missing file":   "domain: edge\napi_keys_file: nope.yaml\n",
		"empty":          "",
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
		os.WriteFile(p, []byte(body), 0o644)
		if _, err := authz.LoadConfig(p); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), filepath.Base(p)) && name != "missing file" {
			t.Errorf("%s: error does not name the file: %v", name, err)
		}
	}
}

func TestWatcherReloadsKeys(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.yaml")
	os.WriteFile(keys, []byte("api_keys:\n  - {sha256: "+sum(proKey)+", customer: acme, plan: pro}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "authz.yaml"), []byte("domain: edge\napi_keys_file: keys.yaml\n"), 0o644)
	results := make(chan error, 10)
	w, err := authz.Watch(context.Background(), filepath.Join(dir, "authz.yaml"), 20*time.Millisecond, nil, func(_ *authz.Config, err error) { results <- err })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	tmp := keys + ".tmp"
	os.WriteFile(tmp, []byte("api_keys:\n  - {sha256: not-hex, customer: x}\n"), 0o644)
	os.Rename(tmp, keys)
	select {
	case err := <-results:
		if err == nil {
			t.Fatal("a bad key file was accepted")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reload after a key file change")
	}
	if w.Current() == nil {
		t.Fatal("lost the last good config")
	}
	os.WriteFile(tmp, []byte("api_keys:\n  - {sha256: "+sum(freeKey)+", customer: bob, plan: free}\n"), 0o644)
	os.Rename(tmp, keys)
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-results:
			if err == nil {
				return
			}
		case <-deadline:
			t.Fatal("good key file not picked up")
		}
	}
}

// TestIdempotencyKey: a request with an Idempotency-Key is decided once (the plan's
// idempotency_ttl): a repeat gets the first answer and is not charged; the key reused for
// another route or cost is answered 422, and a key too long 400, as the IETF
// idempotency-key draft says; neither is charged.
func TestIdempotencyKey(t *testing.T) {
	limits := strings.Replace(limitsYAML, "  free:\n    rate_limit: {unit: minute, requests_per_unit: 3}", "  free:\n    idempotency_ttl: 1h\n    rate_limit: {unit: minute, requests_per_unit: 3}", 1)
	if limits == limitsYAML {
		t.Fatal("the free plan was not found in limitsYAML")
	}
	e := setupWith(t, limits, authzYAML)
	get := func(key string) *authv3.CheckResponse {
		h := map[string]string{"x-api-key": freeKey}
		if key != "" {
			h["idempotency-key"] = key
		}
		return e.check(t, req("GET", "/v1/items/1", public, h))
	}
	remaining := func(r *authv3.CheckResponse) string {
		return headers(r.GetOkResponse().GetResponseHeadersToAdd())["X-RateLimit-Remaining"]
	}
	if r := get("a"); status(r) != 200 || remaining(r) != "2" {
		t.Fatalf("first: %d %v", status(r), r)
	}
	for i := range 3 {
		if r := get("a"); status(r) != 200 || remaining(r) != "2" {
			t.Fatalf("repeat %d: %d %v", i, status(r), r)
		}
	}
	post := e.check(t, req("POST", "/v1/search", public, map[string]string{"x-api-key": freeKey, "idempotency-key": "a"}))
	if status(post) != 422 || problemBody(t, post)["violated_policy"] != "idempotency-key" {
		t.Fatalf("the key reused for another route: %d %v", status(post), post)
	}
	if c := codes.Code(post.GetStatus().GetCode()); c != codes.FailedPrecondition {
		t.Fatalf("the key reused for another route: gRPC status %s, want FailedPrecondition", c)
	}
	for _, k := range []string{strings.Repeat("k", 256), strings.Repeat("k", 1<<20)} {
		if r := get(k); status(r) != 400 || !strings.Contains(problemBody(t, r)["detail"].(string), "the limit is 255") {
			t.Fatalf("a key of %d bytes: %d %v", len(k), status(r), problemBody(t, r))
		}
	}
	if r := get(""); status(r) != 200 || remaining(r) != "1" {
		t.Fatalf("a request without a key after them: %d %s, want 1 left (only the first was charged)", status(r), remaining(r))
	}
}

// idemEnv serves the free plan with idempotency_ttl 1h (3 a minute).
func idemEnv(t *testing.T) *env {
	t.Helper()
	limits := strings.Replace(limitsYAML, "  free:\n    rate_limit: {unit: minute, requests_per_unit: 3}", "  free:\n    idempotency_ttl: 1h\n    rate_limit: {unit: minute, requests_per_unit: 3}", 1)
	if limits == limitsYAML {
		t.Fatal("the free plan was not found in limitsYAML")
	}
	return setupWith(t, limits, authzYAML)
}

// TestIdempotencyKeyIsTheRequests: an Idempotency-Key stands for one request, its
// method, path with query and body (when Envoy sends it): reused for another it is a
// 422 conflict, charged nothing, never a replay of the first admission, so one key
// cannot carry any number of requests past the limit.
func TestIdempotencyKeyIsTheRequests(t *testing.T) {
	e := idemEnv(t)
	send := func(method, path, key, body string) *authv3.CheckResponse {
		h := map[string]string{"x-api-key": freeKey}
		if key != "" {
			h["idempotency-key"] = key
		}
		r := req(method, path, public, h)
		if body != "" {
			r.Attributes.Request.Http.RawBody = []byte(body)
		}
		return e.check(t, r)
	}
	for i := range 50 {
		r := send("GET", fmt.Sprintf("/v1/items/%d", i), "one-key", "")
		if want := map[bool]int{true: 200, false: 422}[i == 0]; status(r) != want {
			t.Fatalf("GET /v1/items/%d with the one key: %d, want %d", i, status(r), want)
		}
	}
	for _, p := range []string{"/v1/items/0?page=2", "/v1/items/0/"} {
		if r := send("GET", p, "one-key", ""); status(r) != 422 {
			t.Fatalf("GET %s with the key of GET /v1/items/0: %d, want 422", p, status(r))
		}
	}
	if r := send("GET", "/v1/items/0", "one-key", ""); status(r) != 200 {
		t.Fatalf("the first request repeated: %d", status(r))
	}
	// The same route and cost with another body: a conflict; the same body: a replay.
	if r := send("POST", "/v1/orders", "body-key", `{"q":"a"}`); status(r) != 200 {
		t.Fatalf("POST with a body: %d", status(r))
	}
	if r := send("POST", "/v1/orders", "body-key", `{"q":"b"}`); status(r) != 422 {
		t.Fatalf("the key reused with another body: %d, want 422", status(r))
	}
	if r := send("POST", "/v1/orders", "body-key", `{"q":"a"}`); status(r) != 200 {
		t.Fatalf("the POST repeated: %d", status(r))
	}
	r := send("GET", "/v1/items/0", "", "")
	if rem := headers(r.GetOkResponse().GetResponseHeadersToAdd())["X-RateLimit-Remaining"]; status(r) != 200 || rem != "0" {
		t.Fatalf("a request without a key after them: %d remaining %q, want 200 and 0 (two keyed requests charged)", status(r), rem)
	}
	if r := send("GET", "/v1/items/1", "", ""); status(r) != 429 {
		t.Fatalf("the fourth charged request: %d, want 429", status(r))
	}
}

// TestIdempotencyKeyIsTheCustomers: the customers of a domain never see each other's
// keys: carol's key sent by bob is bob's own, decided (and charged) for him.
func TestIdempotencyKeyIsTheCustomers(t *testing.T) {
	e := idemEnv(t)
	send := func(apiKey string) *authv3.CheckResponse {
		return e.check(t, req("GET", "/v1/items/1", public, map[string]string{"x-api-key": apiKey, "idempotency-key": "shared"}))
	}
	if r := send(platinumKey); status(r) != 200 {
		t.Fatalf("carol: %d", status(r))
	}
	for i := range 2 {
		r := send(freeKey)
		if rem := headers(r.GetOkResponse().GetResponseHeadersToAdd())["X-RateLimit-Remaining"]; status(r) != 200 || rem != "2" {
			t.Fatalf("bob with carol's key (%d): %d remaining %q, want 200 and 2 (his own request, charged once)", i, status(r), rem)
		}
	}
}

// TestIdempotencyKeyRefusalEnds: a refused request's key is replayed only until the
// refusal's wait ends; a retry after it (as Retry-After told) is decided afresh.
func TestIdempotencyKeyRefusalEnds(t *testing.T) {
	e := idemEnv(t)
	send := func(key string) *authv3.CheckResponse {
		h := map[string]string{"x-api-key": freeKey}
		if key != "" {
			h["idempotency-key"] = key
		}
		return e.check(t, req("GET", "/v1/items/1", public, h))
	}
	for range 3 {
		send("")
	}
	r := send("late")
	after := headers(r.GetDeniedResponse().GetHeaders())["Retry-After"]
	if status(r) != 429 || after != "60" {
		t.Fatalf("over the limit: %d Retry-After %q, want 429 and 60", status(r), after)
	}
	e.clock.Add(30 * time.Second)
	r = send("late")
	if after := headers(r.GetDeniedResponse().GetHeaders())["Retry-After"]; status(r) != 429 || after != "30" {
		t.Fatalf("the refusal repeated within its wait: %d Retry-After %q, want 429 and 30", status(r), after)
	}
	e.clock.Add(30 * time.Second)
	if r := send("late"); status(r) != 200 {
		t.Fatalf("the key retried after the refusal's wait: %d, want 200", status(r))
	}
	if r := send("late"); status(r) != 200 {
		t.Fatalf("that admission repeated: %d", status(r))
	}
	r = send("")
	if rem := headers(r.GetOkResponse().GetResponseHeadersToAdd())["X-RateLimit-Remaining"]; status(r) != 200 || rem != "1" {
		t.Fatalf("after the admission: %d remaining %q, want 1 (the admission charged once)", status(r), rem)
	}
}

// An anonymous caller identified by its source address is its IPv6 network (the
// ipv6_address_prefix, /64 by default): a client rotating through the addresses of its
// /64 shares one limit instead of getting a fresh one at every address. Another /64 is
// another caller; IPv4 (and IPv4-mapped IPv6) is the whole address.
func TestSourceAddressIdentityIsTheIPv6Network(t *testing.T) {
	const anon = `
domain: edge
identity:
  - api_key: {}
  - source_address: true
anonymous: {plan: free}
api_keys_file: keys.yaml
`
	customer := func(r *authv3.CheckResponse) string {
		return headers(r.GetOkResponse().GetHeaders())["x-halt-customer"]
	}
	e := setup(t, anon)
	// free: 3 a minute, shared by the ten addresses of 2001:db8:1:2::/64; and so is
	// the plan's penalty (abuse: locked out at the second violation).
	for i := 1; i <= 10; i++ {
		a := fmt.Sprintf("2001:db8:1:2:%x:%x::%x", i*7919%0x10000, i*31, i)
		r := e.check(t, req("GET", "/x", a, nil))
		want := 200
		switch {
		case i > 5:
			want = 403
		case i > 3:
			want = 429
		}
		if status(r) != want {
			t.Fatalf("address %d (%s) of one /64: status %d, want %d: %v", i, a, status(r), want, r)
		}
		if want == 200 && customer(r) != "ip:2001:db8:1:2::/64" {
			t.Fatalf("address %d (%s): customer %q, want the /64", i, a, customer(r))
		}
	}
	// Another /64 (the next one) has its own limit; so does an IPv4 address, whose
	// IPv4-mapped spelling is the same caller.
	if r := e.check(t, req("GET", "/x", "2001:db8:1:3::1", nil)); status(r) != 200 || customer(r) != "ip:2001:db8:1:3::/64" {
		t.Fatalf("another /64: %v", r)
	}
	for i, a := range []string{"203.0.113.9", "::ffff:203.0.113.9", "::ffff:cb00:7109", "203.0.113.9"} {
		r := e.check(t, req("GET", "/x", a, nil))
		want := 200
		if i == 3 {
			want = 429
		}
		if status(r) != want || (want == 200 && customer(r) != "ip:203.0.113.9") {
			t.Fatalf("IPv4 %s (call %d): status %d, customer %q, want %d as ip:203.0.113.9", a, i+1, status(r), customer(r), want)
		}
	}
	// A zone is dropped (fe80::1%eth0 is a private address, exempt here).
	if r := e.check(t, req("GET", "/x", "2001:db8:9::1%eth0", nil)); status(r) != 200 || customer(r) != "ip:2001:db8:9::/64" {
		t.Fatalf("zoned address: %v", r)
	}

	// ipv6_address_prefix: 128 keys every address on its own.
	e = setup(t, anon+"ipv6_address_prefix: 128\n")
	for i := 1; i <= 5; i++ {
		a := fmt.Sprintf("2001:db8:1:2::%x", i)
		if r := e.check(t, req("GET", "/x", a, nil)); status(r) != 200 || customer(r) != "ip:"+a+"/128" {
			t.Fatalf("prefix 128, address %s: %v", a, r)
		}
	}
}

// TestWatcherIgnoresOtherFiles: a change to a file the authz config does not read (a
// log written beside it, an editor's swap file) does not reload it. Before, every change
// in the directory did: a server logging into the config's directory reloaded every
// debounce interval for ever (each reload's own log line the next change), and every
// reload dropped the persisted-query cache.
func TestWatcherIgnoresOtherFiles(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "keys.yaml"), []byte("api_keys:\n  - {sha256: "+sum(proKey)+", customer: acme, plan: pro}\n"), 0o644)
	authzPath := filepath.Join(dir, "authz.yaml")
	os.WriteFile(authzPath, []byte("domain: edge\napi_keys_file: keys.yaml\n"), 0o644)
	results := make(chan *authz.Config, 100)
	w, err := authz.Watch(context.Background(), authzPath, 20*time.Millisecond, nil, func(c *authz.Config, err error) {
		if err != nil {
			t.Error(err)
		}
		results <- c
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := 0; i < 5; i++ {
		os.WriteFile(filepath.Join(dir, "halt.log"), []byte(strings.Repeat("x", i+1)), 0o644)
		time.Sleep(50 * time.Millisecond) // past the debounce: each write its own reload, before
	}
	os.WriteFile(authzPath, []byte("domain: edge2\napi_keys_file: keys.yaml\n"), 0o644)
	select {
	case c := <-results:
		if c == nil || c.Domain != "edge2" {
			domain := "<failed>"
			if c != nil {
				domain = c.Domain
			}
			t.Fatalf("the first reload (domain %s) is not the authz file's change (a write to another file reloaded it)", domain)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reload after the authz file changed")
	}
}

// TestWatcherSeesConfigMapSwap: mounted from a Kubernetes ConfigMap, the authz file is a
// symlink into ..data, and an update swaps ..data: that reloads it, though no event
// names the file itself.
func TestWatcherSeesConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, domain string) {
		os.Mkdir(filepath.Join(dir, name), 0o755)
		os.WriteFile(filepath.Join(dir, name, "keys.yaml"), []byte("api_keys:\n  - {sha256: "+sum(proKey)+", customer: acme, plan: pro}\n"), 0o644)
		os.WriteFile(filepath.Join(dir, name, "authz.yaml"), []byte("domain: "+domain+"\napi_keys_file: keys.yaml\n"), 0o644)
	}
	version("..v1", "edge")
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"authz.yaml", "keys.yaml"} {
		os.Symlink(filepath.Join("..data", f), filepath.Join(dir, f))
	}
	results := make(chan *authz.Config, 100)
	w, err := authz.Watch(context.Background(), filepath.Join(dir, "authz.yaml"), 20*time.Millisecond, nil, func(c *authz.Config, err error) {
		if err != nil {
			t.Error(err)
		}
		results <- c
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	version("..v2", "edge2")
	os.Symlink("..v2", filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case c := <-results:
			if c != nil && c.Domain == "edge2" {
				return
			}
		case <-deadline:
			t.Fatal("no reload after the ConfigMap's ..data swap")
		}
	}
}
