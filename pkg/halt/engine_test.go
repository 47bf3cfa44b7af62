package halt_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/halt"
)

const saasYAML = `domain: api
time_zone: Europe/Berlin
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
  - key: user
    rate_limits:
      - {name: per_minute, unit: minute, requests_per_unit: 3, algorithm: token_bucket}
    quotas:
      - {name: monthly, period: monthly, requests: 5}
    penalty: abuse
    cost: 1
  - key: export
    policy: EXPENSIVE_OPERATION
    cost: 2
`

// saasBuilt is saasYAML built in code.
func saasBuilt(t *testing.T) halt.Config {
	t.Helper()
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	return halt.Build(halt.Domain{
		Name:     "api",
		TimeZone: berlin,
		Exemptions: &halt.Exemptions{
			Paths: []string{"/healthz"},
			CIDRs: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		},
		Rules: []halt.Rule{
			{Key: "customer", Rules: []halt.Rule{{Key: "plan", PlanFromValue: true}}},
			{Key: "user",
				Limits:  []halt.Policy{{Name: "per_minute", Algorithm: algorithms.TokenBucket, Requests: 3, Per: time.Minute}},
				Quotas:  []halt.Quota{{Name: "monthly", Period: halt.Monthly, Requests: 5}},
				Penalty: &halt.Penalty{Name: "abuse", Threshold: 2, Ladder: []time.Duration{time.Minute, 10 * time.Minute}, Decay: time.Hour},
			},
			{Key: "export", Policy: "EXPENSIVE_OPERATION", Cost: 2},
		},
	})
}

// t0 is 2030-01-31T22:30:00Z: the month ends in 90 minutes in Berlin.
var t0 = time.Date(2030, 1, 31, 22, 30, 0, 0, time.UTC)

// script is a sequence of checks and what each answers: one timeline through plans,
// rate limits, quotas, penalties, cost and exemptions.
func script(t *testing.T, h *halt.Engine) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	check := func(at time.Duration, n uint64, d ...halt.Descriptor) {
		dec, err := h.CheckN(ctx, t0.Add(at), "api", n, d...)
		if err != nil {
			t.Fatalf("CheckN: %v", err)
		}
		out = append(out, strings.Join([]string{
			map[bool]string{true: "allow", false: "deny"}[dec.Allowed], string(dec.Reason), dec.Policy,
			itoa(dec.Limit), itoa(dec.Remaining), dec.RetryAfter.String(), dec.ResetAfter.String(), dec.Window.String(),
		}, " "))
	}
	for i := range 4 {
		check(time.Duration(i)*time.Second, 1, halt.D("user", "u1")) // the 4th: a violation
	}
	check(2*time.Minute, 1, halt.D("user", "u1"))
	check(2*time.Minute, 1, halt.D("user", "u1"))  // the monthly quota is used up
	check(3*time.Minute, 1, halt.D("user", "u1"))  // refused by it: a second violation
	check(3*time.Minute, 1, halt.D("user", "u1"))  // locked out
	check(95*time.Minute, 1, halt.D("user", "u1")) // a new month in Berlin
	check(0, 1, halt.D("customer", "acme", "plan", "pro"), halt.D("export", "x"))
	check(0, 1, halt.D("customer", "acme", "plan", "nonesuch"))
	check(0, 1, halt.D("export", "y"))
	check(0, 0, halt.D("export", "y"))
	check(0, 1, halt.D("path", "/healthz"))
	check(0, 1, halt.D("remote_address", "198.51.100.4"), halt.D("user", "u2"))
	check(0, 1, halt.D("nothing", "matches"))
	return out
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestOneConfigurationThreeSpellings: the YAML in a directory (Load), the same text
// (YAML) and the same model built in code (Build) decide a timeline identically, and
// the built model renders back to YAML that decides it identically too.
func TestOneConfigurationThreeSpellings(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "saas.yaml"), []byte(saasYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	built := saasBuilt(t)
	docs, err := built.YAML()
	if err != nil {
		t.Fatal(err)
	}
	var rendered string
	for _, v := range docs {
		rendered = v
	}
	var want []string
	for name, cfg := range map[string]halt.Config{"load": halt.Load(dir), "yaml": halt.YAML(saasYAML), "build": built, "rendered": halt.YAML(rendered)} {
		h, err := halt.New(newStore(t), cfg)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := script(t, h)
		if want == nil {
			want = got
			continue
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s, check %d: %q, want %q", name, i, got[i], want[i])
			}
		}
	}
	// And the timeline is the engine's: the rate limit, the quota, the lockout, the
	// plan, the preset with its cost, the exemptions.
	for i, w := range []string{
		"allow rate per_minute 3 2 0s 20s 1m0s",
		"allow rate per_minute 3 1 0s 39s 1m0s",
		"allow rate per_minute 3 0 18s 58s 1m0s",
		"deny rate per_minute 3 0 17s 57s 1m0s",
		"allow quota quota:monthly 5 1 0s 28m0s 744h0m0s",
		"allow quota quota:monthly 5 0 28m0s 28m0s 744h0m0s",
		"deny quota quota:monthly 5 0 27m0s 27m0s 744h0m0s",
		"deny penalty penalty:abuse 2 0 1m0s 1m0s 0s",
		"allow rate per_minute 3 2 0s 20s 1m0s",
		"allow rate EXPENSIVE_OPERATION 2 0 12s 12s 1m0s",
		"allow rate free 100 98 0s 37.8s 1h0m0s",
		"allow rate EXPENSIVE_OPERATION 2 0 12s 12s 1m0s", // another identity
		"allow rate EXPENSIVE_OPERATION 2 0 0s 12s 1m0s",
		"allow exempt  0 0 0s 0s 0s",
		"allow rate per_minute 3 2 0s 20s 1m0s",
		"allow   0 0 0s 0s 0s",
	} {
		if i < len(want) && want[i] != w {
			t.Errorf("check %d: %q, want %q", i, want[i], w)
		}
	}
	t.Logf("timeline:\n%s", strings.Join(want, "\n"))
}

// TestCheckNLikeRate: explicit time, as x/time/rate's AllowN; n = 0 only looks.
func TestCheckNLikeRate(t *testing.T) {
	h, err := halt.New(newStore(t), halt.Preset("STRICT"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ip := halt.D(halt.AddressKey, "203.0.113.7")
	for i := range 10 {
		if d, _ := h.CheckN(ctx, t0, "", 1, ip); !d.Allowed || d.Remaining != int64(9-i) {
			t.Fatalf("call %d: %+v", i, d)
		}
	}
	if d, _ := h.CheckN(ctx, t0, "", 0, ip); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("a look (it costs nothing, so it fits) at a full window: %+v", d)
	}
	if d, _ := h.CheckN(ctx, t0, "", 1, ip); d.Allowed || d.RetryAfter != time.Minute {
		t.Fatalf("the 11th: %+v", d)
	}
	// STRICT is a fixed window of a minute: the next window is open.
	if d, _ := h.CheckN(ctx, t0.Add(time.Minute), halt.PresetDomain, 1, ip); !d.Allowed || d.Remaining != 9 {
		t.Fatalf("next window: %+v", d)
	}
}

// TestCheckOnTheClock: Check reads the Engine's clock.
func TestCheckOnTheClock(t *testing.T) {
	clk := &fakeClock{t: t0}
	h, err := halt.New(newStore(t), halt.Preset("AUTH_BRUTE_FORCE"), halt.WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ip := halt.D(halt.AddressKey, "203.0.113.7")
	for range 5 {
		h.Check(ctx, "", ip)
	}
	if d, _ := h.Check(ctx, "", ip); d.Allowed || d.RetryAfter != time.Minute {
		t.Fatalf("6th login: %+v", d)
	}
	clk.Add(time.Minute)
	if d, _ := h.Check(ctx, "", ip); !d.Allowed {
		t.Fatalf("a minute later: %+v", d)
	}
	if !h.Now().Equal(clk.Now()) {
		t.Fatal("Now is not the clock's")
	}
}

func TestDecisionAnswersLikeTheServer(t *testing.T) {
	h, err := halt.New(newStore(t), halt.YAML(saasYAML))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	u := halt.D("user", "u9")
	var d halt.Decision
	for range 4 {
		d, _ = h.CheckN(ctx, t0, "api", 1, u)
	}
	hdr := http.Header{}
	d.WriteHeaders(hdr, halt.Headers{IETF: true, XRateLimit: true})
	status, body := d.Problem()
	if status != 429 || hdr.Get("Retry-After") != "20" || hdr.Get("RateLimit") != `"per_minute";r=0;t=20` || hdr.Get("X-RateLimit-Limit") != "3" ||
		string(body) != `{"detail":"rate limit exceeded","retry_after_seconds":20,"status":429,"title":"Too Many Requests","type":"about:blank","violated_policy":"per_minute"}` {
		t.Fatalf("refused: %d %v %s", status, hdr, body)
	}
	d, _ = h.CheckN(ctx, t0, "api", 1, u) // the second violation locks u9 out
	d, _ = h.CheckN(ctx, t0, "api", 1, u)
	hdr = http.Header{}
	d.WriteHeaders(hdr, halt.Headers{IETF: true, XRateLimit: true})
	if status, _ := d.Problem(); status != 403 || hdr.Get("RateLimit") != "" || hdr.Get("Retry-After") != "60" {
		t.Fatalf("locked out: %d %v", status, hdr)
	}
	// Exempt: nothing to say.
	d, _ = h.CheckN(ctx, t0, "api", 1, halt.D("path", "/healthz"))
	hdr = http.Header{}
	d.WriteHeaders(hdr, halt.Headers{IETF: true, XRateLimit: true})
	if status, body := d.Problem(); !d.Allowed || d.Reason != halt.ReasonExempt || d.Exemption != "path" || len(hdr) != 0 || status != 0 || body != nil {
		t.Fatalf("exempt: %+v %v", d, hdr)
	}
	if r, ok := h.Exempt("api", netip.MustParseAddr("198.51.100.1"), "/v1"); !ok || r != "cidr" {
		t.Fatalf("Exempt: %q %v", r, ok)
	}
	if _, ok := h.Exempt("api", netip.Addr{}, "/v1/../healthz"); ok {
		t.Fatal("a path not in normal form is never exempt")
	}
}

func TestMistakes(t *testing.T) {
	store := newStore(t)
	for name, cfg := range map[string]halt.Config{
		"unknown preset": halt.Preset("PUBLIC"),
		"sub-second":     halt.Build(halt.Domain{Name: "d", Rules: []halt.Rule{{Key: "k", Limits: []halt.Policy{{Requests: 1, Per: 1500 * time.Millisecond}}}}}),
		"two penalties": halt.Build(halt.Domain{Name: "d", Rules: []halt.Rule{
			{Key: "a", Policy: "STRICT", Penalty: &halt.Penalty{Name: "p", Threshold: 1, Ladder: []time.Duration{time.Minute}, Decay: time.Hour}},
			{Key: "b", Policy: "STRICT", Penalty: &halt.Penalty{Name: "p", Threshold: 2, Ladder: []time.Duration{time.Minute}, Decay: time.Hour}},
		}}),
		"bad yaml":  halt.YAML("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n"),
		"no config": {},
		"no files":  halt.Load(filepath.Join(t.TempDir(), "missing")),
	} {
		_, err := halt.New(store, cfg)
		if !errors.Is(err, halt.ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
	if _, err := halt.New(store, halt.Preset("PUBLIC")); err == nil || !strings.Contains(err.Error(), "PUBLIC_API") {
		t.Errorf("an unknown preset's error lists the presets: %v", err)
	}
	if _, err := halt.New(store, halt.YAML("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n")); err == nil || !strings.Contains(err.Error(), "<yaml>:4") || !strings.Contains(err.Error(), "descriptors[0].rate_limit.unit") {
		t.Errorf("a YAML mistake names its line and field: %v", err)
	}
	if _, err := halt.New(nil, halt.Preset("STRICT")); !errors.Is(err, halt.ErrInvalid) {
		t.Errorf("nil store: %v", err)
	}
	if _, err := halt.New(store, halt.Preset("STRICT"), halt.WithKeyPrefix("x")); !errors.Is(err, halt.ErrInvalid) {
		t.Errorf("key prefix on an Engine: %v", err)
	}
	if _, err := halt.New(store, halt.Preset("STRICT"), halt.WithReload()); !errors.Is(err, halt.ErrInvalid) {
		t.Errorf("reload without files: %v", err)
	}
	h, _ := halt.New(store, halt.Preset("STRICT"))
	ctx := context.Background()
	for name, descs := range map[string][]halt.Descriptor{
		"none":      nil,
		"empty":     {{}},
		"empty key": {halt.D("", "v")},
		"long":      {halt.D("k", strings.Repeat("v", halt.MaxKeyLen+1))},
	} {
		if _, err := h.Check(ctx, "", descs...); !errors.Is(err, halt.ErrInvalid) {
			t.Errorf("%s descriptors: %v", name, err)
		}
	}
	two, _ := halt.New(store, halt.Build(halt.Domain{Name: "a", Rules: []halt.Rule{{Key: "k", Policy: "STRICT"}}}, halt.Domain{Name: "b", Rules: []halt.Rule{{Key: "k", Policy: "STRICT"}}}))
	if _, err := two.Check(ctx, "", halt.D("k", "v")); !errors.Is(err, halt.ErrInvalid) {
		t.Errorf("no domain named among two: %v", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("D with an odd count did not panic")
			}
		}()
		odd := strings.Fields("k") // built at run time: staticcheck refuses an odd literal
		halt.D(odd...)
	}()
}

func TestStoreFailureModes(t *testing.T) {
	ctx := context.Background()
	ip := halt.D(halt.AddressKey, "203.0.113.7")
	open, _ := halt.New(failingStore{}, halt.Preset("STRICT"))
	if d, err := open.Check(ctx, "", ip); err != nil || !d.Allowed || !d.FailedOpen {
		t.Fatalf("fail open: %+v %v", d, err)
	}
	closed, _ := halt.New(failingStore{}, halt.Preset("STRICT"), halt.WithFailureMode(halt.FailClosed))
	if d, err := closed.Check(ctx, "", ip); err != nil || d.Allowed || d.RetryAfter != time.Second {
		t.Fatalf("fail closed: %+v %v", d, err)
	}
	fail, _ := halt.New(failingStore{}, halt.Preset("STRICT"), halt.WithFailureMode(halt.FailError))
	if _, err := fail.Check(ctx, "", ip); !errors.Is(err, halt.ErrStoreUnavailable) || !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("fail with an error: %v", err)
	}
}

// TestReload: an Engine on files with WithReload takes a change that validates and
// keeps the last good configuration over one that does not.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "limits.yaml")
	write := func(rpu string) {
		if err := os.WriteFile(file+".tmp", []byte("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: "+rpu+"}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".tmp", file); err != nil {
			t.Fatal(err)
		}
	}
	write("5")
	logs := &syncBuffer{}
	h, err := halt.New(newStore(t), halt.Load(dir), halt.WithReload(), halt.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	limit := func() int64 {
		d, err := h.CheckN(context.Background(), t0, "d", 0, halt.D("k", "v"))
		if err != nil {
			t.Fatal(err)
		}
		return d.Limit
	}
	if limit() != 5 {
		t.Fatal("first load")
	}
	write("7")
	// fsnotify and the debounce take their time; the bound is generous.
	for deadline := time.Now().Add(30 * time.Second); limit() != 7; {
		if time.Now().After(deadline) {
			t.Fatal("the change was not loaded")
		}
		time.Sleep(20 * time.Millisecond)
	}
	write("seven")
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs.String(), "configuration change refused"); {
		if time.Now().After(deadline) {
			t.Fatalf("the bad change was not reported: %s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if limit() != 7 {
		t.Fatal("a bad change replaced the configuration")
	}
	if !strings.Contains(logs.String(), "requests_per_unit") {
		t.Fatalf("the refusal does not name the field: %s", logs.String())
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLocalFirstPolicy: a Policy's LocalFirst renders as the rate_limit's consistency
// keys (the server's defaults where it leaves them zero), an Engine decides with it, and
// what the server refuses (local_first on a leaky bucket) and a Limiter refuse it.
func TestLocalFirstPolicy(t *testing.T) {
	cfg := halt.Build(halt.Domain{Name: "d", Rules: []halt.Rule{
		{Key: "tenant", Limits: []halt.Policy{{Algorithm: algorithms.FixedWindow, Requests: 10000, Per: time.Minute, LocalFirst: &halt.LocalFirst{MaxOvershoot: 0.05, SyncInterval: 250 * time.Millisecond}}}},
		{Key: "api", Limits: []halt.Policy{{Requests: 1000, Per: time.Second, LocalFirst: &halt.LocalFirst{}}}},
	}})
	files, err := cfg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	var all string
	for _, f := range files {
		all += f
	}
	for _, w := range []string{"consistency: local_first", "max_overshoot: 0.05", "sync_interval: 250ms"} {
		if !strings.Contains(all, w) {
			t.Errorf("rendered YAML lacks %q:\n%s", w, all)
		}
	}
	store := newStore(t)
	h, err := halt.New(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if dec, err := h.Check(context.Background(), "d", halt.D("tenant", "t1")); err != nil || !dec.Allowed {
			t.Fatalf("local-first check: %+v %v", dec, err)
		}
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = halt.New(store, halt.Build(halt.Domain{Name: "d", Rules: []halt.Rule{
		{Key: "k", Limits: []halt.Policy{{Algorithm: algorithms.LeakyBucket, Requests: 10, Per: time.Second, LocalFirst: &halt.LocalFirst{}}}},
	}}))
	if !errors.Is(err, halt.ErrInvalid) || !strings.Contains(err.Error(), "local_first is not supported by leaky_bucket") {
		t.Errorf("local-first leaky bucket: %v", err)
	}
	if _, err := halt.NewLimiter(store, halt.Policy{Requests: 10, Per: time.Second, LocalFirst: &halt.LocalFirst{}}); !errors.Is(err, halt.ErrInvalid) {
		t.Errorf("a local-first Limiter: %v", err)
	}
}

// TestCheckIdempotent: a request with an idempotency key, under a rule with
// idempotency_ttl, is decided once: the repeat is the first decision, replayed and not
// charged; the key sent with another cost is a conflict (422, not charged); a key over
// MaxIdempotencyKey is ErrInvalid; "" is no key.
func TestCheckIdempotent(t *testing.T) {
	ctx := context.Background()
	h, err := halt.New(newStore(t), halt.YAML("domain: api\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 5}\n    idempotency_ttl: 10m\n"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2030, 1, 1, 0, 0, 10, 0, time.UTC)
	u := halt.D("user", "u1")
	for i, want := range []struct {
		key       string
		n         uint64
		allowed   bool
		idem      string
		remaining int64
	}{
		{"k", 1, true, "", 4},
		{"k", 1, true, "replayed", 4},
		{"k", 2, false, "conflict", 0},
		{"", 1, true, "", 3},
		{"k", 1, true, "replayed", 4},
	} {
		d, err := h.CheckIdempotent(ctx, now, "", want.key, want.n, u)
		if err != nil || d.Allowed != want.allowed || d.Idempotency != want.idem || d.Remaining != want.remaining {
			t.Fatalf("call %d: %+v, %v; want allowed %v idempotency %q remaining %d", i, d, err, want.allowed, want.idem, want.remaining)
		}
		if !d.Allowed {
			st, body := d.Problem()
			if st != http.StatusUnprocessableEntity || d.Reason != halt.ReasonIdempotency || d.Policy != "idempotency-key" || !strings.Contains(string(body), `"violated_policy":"idempotency-key"`) {
				t.Errorf("conflict: %d %s, %+v", st, body, d)
			}
			hdr := http.Header{}
			d.WriteHeaders(hdr, halt.Headers{IETF: true, XRateLimit: true})
			if len(hdr) != 0 {
				t.Errorf("conflict: headers %v (it reports no limit)", hdr)
			}
		}
	}
	if _, err := h.CheckIdempotent(ctx, now, "", strings.Repeat("k", halt.MaxIdempotencyKey+1), 1, u); !errors.Is(err, halt.ErrInvalid) {
		t.Errorf("over-long key: %v, want ErrInvalid", err)
	}
	if d, _ := h.CheckN(ctx, now, "", 1, u); d.Remaining != 2 {
		t.Errorf("after: remaining %d, want 2 (charged twice: the first call and the keyless one)", d.Remaining)
	}
}

// TestReplayedRefusalReason: two Engines on one store, configured differently (a
// rollout): a request refused by A's per-minute limit, repeated with its key on B, whose
// rule lacks that limit, is B's replayed refusal with no limit to report. Its Reason was
// "" (ReasonNone: "no rule matched; passes unlimited") on a refusal; it is ReasonRate,
// as Problem answers it (429).
func TestReplayedRefusalReason(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	rule := "domain: api\ndescriptors:\n  - key: user\n    idempotency_ttl: 10m\n    rate_limits:\n      - {unit: hour, requests_per_unit: 100}\n"
	a, err := halt.New(store, halt.YAML(rule+"      - {unit: minute, requests_per_unit: 1}\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := halt.New(store, halt.YAML(rule))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2030, 1, 1, 0, 0, 10, 0, time.UTC)
	u := halt.D("user", "u1")
	if d, err := a.CheckN(ctx, now, "", 1, u); err != nil || !d.Allowed {
		t.Fatalf("first: %+v, %v", d, err)
	}
	if d, err := a.CheckIdempotent(ctx, now, "", "k", 1, u); err != nil || d.Allowed || d.Reason != halt.ReasonRate {
		t.Fatalf("refused on A: %+v, %v", d, err)
	}
	d, err := b.CheckIdempotent(ctx, now, "", "k", 1, u)
	if err != nil || d.Allowed || d.Idempotency != "replayed" {
		t.Fatalf("repeat on B: %+v, %v; want the refusal replayed", d, err)
	}
	if st, _ := d.Problem(); d.Reason != halt.ReasonRate || st != http.StatusTooManyRequests {
		t.Fatalf("repeat on B: Reason %q, Problem %d; want %q and 429", d.Reason, st, halt.ReasonRate)
	}
}
