package middleware_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
	"github.com/halt-envoy/halt-envoy/pkg/halt"
	"github.com/halt-envoy/halt-envoy/pkg/middleware"
)

type clock struct{ t atomic.Int64 }

func (c *clock) Now() time.Time { return time.UnixMicro(c.t.Load()) }

func newLimiter(t *testing.T, p halt.Policy, store backends.Store) (*halt.Limiter, *clock) {
	t.Helper()
	if store == nil {
		m := memory.New(memory.Config{SweepInterval: -1})
		t.Cleanup(func() { m.Close() })
		store = m
	}
	c := &clock{}
	c.t.Store(time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC).UnixMicro())
	lim, err := halt.NewLimiter(store, p, halt.WithClock(c))
	if err != nil {
		t.Fatal(err)
	}
	return lim, c
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

func TestDenyWithProblemAndHeaders(t *testing.T) {
	lim, _ := newLimiter(t, halt.Policy{Name: "api", Algorithm: algorithms.FixedWindow, Requests: 2, Per: time.Minute}, nil)
	h := middleware.New(lim)(ok)
	for i := range 2 {
		w := do(h, "203.0.113.7:5555", "/v1/things", nil)
		if w.Code != 200 {
			t.Fatalf("request %d: %d", i, w.Code)
		}
		if got := w.Header().Get("X-RateLimit-Remaining"); got != []string{"1", "0"}[i] {
			t.Fatalf("request %d remaining %q", i, got)
		}
	}
	w := do(h, "203.0.113.7:5555", "/v1/things", nil)
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("third request: %d", w.Code)
	}
	want := map[string]string{
		"Content-Type":          "application/problem+json",
		"Retry-After":           "60",
		"X-RateLimit-Limit":     "2",
		"X-RateLimit-Remaining": "0",
		"X-RateLimit-Reset":     "60",
		"RateLimit-Policy":      `"api";q=2;w=60`,
		"RateLimit":             `"api";r=0;t=60`,
	}
	for k, v := range want {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	var body struct {
		Type, Title, Detail string
		Status              int
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body.Status != 429 || body.Title != "Too Many Requests" || body.Type == "" || body.Detail == "" {
		t.Fatalf("problem body %+v", body)
	}
	// Another client is unaffected.
	if w := do(h, "198.51.100.1:1", "/v1/things", nil); w.Code != 200 {
		t.Fatalf("another client: %d", w.Code)
	}
}

// TestLibraryDocExample: docs/library.md's headers and 429 are what the middleware
// answers for its example limiter (a token bucket of 20 a minute, empty): the reset
// fields and Retry-After are one number, the 3 s until a token is back, on the call
// that took the last token as on the refused one.
func TestLibraryDocExample(t *testing.T) {
	lim, _ := newLimiter(t, halt.Policy{Name: "api", Requests: 20, Per: time.Minute}, nil)
	h := middleware.New(lim)(ok)
	var w *httptest.ResponseRecorder
	for i := 0; i < 20; i++ {
		w = do(h, "203.0.113.7:5555", "/v1/things", nil)
	}
	want := map[string]string{
		"RateLimit-Policy":      `"api";q=20;w=60`,
		"RateLimit":             `"api";r=0;t=3`,
		"X-RateLimit-Limit":     "20",
		"X-RateLimit-Remaining": "0",
		"X-RateLimit-Reset":     "3",
	}
	for _, last := range []bool{true, false} {
		if !last {
			w = do(h, "203.0.113.7:5555", "/v1/things", nil)
			want["Retry-After"] = "3"
		}
		if code := map[bool]int{true: 200, false: 429}[last]; w.Code != code {
			t.Fatalf("last=%v: status %d, want %d", last, w.Code, code)
		}
		for k, v := range want {
			if got := w.Header().Get(k); got != v {
				t.Errorf("last=%v: %s = %q, want %q", last, k, got, v)
			}
		}
	}
	if !strings.Contains(w.Body.String(), "rate limit exceeded; retry in 3 s") {
		t.Errorf("body %s", w.Body.String())
	}
}

func TestHeaderFamiliesSwitch(t *testing.T) {
	lim, _ := newLimiter(t, halt.Policy{Requests: 10, Per: time.Second}, nil)
	w := do(middleware.New(lim, middleware.WithHeaders(middleware.Headers{IETF: true}))(ok), "203.0.113.7:1", "/", nil)
	if w.Header().Get("X-RateLimit-Limit") != "" || w.Header().Get("RateLimit") == "" {
		t.Fatalf("IETF only: %v", w.Header())
	}
	w = do(middleware.New(lim, middleware.WithHeaders(middleware.Headers{}))(ok), "203.0.113.7:1", "/", nil)
	if w.Header().Get("X-RateLimit-Limit") != "" || w.Header().Get("RateLimit") != "" {
		t.Fatalf("no headers: %v", w.Header())
	}
	if got := w.Header().Get("RateLimit-Policy"); got != "" {
		t.Fatalf("policy header %q", got)
	}
}

func TestExemptions(t *testing.T) {
	lim, _ := newLimiter(t, halt.Policy{Algorithm: algorithms.FixedWindow, Requests: 1, Per: time.Hour}, nil)
	h := middleware.New(lim,
		middleware.ExemptPaths("/healthz", "/static/*"),
		middleware.ExemptPrivate(),
		middleware.ExemptCIDRs(netip.MustParsePrefix("198.51.100.0/24")),
	)(ok)
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
			if w := do(h, c.remote, c.path, nil); w.Code != 200 || w.Header().Get("X-RateLimit-Limit") != "" {
				t.Fatalf("%s %s: %d %v (want exempt: 200, no headers)", c.remote, c.path, w.Code, w.Header())
			}
		}
	}
	do(h, "203.0.113.7:1", "/api", nil)
	if w := do(h, "203.0.113.7:1", "/api", nil); w.Code != 429 {
		t.Fatalf("public client, second request: %d", w.Code)
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

	lim, _ := newLimiter(t, halt.Policy{Algorithm: algorithms.FixedWindow, Requests: 1, Per: time.Hour}, nil)
	h := middleware.New(lim, middleware.TrustProxies(proxies...))(ok)
	if w := do(h, "10.0.0.5:1", "/", map[string]string{"X-Forwarded-For": "203.0.113.1"}); w.Code != 200 {
		t.Fatal(w.Code)
	}
	if w := do(h, "10.0.0.5:1", "/", map[string]string{"X-Forwarded-For": "203.0.113.2"}); w.Code != 200 {
		t.Fatalf("a second client behind the same proxy was limited: %d", w.Code)
	}
	if w := do(h, "10.0.0.6:1", "/", map[string]string{"X-Forwarded-For": "203.0.113.1"}); w.Code != 429 {
		t.Fatalf("the first client through another proxy: %d", w.Code)
	}
}

func TestKeyAndCost(t *testing.T) {
	// A token bucket: a refused request takes nothing (a fixed window counts it too).
	lim, _ := newLimiter(t, halt.Policy{Algorithm: algorithms.TokenBucket, Requests: 10, Per: time.Hour}, nil)
	h := middleware.New(lim,
		middleware.WithKey(func(r *http.Request) string { return r.Header.Get("X-API-Key") }),
		middleware.WithCost(func(r *http.Request) int64 {
			if r.URL.Path == "/export" {
				return 6
			}
			return 1
		}),
	)(ok)
	key := map[string]string{"X-API-Key": "k1"}
	if w := do(h, "203.0.113.7:1", "/export", key); w.Code != 200 || w.Header().Get("X-RateLimit-Remaining") != "4" {
		t.Fatalf("export: %d %v", w.Code, w.Header())
	}
	if w := do(h, "203.0.113.8:1", "/export", key); w.Code != 429 {
		t.Fatalf("second export from another address, same key: %d", w.Code)
	}
	if w := do(h, "203.0.113.8:1", "/list", key); w.Code != 200 {
		t.Fatalf("cheap call: %d", w.Code)
	}
	// No key: not limited.
	for range 20 {
		if w := do(h, "203.0.113.7:1", "/export", nil); w.Code != 200 {
			t.Fatalf("keyless: %d", w.Code)
		}
	}
	// A cost above the limit can never pass, but still gets a Retry-After.
	big := middleware.New(lim, middleware.WithCost(func(*http.Request) int64 { return 11 }))(ok)
	if w := do(big, "203.0.113.7:1", "/", nil); w.Code != 429 || w.Header().Get("Retry-After") == "" {
		t.Fatalf("cost above limit: %d %v", w.Code, w.Header())
	}
}

type downStore struct{ backends.Store }

func (downStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	return backends.ErrUnavailable
}

func TestStoreFailure(t *testing.T) {
	lim, _ := newLimiter(t, halt.Policy{Requests: 1, Per: time.Second}, downStore{})
	if w := do(middleware.New(lim)(ok), "203.0.113.7:1", "/", nil); w.Code != 200 {
		t.Fatalf("fail open: %d", w.Code)
	}
	w := do(middleware.New(lim, middleware.WithFailureMode(middleware.FailClosed))(ok), "203.0.113.7:1", "/", nil)
	if w.Code != 503 || w.Header().Get("Content-Type") != "application/problem+json" || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("fail closed: %d %v", w.Code, w.Header())
	}
	// The modes are the server's: FailOpen is failure_mode allow, FailClosed deny, the
	// zero mode is the default (open), and error (no Envoy to decide here) refuses.
	if middleware.FailOpen != config.FailAllow || middleware.FailClosed != config.FailDeny {
		t.Fatalf("modes %q and %q are not the server's allow and deny", middleware.FailOpen, middleware.FailClosed)
	}
	for mode, want := range map[config.FailureMode]int{"": 200, config.FailAllow: 200, config.FailDeny: 503, config.FailError: 503} {
		if w := do(middleware.New(lim, middleware.WithFailureMode(mode))(ok), "203.0.113.7:1", "/", nil); w.Code != want {
			t.Errorf("mode %q: %d, want %d", mode, w.Code, want)
		}
	}
}

func TestShapingDelay(t *testing.T) {
	lim, _ := newLimiter(t, halt.Policy{Algorithm: algorithms.LeakyBucket, Requests: 10, Per: 100 * time.Millisecond, Burst: 5, MaxDelay: time.Second}, nil)
	h := middleware.New(lim)(ok)
	start := time.Now()
	for range 3 {
		if w := do(h, "203.0.113.7:1", "/", nil); w.Code != 200 {
			t.Fatal(w.Code)
		}
	}
	// The frozen clock makes the third request wait for two drained units: 20 ms.
	if el := time.Since(start); el < 15*time.Millisecond {
		t.Fatalf("shaping held requests for %s only", el)
	}
}
