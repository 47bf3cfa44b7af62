package middleware_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
	"github.com/halt-envoy/halt-envoy/pkg/halt"
	"github.com/halt-envoy/halt-envoy/pkg/middleware"
)

type clock struct{ t atomic.Int64 }

func (c *clock) Now() time.Time      { return time.UnixMicro(c.t.Load()) }
func (c *clock) Add(d time.Duration) { c.t.Add(d.Microseconds()) }

func newClock() *clock {
	c := &clock{}
	c.t.Store(time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC).UnixMicro())
	return c
}

func newStore(t *testing.T) backends.Store {
	t.Helper()
	m := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { m.Close() })
	return m
}

// newEngine is an Engine on cfg, a fresh memory store (or store) and a frozen clock.
func newEngine(t *testing.T, cfg halt.Config, store backends.Store, opts ...halt.Option) (*halt.Engine, *clock) {
	t.Helper()
	if store == nil {
		store = newStore(t)
	}
	c := newClock()
	h, err := halt.New(store, cfg, append([]halt.Option{halt.WithClock(c)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return h, c
}

func mw(t *testing.T, h *halt.Engine, opts ...middleware.Option) http.Handler {
	t.Helper()
	m, err := middleware.New(h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return m(ok)
}

var ok = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })

func do(h http.Handler, remote, path string, hdr map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, path, nil)
	r.RemoteAddr = remote
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func wantHeaders(t *testing.T, w *httptest.ResponseRecorder, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}

const perAddress = `
domain: web
descriptors:
  - key: remote_address
    rate_limit: {name: api, unit: minute, requests_per_unit: 2}
`

func TestDenyWithProblemAndHeaders(t *testing.T) {
	h, _ := newEngine(t, halt.YAML(perAddress), nil)
	s := mw(t, h)
	for i := range 2 {
		w := do(s, "203.0.113.7:5555", "/v1/things", nil)
		if w.Code != 200 {
			t.Fatalf("request %d: %d", i, w.Code)
		}
		if got := w.Header().Get("X-RateLimit-Remaining"); got != []string{"1", "0"}[i] {
			t.Fatalf("request %d remaining %q", i, got)
		}
	}
	w := do(s, "203.0.113.7:5555", "/v1/things", nil)
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("third request: %d", w.Code)
	}
	wantHeaders(t, w, map[string]string{
		"Content-Type":          "application/problem+json",
		"Retry-After":           "60",
		"X-RateLimit-Limit":     "2",
		"X-RateLimit-Remaining": "0",
		"X-RateLimit-Reset":     "60",
		"RateLimit-Policy":      `"api";q=2;w=60`,
		"RateLimit":             `"api";r=0;t=60`,
	})
	// ext_authz's body, byte for byte.
	if got := w.Body.String(); got != `{"detail":"rate limit exceeded","retry_after_seconds":60,"status":429,"title":"Too Many Requests","type":"about:blank","violated_policy":"api"}` {
		t.Fatalf("problem body %s", got)
	}
	// Another client is unaffected.
	if w := do(s, "198.51.100.1:1", "/v1/things", nil); w.Code != 200 {
		t.Fatalf("another client: %d", w.Code)
	}
}

// TestQuickStart: docs/library.md's quick start, one line over a preset, answers as the
// page shows: PUBLIC_API is a token bucket of 100 a minute, so the empty bucket's next
// token is 600 ms away, one second once rounded up, on the call that took the last
// token as on the refused one.
func TestQuickStart(t *testing.T) {
	store := newStore(t)
	s := middleware.MustLimit(store, halt.Preset("PUBLIC_API"))(ok)
	var w *httptest.ResponseRecorder
	for range 100 {
		w = do(s, "203.0.113.7:5555", "/v1/things", nil)
	}
	want := map[string]string{
		"RateLimit-Policy":      `"PUBLIC_API";q=100;w=60`,
		"RateLimit":             `"PUBLIC_API";r=0;t=1`,
		"X-RateLimit-Limit":     "100",
		"X-RateLimit-Remaining": "0",
		"X-RateLimit-Reset":     "1",
	}
	if w.Code != 200 {
		t.Fatalf("100th call: %d", w.Code)
	}
	wantHeaders(t, w, want)
	w = do(s, "203.0.113.7:5555", "/v1/things", nil)
	if w.Code != 429 {
		t.Fatalf("101st call: %d", w.Code)
	}
	want["Retry-After"] = "1"
	wantHeaders(t, w, want)
	if !strings.Contains(w.Body.String(), `"violated_policy":"PUBLIC_API"`) {
		t.Errorf("body %s", w.Body.String())
	}
}

func TestMustLimitPanicsOnABadConfiguration(t *testing.T) {
	defer func() {
		r := recover()
		if r == nil || !strings.Contains(r.(string), "PUBLIC_APPI") || !strings.Contains(r.(string), "PUBLIC_API") {
			t.Fatalf("recovered %v, want the unknown preset named with the valid ones", r)
		}
	}()
	middleware.MustLimit(newStore(t), halt.Preset("PUBLIC_APPI"))
}

func TestHeaderFamiliesSwitch(t *testing.T) {
	h, _ := newEngine(t, halt.Preset("INTERNAL_SERVICE"), nil)
	w := do(mw(t, h, middleware.WithHeaders(middleware.Headers{IETF: true})), "203.0.113.7:1", "/", nil)
	if w.Header().Get("X-RateLimit-Limit") != "" || w.Header().Get("RateLimit") == "" {
		t.Fatalf("IETF only: %v", w.Header())
	}
	w = do(mw(t, h, middleware.WithHeaders(middleware.Headers{})), "203.0.113.7:1", "/", nil)
	if w.Header().Get("X-RateLimit-Limit") != "" || w.Header().Get("RateLimit") != "" || w.Header().Get("RateLimit-Policy") != "" {
		t.Fatalf("no headers: %v", w.Header())
	}
}

// TestExemptions: the domain's exemptions, probed with the client address and the path
// as received, exactly as ext_authz probes them.
func TestExemptions(t *testing.T) {
	cfg := halt.Build(halt.Domain{
		Name:  "web",
		Rules: []halt.Rule{{Key: halt.AddressKey, Limits: []halt.Policy{{Requests: 1, Per: time.Hour}}}},
		Exemptions: &halt.Exemptions{
			Paths:         []string{"/healthz", "/static/*"},
			PrivateRanges: true,
			CIDRs:         []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		},
	})
	h, _ := newEngine(t, cfg, nil)
	s := mw(t, h)
	for _, c := range []struct{ remote, path string }{
		{"203.0.113.7:1", "/healthz"},
		{"203.0.113.7:1", "/healthz?verbose=1"},
		{"203.0.113.7:1", "/static/app.js"},
		{"10.1.2.3:1", "/api"},
		{"[::1]:1", "/api"},
		{"[fd00::1]:1", "/api"},
		{"198.51.100.9:1", "/api"},
	} {
		for range 3 {
			if w := do(s, c.remote, c.path, nil); w.Code != 200 || w.Header().Get("X-RateLimit-Limit") != "" {
				t.Fatalf("%s %s: %d %v (want exempt: 200, no headers)", c.remote, c.path, w.Code, w.Header())
			}
		}
	}
	// Paths are matched strictly, as received: a path that resolves to an exempt one is
	// not exempt.
	for _, p := range []string{"/v1/../healthz", "/static/%2e%2e/admin"} {
		do(s, "203.0.113.8:1", p, nil)
		if w := do(s, "203.0.113.8:1", p, nil); w.Code != 429 {
			t.Fatalf("%s: %d, want counted", p, w.Code)
		}
	}
	do(s, "203.0.113.7:1", "/api", nil)
	if w := do(s, "203.0.113.7:1", "/api", nil); w.Code != 429 {
		t.Fatalf("public client, second request: %d", w.Code)
	}
	// Only a path in normal form is exempt (the server's path_match: strict): dot
	// segments, "//" and encoded dots or slashes are counted like any path.
	for _, p := range []string{"/static/../api", "/static/%2e%2e/api", "/static%2F..%2Fapi", "//healthz", "/static/./x"} {
		if w := do(s, "198.18.0.1:1", p, nil); w.Header().Get("X-RateLimit-Limit") == "" {
			t.Errorf("%s: exempt, want counted", p)
		}
	}
}

func TestTrustedProxies(t *testing.T) {
	proxies := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "10.0.0.5:1234"
	r.Header.Add("X-Forwarded-For", "1.1.1.1, 203.0.113.7")
	r.Header.Add("X-Forwarded-For", "10.0.0.9")
	if got := middleware.ClientAddr(r, proxies); got != netip.MustParseAddr("203.0.113.7") {
		t.Fatalf("behind trusted proxies: %s", got)
	}
	if got := middleware.ClientAddr(r, nil); got != netip.MustParseAddr("10.0.0.5") {
		t.Fatalf("no trusted proxies: %s", got)
	}
	r.RemoteAddr = "203.0.113.99:1" // not a proxy: its X-Forwarded-For is the client's own word
	if got := middleware.ClientAddr(r, proxies); got != netip.MustParseAddr("203.0.113.99") {
		t.Fatalf("untrusted peer: %s", got)
	}
	r.RemoteAddr = "10.0.0.5:1"
	r.Header.Set("X-Forwarded-For", "garbage, 10.0.0.7")
	if got := middleware.ClientAddr(r, proxies); got != netip.MustParseAddr("10.0.0.7") {
		t.Fatalf("garbage hop: %s", got)
	}

	h, _ := newEngine(t, halt.YAML(`
domain: web
descriptors:
  - key: remote_address
    rate_limit: {unit: hour, requests_per_unit: 1}
`), nil)
	s := mw(t, h, middleware.TrustProxies(proxies...))
	if w := do(s, "10.0.0.5:1", "/", map[string]string{"X-Forwarded-For": "203.0.113.1"}); w.Code != 200 {
		t.Fatal(w.Code)
	}
	if w := do(s, "10.0.0.5:1", "/", map[string]string{"X-Forwarded-For": "203.0.113.2"}); w.Code != 200 {
		t.Fatalf("a second client behind the same proxy was limited: %d", w.Code)
	}
	if w := do(s, "10.0.0.6:1", "/", map[string]string{"X-Forwarded-For": "203.0.113.1"}); w.Code != 429 {
		t.Fatalf("the first client through another proxy: %d", w.Code)
	}
}

func TestHeaderDescriptorAndCost(t *testing.T) {
	// A token bucket with over_charge: refuse: a refused request takes nothing (a fixed
	// window counts it too; the default, drain, would take the 4 left).
	h, _ := newEngine(t, halt.YAML(`
domain: web
descriptors:
  - key: api_key
    over_charge: refuse
    rate_limit: {unit: hour, requests_per_unit: 10, algorithm: token_bucket}
`), nil)
	cost := middleware.WithCost(func(r *http.Request) int64 {
		if r.URL.Path == "/export" {
			return 6
		}
		return 1
	})
	s := mw(t, h, middleware.Descriptor(middleware.Header("X-API-Key", "api_key")), cost)
	key := map[string]string{"X-API-Key": "k1"}
	if w := do(s, "203.0.113.7:1", "/export", key); w.Code != 200 || w.Header().Get("X-RateLimit-Remaining") != "4" {
		t.Fatalf("export: %d %v", w.Code, w.Header())
	}
	if w := do(s, "203.0.113.8:1", "/export", key); w.Code != 429 {
		t.Fatalf("second export from another address, same key: %d", w.Code)
	}
	if w := do(s, "203.0.113.8:1", "/list", key); w.Code != 200 {
		t.Fatalf("cheap call: %d", w.Code)
	}
	// No key: no descriptor, not limited (Envoy sends no call).
	for range 20 {
		if w := do(s, "203.0.113.7:1", "/export", nil); w.Code != 200 || w.Header().Get("X-RateLimit-Limit") != "" {
			t.Fatalf("keyless: %d", w.Code)
		}
	}
	// A cost above the limit can never pass, but still gets a Retry-After.
	big := mw(t, h, middleware.Descriptor(middleware.Header("X-API-Key", "api_key")), middleware.WithCost(func(*http.Request) int64 { return 11 }))
	if w := do(big, "203.0.113.7:1", "/", key); w.Code != 429 || w.Header().Get("Retry-After") == "" {
		t.Fatalf("cost above limit: %d %v", w.Code, w.Header())
	}
	neg := mw(t, h, middleware.Descriptor(middleware.Header("X-API-Key", "api_key")), middleware.WithCost(func(*http.Request) int64 { return -1 }))
	if w := do(neg, "203.0.113.7:1", "/", key); w.Code != 500 {
		t.Fatalf("negative cost: %d", w.Code)
	}
	// A value the engine refuses is a 400, never a way out of the limits.
	long := map[string]string{"X-API-Key": strings.Repeat("k", halt.MaxKeyLen+1)}
	if w := do(s, "203.0.113.7:1", "/", long); w.Code != 400 || !strings.Contains(w.Body.String(), "1024") {
		t.Fatalf("over-long key: %d %s", w.Code, w.Body.String())
	}
}

const saasYAML = `
domain: api
plans:
  gold:
    rate_limit: {unit: minute, requests_per_unit: 3}
    quota: {period: daily, requests: 4}
    penalty: abuse
penalties:
  abuse: {threshold: 2, ladder: [1m, 10m], decay: 1h}
descriptors:
  - key: user
    descriptors:
      - key: plan
        plan_from_value: true
  - key: route
    value: "POST /export"
    cost: 5
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: tenant
    allow_algorithm_override: true
    rate_limit: {unit: minute, requests_per_unit: 2}
`

// TestPlansQuotasPenalties: the user from the context and the plan from a header pick a
// plan's limits, quota and penalty; the route is its own descriptor with a cost.
func TestPlansQuotasPenalties(t *testing.T) {
	h, clk := newEngine(t, halt.YAML(saasYAML), nil)
	mux := http.NewServeMux()
	mux.Handle("GET /items/{id}", ok)
	mux.Handle("POST /export", ok)
	limit, err := middleware.New(h,
		middleware.Descriptor(middleware.User("user"), middleware.Header("X-Plan", "plan")),
		middleware.Descriptor(middleware.Route("route", mux)),
	)
	if err != nil {
		t.Fatal(err)
	}
	s := limit(mux)
	call := func(user, method, path string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, nil)
		r.RemoteAddr = "203.0.113.7:1"
		r.Header.Set("X-Plan", "gold")
		if user != "" {
			r = r.WithContext(middleware.WithUser(r.Context(), user))
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w
	}
	for i := range 3 {
		if w := call("ann", "GET", "/items/"+string(rune('1'+i))); w.Code != 200 || w.Header().Get("RateLimit-Policy") != `"gold";q=3;w=60` {
			t.Fatalf("call %d: %d %v", i, w.Code, w.Header())
		}
	}
	// Over the plan's rate limit: 429, a violation.
	if w := call("ann", "GET", "/items/1"); w.Code != 429 {
		t.Fatalf("4th call: %d", w.Code)
	}
	clk.Add(time.Minute)
	// The daily quota (4) has one left: the 5th call takes it, the 6th is refused by it.
	if w := call("ann", "GET", "/items/1"); w.Code != 200 {
		t.Fatalf("5th call: %d", w.Code)
	}
	w := call("ann", "GET", "/items/1")
	if w.Code != 429 || !strings.Contains(w.Body.String(), "quota exhausted") || !strings.Contains(w.Body.String(), `"violated_policy":"quota:daily"`) {
		t.Fatalf("6th call: %d %s", w.Code, w.Body.String())
	}
	// Two violations lock ann out: 403, no rate-limit headers, Retry-After.
	w = call("ann", "GET", "/items/1")
	if w.Code != 403 || w.Header().Get("RateLimit") != "" || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "locked out") {
		t.Fatalf("locked out: %d %v %s", w.Code, w.Header(), w.Body.String())
	}
	// Without a user there is no plan descriptor; the route's still counts 5 an export.
	for i := range 2 {
		if w := call("", "POST", "/export"); w.Code != 200 || w.Header().Get("X-RateLimit-Remaining") != []string{"5", "0"}[i] {
			t.Fatalf("export %d: %d %v", i, w.Code, w.Header())
		}
	}
	if w := call("", "POST", "/export"); w.Code != 429 {
		t.Fatalf("third export: %d", w.Code)
	}
}

// TestAlgorithmOverride: a request asks for another algorithm with the reserved entry,
// where its rule allows it; it keeps a counter of its own.
func TestAlgorithmOverride(t *testing.T) {
	h, _ := newEngine(t, halt.YAML(saasYAML), nil)
	s := mw(t, h, middleware.Descriptor(middleware.Header("X-Tenant", "tenant"), middleware.Header("X-Algorithm", halt.AlgorithmKey)))
	hdr := map[string]string{"X-Tenant": "t1", "X-Algorithm": "token_bucket"}
	for range 2 {
		do(s, "203.0.113.7:1", "/", hdr)
	}
	w := do(s, "203.0.113.7:1", "/", hdr)
	// A token bucket of 2 a minute: the next token is 30 s away (a fixed window's reset
	// would be the window's end).
	if w.Code != 429 || w.Header().Get("Retry-After") != "30" {
		t.Fatalf("token bucket: %d %v", w.Code, w.Header())
	}
	hdr["X-Algorithm"] = "fixed_window"
	if w := do(s, "203.0.113.7:1", "/", hdr); w.Code != 200 {
		t.Fatalf("its own counter: %d", w.Code)
	}
}

type downStore struct{ backends.Store }

func (downStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	for _, op := range ops {
		op.Err = backends.ErrUnavailable
	}
	return backends.ErrUnavailable
}

// TestStoreFailure: the Engine's failure mode decides, as the server's: open lets
// through, closed refuses for a second (as ext_authz), error answers 503.
func TestStoreFailure(t *testing.T) {
	for mode, want := range map[halt.FailureMode]int{"": 200, halt.FailOpen: 200, halt.FailClosed: 429, halt.FailError: 503} {
		h, _ := newEngine(t, halt.YAML(perAddress), downStore{newStore(t)}, halt.WithFailureMode(mode))
		w := do(mw(t, h), "203.0.113.7:1", "/", nil)
		if w.Code != want {
			t.Errorf("mode %q: %d, want %d", mode, w.Code, want)
		}
		if want != 200 && (w.Header().Get("Content-Type") != "application/problem+json" || w.Header().Get("Retry-After") != "1") {
			t.Errorf("mode %q: %v", mode, w.Header())
		}
	}
	// A rule's failure_mode wins over the Engine's.
	h, _ := newEngine(t, halt.YAML(perAddress+"    failure_mode: deny\n"), downStore{newStore(t)})
	if w := do(mw(t, h), "203.0.113.7:1", "/", nil); w.Code != 429 {
		t.Errorf("failure_mode deny in the rule: %d", w.Code)
	}
}

func TestShapingDelay(t *testing.T) {
	h, _ := newEngine(t, halt.Build(halt.Domain{Name: "web", Rules: []halt.Rule{{Key: halt.AddressKey,
		Limits: []halt.Policy{{Algorithm: algorithms.LeakyBucket, Requests: 10, Per: time.Second, Burst: 5, MaxDelay: time.Second}}}}}), nil)
	s := mw(t, h)
	start := time.Now()
	for range 3 {
		if w := do(s, "203.0.113.7:1", "/", nil); w.Code != 200 {
			t.Fatal(w.Code)
		}
	}
	// The frozen clock makes the third request wait for two drained units: 200 ms.
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Fatalf("shaping held requests for %s only", el)
	}
	// A client that goes away is not served.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := httptest.NewRequestWithContext(ctx, "GET", "/", nil)
	r.RemoteAddr = "203.0.113.7:1"
	served := false
	m, _ := middleware.New(h)
	m(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { served = true })).ServeHTTP(httptest.NewRecorder(), r)
	if served {
		t.Fatal("a gone client was served")
	}
}

func TestNewRefusesMistakes(t *testing.T) {
	two := halt.YAML(perAddress + "bogus: 1\n")
	one, _ := newEngine(t, halt.YAML(perAddress), nil)
	for name, f := range map[string]func() error{
		"nil engine":     func() error { _, err := middleware.New(nil); return err },
		"unknown domain": func() error { _, err := middleware.New(one, middleware.Domain("nope")); return err },
		"empty entry":    func() error { _, err := middleware.New(one, middleware.Descriptor(middleware.Entry{})); return err },
		"no entries":     func() error { _, err := middleware.New(one, middleware.Descriptor()); return err },
		"bad yaml":       func() error { _, err := middleware.Limit(newStore(t), two); return err },
	} {
		if err := f(); !errors.Is(err, halt.ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	multi, _ := newEngine(t, halt.Build(halt.Domain{Name: "a", Rules: []halt.Rule{{Key: "k", Policy: "STRICT"}}}, halt.Domain{Name: "b", Rules: []halt.Rule{{Key: "k", Policy: "STRICT"}}}), nil)
	if _, err := middleware.New(multi); err == nil || !strings.Contains(err.Error(), "name one") {
		t.Errorf("two domains, none named: %v", err)
	}
	if _, err := middleware.New(multi, middleware.Domain("b")); err != nil {
		t.Errorf("two domains, one named: %v", err)
	}
}

// TestProblemBodyIsJSON: every answer the middleware makes itself is a problem body.
func TestProblemBodyIsJSON(t *testing.T) {
	h, _ := newEngine(t, halt.YAML(perAddress), downStore{newStore(t)}, halt.WithFailureMode(halt.FailError))
	w := do(mw(t, h), "203.0.113.7:1", "/", nil)
	var p struct {
		Status int
		Title  string
	}
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil || p.Status != 503 || w.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("503: %v %+v %v", err, p, w.Header())
	}
}

// The quick start: one preset, one store, one line.
func ExampleMustLimit() {
	store := memory.New(memory.Config{}) // or redis, postgres, ...: any backends.Store
	defer store.Close()
	mux := http.NewServeMux()
	mux.Handle("/", ok)
	h := middleware.MustLimit(store, halt.Preset("PUBLIC_API"))(mux)

	r := httptest.NewRequest("GET", "/v1/items", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	fmt.Println(w.Code, w.Header().Get("RateLimit-Policy"), w.Header().Get("RateLimit"))
	// Output: 200 "PUBLIC_API";q=100;w=60 "PUBLIC_API";r=99;t=1
}

const idempotent = perAddress + "    idempotency_ttl: 1h\n"

// keyed sends a request from 203.0.113.7 with Idempotency-Key fields keys (none for no
// key) and cost X-Cost (the test's WithCost; empty for 1).
func keyed(h http.Handler, cost string, keys ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, "/v1/things", nil)
	r.RemoteAddr = "203.0.113.7:5555"
	for _, k := range keys {
		r.Header.Add("Idempotency-Key", k)
	}
	if cost != "" {
		r.Header.Set("X-Cost", cost)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

var costHeader = middleware.WithCost(func(r *http.Request) int64 {
	if c := r.Header.Get("X-Cost"); c == "2" {
		return 2
	}
	return 1
})

func wantAnswer(t *testing.T, what string, w *httptest.ResponseRecorder, status int, remaining string) {
	t.Helper()
	if w.Code != status || w.Header().Get("X-RateLimit-Remaining") != remaining {
		t.Errorf("%s: %d remaining %q, want %d remaining %q (%v %s)", what, w.Code, w.Header().Get("X-RateLimit-Remaining"), status, remaining, w.Header(), w.Body)
	}
}

func wantProblem(t *testing.T, what string, w *httptest.ResponseRecorder, detail string) {
	t.Helper()
	var p map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil || w.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("%s: %v %q %s", what, err, w.Header().Get("Content-Type"), w.Body)
	}
	if p["violated_policy"] != "idempotency-key" || p["status"] != float64(w.Code) || !strings.Contains(fmt.Sprint(p["detail"]), detail) {
		t.Errorf("%s: problem %v", what, p)
	}
}

// TestIdempotencyKey: the middleware reads Idempotency-Key as ext_authz does. A repeat
// gets the first answer and is not charged; the key reused for a dearer request is 422,
// not charged; a key over 255 bytes is 400 before anything is counted; a header sent
// twice is one key, its fields joined with commas, as Envoy hands it to ext_authz.
func TestIdempotencyKey(t *testing.T) {
	h, c := newEngine(t, halt.YAML(strings.Replace(idempotent, "requests_per_unit: 2", "requests_per_unit: 5", 1)), nil)
	s := mw(t, h, costHeader)
	wantAnswer(t, "first", keyed(s, "", "req-1"), 200, "4")
	c.Add(10 * time.Second)
	w := keyed(s, "", "req-1")
	wantAnswer(t, "repeat", w, 200, "4")
	if w.Body.String() != "ok" {
		t.Errorf("repeat: the handler did not run: %q", w.Body)
	}
	w = keyed(s, "2", "req-1")
	wantAnswer(t, "conflict", w, 422, "")
	wantProblem(t, "conflict", w, "first used for another request")
	if w.Header().Get("Retry-After") != "" {
		t.Errorf("conflict: Retry-After %q (the same request can never pass)", w.Header().Get("Retry-After"))
	}
	wantAnswer(t, "no key", keyed(s, ""), 200, "3")

	w = keyed(s, "", strings.Repeat("k", 256))
	wantAnswer(t, "256-byte key", w, 400, "")
	wantProblem(t, "256-byte key", w, "256 bytes, the limit is 255")
	wantAnswer(t, "255-byte key", keyed(s, "", strings.Repeat("k", 255)), 200, "2")
	wantAnswer(t, "255-byte key again", keyed(s, "", strings.Repeat("k", 255)), 200, "2")

	wantAnswer(t, "two fields", keyed(s, "", "a", "b"), 200, "1")
	wantAnswer(t, "their join", keyed(s, "", "a,b"), 200, "1")
	wantAnswer(t, "an empty key is none", keyed(s, "", ""), 200, "0")
}

// gateStore holds the first Apply that decides counters (not an idempotency record)
// until release is closed: a first request still being decided.
type gateStore struct {
	backends.Store
	armed   atomic.Bool
	held    chan struct{}
	release chan struct{}
}

func (g *gateStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if ops[0].Algorithm != algorithms.Once && g.armed.CompareAndSwap(true, false) {
		close(g.held)
		<-g.release
	}
	return g.Store.Apply(ctx, now, ops)
}

// TestIdempotencyKeyInProgress: a repeat while the first request is still being decided
// is answered 409 at once, with Retry-After (the claim's hold, 30 s), and not charged;
// once the first is answered, a repeat gets its answer.
func TestIdempotencyKeyInProgress(t *testing.T) {
	g := &gateStore{Store: newStore(t), held: make(chan struct{}), release: make(chan struct{})}
	g.armed.Store(true)
	h, _ := newEngine(t, halt.YAML(idempotent), g)
	s := mw(t, h)
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- keyed(s, "", "req-1") }()
	<-g.held
	w := keyed(s, "", "req-1")
	wantAnswer(t, "while the first is decided", w, 409, "")
	wantProblem(t, "while the first is decided", w, "still being processed")
	if w.Header().Get("Retry-After") != "30" {
		t.Errorf("409: Retry-After %q, want 30", w.Header().Get("Retry-After"))
	}
	close(g.release)
	wantAnswer(t, "first", <-first, 200, "1")
	wantAnswer(t, "repeat after it", keyed(s, "", "req-1"), 200, "1")
	wantAnswer(t, "no key", keyed(s, ""), 200, "0")
}

// TestIdempotencyKeyIsTheRequests: as in ext_authz, an Idempotency-Key stands for one
// request, its method, path with query and body: reused for another it is 422 and not
// charged, never the first request's admission again. The handler still reads the body
// whole, however long.
func TestIdempotencyKeyIsTheRequests(t *testing.T) {
	h, _ := newEngine(t, halt.YAML(strings.Replace(idempotent, "requests_per_unit: 2", "requests_per_unit: 5", 1)), nil)
	m, err := middleware.New(h)
	if err != nil {
		t.Fatal(err)
	}
	s := m(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("the handler reading the body: %v", err)
		}
		fmt.Fprintf(w, "%d", len(b))
	}))
	send := func(method, target, key, body string) *httptest.ResponseRecorder {
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		r := httptest.NewRequest(method, target, rd)
		r.RemoteAddr = "203.0.113.7:5555"
		r.Header.Set("Idempotency-Key", key)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w
	}
	wantAnswer(t, "first", send("GET", "/v1/items/0", "k", ""), 200, "4")
	for i := 1; i < 20; i++ {
		wantAnswer(t, fmt.Sprintf("GET /v1/items/%d with the key", i), send("GET", fmt.Sprintf("/v1/items/%d", i), "k", ""), 422, "")
	}
	wantAnswer(t, "another query", send("GET", "/v1/items/0?page=2", "k", ""), 422, "")
	wantAnswer(t, "another method", send("DELETE", "/v1/items/0", "k", ""), 422, "")
	wantAnswer(t, "the first again", send("GET", "/v1/items/0", "k", ""), 200, "4")

	long := strings.Repeat("x", middleware.MaxIdempotencyBody+10)
	w := send("POST", "/v1/items", "b", long)
	wantAnswer(t, "a long body", w, 200, "3")
	if w.Body.String() != fmt.Sprint(len(long)) {
		t.Fatalf("the handler read %s bytes of %d", w.Body, len(long))
	}
	wantAnswer(t, "another body", send("POST", "/v1/items", "b", "short"), 422, "")
	w = send("POST", "/v1/items", "b", long)
	wantAnswer(t, "the long body again", w, 200, "3")
	if w.Body.String() != fmt.Sprint(len(long)) {
		t.Fatalf("repeat: the handler read %s bytes of %d", w.Body, len(long))
	}
	wantAnswer(t, "no key", send("GET", "/v1/items/0", "", ""), 200, "2")
}

// readCounter is a request body that counts the bytes read from it.
type readCounter struct {
	r io.Reader
	n atomic.Int64
}

func (c *readCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestIdempotencyBodyReadOnlyWhereKept: the middleware reads the body of a request with
// an Idempotency-Key (for its scope) only where a rule that keeps keys applies to it;
// elsewhere the key is ignored and the handler gets the body unread. The handler reads
// the body whole either way.
func TestIdempotencyBodyReadOnlyWhereKept(t *testing.T) {
	const cfg = `
domain: web
descriptors:
  - key: remote_address
    value: 203.0.113.9
    rate_limit: {unit: minute, requests_per_unit: 10}
    idempotency_ttl: 1h
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 10}
`
	h, _ := newEngine(t, halt.YAML(cfg), nil)
	m, err := middleware.New(h)
	if err != nil {
		t.Fatal(err)
	}
	var body *readCounter
	var before int64
	s := m(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		before = body.n.Load()
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("the handler reading the body: %v", err)
		}
		fmt.Fprintf(w, "%d", len(b))
	}))
	send := func(from, key string) int64 {
		t.Helper()
		body = &readCounter{r: strings.NewReader(strings.Repeat("x", 4096))}
		r := httptest.NewRequest(http.MethodPost, "/v1/items", body)
		r.RemoteAddr = from + ":5555"
		if key != "" {
			r.Header.Set("Idempotency-Key", key)
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != 200 || w.Body.String() != "4096" {
			t.Fatalf("from %s key %q: %d %q, want 200 and the whole body", from, key, w.Code, w.Body)
		}
		return before
	}
	if n := send("203.0.113.7", "k1"); n != 0 {
		t.Errorf("a key no rule keeps: %d bytes read before the handler, want 0", n)
	}
	if n := send("203.0.113.7", ""); n != 0 {
		t.Errorf("no key: %d bytes read before the handler, want 0", n)
	}
	if n := send("203.0.113.9", "k1"); n != 4096 {
		t.Errorf("a key its rule keeps: %d bytes read before the handler, want 4096 (the scope's)", n)
	}
}
