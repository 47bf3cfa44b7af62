package rlsv3_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/lograte"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// fakeClock is set by the test; the engine never sleeps on it.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// t0 is aligned to every unit up to a day: 2030-01-01T00:00:00Z.
var t0 = time.Unix(1893456000, 0)

type harness struct {
	svc   *rlsv3.Service
	clock *fakeClock
	m     *metrics.Metrics
}

func newHarness(t *testing.T, yaml string, mutate ...func(*engine.Config)) *harness {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"test.yaml": []byte(yaml)})
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	store := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { store.Close() })
	h := &harness{clock: &fakeClock{now: t0}, m: metrics.New(nil)}
	cfg := engine.Config{Store: store, StoreName: "memory", Rules: func() *config.Set { return set }, Clock: h.clock, Metrics: h.m}
	for _, f := range mutate {
		f(&cfg)
	}
	e, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.svc = rlsv3.NewService(e, headers.Families{IETF: true, XRateLimit: true})
	return h
}

func desc(kv ...string) *rlcommon.RateLimitDescriptor {
	d := &rlcommon.RateLimitDescriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return d
}

func (h *harness) call(t *testing.T, domain string, hits uint32, ds ...*rlcommon.RateLimitDescriptor) *rlspb.RateLimitResponse {
	t.Helper()
	resp, err := h.svc.ShouldRateLimit(context.Background(), &rlspb.RateLimitRequest{Domain: domain, Descriptors: ds, HitsAddend: hits})
	if err != nil {
		t.Fatalf("ShouldRateLimit: %v", err)
	}
	if len(resp.Statuses) != len(ds) {
		t.Fatalf("%d statuses for %d descriptors", len(resp.Statuses), len(ds))
	}
	return resp
}

const referenceConfig = `
domain: edge
descriptors:
  - key: remote_address
    rate_limit:
      unit: minute
      requests_per_unit: 3
  - key: path
    value: /login
    rate_limit:
      name: login
      unit: second
      requests_per_unit: 1
  - key: path
    value: /shadow
    shadow_mode: true
    rate_limit:
      unit: hour
      requests_per_unit: 1
  - key: path
    value: /free
    rate_limit:
      unlimited: true
  - key: client
    value: vip
    rate_limit:
      name: vip
      replaces:
        - name: per_client
      unit: second
      requests_per_unit: 100
  - key: client
    rate_limit:
      name: per_client
      unit: second
      requests_per_unit: 1
`

func TestReferenceFixedWindow(t *testing.T) {
	h := newHarness(t, referenceConfig)
	h.clock.Add(15 * time.Second)
	for i, wantRemaining := range []uint32{2, 1, 0} {
		r := h.call(t, "edge", 0, desc("remote_address", "10.0.0.1"))
		st := r.Statuses[0]
		if r.OverallCode != rlspb.RateLimitResponse_OK || st.Code != rlspb.RateLimitResponse_OK {
			t.Fatalf("hit %d: %v", i, r)
		}
		if st.LimitRemaining != wantRemaining || st.CurrentLimit.RequestsPerUnit != 3 ||
			st.CurrentLimit.Unit != rlspb.RateLimitResponse_RateLimit_MINUTE {
			t.Fatalf("hit %d: status %v", i, st)
		}
		if got := st.DurationUntilReset.AsDuration(); got != 45*time.Second {
			t.Fatalf("hit %d: reset %v, want 45s (minute windows aligned to the epoch)", i, got)
		}
	}
	r := h.call(t, "edge", 0, desc("remote_address", "10.0.0.1"))
	if r.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT || r.Statuses[0].LimitRemaining != 0 {
		t.Fatalf("4th hit: %v", r)
	}
	// Another address has its own counter.
	if r := h.call(t, "edge", 0, desc("remote_address", "10.0.0.2")); r.OverallCode != rlspb.RateLimitResponse_OK {
		t.Fatalf("other address: %v", r)
	}
	// The next minute window starts fresh.
	h.clock.Add(45 * time.Second)
	if r := h.call(t, "edge", 0, desc("remote_address", "10.0.0.1")); r.Statuses[0].LimitRemaining != 2 {
		t.Fatalf("next window: %v", r)
	}
}

func TestStatusesInOrderAndOverall(t *testing.T) {
	h := newHarness(t, referenceConfig)
	h.call(t, "edge", 0, desc("path", "/login"))
	r := h.call(t, "edge", 0, desc("remote_address", "1.1.1.1"), desc("path", "/login"), desc("nothing", "here"))
	if r.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("overall %v", r.OverallCode)
	}
	if r.Statuses[0].Code != rlspb.RateLimitResponse_OK || r.Statuses[1].Code != rlspb.RateLimitResponse_OVER_LIMIT ||
		r.Statuses[2].Code != rlspb.RateLimitResponse_OK || r.Statuses[2].CurrentLimit != nil {
		t.Fatalf("statuses %v", r.Statuses)
	}
	if r.Statuses[1].CurrentLimit.Name != "login" {
		t.Fatalf("limit name %q", r.Statuses[1].CurrentLimit.Name)
	}
}

func TestShadowUnlimitedReplaces(t *testing.T) {
	h := newHarness(t, referenceConfig)
	h.call(t, "edge", 0, desc("path", "/shadow"))
	r := h.call(t, "edge", 0, desc("path", "/shadow"))
	if r.OverallCode != rlspb.RateLimitResponse_OK || r.Statuses[0].Code != rlspb.RateLimitResponse_OK {
		t.Fatalf("shadow mode must answer OK: %v", r)
	}
	for i := 0; i < 5; i++ {
		// The reference answers an unlimited descriptor with the largest limit_remaining.
		if r := h.call(t, "edge", 0, desc("path", "/free")); r.OverallCode != rlspb.RateLimitResponse_OK || r.Statuses[0].CurrentLimit != nil ||
			r.Statuses[0].LimitRemaining != 1<<32-1 {
			t.Fatalf("unlimited: %v, want OK, no current limit, limit_remaining 4294967295", r)
		}
	}
	// vip replaces per_client: sent together, only vip counts.
	for i := 0; i < 3; i++ {
		r := h.call(t, "edge", 0, desc("client", "vip"), desc("client", "someone"))
		if r.OverallCode != rlspb.RateLimitResponse_OK || r.Statuses[1].CurrentLimit != nil {
			t.Fatalf("replaces: call %d: %v", i, r)
		}
	}
	h.call(t, "edge", 0, desc("client", "someone"))
	if r := h.call(t, "edge", 0, desc("client", "someone")); r.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("per_client alone must apply: %v", r)
	}
	if got := testutilCount(h.m, "edge", "shadow"); got != 1 {
		t.Fatalf("shadow decisions counted %v, want 1", got)
	}
}

func TestHitsAddend(t *testing.T) {
	h := newHarness(t, `
domain: d
descriptors:
  - key: k
    rate_limit: {unit: hour, requests_per_unit: 10}
`)
	// Request-level hits_addend 4.
	if r := h.call(t, "d", 4, desc("k", "a")); r.Statuses[0].LimitRemaining != 6 {
		t.Fatalf("hits 4: %v", r.Statuses[0])
	}
	// Descriptor hits_addend 0 overrides the request's and only checks.
	d := desc("k", "a")
	d.HitsAddend = wrapperspb.UInt64(0)
	if r := h.call(t, "d", 4, d); r.Statuses[0].LimitRemaining != 6 {
		t.Fatalf("check-only: %v", r.Statuses[0])
	}
	// Descriptor hits_addend 3 overrides the request's 4.
	d.HitsAddend = wrapperspb.UInt64(3)
	if r := h.call(t, "d", 4, d); r.Statuses[0].LimitRemaining != 3 {
		t.Fatalf("descriptor hits 3: %v", r.Statuses[0])
	}
	// Hostile hits never overflow into an admission.
	for _, big := range []uint64{1<<32 - 1, 1<<64 - 1} {
		d.HitsAddend = wrapperspb.UInt64(big)
		if r := h.call(t, "d", 0, desc("k", "fresh"), d); r.Statuses[1].Code != rlspb.RateLimitResponse_OVER_LIMIT {
			t.Fatalf("hits %d admitted: %v", big, r)
		}
	}
	if r := h.call(t, "d", 1<<32-1, desc("k", "fresh2")); r.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("request hits 2^32-1 admitted: %v", r)
	}
}

func TestLimitOverride(t *testing.T) {
	h := newHarness(t, referenceConfig)
	d := desc("anything", "x")
	d.Limit = &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 2, Unit: typev3.RateLimitUnit_SECOND}
	for i, want := range []rlspb.RateLimitResponse_Code{rlspb.RateLimitResponse_OK, rlspb.RateLimitResponse_OK, rlspb.RateLimitResponse_OVER_LIMIT} {
		r := h.call(t, "edge", 0, d)
		if r.Statuses[0].Code != want || r.Statuses[0].CurrentLimit.RequestsPerUnit != 2 {
			t.Fatalf("override hit %d: %v", i, r.Statuses[0])
		}
	}
}

func TestHaltExtensions(t *testing.T) {
	h := newHarness(t, `
domain: api
descriptors:
  - key: user
    rate_limits:
      - name: per_second
        unit: second
        requests_per_unit: 2
        algorithm: token_bucket
      - name: per_minute
        unit: minute
        requests_per_unit: 3
        algorithm: sliding_window
  - key: search
    cost: 5
    rate_limit: {unit: minute, requests_per_unit: 10, algorithm: sliding_window_counter}
`)
	// Both limits pass: the tighter (per_second, 1 left) is reported.
	r := h.call(t, "api", 0, desc("user", "u1"))
	if st := r.Statuses[0]; st.CurrentLimit.Name != "per_second" || st.LimitRemaining != 1 {
		t.Fatalf("tightest: %v", st)
	}
	h.clock.Add(time.Second)
	h.call(t, "api", 0, desc("user", "u1"))
	h.call(t, "api", 0, desc("user", "u1"))
	h.clock.Add(time.Second)
	// Token bucket has tokens again, but the sliding minute is used up: it denies and is reported.
	r = h.call(t, "api", 0, desc("user", "u1"))
	if st := r.Statuses[0]; st.Code != rlspb.RateLimitResponse_OVER_LIMIT || st.CurrentLimit.Name != "per_minute" {
		t.Fatalf("denying limit must be reported: %v", st)
	}
	// cost 5: two calls use the whole 10.
	h.call(t, "api", 0, desc("search", "q"))
	if r := h.call(t, "api", 0, desc("search", "q")); r.Statuses[0].LimitRemaining != 0 || r.OverallCode != rlspb.RateLimitResponse_OK {
		t.Fatalf("weighted: %v", r)
	}
	if r := h.call(t, "api", 0, desc("search", "q")); r.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("weighted third: %v", r)
	}
}

func TestHeaders(t *testing.T) {
	h := newHarness(t, referenceConfig)
	r := h.call(t, "edge", 0, desc("path", "/login"))
	got := map[string]string{}
	for _, hv := range r.ResponseHeadersToAdd {
		got[hv.Key] = hv.Value
	}
	want := map[string]string{
		"X-RateLimit-Limit":     "1",
		"X-RateLimit-Remaining": "0",
		"X-RateLimit-Reset":     "1",
		"RateLimit-Policy":      `"login";q=1;w=1`,
		"RateLimit":             `"login";r=0;t=1`,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

func TestInvalidArguments(t *testing.T) {
	h := newHarness(t, referenceConfig)
	many := make([]*rlcommon.RateLimitDescriptor, 10_000)
	for i := range many {
		many[i] = desc("remote_address", "x")
	}
	deep := &rlcommon.RateLimitDescriptor{}
	for i := 0; i < 100; i++ {
		deep.Entries = append(deep.Entries, &rlcommon.RateLimitDescriptor_Entry{Key: "k", Value: "v"})
	}
	cases := map[string]*rlspb.RateLimitRequest{
		"domain must not be empty":        {Descriptors: []*rlcommon.RateLimitDescriptor{desc("a", "b")}},
		"no descriptors":                  {Domain: "edge"},
		"10000 descriptors":               {Domain: "edge", Descriptors: many},
		"longer than 1024 bytes":          {Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{desc("remote_address", strings.Repeat("x", 1<<20))}},
		"has 100 entries":                 {Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{deep}},
		"has no entries":                  {Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{{}}},
		"empty key":                       {Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{desc("", "v")}},
		"limit override has unknown unit": {Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{{Entries: desc("a", "b").Entries, Limit: &rlcommon.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1}}}},
	}
	for want, req := range cases {
		_, err := h.svc.ShouldRateLimit(context.Background(), req)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
	if _, err := h.svc.ShouldRateLimit(context.Background(), nil); status.Code(err) != codes.InvalidArgument {
		t.Errorf("nil request: %v", err)
	}
}

func TestUnknownDomainIsOK(t *testing.T) {
	h := newHarness(t, referenceConfig)
	r := h.call(t, "nope", 0, desc("remote_address", "1.2.3.4"))
	if r.OverallCode != rlspb.RateLimitResponse_OK || r.Statuses[0].CurrentLimit != nil {
		t.Fatalf("%v", r)
	}
}

// brokenStore fails every call, to unit-test the failure modes (the backends' own fault
// tests use real servers).
type brokenStore struct{}

func (brokenStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	for _, op := range ops {
		op.Err = backends.ErrUnavailable
	}
	return backends.ErrUnavailable
}
func (brokenStore) Delete(context.Context, ...string) error { return backends.ErrUnavailable }
func (brokenStore) Ping(context.Context) error              { return backends.ErrUnavailable }
func (brokenStore) Close() error                            { return nil }

func TestFailureModes(t *testing.T) {
	cfg := referenceConfig + `
  - key: strict
    failure_mode: deny
    rate_limit: {unit: second, requests_per_unit: 5}
`
	for mode, check := range map[string]func(*rlspb.RateLimitResponse, error) error{
		"allow": func(r *rlspb.RateLimitResponse, err error) error {
			if err != nil || r.OverallCode != rlspb.RateLimitResponse_OK {
				return errors.New("allow must answer OK")
			}
			return nil
		},
		"deny": func(r *rlspb.RateLimitResponse, err error) error {
			if err != nil || r.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
				return errors.New("deny must answer OVER_LIMIT")
			}
			return nil
		},
		"error": func(r *rlspb.RateLimitResponse, err error) error {
			if status.Code(err) != codes.Unavailable {
				return errors.New("error must answer UNAVAILABLE")
			}
			return nil
		},
	} {
		h := newHarness(t, cfg, func(c *engine.Config) {
			c.Store = brokenStore{}
			c.FailureMode = config.FailureMode(mode)
		})
		resp, err := h.svc.ShouldRateLimit(context.Background(), &rlspb.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{desc("remote_address", "1")}})
		if e := check(resp, err); e != nil {
			t.Errorf("%s: %v (resp %v, err %v)", mode, e, resp, err)
		}
		// A rule's own failure_mode wins over the global one.
		resp, err = h.svc.ShouldRateLimit(context.Background(), &rlspb.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{desc("strict", "1")}})
		if err != nil || resp.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
			t.Errorf("%s: rule failure_mode deny ignored: %v %v", mode, resp, err)
		}
	}
}

func TestConcurrentCallsNeverOverAdmit(t *testing.T) {
	h := newHarness(t, `
domain: d
descriptors:
  - key: k
    rate_limit: {unit: hour, requests_per_unit: 100, algorithm: token_bucket}
`)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for w := 0; w < 20; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				r, err := h.svc.ShouldRateLimit(context.Background(), &rlspb.RateLimitRequest{Domain: "d", Descriptors: []*rlcommon.RateLimitDescriptor{desc("k", "same")}})
				if err != nil {
					t.Error(err)
					return
				}
				if r.OverallCode == rlspb.RateLimitResponse_OK {
					mu.Lock()
					ok++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if ok != 100 {
		t.Fatalf("admitted %d, want exactly 100", ok)
	}
}

// testutilCount sums halt_decisions_total for a domain and result over every rule.
func testutilCount(m *metrics.Metrics, domain, result string) float64 {
	mfs, _ := m.Registry.Gather()
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "halt_decisions_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range mt.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["domain"] == domain && labels["result"] == result {
				sum += mt.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestOutageLogsAFewLines: during a store outage every call fails; the log gets one
// warning per interval saying how many were held back, while the metric counts each call.
func TestOutageLogsAFewLines(t *testing.T) {
	var buf bytes.Buffer
	h := newHarness(t, referenceConfig, func(c *engine.Config) {
		c.Store = brokenStore{}
		c.Logger = slog.New(slog.NewJSONHandler(&buf, nil))
	})
	req := &rlspb.RateLimitRequest{Domain: "edge", Descriptors: []*rlcommon.RateLimitDescriptor{desc("remote_address", "1")}}
	for i := 0; i < 500; i++ {
		if _, err := h.svc.ShouldRateLimit(context.Background(), req); err != nil {
			t.Fatal(err) // failure mode allow: answered OK
		}
	}
	h.clock.Add(lograte.DefaultInterval)
	if _, err := h.svc.ShouldRateLimit(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["msg"] == "store failed; applying failure mode" {
			lines = append(lines, m)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("%d store-failure lines for 501 failed calls over one interval, want 2:\n%s", len(lines), buf.String())
	}
	if lines[0]["similar_suppressed"] != float64(0) || lines[1]["similar_suppressed"] != float64(499) {
		t.Errorf("similar_suppressed = %v then %v, want 0 then 499", lines[0]["similar_suppressed"], lines[1]["similar_suppressed"])
	}
	if got := promtest.ToFloat64(h.m.StoreErrors.WithLabelValues("memory")); got != 501 {
		t.Errorf("store errors metric = %v, want 501 (every call)", got)
	}
}

// TestDetailedMetricCapped floods a detailed_metric rule with distinct values (issue 15
// found 6,378 series in a second, without bound): halt_detailed_decisions_total keeps at
// most the per-rule cap of descriptors, and counts the rest under __overflow__.
func TestDetailedMetricCapped(t *testing.T) {
	h := newHarness(t, "domain: d\ndescriptors:\n  - key: ip\n    detailed_metric: true\n    rate_limit: {unit: hour, requests_per_unit: 100000}\n")
	h.m.SetKeyCaps(25, 40)
	const flood = 1000
	for i := range flood {
		h.call(t, "d", 1, desc("ip", fmt.Sprint("10.0.", i/256, ".", i%256)))
	}
	mfs, err := h.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series, total, overflow := 0, 0.0, 0.0
	for _, mf := range mfs {
		if mf.GetName() != "halt_detailed_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			series++
			total += m.GetCounter().GetValue()
			for _, l := range m.GetLabel() {
				if l.GetName() == "descriptor" && l.GetValue() == metrics.OverflowKey {
					overflow += m.GetCounter().GetValue()
				}
			}
		}
	}
	if series != 26 || total != flood || overflow != flood-25 {
		t.Fatalf("%d series (want 25 + overflow), %v decisions (want %d), %v on overflow (want %d)", series, total, flood, overflow, flood-25)
	}
}
