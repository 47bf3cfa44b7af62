package algorithms

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// Costs known late (issue 17): what a refund, a drained over-charge, a reported charge
// and a check at zero do, per algorithm, in the numbers docs/algorithms.md gives.

func TestRefunds(t *testing.T) {
	day := 24 * 3600 * sec
	cases := []struct {
		a     Algorithm
		l     Limit
		steps []step
	}{
		// Fixed window: the count within the limit goes back; never below zero.
		{FixedWindow, Limit{Requests: 10, Period: sec}, []step{
			{0, 7, Result{Allowed: true, Limit: 10, Remaining: 3, ResetAfter: sec, RetryAfter: sec}},
			{1, -4, Result{Allowed: true, Limit: 10, Remaining: 7, ResetAfter: sec - 1}},
			{2, -100, Result{Allowed: true, Limit: 10, Remaining: 10, ResetAfter: sec - 2}},
		}},
		// ... and what counted above the limit (denied hits) is not refundable.
		{FixedWindow, Limit{Requests: 10, Period: sec}, []step{
			{0, 10, Result{Allowed: true, Limit: 10, Remaining: 0, ResetAfter: sec, RetryAfter: sec}},
			{1, 5, Result{Limit: 10, ResetAfter: sec - 1, RetryAfter: sec - 1}},
			{2, -3, Result{Allowed: true, Limit: 10, Remaining: 3, ResetAfter: sec - 2}},
		}},
		// Token bucket: tokens come back, never above the burst.
		{TokenBucket, Limit{Requests: 10, Period: sec}, []step{
			{0, 6, Result{Allowed: true, Limit: 10, Remaining: 4, ResetAfter: 600 * ms, RetryAfter: 200 * ms}},
			{0, -2, Result{Allowed: true, Limit: 10, Remaining: 6, ResetAfter: 400 * ms}},
			{0, -50, Result{Allowed: true, Limit: 10, Remaining: 10}},
		}},
		// Leaky bucket: the level drains.
		{LeakyBucket, Limit{Requests: 10, Period: sec, MaxDelay: sec}, []step{
			{0, 3, Result{Allowed: true, Limit: 10, Remaining: 7, ResetAfter: 300 * ms}},
			{0, -1, Result{Allowed: true, Limit: 10, Remaining: 8, ResetAfter: 200 * ms}},
			// The next request is held behind what is left: 200 ms.
			{0, 1, Result{Allowed: true, Limit: 10, Remaining: 7, ResetAfter: 300 * ms, Delay: 200 * ms}},
		}},
		// Sliding log: the newest entries go first.
		{SlidingWindow, Limit{Requests: 5, Period: sec}, []step{
			{0, 2, Result{Allowed: true, Limit: 5, Remaining: 3, ResetAfter: sec}},
			{500 * ms, 3, Result{Allowed: true, Limit: 5, Remaining: 0, ResetAfter: sec, RetryAfter: sec}},
			// 4 back: the 3 of +500 ms and 1 of the 2 at +0.
			{600 * ms, -4, Result{Allowed: true, Limit: 5, Remaining: 4, ResetAfter: 400 * ms}},
			{600 * ms, -9, Result{Allowed: true, Limit: 5, Remaining: 5}},
		}},
		// Sliding window counter: the current window's count, never below zero; the
		// previous window's weight stays.
		{SlidingWindowCounter, Limit{Requests: 10, Period: sec}, []step{
			{0, 8, Result{Allowed: true, Limit: 10, Remaining: 2, ResetAfter: 2 * sec, RetryAfter: 1_625_001}},
			{sec, 2, Result{Allowed: true, Limit: 10, Remaining: 0, ResetAfter: 2 * sec, RetryAfter: 125_001}},
			{sec, -20, Result{Allowed: true, Limit: 10, Remaining: 2, ResetAfter: sec}},
		}},
		// Calendar quota: back into the period.
		{Calendar, Limit{Requests: 100, WindowStart: t0, WindowEnd: t0 + day}, []step{
			{0, 60, Result{Allowed: true, Limit: 100, Remaining: 40, ResetAfter: day, RetryAfter: day}},
			{sec, -25, Result{Allowed: true, Limit: 100, Remaining: 65, ResetAfter: day - sec}},
			{sec, -1000, Result{Allowed: true, Limit: 100, Remaining: 100, ResetAfter: day - sec}},
		}},
	}
	for _, c := range cases {
		t.Run(c.a.String(), func(t *testing.T) { run(t, c.a, c.l, c.steps) })
	}
	// A penalty takes no refunds: a refund is a check.
	pen := Limit{Requests: 2, Period: 10 * sec, Steps: 1}
	pen.Ladder[0] = 5 * sec
	var s State
	Decide(Penalty, &s, t0, &pen, 1)
	if r := Decide(Penalty, &s, t0, &pen, -5); !r.Allowed || r.Remaining != 1 || s.C != 1 {
		t.Fatalf("penalty refund: %+v state %+v, want a check that leaves the point", r, s)
	}
}

// TestDrain: a charge reported after the fact that does not fit takes what is left (and
// the debt the rule allows), is answered refused, and the next requests' checks (cost 0,
// NeedsUnit: the request-time check of a budget) wait until the key is back above zero.
func TestDrain(t *testing.T) {
	day := 24 * 3600 * sec
	cases := []struct {
		a     Algorithm
		l     Limit
		steps []step
	}{
		// 1000 tokens a minute: 800 are used, then a response of 500 is reported.
		{TokenBucket, Limit{Requests: 1000, Period: 60 * sec, Drain: true, NeedsUnit: true}, []step{
			{0, 800, Result{Allowed: true, Limit: 1000, Remaining: 200, ResetAfter: 48 * sec, RetryAfter: 36 * sec}},
			{0, 500, Result{Limit: 1000, ResetAfter: 60 * sec, RetryAfter: 30 * sec}},
			// The check at request time (hits 0) is refused until a token is back.
			{0, 0, Result{Limit: 1000, ResetAfter: 60 * sec, RetryAfter: 60 * ms}},
			{60 * ms, 0, Result{Allowed: true, Limit: 1000, Remaining: 1, ResetAfter: 60*sec - 60*ms}},
		}},
		// The same with a debt of up to 300 tokens: the overrun (300) is owed.
		{TokenBucket, Limit{Requests: 1000, Period: 60 * sec, Drain: true, MaxDebt: 300, NeedsUnit: true}, []step{
			{0, 800, Result{Allowed: true, Limit: 1000, Remaining: 200, ResetAfter: 48 * sec, RetryAfter: 36 * sec}},
			{0, 500, Result{Limit: 1000, ResetAfter: 78 * sec, RetryAfter: 48 * sec, Debt: 300}},
			{0, 0, Result{Limit: 1000, ResetAfter: 78 * sec, RetryAfter: 18*sec + 60*ms, Debt: 300}},
			{18*sec + 60*ms, 0, Result{Allowed: true, Limit: 1000, Remaining: 1, ResetAfter: 60*sec - 60*ms}},
		}},
		// A debt bound smaller than the overrun caps it.
		{LeakyBucket, Limit{Requests: 10, Period: sec, Drain: true, MaxDebt: 2, NeedsUnit: true}, []step{
			{0, 9, Result{Allowed: true, Limit: 10, Remaining: 1, ResetAfter: 900 * ms, RetryAfter: 800 * ms}},
			{0, 50, Result{Limit: 10, ResetAfter: 1200 * ms, RetryAfter: -1, Debt: 2}},
		}},
		// Refuse (the default of the algorithm): the charge takes nothing.
		{TokenBucket, Limit{Requests: 1000, Period: 60 * sec, NeedsUnit: true}, []step{
			{0, 800, Result{Allowed: true, Limit: 1000, Remaining: 200, ResetAfter: 48 * sec, RetryAfter: 36 * sec}},
			{0, 500, Result{Limit: 1000, Remaining: 200, ResetAfter: 48 * sec, RetryAfter: 18 * sec}},
		}},
		// Sliding log: the drained entry leaves the window a period later.
		{SlidingWindow, Limit{Requests: 10, Period: sec, Drain: true, MaxDebt: 5, NeedsUnit: true}, []step{
			{0, 8, Result{Allowed: true, Limit: 10, Remaining: 2, ResetAfter: sec, RetryAfter: sec}},
			{100 * ms, 20, Result{Limit: 10, ResetAfter: sec, RetryAfter: -1, Debt: 5}},
			// 15 held: one more fits once the 8 of +0 have left, at +1 s.
			{200 * ms, 1, Result{Limit: 10, ResetAfter: 900 * ms, RetryAfter: 800 * ms, Debt: 5}},
			{1100 * ms, 1, Result{Allowed: true, Limit: 10, Remaining: 9, ResetAfter: sec}},
		}},
		// Sliding window counter: the debt decays with the windows.
		{SlidingWindowCounter, Limit{Requests: 10, Period: sec, Drain: true, MaxDebt: 10, NeedsUnit: true}, []step{
			{0, 30, Result{Limit: 10, ResetAfter: 2 * sec, RetryAfter: -1, Debt: 10}},
			// Half a window later the 20 weigh 10: the limit, no debt left, and one more
			// unit fits a microsecond after the weight drops to 9.
			{1500 * ms, 0, Result{Limit: 10, ResetAfter: 500 * ms, RetryAfter: 1}},
		}},
		// Calendar: the debt lasts until the period ends.
		{Calendar, Limit{Requests: 100, WindowStart: t0, WindowEnd: t0 + day, Drain: true, MaxDebt: 50, NeedsUnit: true}, []step{
			{0, 90, Result{Allowed: true, Limit: 100, Remaining: 10, ResetAfter: day, RetryAfter: day}},
			{0, 90, Result{Limit: 100, ResetAfter: day, RetryAfter: day, Debt: 50}},
			{0, -30, Result{Allowed: true, Limit: 100, ResetAfter: day, Debt: 20}},
			{0, 0, Result{Limit: 100, ResetAfter: day, RetryAfter: day, Debt: 20}},
		}},
		// Fixed window: counted whole whatever the rule says, forgiven at the window's end.
		{FixedWindow, Limit{Requests: 10, Period: sec, Drain: true, MaxDebt: 3, NeedsUnit: true}, []step{
			{0, 8, Result{Allowed: true, Limit: 10, Remaining: 2, ResetAfter: sec, RetryAfter: sec}},
			{0, 50, Result{Limit: 10, ResetAfter: sec, RetryAfter: -1}},
			{0, 0, Result{Limit: 10, ResetAfter: sec, RetryAfter: sec}},
			{sec, 0, Result{Allowed: true, Limit: 10, Remaining: 10, ResetAfter: sec}},
		}},
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("%s_%d", c.a, i), func(t *testing.T) { run(t, c.a, c.l, c.steps) })
	}
}

// TestReport: a report-only call is charged as a drained one and never refused; a
// shaping bucket does not hold it.
func TestReport(t *testing.T) {
	report := func(l Limit) Limit { l.Report = true; return l }
	run(t, TokenBucket, report(Limit{Requests: 10, Period: sec, MaxDebt: 4, NeedsUnit: true}), []step{
		{0, 7, Result{Allowed: true, Limit: 10, Remaining: 3, ResetAfter: 700 * ms, RetryAfter: 400 * ms}},
		{0, 12, Result{Allowed: true, Limit: 10, ResetAfter: 1400 * ms, RetryAfter: -1, Debt: 4}},
		{0, 0, Result{Allowed: true, Limit: 10, ResetAfter: 1400 * ms, RetryAfter: 500 * ms, Debt: 4}},
	})
	run(t, LeakyBucket, report(Limit{Requests: 10, Period: sec, MaxDelay: 100 * ms}), []step{
		{0, 5, Result{Allowed: true, Limit: 10, Remaining: 5, ResetAfter: 500 * ms}},
		{0, 3, Result{Allowed: true, Limit: 10, Remaining: 2, ResetAfter: 800 * ms, RetryAfter: 100 * ms}},
	})
	run(t, FixedWindow, report(Limit{Requests: 10, Period: sec}), []step{
		{0, 15, Result{Allowed: true, Limit: 10, ResetAfter: sec, RetryAfter: -1}},
	})
	run(t, SlidingWindow, report(Limit{Requests: 10, Period: sec}), []step{
		{0, 15, Result{Allowed: true, Limit: 10, ResetAfter: sec, RetryAfter: -1}},
	})
}

// TestChargeBounds is the bad input of issue 17: refunds larger than anything charged
// never create budget above the limit or burst, and a hits_addend of 2^64-1 (which the
// engine saturates at MaxCount) never wraps, as a charge or as a refund, in any mode.
func TestChargeBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 1))
	costs := []int64{-MaxCount, -MaxCount - 12345, -1 << 62, 1<<32 - 1, MaxCount, -(1<<32 - 1)}
	for _, c := range skewCases() {
		if c.a == Penalty {
			continue
		}
		for _, mode := range []Limit{{}, {Drain: true}, {Drain: true, MaxDebt: 7, NeedsUnit: true}, {Report: true, MaxDebt: 3}} {
			l := c.l
			l.Drain, l.MaxDebt, l.Report, l.NeedsUnit = mode.Drain, mode.MaxDebt, mode.Report, mode.NeedsUnit
			if err := l.Validate(c.a); err != nil {
				t.Fatal(err)
			}
			var s State
			now := t0
			for step := 0; step < 300; step++ {
				now += rng.Int64N(50 * ms)
				cost := rng.Int64N(9) - 4
				if rng.IntN(5) == 0 {
					cost = costs[rng.IntN(len(costs))]
				}
				r := Decide(c.a, &s, now, &l, cost)
				where := fmt.Sprintf("%s %+v step %d cost %d", c.a, l, step, cost)
				if r.Remaining < 0 || r.Remaining > r.Limit || r.Debt < 0 || r.Debt > max(l.MaxDebt, 0) && c.a != FixedWindow {
					t.Fatalf("%s: %+v out of bounds", where, r)
				}
				if r.ResetAfter < 0 || r.TTL < 0 || r.RetryAfter < -1 {
					t.Fatalf("%s: negative duration %+v", where, r)
				}
				if s.A < 0 || s.B < 0 || s.C < 0 || s.D < 0 || int64(len(s.Log)) > l.Requests+l.MaxDebt {
					t.Fatalf("%s: state %+v", where, s)
				}
				for _, e := range s.Log {
					if e.Cost <= 0 {
						t.Fatalf("%s: log entry %+v", where, e)
					}
				}
			}
		}
	}
}
