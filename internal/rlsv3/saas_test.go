package rlsv3_test

import (
	"fmt"
	"testing"
	"time"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/halt-envoy/halt-envoy/internal/metrics"
)

const saasConfig = `
domain: saas
time_zone: UTC
default_plan: free
plans:
  free:
    rate_limit: {unit: hour, requests_per_unit: 5, algorithm: token_bucket}
    quota: {period: monthly, requests: 8}
  pro:
    rate_limit: {unit: hour, requests_per_unit: 50, algorithm: token_bucket}
    quota: {period: monthly, requests: 100}
penalties:
  abuse:
    threshold: 2
    severity: 1
    ladder: [1m, 5m]
    decay: 1h
exemptions:
  paths: [/healthz]
  private_ranges: true
  values:
    - {key: user, value: health-checker}
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 2}
    penalty: abuse
    allow_algorithm_override: true
  - key: path
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: strict
    rate_limit: {unit: minute, requests_per_unit: 3}
`

func TestPlansAndFallback(t *testing.T) {
	h := newHarness(t, saasConfig)
	// pro: 50/hour.
	r := h.call(t, "saas", 0, desc("customer", "c1", "plan", "pro"))
	if st := r.Statuses[0]; st.LimitRemaining != 49 || st.CurrentLimit.RequestsPerUnit != 50 {
		t.Fatalf("pro: %v", st)
	}
	// An unknown plan gets the default (free, 5/hour) and is counted.
	r = h.call(t, "saas", 0, desc("customer", "c2", "plan", "platinum"))
	if st := r.Statuses[0]; st.CurrentLimit.RequestsPerUnit != 5 {
		t.Fatalf("fallback: %v", st)
	}
	if got := counter(h.m, "halt_plan_fallbacks_total", map[string]string{"domain": "saas"}); got != 1 {
		t.Fatalf("fallbacks counted %v", got)
	}
	// Counters belong to the customer, not the plan: an upgrade keeps this month's usage.
	for i := 0; i < 4; i++ {
		h.call(t, "saas", 0, desc("customer", "c3", "plan", "free"))
	}
	r = h.call(t, "saas", 0, desc("customer", "c3", "plan", "free"))
	if r.OverallCode != rlspb.RateLimitResponse_OK {
		t.Fatalf("5th free call: %v", r)
	}
	if r := h.call(t, "saas", 0, desc("customer", "c3", "plan", "free")); r.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("6th free call must hit the hourly 5: %v", r)
	}
}

func TestMonthlyQuota(t *testing.T) {
	h := newHarness(t, saasConfig)
	// free: 5/hour token bucket and 8 a month. Spread calls over hours.
	ok := 0
	for hour := 0; hour < 4; hour++ {
		for i := 0; i < 5; i++ {
			r := h.call(t, "saas", 0, desc("customer", "q1", "plan", "free"))
			if r.OverallCode == rlspb.RateLimitResponse_OK {
				ok++
			}
		}
		h.clock.Add(time.Hour)
	}
	if ok != 8 {
		t.Fatalf("admitted %d in a month, the quota is 8", ok)
	}
	r := h.call(t, "saas", 0, desc("customer", "q1", "plan", "free"))
	st := r.Statuses[0]
	if st.Code != rlspb.RateLimitResponse_OVER_LIMIT || st.CurrentLimit.Unit != rlspb.RateLimitResponse_RateLimit_MONTH {
		t.Fatalf("over quota must report the quota: %v", st)
	}
	// t0 is 2030-01-01T00:00Z and 4 hours passed: the quota resets at February 1st.
	want := time.Date(2030, 2, 1, 0, 0, 0, 0, time.UTC).Sub(t0.Add(4 * time.Hour))
	if got := st.DurationUntilReset.AsDuration(); got != want {
		t.Fatalf("duration_until_reset %v, want %v (the period's end)", got, want)
	}
	if got := counter(h.m, "halt_quota_decisions_total", map[string]string{"result": "over_limit"}); got < 1 {
		t.Fatalf("quota denial not counted")
	}
	// A new month: fresh quota.
	h.clock.Add(want)
	if r := h.call(t, "saas", 0, desc("customer", "q1", "plan", "free")); r.OverallCode != rlspb.RateLimitResponse_OK {
		t.Fatalf("February: %v", r)
	}
}

func TestQuotaNotBurnedByRateDenials(t *testing.T) {
	h := newHarness(t, saasConfig)
	// 20 calls in one instant: the hourly bucket (5) denies 15; the quota (8) must have
	// counted only the 5 admitted.
	for i := 0; i < 20; i++ {
		h.call(t, "saas", 0, desc("customer", "q2", "plan", "free"))
	}
	h.clock.Add(time.Hour)
	ok := 0
	for i := 0; i < 5; i++ {
		if r := h.call(t, "saas", 0, desc("customer", "q2", "plan", "free")); r.OverallCode == rlspb.RateLimitResponse_OK {
			ok++
		}
	}
	if ok != 3 {
		t.Fatalf("after 5 admitted, 3 of the quota of 8 must remain; admitted %d", ok)
	}
}

func TestPenaltyLadder(t *testing.T) {
	h := newHarness(t, saasConfig)
	call := func() *rlspb.RateLimitResponse { return h.call(t, "saas", 0, desc("user", "mallory")) }
	codes := func(n int) (out []rlspb.RateLimitResponse_Code) {
		for i := 0; i < n; i++ {
			out = append(out, call().OverallCode)
		}
		return out
	}
	// 2 a minute, then two violations (threshold 2) lock mallory out for 1 minute.
	if got := fmt.Sprint(codes(4)); got != "[OK OK OVER_LIMIT OVER_LIMIT]" {
		t.Fatalf("first minute: %s", got)
	}
	if got := counter(h.m, "halt_penalty_lockouts_total", map[string]string{"penalty": "abuse"}); got != 1 {
		t.Fatalf("lockouts %v", got)
	}
	// Locked: refused with the lockout remaining, without touching the rate counters.
	h.clock.Add(58 * time.Second)
	resp := call()
	st := resp.Statuses[0]
	if st.Code != rlspb.RateLimitResponse_OVER_LIMIT || st.CurrentLimit.GetName() != "penalty:abuse" {
		t.Fatalf("locked out: %v", st)
	}
	// A lockout is not a quota: no rate-limit headers describe it (docs/envoy.md).
	if len(resp.ResponseHeadersToAdd) != 0 {
		t.Fatalf("a lockout carries rate-limit headers: %v", resp.ResponseHeadersToAdd)
	}
	if d := st.DurationUntilReset.AsDuration(); d != 2*time.Second {
		t.Fatalf("remaining lockout %v, want 2s", d)
	}
	// Lockout over (a new minute window too): admitted again; the next lockout is 5 minutes.
	h.clock.Add(3 * time.Second)
	if got := fmt.Sprint(codes(4)); got != "[OK OK OVER_LIMIT OVER_LIMIT]" {
		t.Fatalf("after the lockout: %s", got)
	}
	h.clock.Add(time.Second)
	st = call().Statuses[0]
	if got := st.DurationUntilReset.AsDuration(); st.CurrentLimit.GetName() != "penalty:abuse" || got != 5*time.Minute-time.Second {
		t.Fatalf("second lockout should have 4m59s left, got %v (%v)", got, st)
	}
	if got := counter(h.m, "halt_penalty_refusals_total", nil); got != 2 {
		t.Fatalf("refusals counted %v", got)
	}
}

func TestExemptions(t *testing.T) {
	h := newHarness(t, saasConfig)
	for i := 0; i < 5; i++ {
		for _, d := range [][]string{{"path", "/healthz"}, {"remote_address", "10.1.2.3"}, {"remote_address", "::1"}, {"user", "health-checker"}} {
			r := h.call(t, "saas", 0, desc(d...))
			if r.OverallCode != rlspb.RateLimitResponse_OK || r.Statuses[0].CurrentLimit != nil {
				t.Fatalf("%v must be exempt: %v", d, r)
			}
		}
	}
	// Not exempt: a public address.
	h.call(t, "saas", 0, desc("remote_address", "198.51.100.7"))
	if r := h.call(t, "saas", 0, desc("remote_address", "198.51.100.7")); r.OverallCode != rlspb.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("public address: %v", r)
	}
	if got := counter(h.m, "halt_exemptions_total", map[string]string{"reason": "private_address"}); got != 10 {
		t.Fatalf("private_address exemptions counted %v, want 10", got)
	}
}

func TestAlgorithmOverride(t *testing.T) {
	h := newHarness(t, saasConfig)
	// user allows overrides: token_bucket asked, used (token bucket of 2 per minute
	// refills after 30s, the fixed window would not).
	ask := func(who, algo string) *rlspb.RateLimitResponse {
		return h.call(t, "saas", 0, desc("user", who, "halt_algorithm", algo))
	}
	h.clock.Add(10 * time.Second)
	ask("alg", "token_bucket")
	ask("alg", "token_bucket")
	h.clock.Add(30 * time.Second)
	if r := ask("alg", "token_bucket"); r.OverallCode != rlspb.RateLimitResponse_OK {
		t.Fatalf("token bucket must have refilled one: %v", r)
	}
	if got := counter(h.m, "halt_algorithm_overrides_total", map[string]string{"outcome": "applied"}); got != 3 {
		t.Fatalf("applied %v", got)
	}
	// strict does not allow it: the ask is ignored and counted.
	h.call(t, "saas", 0, desc("strict", "s", "halt_algorithm", "token_bucket"))
	if got := counter(h.m, "halt_algorithm_overrides_total", map[string]string{"outcome": "ignored"}); got != 1 {
		t.Fatalf("ignored %v", got)
	}
	h.call(t, "saas", 0, desc("user", "x", "halt_algorithm", "quantum"))
	if got := counter(h.m, "halt_algorithm_overrides_total", map[string]string{"outcome": "invalid"}); got != 1 {
		t.Fatalf("invalid %v", got)
	}
}

// counter sums a counter's series whose labels include want.
func counter(m *metrics.Metrics, name string, want map[string]string) float64 {
	mfs, _ := m.Registry.Gather()
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range mt.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			sum += mt.GetCounter().GetValue()
		}
	}
	return sum
}
