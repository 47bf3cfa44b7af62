package engine_test

import (
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
)

// Costs known late through the engine (issue 17): the reserved entries, the rule's
// over_charge, max_debt and report_only, refunds, and what a report skips.

const chargesConfig = `
domain: d
penalties:
  abuse: {threshold: 1, ladder: [1h], decay: 1h}
descriptors:
  - key: tokens
    rate_limit: {unit: minute, requests_per_unit: 1000, algorithm: token_bucket}
  - key: owed
    max_debt: 500
    rate_limit: {unit: minute, requests_per_unit: 1000, algorithm: token_bucket}
  - key: strict
    over_charge: refuse
    rate_limit: {unit: minute, requests_per_unit: 1000, algorithm: token_bucket}
  - key: metered
    report_only: true
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: locked
    penalty: abuse
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: monthly
    over_charge: drain
    quota: {name: m, period: monthly, requests: 100}
    rate_limit: {unit: minute, requests_per_unit: 1000}
`

// chk is a budget's request-time check: 0 hits, refused when 1 would be (Envoy's check,
// the RateLimitService sets NeedsUnit for 0 hits).
func chk(kv ...string) engine.Descriptor {
	x := d(0, kv...)
	x.NeedsUnit = true
	return x
}

func refund(hits uint64, kv ...string) engine.Descriptor {
	x := d(hits, kv...)
	x.Refund = true
	return x
}

// one checks one descriptor and returns its decision.
func (f *fixture) one(t *testing.T, x engine.Descriptor) engine.Decision {
	t.Helper()
	decs, _ := f.mustCheck(t, x)
	return decs[0]
}

func TestTokenBudgetThroughEngine(t *testing.T) {
	f := newFixture(t, chargesConfig)
	// The request-time check, then the response's 800 tokens, then a response of 500
	// with 200 left: drained to zero and answered over limit.
	if dec := f.one(t, chk("tokens", "u")); dec.Code != engine.CodeOK || dec.Result.Remaining != 1000 {
		t.Fatalf("first check: %+v", dec)
	}
	if dec := f.one(t, d(800, "tokens", "u")); dec.Code != engine.CodeOK || dec.Result.Remaining != 200 {
		t.Fatalf("charge 800: %+v", dec)
	}
	if dec := f.one(t, d(500, "tokens", "u")); dec.Code != engine.CodeOverLimit || dec.Result.Remaining != 0 {
		t.Fatalf("charge 500 with 200 left: %+v, want drained and over limit", dec)
	}
	// The next check is refused until a token is back (60 ms at 1000 a minute).
	dec := f.one(t, chk("tokens", "u"))
	if dec.Code != engine.CodeOverLimit || dec.Result.Wait() != 60_000 {
		t.Fatalf("check at zero: %+v, want refused for 60 ms", dec)
	}
	// A refund of 300 gives 300 back; one larger than anything charged fills it.
	if dec := f.one(t, refund(300, "tokens", "u")); dec.Code != engine.CodeOK || dec.Result.Remaining != 300 {
		t.Fatalf("refund 300: %+v", dec)
	}
	if dec := f.one(t, refund(1<<64-1, "tokens", "u")); dec.Code != engine.CodeOK || dec.Result.Remaining != 1000 {
		t.Fatalf("refund 2^64-1: %+v, want the burst, no more", dec)
	}
}

func TestDebtAndRefuse(t *testing.T) {
	f := newFixture(t, chargesConfig)
	f.one(t, d(900, "owed", "u"))
	dec := f.one(t, d(900, "owed", "u"))
	if dec.Code != engine.CodeOverLimit || dec.Result.Debt != 500 {
		t.Fatalf("overrun of 800 with max_debt 500: %+v", dec)
	}
	// A check passes once the debt and one token have refilled: 501 tokens, 30.06 s.
	owed := f.one(t, chk("owed", "u"))
	if w := owed.Result.Wait(); w != int64(30*time.Second/time.Microsecond)+60_000 {
		t.Fatalf("wait %d, want the debt and one token: 30.06 s", w)
	}
	f.one(t, d(900, "strict", "u"))
	if dec := f.one(t, d(900, "strict", "u")); dec.Code != engine.CodeOverLimit || dec.Result.Remaining != 100 {
		t.Fatalf("refuse: %+v, want refused and 100 left", dec)
	}
}

func TestReportOnly(t *testing.T) {
	f := newFixture(t, chargesConfig)
	// The rule's report_only: charges are never refused; checks are.
	for i := 0; i < 3; i++ {
		if dec := f.one(t, d(6, "metered", "u")); dec.Code != engine.CodeOK {
			t.Fatalf("report %d refused: %+v", i, dec)
		}
	}
	if dec := f.one(t, chk("metered", "u")); dec.Code != engine.CodeOverLimit {
		t.Fatalf("check after 18 of 10 reported: %+v, want refused", dec)
	}
	// The reserved entry makes any call report-only, and names no counter: it charges
	// the same counter as the check without it.
	x := d(2000, "tokens", "v", engine.ChargeKey, "report")
	if dec := f.one(t, x); dec.Code != engine.CodeOK || dec.Result.Remaining != 0 {
		t.Fatalf("halt_charge: report of 2000: %+v", dec)
	}
	if dec := f.one(t, chk("tokens", "v")); dec.Code != engine.CodeOverLimit {
		t.Fatalf("check after the report: %+v, want refused (same counter)", dec)
	}
	// An unknown value is a plain charge, logged.
	if dec := f.one(t, d(5, "tokens", "w", engine.ChargeKey, "maybe")); dec.Code != engine.CodeOK || dec.Result.Remaining != 995 {
		t.Fatalf("halt_charge: maybe: %+v", dec)
	}
	// A report is recorded although a penalty locks the identity out.
	f.one(t, d(1, "locked", "u"))
	if dec := f.one(t, d(1, "locked", "u")); dec.Kind != engine.KindRate || dec.Code != engine.CodeOverLimit {
		t.Fatalf("second hit: %+v", dec)
	}
	if dec := f.one(t, d(1, "locked", "u")); dec.Kind != engine.KindPenalty {
		t.Fatalf("locked out: %+v", dec)
	}
	if dec := f.one(t, d(1, "locked", "u", engine.ChargeKey, "report")); dec.Code != engine.CodeOK || dec.Kind == engine.KindPenalty {
		t.Fatalf("a report during a lockout: %+v, want recorded and OK", dec)
	}
}

func TestQuotaChargesAndRefunds(t *testing.T) {
	f := newFixture(t, chargesConfig)
	f.one(t, d(90, "monthly", "u"))
	// Drained: the quota takes the 10 left.
	if dec := f.one(t, d(30, "monthly", "u")); dec.Code != engine.CodeOverLimit || dec.Kind != engine.KindQuota || dec.Result.Remaining != 0 {
		t.Fatalf("30 with 10 left: %+v", dec)
	}
	// A refund returns to the rate limit and the quota.
	if dec := f.one(t, refund(25, "monthly", "u")); dec.Code != engine.CodeOK {
		t.Fatalf("refund: %+v", dec)
	}
	ents := []config.Entry{{Key: "monthly", Value: "u"}}
	rule, ok := f.e.Rules().Match("d", ents)
	if !ok {
		t.Fatal("no rule")
	}
	usage, err := f.e.Quotas(t.Context(), "d", ents, rule)
	if err != nil || usage[0].Remaining != 25 {
		t.Fatalf("quota after the refund: %+v %v, want 25 left", usage, err)
	}
}
