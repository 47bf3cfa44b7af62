package engine_test

import (
	"context"
	"errors"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// The engine's entry points outside a decision (state.go, answer.go): what the admin API,
// ext_authz and the Go library read, reset and answer through.

const stateConfig = `
domain: d
penalties:
  abuse: {threshold: 2, ladder: [1m, 10m], decay: 1h}
exemptions:
  paths: [/healthz]
  private_ranges: true
descriptors:
  - key: user
    allow_algorithm_override: true
    rate_limit: {unit: minute, requests_per_unit: 2}
    quotas:
      - {name: daily, period: daily, requests: 5}
      - {name: monthly, period: monthly, requests: 100}
    penalty: abuse
  - key: shaped
    rate_limit: {unit: second, requests_per_unit: 1, algorithm: leaky_bucket, burst: 3, max_delay: 10s}
  - key: plain
    allow_algorithm_override: true
    rate_limit: {unit: minute, requests_per_unit: 2}
`

func TestQuotasReadAndReset(t *testing.T) {
	f := newFixture(t, stateConfig)
	ctx := context.Background()
	f.clock.Add(90 * time.Minute)
	f.mustCheck(t, d(1, "user", "u1"))
	f.mustCheck(t, d(1, "user", "u1"))
	ents := []config.Entry{{Key: "user", Value: "u1"}}
	rule, _ := f.e.Rules().Match("d", ents)
	read := func() []engine.QuotaUsage {
		t.Helper()
		us, err := f.e.Quotas(ctx, "d", ents, rule)
		if err != nil || len(us) != 2 {
			t.Fatalf("Quotas: %+v %v", us, err)
		}
		return us
	}
	us := read()
	daily := us[0]
	if daily.Quota.Name != "daily" || daily.Used != 2 || daily.Remaining != 3 || daily.Limit.Params.Requests != 5 ||
		!daily.Start.Equal(t0) || !daily.End.Equal(t0.Add(24*time.Hour)) || daily.ResetAfter != 24*time.Hour-90*time.Minute {
		t.Fatalf("daily: %+v", daily)
	}
	if read()[1].Used != 2 {
		t.Fatal("reading counted")
	}
	if err := f.e.ResetQuotas(ctx, "d", ents, rule, &rule.Quotas[0]); err != nil {
		t.Fatal(err)
	}
	if us := read(); us[0].Used != 0 || us[1].Used != 2 {
		t.Fatalf("after resetting daily only: %+v", us)
	}
}

func TestPenaltyReadRecordLift(t *testing.T) {
	f := newFixture(t, stateConfig)
	ctx := context.Background()
	ents := []config.Entry{{Key: "user", Value: "u2"}}
	rule, _ := f.e.Rules().Match("d", ents)
	// Two refusals of the rate limit (2 a minute) are two violations: locked out.
	for range 4 {
		f.mustCheck(t, d(1, "user", "u2"))
	}
	st, err := f.e.Penalty(ctx, "d", ents, rule, rule.Penalty, 0)
	if err != nil || !st.Locked || st.Remaining != time.Minute || !st.Until.Equal(t0.Add(time.Minute)) || st.Threshold != 2 {
		t.Fatalf("after two violations: %+v %v", st, err)
	}
	if decs, over := f.mustCheck(t, d(1, "user", "u2")); !over || decs[0].Kind != engine.KindPenalty {
		t.Fatalf("locked identity: %+v", decs[0])
	}
	if err := f.e.LiftPenalty(ctx, "d", ents, rule, rule.Penalty); err != nil {
		t.Fatal(err)
	}
	st, _ = f.e.Penalty(ctx, "d", ents, rule, rule.Penalty, 0)
	if st.Locked || st.PointsLeft != 2 {
		t.Fatalf("after lifting: %+v", st)
	}
	// Recording outside a rule (ext_authz's invalid keys) is a separate identity.
	locked, _, err := f.e.Penalize(ctx, "d", ents, rule.Penalty, 1)
	if err != nil || locked {
		t.Fatalf("Penalize: %v %v", locked, err)
	}
	if got := promtest.ToFloat64(f.m.PenaltyViolations.WithLabelValues("d", "abuse")); got != 3 {
		t.Fatalf("violations counted %v, want 3", got)
	}
}

func TestResetLimitsEveryAlgorithm(t *testing.T) {
	f := newFixture(t, stateConfig)
	ents := []config.Entry{{Key: "plain", Value: "u3"}}
	rule, _ := f.e.Rules().Match("d", ents)
	f.mustCheck(t, d(2, "plain", "u3"))
	f.mustCheck(t, d(2, "plain", "u3", engine.AlgorithmKey, "sliding_window"))
	if err := f.e.ResetLimits(context.Background(), "d", ents, rule); err != nil {
		t.Fatal(err)
	}
	for _, alg := range []string{"fixed_window", "sliding_window"} {
		decs, over := f.mustCheck(t, d(2, "plain", "u3", engine.AlgorithmKey, alg))
		if over || decs[0].Result.Remaining != 0 {
			t.Fatalf("%s after reset: %+v", alg, decs[0])
		}
	}
}

func TestStateStoreErrors(t *testing.T) {
	f := newFixture(t, stateConfig)
	f.store.whole = errFault
	ents := []config.Entry{{Key: "user", Value: "u4"}}
	rule, _ := f.e.Rules().Match("d", ents)
	if _, err := f.e.Quotas(context.Background(), "d", ents, rule); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("Quotas: %v", err)
	}
	if _, err := f.e.Penalty(context.Background(), "d", ents, rule, rule.Penalty, 0); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("Penalty: %v", err)
	}
	if f.storeErrors() != 2 {
		t.Fatalf("store errors %v, want 2", f.storeErrors())
	}
}

// TestCheckAtNeverHolds: CheckAt decides at the instant given, whatever the clock says,
// and leaves the shaping wait to its caller.
func TestCheckAtNeverHolds(t *testing.T) {
	f := newFixture(t, stateConfig)
	at := t0.Add(time.Hour)
	decs := make([]engine.Decision, 1)
	for i, wantDelay := range []time.Duration{0, time.Second, 2 * time.Second} {
		if over, err := f.e.CheckAt(context.Background(), at, "d", []engine.Descriptor{d(1, "shaped", "s")}, decs); over || err != nil {
			t.Fatalf("call %d: %v %v", i, over, err)
		}
		if got := time.Duration(decs[0].Result.Delay) * time.Microsecond; got != wantDelay {
			t.Fatalf("call %d: delay %s, want %s", i, got, wantDelay)
		}
	}
	var m dto.Metric
	if err := f.m.ShapingDelay.Write(&m); err != nil || m.GetHistogram().GetSampleCount() != 0 {
		t.Fatalf("CheckAt held a request: %v %v", m.GetHistogram(), err)
	}
	// The time is the argument's, not the clock's (t0): the window at t0+1h is full,
	// the one at t0 is not.
	plain := []engine.Descriptor{d(2, "plain", "p")}
	if over, _ := f.e.CheckAt(context.Background(), at, "d", plain, decs); over {
		t.Fatal("first call refused")
	}
	if over, _ := f.e.CheckAt(context.Background(), at, "d", plain, decs); !over {
		t.Fatal("the window at t0+1h is full")
	}
	if decs, over := f.mustCheck(t, d(2, "plain", "p")); over {
		t.Fatalf("the window at t0 (the clock): %+v", decs[0])
	}
}

// TestCheckFailureErrorWrapsStoreError: failure_mode error answers ErrStoreUnavailable
// wrapping the store's own error, so a library caller can tell an outage's kind.
func TestCheckFailureErrorWrapsStoreError(t *testing.T) {
	f := newFixture(t, stateConfig, func(c *engine.Config) { c.FailureMode = config.FailError })
	f.store.whole = errFault
	_, _, err := f.check(t, context.Background(), d(1, "user", "u5"))
	if !errors.Is(err, engine.ErrStoreUnavailable) || !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
}

func TestReport(t *testing.T) {
	rate := &config.Limit{Name: "r"}
	quota := &config.Limit{Name: "q"}
	pen := &config.Limit{Name: "p"}
	ok := func(l *config.Limit, rem int64) engine.Decision {
		d := engine.Decision{Code: engine.CodeOK, Kind: engine.KindRate, Limit: l}
		d.Result.Allowed, d.Result.Remaining = true, rem
		return d
	}
	over := func(l *config.Limit, k engine.Kind, wait int64) engine.Decision {
		d := engine.Decision{Code: engine.CodeOverLimit, Kind: k, Limit: l}
		d.Result.RetryAfter = wait
		return d
	}
	if engine.Report([]engine.Decision{{Code: engine.CodeOK}}) != nil {
		t.Fatal("nothing to report")
	}
	if got := engine.Report([]engine.Decision{ok(rate, 5), ok(quota, 2), ok(rate, 3)}); got.Limit != quota {
		t.Fatalf("admitted: %+v, want the least remaining", got)
	}
	// A penalty beats a quota beats a rate limit, whatever the waits.
	decs := []engine.Decision{over(rate, engine.KindRate, 100), over(quota, engine.KindQuota, 1), over(pen, engine.KindPenalty, 1)}
	if got := engine.Report(decs); got.Limit != pen {
		t.Fatalf("refused: %+v, want the penalty", got)
	}
	if got := engine.Report(decs[:2]); got.Limit != quota {
		t.Fatalf("refused: %+v, want the quota", got)
	}
}

func TestExemptRequest(t *testing.T) {
	f := newFixture(t, stateConfig)
	for _, c := range []struct {
		addr, path, reason string
	}{
		{"203.0.113.1", "/healthz", config.ExemptPath},
		{"10.1.2.3", "/v1/x", config.ExemptPrivateAddress},
		{"203.0.113.1", "/v1/x", ""},
		{"", "/v1/../healthz", ""}, // strict path matching
	} {
		reason, ok := f.e.ExemptRequest("d", c.addr, c.path)
		if reason != c.reason || ok != (c.reason != "") {
			t.Errorf("%s %s: %q %v, want %q", c.addr, c.path, reason, ok, c.reason)
		}
	}
	if got := promtest.ToFloat64(f.m.Exemptions.WithLabelValues("d", config.ExemptPath)); got != 1 {
		t.Fatalf("exemptions counted %v", got)
	}
}
