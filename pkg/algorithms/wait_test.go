package algorithms

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestRetryAfterIsNextSuccess checks what RetryAfter (and so Wait, which every
// rate-limit header reports) promises, on random monotonic timelines of every algorithm
// a limit can use: after any decision, admitted or refused, the same request passes
// now when RetryAfter is 0, is refused one microsecond before RetryAfter and passes at
// RetryAfter when it is positive, and costs more than the limit when it is -1.
func TestRetryAfterIsNextSuccess(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 7))
	algos := []Algorithm{FixedWindow, TokenBucket, SlidingWindow, SlidingWindowCounter, LeakyBucket, Calendar}
	for round := 0; round < 3000; round++ {
		a := algos[round%len(algos)]
		l := Limit{Requests: 1 + rng.Int64N(12), Period: (1 + rng.Int64N(5)) * sec}
		switch a {
		case TokenBucket, LeakyBucket:
			l.Burst = 1 + rng.Int64N(15)
			if a == LeakyBucket && rng.IntN(2) == 0 {
				l.MaxDelay = rng.Int64N(l.Period)
			}
		case Calendar:
			l.WindowStart, l.WindowEnd = t0, t0+30*sec
		}
		// Half the rounds charge with drain and debt, as a token budget does; the
		// state they leave (drained, in debt) must keep the promise too.
		if round%2 == 1 {
			l.Drain = true
			l.MaxDebt = rng.Int64N(6)
			l.NeedsUnit = rng.IntN(2) == 0
		}
		var s State
		now := t0
		for step := 0; step < 40; step++ {
			now += rng.Int64N(l.Period / 2)
			if a == Calendar && now >= l.WindowEnd {
				break
			}
			cost := rng.Int64N(4)
			if l.Drain && rng.IntN(4) == 0 {
				// A late charge (drained into debt) or a refund, between the probes.
				late := rng.Int64N(12) - 4
				Decide(a, &s, now, &l, late)
			}
			r := Decide(a, &s, now, &l, cost)
			try := func(at int64) bool {
				c := State{A: s.A, B: s.B, C: s.C, D: s.D, Log: append([]Entry(nil), s.Log...)}
				return Decide(a, &c, at, &l, cost).Allowed
			}
			where := func() string {
				return fmt.Sprintf("%s %+v", a, l)
			}
			switch {
			case r.RetryAfter < 0:
				if cost <= l.Capacity() && (a == TokenBucket || a == LeakyBucket) || cost <= l.Requests && a != TokenBucket && a != LeakyBucket {
					t.Fatalf("%s: step %d cost %d: RetryAfter -1 for a request that fits the limit: %+v", where(), step, cost, r)
				}
			case r.RetryAfter == 0:
				if !try(now) {
					t.Fatalf("%s: step %d cost %d: RetryAfter 0 but the same request is refused now: %+v state %+v", where(), step, cost, r, s)
				}
			default:
				if try(now + r.RetryAfter - 1) {
					t.Fatalf("%s: step %d cost %d: the same request passes before RetryAfter %d: %+v", where(), step, cost, r.RetryAfter, r)
				}
				if (a != Calendar || now+r.RetryAfter < l.WindowEnd) && !try(now+r.RetryAfter) {
					t.Fatalf("%s: step %d cost %d: the same request is refused at RetryAfter %d: %+v state %+v", where(), step, cost, r.RetryAfter, r, s)
				}
				if a == Calendar && now+r.RetryAfter != l.WindowEnd {
					t.Fatalf("calendar: step %d: RetryAfter %d is not the period's end", step, r.RetryAfter)
				}
			}
			if w := r.Wait(); (r.RetryAfter > 0 && w != r.RetryAfter) || (r.RetryAfter <= 0 && w != r.ResetAfter) {
				t.Fatalf("%s: Wait %d for %+v", where(), w, r)
			}
		}
	}
}
