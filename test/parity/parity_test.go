// Package parity holds halt's three ways in to the one engine to the same answers: the
// same YAML and the same sequence of requests give identical decisions, remaining counts
// and headers through Envoy's RateLimitService (a real gRPC server on loopback),
// ext_authz (a real gRPC Check) and the net/http middleware (a real HTTP server), on the
// memory store and on Redis.
package parity_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/halt-envoy/halt-envoy/internal/authz"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
	"github.com/halt-envoy/halt-envoy/pkg/halt"
	"github.com/halt-envoy/halt-envoy/pkg/middleware"
)

// limitsYAML is the one configuration; DOMAIN is replaced by a domain of the run's own,
// so that a shared Redis never mixes runs.
const limitsYAML = `
domain: DOMAIN
default_plan: free
plans:
  gold:
    rate_limit: {name: gold_minute, unit: minute, requests_per_unit: 4, algorithm: token_bucket}
    quota: {name: daily, period: daily, requests: 9}
    penalty: abuse
  free:
    rate_limit: {unit: minute, requests_per_unit: 3}
    idempotency_ttl: 1h
penalties:
  abuse: {threshold: 2, ladder: [1m, 10m], decay: 1h}
exemptions:
  paths: [/healthz]
  cidrs: [198.51.100.0/24]
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
`

// The API keys: who holds each, on which plan (carol's plan is none the config knows:
// she is limited as the default plan).
var keys = map[string][2]string{
	"key-acme":  {"acme", "gold"},
	"key-bob":   {"bob", "free"},
	"key-carol": {"carol", "platinum"},
	"key-dave":  {"dave", "free"},
}

const authzYAML = `
domain: DOMAIN
identity:
  - api_key: {header: x-api-key}
api_keys:
KEYS
routes:
  - {method: POST, path: /v1/export, cost: 3}
headers: [ietf, x-ratelimit]
`

// step is one request: its caller, its client address, its path and method, and how
// long after the previous step it comes.
// idem is its Idempotency-Key ("" for none); wantStatus and wantRemaining, when set,
// are what ext_authz must answer (its status and X-RateLimit-Remaining).
type step struct {
	after         time.Duration
	key, addr     string
	method, path  string
	idem          string
	wantStatus    int
	wantRemaining string
}

// hits is the request's cost: the export route's (ext_authz's routes, the middleware's
// WithCost, Envoy's hits_addend).
func (s step) hits() uint64 {
	if s.method == http.MethodPost && s.path == "/v1/export" {
		return 3
	}
	return 1
}

var steps = []step{
	// acme (gold): a token bucket of 4 a minute, 9 a day, two violations lock it out.
	{0, "key-acme", "203.0.113.10", "GET", "/v1/items", "", 0, ""},
	{time.Second, "key-acme", "203.0.113.10", "GET", "/v1/items", "", 0, ""},
	{0, "key-acme", "203.0.113.10", "GET", "/v1/items", "", 0, ""},
	{0, "key-acme", "203.0.113.10", "GET", "/v1/items", "", 0, ""},
	{0, "key-acme", "203.0.113.10", "GET", "/v1/items", "", 0, ""}, // refused: a first violation
	// Exempt by path and by address: not counted, no headers.
	{0, "key-acme", "203.0.113.10", "GET", "/healthz", "", 0, ""},
	{0, "key-acme", "198.51.100.20", "GET", "/v1/items", "", 0, ""},
	// Paths are matched strictly: counted, refused, a second violation locks acme out.
	{0, "key-acme", "203.0.113.10", "GET", "/v1/items/../../healthz", "", 0, ""},
	{50 * time.Second, "key-acme", "203.0.113.10", "POST", "/v1/export", "", 0, ""}, // still locked out
	{0, "key-acme", "203.0.113.10", "GET", "/v1/items", "", 0, ""},
	{30 * time.Second, "key-acme", "203.0.113.10", "POST", "/v1/export", "", 0, ""}, // an export costs 3
	{0, "key-acme", "203.0.113.10", "GET", "/v1/items", "", 0, ""},
	{59 * time.Second, "key-acme", "203.0.113.10", "GET", "/v1/items", "", 0, ""}, // the day's 9th
	{2 * time.Second, "key-acme", "203.0.113.10", "GET", "/v1/items", "", 0, ""},  // refused by the quota
	{0, "key-acme", "203.0.113.10", "GET", "/v1/items", "", 0, ""},
	// bob (free): a fixed window of 3 a minute (refused hits count); carol, on a plan the
	// configuration does not know, is limited as the default plan, free.
	{0, "key-bob", "203.0.113.11", "GET", "/v1/items", "", 0, ""},
	{0, "key-bob", "203.0.113.11", "POST", "/v1/export", "", 0, ""},
	{0, "key-bob", "203.0.113.11", "GET", "/v1/items", "", 0, ""},
	{0, "key-carol", "203.0.113.12", "GET", "/v1/items", "", 0, ""},
	{0, "key-carol", "203.0.113.12", "POST", "/v1/export", "", 0, ""},
	{time.Minute, "key-carol", "203.0.113.12", "GET", "/v1/items", "", 0, ""},
	// dave (free, whose rule keeps idempotency keys for an hour) sends Idempotency-Key
	// (RLS: the halt_idempotency_key entry). A repeat gets the first answer and is not
	// charged; the key reused for a dearer request is a conflict (422, RLS OVER_LIMIT
	// with halt-idempotency: conflict), not charged; a key over 255 bytes is refused
	// (400, RLS INVALID_ARGUMENT) before anything is counted; 255 bytes is a key.
	{0, "key-dave", "203.0.113.13", "GET", "/v1/items", "req-1", 200, "2"},
	{0, "key-dave", "203.0.113.13", "GET", "/v1/items", "req-1", 200, "2"},  // replayed
	{0, "key-dave", "203.0.113.13", "POST", "/v1/export", "req-1", 422, ""}, // conflict
	// The key is one HTTP request's: another path or query is a conflict in ext_authz and
	// the middleware alike (RLS's descriptors carry no path: it replays, see runParity).
	{0, "key-dave", "203.0.113.13", "GET", "/v1/items?page=2", "req-1", 422, ""},
	{0, "key-dave", "203.0.113.13", "GET", "/v1/items", "", 200, "1"},
	{10 * time.Second, "key-dave", "203.0.113.13", "GET", "/v1/items", "req-1", 200, "2"}, // still the first answer
	{0, "key-dave", "203.0.113.13", "GET", "/v1/items", strings.Repeat("k", 256), 400, ""},
	{0, "key-dave", "203.0.113.13", "GET", "/v1/items", strings.Repeat("k", 255), 200, "0"},
	{0, "key-dave", "203.0.113.13", "GET", "/v1/items", "", 429, "0"}, // three charged: the first, the keyless, the 255-byte key
	// The next day: acme's quota is back.
	{24 * time.Hour, "key-acme", "203.0.113.10", "GET", "/v1/items", "", 0, ""},
}

// answer is what one way in answered, reduced to what they share.
type answer struct {
	allowed bool
	// rate holds the rate-limit headers (IETF and X-RateLimit families).
	rate map[string]string
	// status, retryAfter and body are the HTTP answer (ext_authz, the middleware); RLS
	// has none (Envoy makes its own 429).
	status     int
	retryAfter string
	body       string
	// remaining is RLS's limit_remaining of the descriptor, -1 without a limit.
	remaining int64
	// idem is RLS's halt-idempotency header (conflict, in-progress); invalid reports
	// that RLS refused the call as INVALID_ARGUMENT.
	idem    string
	invalid bool
}

func (a answer) String() string {
	var ks []string
	for k, v := range a.rate {
		ks = append(ks, k+"="+v)
	}
	sort.Strings(ks)
	return fmt.Sprintf("allowed=%v status=%d retry-after=%q rate=%v body=%s", a.allowed, a.status, a.retryAfter, ks, a.body)
}

var rateHeaders = []string{"RateLimit", "RateLimit-Policy", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// t0 is 2030-03-01T08:00:00Z.
var t0 = time.Date(2030, 3, 1, 8, 0, 0, 0, time.UTC)

// way is one way in: it answers a step.
type way func(t *testing.T, s step) answer

// servers starts the gRPC server (RLS and ext_authz on one port, as halt-envoy serves
// them) on store1 and store2, and the middleware's HTTP server on store3, each with its
// own clock, and returns the three ways in and their clocks.
func servers(t *testing.T, domain string, stores [3]backends.Store) ([3]way, [3]*clock) {
	t.Helper()
	yml := strings.ReplaceAll(limitsYAML, "DOMAIN", domain)
	set, err := config.Parse(map[string][]byte{"limits.yaml": []byte(yml)})
	if err != nil {
		t.Fatal(err)
	}
	rules := func() *config.Set { return set }
	var clocks [3]*clock
	var engs [2]*engine.Engine
	for i := range clocks {
		clocks[i] = &clock{now: t0}
	}
	for i := range engs {
		if engs[i], err = engine.New(engine.Config{Store: stores[i], Rules: rules, Clock: clocks[i]}); err != nil {
			t.Fatal(err)
		}
	}

	// ext_authz's configuration: the same keys, by hash.
	var kl []string
	for k, v := range keys {
		sum := sha256.Sum256([]byte(k))
		kl = append(kl, fmt.Sprintf("  - {sha256: %s, customer: %s, plan: %s}", hex.EncodeToString(sum[:]), v[0], v[1]))
	}
	sort.Strings(kl)
	dir := t.TempDir()
	az := strings.NewReplacer("DOMAIN", domain, "KEYS", strings.Join(kl, "\n")).Replace(authzYAML)
	if err := os.WriteFile(filepath.Join(dir, "authz.yaml"), []byte(az), 0o644); err != nil {
		t.Fatal(err)
	}
	acfg, err := authz.LoadConfig(filepath.Join(dir, "authz.yaml"))
	if err != nil {
		t.Fatal(err)
	}

	gs := grpc.NewServer()
	rlspb.RegisterRateLimitServiceServer(gs, rlsv3.NewService(engs[0], headers.Families{IETF: true, XRateLimit: true}))
	authv3.RegisterAuthorizationServer(gs, authz.New(engs[1], rules, func() *authz.Config { return acfg }, nil, nil))
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
	rls, ext := rlspb.NewRateLimitServiceClient(cc), authv3.NewAuthorizationClient(cc)

	// The middleware: the same YAML, through the public API only. The application
	// resolves the API key (as ext_authz does) and the client address comes from
	// X-Forwarded-For, set by the test client as a trusted proxy would.
	h, err := halt.New(stores[2], halt.YAML(yml), halt.WithClock(clocks[2]))
	if err != nil {
		t.Fatal(err)
	}
	who := func(i int) func(*http.Request) string {
		return func(r *http.Request) string { return keys[r.Header.Get("X-Api-Key")][i] }
	}
	limit, err := middleware.New(h,
		middleware.Descriptor(middleware.FromRequest("customer", who(0)), middleware.FromRequest("plan", who(1))),
		middleware.TrustProxies(netip.MustParsePrefix("127.0.0.1/32")),
		middleware.WithCost(func(r *http.Request) int64 { return int64(step{method: r.Method, path: r.URL.Path}.hits()) }),
	)
	if err != nil {
		t.Fatal(err)
	}
	web := httptest.NewServer(limit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })))
	t.Cleanup(web.Close)

	viaRLS := func(t *testing.T, s step) answer {
		t.Helper()
		k := keys[s.key]
		d := &rlcommon.RateLimitDescriptor{Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "customer", Value: k[0]}, {Key: "plan", Value: k[1]}}}
		// Envoy's actions on the exempt routes send the client address and the path
		// too, so that the exemptions see them.
		if s.path == "/healthz" || strings.HasPrefix(s.addr, "198.51.100.") {
			d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: "remote_address", Value: s.addr}, &rlcommon.RateLimitDescriptor_Entry{Key: "path", Value: s.path})
		}
		if s.idem != "" {
			// Envoy: a request_headers action reading Idempotency-Key.
			d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: engine.IdempotencyEntry, Value: s.idem})
		}
		resp, err := rls.ShouldRateLimit(context.Background(), &rlspb.RateLimitRequest{Domain: domain, Descriptors: []*rlcommon.RateLimitDescriptor{d}, HitsAddend: uint32(s.hits())})
		if status.Code(err) == codes.InvalidArgument {
			return answer{invalid: true, remaining: -1}
		}
		if err != nil {
			t.Fatalf("ShouldRateLimit: %v", err)
		}
		a := answer{allowed: resp.GetOverallCode() == rlspb.RateLimitResponse_OK, rate: map[string]string{}, remaining: -1}
		for _, h := range resp.GetResponseHeadersToAdd() {
			if h.GetKey() == rlsv3.IdempotencyHeader {
				a.idem = h.GetValue()
				continue
			}
			a.rate[h.GetKey()] = h.GetValue()
		}
		if st := resp.GetStatuses()[0]; st.GetCurrentLimit() != nil {
			a.remaining = int64(st.GetLimitRemaining())
		}
		return a
	}
	viaAuthz := func(t *testing.T, s step) answer {
		t.Helper()
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
				SocketAddress: &corev3.SocketAddress{Address: s.addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40000}}}}},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: s.method, Path: s.path, Headers: map[string]string{"x-api-key": s.key}}},
		}}
		if s.idem != "" {
			req.Attributes.Request.Http.Headers["idempotency-key"] = s.idem
		}
		resp, err := ext.Check(context.Background(), req)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		a := answer{rate: map[string]string{}, status: 200}
		var hs []*corev3.HeaderValueOption
		if ok := resp.GetOkResponse(); ok != nil {
			a.allowed, hs = true, ok.GetResponseHeadersToAdd()
		} else {
			d := resp.GetDeniedResponse()
			a.status, a.body, hs = int(d.GetStatus().GetCode()), d.GetBody(), d.GetHeaders()
		}
		for _, h := range hs {
			switch k, v := h.GetHeader().GetKey(), h.GetHeader().GetValue(); {
			case k == "Retry-After":
				a.retryAfter = v
			case contains(rateHeaders, k):
				a.rate[k] = v
			}
		}
		return a
	}
	viaMiddleware := func(t *testing.T, s step) answer {
		t.Helper()
		req, err := http.NewRequest(s.method, web.URL+s.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Api-Key", s.key)
		req.Header.Set("X-Forwarded-For", s.addr)
		if s.idem != "" {
			req.Header.Set("Idempotency-Key", s.idem)
		}
		resp, err := web.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		a := answer{allowed: resp.StatusCode == 200, status: resp.StatusCode, rate: map[string]string{}, retryAfter: resp.Header.Get("Retry-After")}
		if !a.allowed {
			a.body = string(body)
		}
		for _, k := range rateHeaders {
			if v := resp.Header.Get(k); v != "" {
				a.rate[k] = v
			}
		}
		return a
	}
	return [3]way{viaRLS, viaAuthz, viaMiddleware}, clocks
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// runParity sends every step through the three ways in, each on its own store, and
// wants the same answers.
func runParity(t *testing.T, stores [3]backends.Store) {
	var b [6]byte
	rand.Read(b[:])
	domain := "parity-" + hex.EncodeToString(b[:])
	ways, clocks := servers(t, domain, stores)
	seen := map[string]int{}
	for i, s := range steps {
		for _, c := range clocks {
			c.Add(s.after)
		}
		rls, ext, mw := ways[0](t, s), ways[1](t, s), ways[2](t, s)
		where := fmt.Sprintf("step %d (%s %s %s from %s, Idempotency-Key %.12q)", i, s.key, s.method, s.path, s.addr, s.idem)
		// ext_authz and the middleware answer alike, to the byte.
		if ext.String() != mw.String() {
			t.Errorf("%s:\n  ext_authz:  %s\n  middleware: %s", where, ext, mw)
		}
		if s.wantStatus != 0 && ext.status != s.wantStatus || s.wantRemaining != "" && ext.rate["X-RateLimit-Remaining"] != s.wantRemaining {
			t.Errorf("%s: ext_authz answered %s, want status %d remaining %q", where, ext, s.wantStatus, s.wantRemaining)
		}
		if strings.Contains(s.path, "?") {
			// An HTTP request's query is no descriptor of this Envoy config: RLS sees the
			// first request's descriptors again and replays its answer, which charges
			// nothing, as the conflict does; the counts stay alike.
			if !rls.allowed || rls.idem != "" {
				t.Errorf("%s: rls allowed=%v halt-idempotency %q, want the first answer replayed", where, rls.allowed, rls.idem)
			}
			seen[fmt.Sprintf("%d %s", ext.status, reason(ext))]++
			t.Logf("%s: %s", where, ext)
			continue
		}
		// RLS refuses an over-long key as a malformed call, and a conflict or a first
		// request in progress with OVER_LIMIT and the halt-idempotency header.
		if rls.invalid != (ext.status == 400) {
			t.Errorf("%s: rls INVALID_ARGUMENT %v, ext_authz %s", where, rls.invalid, ext)
		}
		if want := map[int]string{422: "conflict", 409: "in-progress"}[ext.status]; rls.idem != want {
			t.Errorf("%s: rls halt-idempotency %q, want %q (ext_authz %s)", where, rls.idem, want, ext)
		}
		// RLS decides alike and sends the same rate-limit headers.
		if !rls.invalid && (rls.allowed != ext.allowed || fmt.Sprint(sorted(rls.rate)) != fmt.Sprint(sorted(ext.rate))) {
			t.Errorf("%s:\n  rls:       allowed=%v rate=%v\n  ext_authz: %s", where, rls.allowed, sorted(rls.rate), ext)
		}
		// Its limit_remaining is what the headers say is left.
		if r, ok := ext.rate["X-RateLimit-Remaining"]; ok && fmt.Sprint(rls.remaining) != r {
			t.Errorf("%s: rls limit_remaining %d, headers say %s", where, rls.remaining, r)
		}
		seen[fmt.Sprintf("%d %s", ext.status, reason(ext))]++
		t.Logf("%s: %s", where, ext)
	}
	// The sequence went through every kind of answer.
	for _, want := range []string{"200 rate", "200 exempt", "429 rate", "429 quota", "403 penalty", "422 idempotency", "400 idempotency"} {
		if seen[want] == 0 {
			t.Errorf("no step answered %q (saw %v)", want, seen)
		}
	}
}

func reason(a answer) string {
	switch {
	case strings.Contains(a.body, `"violated_policy":"idempotency-key"`):
		return "idempotency"
	case a.status == 403:
		return "penalty"
	case strings.Contains(a.body, "quota"):
		return "quota"
	case a.allowed && len(a.rate) == 0:
		return "exempt"
	}
	return "rate"
}

func sorted(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

func TestParityMemory(t *testing.T) {
	var stores [3]backends.Store
	for i := range stores {
		m := memory.New(memory.Config{SweepInterval: -1})
		t.Cleanup(func() { m.Close() })
		stores[i] = m
	}
	runParity(t, stores)
}

func TestParityRedis(t *testing.T) {
	addr := testutil.Peer(t, "REDIS_ADDR")
	var stores [3]backends.Store
	for i := range stores {
		// A database each: the three must not share counters.
		s, err := all.Open(context.Background(), fmt.Sprintf("redis://%s/%d", addr, i+1), backends.Options{Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		stores[i] = s
	}
	runParity(t, stores)
}
