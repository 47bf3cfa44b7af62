package engine_test

import (
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/engine"
)

const quotaModeConfig = `
domain: d
descriptors:
  - key: q1
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: q2
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: hard
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: cal
    quota_mode: true
    quota: {period: day, requests: 1}
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 100}
`

func codes(decs []engine.Decision) []engine.Code {
	out := make([]engine.Code, len(decs))
	for i := range decs {
		out[i] = decs[i].Code
	}
	return out
}

// TestQuotaMode: the call is over limit as the reference decides it with quota_mode:
// when a descriptor that is not in quota mode is over, or when every quota-mode
// descriptor is; each descriptor's own decision still says whether it is over.
func TestQuotaMode(t *testing.T) {
	f := newFixture(t, quotaModeConfig)
	over := engine.CodeOverLimit
	ok := engine.CodeOK

	// q1 (1/min) alone: its second call is over, and so is the call (every quota-mode
	// descriptor of the call is over).
	if _, o := f.mustCheck(t, d(1, "q1", "a")); o {
		t.Fatal("q1 first call over")
	}
	decs, o := f.mustCheck(t, d(1, "q1", "a"))
	if !o || decs[0].Code != over {
		t.Fatalf("q1 alone, over its budget: call over %v, decision %v: want both over", o, decs[0].Code)
	}
	// q1 over, q2 not: the call passes (the caller falls back to q2); q1's own decision
	// says over.
	decs, o = f.mustCheck(t, d(1, "q1", "a"), d(1, "q2", "a"))
	if o || decs[0].Code != over || decs[1].Code != ok {
		t.Fatalf("q1 over, q2 within: call over %v, decisions %v: want the call OK, q1 over, q2 OK", o, codes(decs))
	}
	// Both quota-mode descriptors over (q2, 2 a minute, had one hit above; one more here,
	// and the next call is its third): the call is over.
	f.mustCheck(t, d(1, "q2", "a"))
	decs, o = f.mustCheck(t, d(1, "q1", "a"), d(1, "q2", "a"))
	if !o || decs[0].Code != over || decs[1].Code != over {
		t.Fatalf("every quota-mode descriptor over: call over %v, decisions %v", o, codes(decs))
	}
	// A descriptor not in quota mode that is over makes the call over, whatever the
	// quota-mode ones say.
	for range 3 {
		f.mustCheck(t, d(1, "hard", "a"))
	}
	decs, o = f.mustCheck(t, d(1, "hard", "a"), d(1, "q1", "b"))
	if !o || decs[0].Code != over || decs[1].Code != ok {
		t.Fatalf("hard over, q1 within: call over %v, decisions %v", o, codes(decs))
	}
	// Quota-mode descriptors over next to a plain one within: over only because every
	// quota-mode one is, not because of the plain one.
	decs, o = f.mustCheck(t, d(1, "plain", "a"), d(1, "q1", "a"))
	if !o || decs[0].Code != ok || decs[1].Code != over {
		t.Fatalf("plain within, q1 over: call over %v, decisions %v", o, codes(decs))
	}
	// Calendar quotas of a quota-mode descriptor are soft too, and a call that passes
	// still charges the other descriptors' quotas.
	if _, o := f.mustCheck(t, d(1, "cal", "a")); o {
		t.Fatal("cal first call over")
	}
	decs, o = f.mustCheck(t, d(1, "cal", "a"), d(1, "q2", "b"))
	if o || decs[0].Code != over || decs[0].Kind != engine.KindQuota {
		t.Fatalf("cal over its day, q2 within: call over %v, decisions %v (kind %v)", o, codes(decs), decs[0].Kind)
	}
}

// TestGlobalShadowMode: with the reference's SHADOW_MODE the call is never over limit,
// while every descriptor is decided and counted as without it.
func TestGlobalShadowMode(t *testing.T) {
	f := newFixture(t, foldConfig, func(c *engine.Config) { c.ShadowMode = true })
	for i := 1; i <= 5; i++ {
		decs, o := f.mustCheck(t, d(1, "a", "x"))
		if o {
			t.Fatalf("call %d over limit in global shadow mode", i)
		}
		if want := engine.CodeOK; i > 3 {
			if decs[0].Code != engine.CodeOverLimit || decs[0].Result.Remaining != 0 {
				t.Fatalf("call %d: decision %v remaining %d: the descriptor is still decided over", i, decs[0].Code, decs[0].Result.Remaining)
			}
		} else if decs[0].Code != want {
			t.Fatalf("call %d: decision %v", i, decs[0].Code)
		}
	}
	g := newFixture(t, foldConfig)
	for range 3 {
		g.mustCheck(t, d(1, "a", "x"))
	}
	if _, o := g.mustCheck(t, d(1, "a", "x")); !o {
		t.Fatal("without global shadow mode the fourth call is over")
	}
}

const stopIncrementConfig = `
domain: d
descriptors:
  - key: small
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: big
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: q1
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: q2
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: two
    rate_limits:
      - {unit: second, requests_per_unit: 3}
      - {unit: minute, requests_per_unit: 5}
  - key: tb
    rate_limit: {unit: minute, requests_per_unit: 10, algorithm: token_bucket}
  - key: metered
    report_only: true
    rate_limit: {unit: minute, requests_per_unit: 2, algorithm: token_bucket}
`

// TestStopIncrementOverLimit: with the reference's STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT
// a refused call does not use up the limits that would have let it through (another
// descriptor's, or another limit of the same rule); a call that passes (quota mode, a
// shadow rule's denial) is charged everywhere. Without it every limit is charged, as the
// reference does by default. Each case reads what is left with a check (hits 0).
func TestStopIncrementOverLimit(t *testing.T) {
	left := func(t *testing.T, f *fixture, descs ...engine.Descriptor) int64 {
		t.Helper()
		decs, _ := f.mustCheck(t, descs...)
		return decs[0].Result.Remaining
	}
	for _, stop := range []bool{false, true} {
		t.Run(map[bool]string{false: "off", true: "on"}[stop], func(t *testing.T) {
			f := newFixture(t, stopIncrementConfig, func(c *engine.Config) { c.StopIncrementOverLimit = stop })
			want := func(what string, got, off, on int64) {
				t.Helper()
				if w := map[bool]int64{false: off, true: on}[stop]; got != w {
					t.Errorf("%s: %d left, want %d", what, got, w)
				}
			}
			// small (2/min) refuses the third and fourth calls; big is charged by them only
			// without the setting.
			for i := range 4 {
				decs, over := f.mustCheck(t, d(1, "small", "a"), d(1, "big", "a"))
				if over != (i >= 2) || decs[1].Code != engine.CodeOK {
					t.Fatalf("call %d: over %v, big %v", i+1, over, decs[1].Code)
				}
			}
			want("big after two refused calls", left(t, f, d(0, "big", "a")), 6, 8)
			// A token bucket next to a refusing fixed window: the same.
			f.mustCheck(t, d(1, "small", "a"), d(1, "tb", "a"))
			want("token bucket after a refused call", left(t, f, d(0, "tb", "a")), 9, 10)
			// Two limits of one rule: the second's refusal spares the minute's budget.
			f.mustCheck(t, d(3, "two", "a"))
			if _, over := f.mustCheck(t, d(1, "two", "a")); !over {
				t.Fatal("two: a fourth hit in the second passed")
			}
			f.clock.Add(time.Second)
			want("two's minute limit after a refused hit", left(t, f, d(0, "two", "a")), 1, 2)
			// Quota mode: q1 over, q2 within, the call passes: q2 is charged either way.
			f.mustCheck(t, d(1, "q1", "a"))
			if _, over := f.mustCheck(t, d(1, "q1", "a"), d(1, "q2", "a")); over {
				t.Fatal("quota mode: the call with q2 within was refused")
			}
			want("q2 after a passing call", left(t, f, d(0, "q2", "a")), 9, 9)
			// A shadow rule's denial refuses nothing: big is charged either way.
			f.mustCheck(t, d(1, "shadow", "a"))
			if _, over := f.mustCheck(t, d(1, "shadow", "a"), d(1, "big", "b")); over {
				t.Fatal("shadow: the call was refused")
			}
			want("big after a shadow denial", left(t, f, d(0, "big", "b")), 9, 9)
			// A report-only charge beyond what is left is never refused (issue 17): it
			// refuses nothing, and big is charged either way.
			if decs, over := f.mustCheck(t, d(5, "metered", "c"), d(1, "big", "c")); over || decs[0].Code != engine.CodeOK {
				t.Fatalf("report-only overrun: over %v, metered %v", over, decs[0].Code)
			}
			want("big after a report-only overrun", left(t, f, d(0, "big", "c")), 9, 9)
			// A call that small refuses still records a report and a refund.
			f.mustCheck(t, d(1, "big", "d"), d(2, "big", "e"))
			if _, over := f.mustCheck(t, d(1, "small", "a"), d(1, "metered", "d"), refund(1, "big", "e")); !over {
				t.Fatal("small's refusal did not refuse the call")
			}
			want("metered after a report in a refused call", left(t, f, d(0, "metered", "d")), 1, 1)
			want("big after a refund in a refused call", left(t, f, d(0, "big", "e")), 9, 9)
		})
	}
}
