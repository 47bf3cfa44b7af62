package algorithms

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func clone(s *State) State {
	c := *s
	c.Log = append([]Entry(nil), s.Log...)
	return c
}

func sameState(a, b *State) bool {
	if a.A != b.A || a.B != b.B || a.C != b.C || a.D != b.D || len(a.Log) != len(b.Log) {
		return false
	}
	for i := range a.Log {
		if a.Log[i] != b.Log[i] {
			return false
		}
	}
	return true
}

// skewCases are a limit of every algorithm, with the calendar window and the penalty
// ladder filled in.
func skewCases() []struct {
	a Algorithm
	l Limit
} {
	pen := Limit{Requests: 3, Period: 2 * sec, Steps: 3}
	pen.Ladder[0], pen.Ladder[1], pen.Ladder[2] = 500*ms, sec, 3*sec
	return []struct {
		a Algorithm
		l Limit
	}{
		{FixedWindow, Limit{Requests: 5, Period: sec}},
		{TokenBucket, Limit{Requests: 5, Period: sec, Burst: 7}},
		{SlidingWindow, Limit{Requests: 5, Period: sec}},
		{SlidingWindowCounter, Limit{Requests: 7, Period: sec}},
		{LeakyBucket, Limit{Requests: 10, Period: sec, Burst: 5, MaxDelay: 300 * ms}},
		{Calendar, Limit{Requests: 6, WindowStart: t0, WindowEnd: t0 + 3600*sec}},
		{Penalty, pen},
	}
}

// TestOlderOpDecidedAtStateTime is the time model of issue 15 item 9b on random states
// of every algorithm: an op whose now is older than the state's time, by up to MaxSkew,
// gets exactly the decision and leaves exactly the state the same op gets at the state's
// time; only its TTL, which counts from its own now, is longer by the difference.
func TestOlderOpDecidedAtStateTime(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 2))
	for _, c := range skewCases() {
		checked := 0
		for round := 0; round < 400; round++ {
			var s State
			now := t0 + rng.Int64N(sec)
			l := c.l
			if round%2 == 1 && c.a != Penalty {
				l.Drain, l.MaxDebt, l.NeedsUnit = true, rng.Int64N(4), rng.IntN(2) == 0
			}
			for step := 0; step < 1+rng.IntN(12); step++ {
				now += rng.Int64N(300 * ms)
				Decide(c.a, &s, now, &l, rng.Int64N(8)-2) // refunds, checks, charges
			}
			c := c
			c.l = l
			st := StateTime(c.a, &s)
			if st == 0 {
				continue // nothing changed it yet
			}
			checked++
			delta := 1 + rng.Int64N(MaxSkew)
			if rng.IntN(4) == 0 {
				delta = MaxSkew
			}
			cost := rng.Int64N(8) - 2
			older, atState := clone(&s), clone(&s)
			got := Decide(c.a, &older, st-delta, &c.l, cost)
			want := Decide(c.a, &atState, st, &c.l, cost)
			if want.TTL > 0 {
				want.TTL += delta
			}
			where := fmt.Sprintf("%s round %d: state %+v, op %dus older than its time %d, cost %d", c.a, round, s, delta, st, cost)
			if got != want {
				t.Fatalf("%s:\n got  %+v\n want %+v", where, got, want)
			}
			if !sameState(&older, &atState) {
				t.Fatalf("%s: leaves %+v, the op at the state's time leaves %+v", where, older, atState)
			}
		}
		if checked < 100 {
			t.Fatalf("%s: only %d random states had a time", c.a, checked)
		}
	}
}

// TestBeyondSkewIsOwnTime: a state time further ahead than MaxSkew is not trusted (a
// broken clock must not hold a key at its time); the op is decided at its own now.
func TestBeyondSkewIsOwnTime(t *testing.T) {
	for _, c := range skewCases() {
		var s State
		Decide(c.a, &s, t0+10*sec, &c.l, 1)
		st := StateTime(c.a, &s)
		if st != t0+10*sec {
			t.Fatalf("%s: state time %d after one charge at %d", c.a, st, t0+10*sec)
		}
		if At(st-MaxSkew-1, st) != st-MaxSkew-1 || At(st-MaxSkew, st) != st || At(st+5, st) != st+5 {
			t.Fatalf("At does not bound the skew")
		}
	}
}

// TestShapingOutOfOrder is the case of issue 15 item 9b: five simultaneous leaky-bucket
// shaping calls (burst 5, 10/s, max_delay 800 ms) on one key, whose clock readings were
// taken a few ms apart and reach the store in another order. Each fits (delays 0 to
// 400 ms), so all five are admitted whatever the order; the call whose now is older than
// the state it reads used to see a larger backlog and overflow the bucket.
func TestShapingOutOfOrder(t *testing.T) {
	l := Limit{Requests: 10, Period: sec, Burst: 5, MaxDelay: 800 * ms}
	orders := [][]int64{{0, 1, 2, 3, 4}, {4, 3, 2, 1, 0}, {3, 0, 4, 1, 2}, {2, 4, 0, 3, 1}}
	for _, order := range orders {
		var s State
		keyTime := int64(0)
		var first int64
		for i, off := range order {
			now := t0 + off*ms
			r := Decide(LeakyBucket, &s, now, &l, 1)
			if !r.Allowed {
				t.Fatalf("order %v: call %d (now +%dms) refused: %+v", order, i, off, r)
			}
			keyTime = max(keyTime, now)
			if i == 0 {
				first = keyTime
			}
			// Each is released 100 ms after the one before it, from the first call's time.
			if release, want := keyTime+r.Delay, first+int64(i)*100*ms; release != want {
				t.Fatalf("order %v: call %d released at +%dus, want +%dus", order, i, release-t0, want-t0)
			}
		}
	}
}

// TestSkewedReplicas plays one key's traffic from three replicas whose clocks differ by
// up to 40 ms, each call's clock read a little before it reaches the store: every
// algorithm admits exactly what it admits for the same calls in order of arrival at the
// fastest clock, and for a token bucket that is what the in-order calls admit.
func TestSkewedReplicas(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	skew := []int64{-40 * ms, 0, 25 * ms}
	for _, c := range skewCases() {
		for round := 0; round < 50; round++ {
			var skewed, ordered State
			real := t0 + 100*sec
			latest := int64(0) // the latest state time the skewed run wrote
			for step := 0; step < 60; step++ {
				real += rng.Int64N(80 * ms)
				replica := rng.IntN(len(skew))
				now := real + skew[replica] - rng.Int64N(5*ms)
				cost := 1 + rng.Int64N(2)
				got := Decide(c.a, &skewed, now, &c.l, cost)
				if st := StateTime(c.a, &skewed); st > latest {
					latest = st
				}
				// The in-order model: every call at the key's time when behind it.
				want := Decide(c.a, &ordered, max(now, StateTime(c.a, &ordered)), &c.l, cost)
				got.TTL, want.TTL = 0, 0
				if got != want {
					t.Fatalf("%s round %d step %d (replica %d, now %d, key time %d): got %+v, in order %+v", c.a, round, step, replica, now, latest, got, want)
				}
			}
		}
	}
}

// TestPenaltyDecaysOnce: the checks made on every request between violations must not
// count the same quiet time twice; a level decays once per quiet period.
func TestPenaltyDecaysOnce(t *testing.T) {
	l := Limit{Requests: 1, Period: 3600 * sec, Steps: 3}
	l.Ladder[0], l.Ladder[1], l.Ladder[2] = 60*sec, 300*sec, 1800*sec
	var checked, quiet State
	for _, s := range []*State{&checked, &quiet} {
		at := int64(0)
		for i := 0; i < 3; i++ { // three lockouts: level 3
			Decide(Penalty, s, t0+at, &l, 1)
			at += l.Ladder[i]
		}
	}
	end := checked.A
	// One state is checked every minute for 1.5 quiet hours, the other not at all.
	for at := end + 60*sec; at <= end+5400*sec; at += 60 * sec {
		Decide(Penalty, &checked, at, &l, 0)
	}
	if checked.B != 2 {
		t.Fatalf("after 1.5 quiet hours with checks every minute the level is %d, want 2 (one decay)", checked.B)
	}
	// Both violate 2 hours after the lockout: two levels forgotten either way (3 -> 1),
	// so the violation locks out at the second step.
	rc := Decide(Penalty, &checked, end+7200*sec, &l, 1)
	rq := Decide(Penalty, &quiet, end+7200*sec, &l, 1)
	if rc != rq || rc.ResetAfter != 300*sec {
		t.Fatalf("checked %+v, unchecked %+v: want both the second step (300 s)", rc, rq)
	}
}

// TestCalendarAcrossPeriodBoundary: a charge whose clock reads just before a period's
// end reaches the store after one from just after it. It counts in the new period (the
// state's), and the new period's count is not wiped by the old period's bounds.
func TestCalendarAcrossPeriodBoundary(t *testing.T) {
	day := 24 * 3600 * sec
	jan := Limit{Requests: 10, WindowStart: t0, WindowEnd: t0 + 31*day}
	feb := Limit{Requests: 10, WindowStart: jan.WindowEnd, WindowEnd: jan.WindowEnd + 28*day}
	var s State
	Decide(Calendar, &s, jan.WindowEnd-sec, &jan, 9) // 9 of January's 10
	if r := Decide(Calendar, &s, feb.WindowStart+2*ms, &feb, 3); !r.Allowed || r.Remaining != 7 {
		t.Fatalf("February's first charge: %+v", r)
	}
	// Read at 23:59:59.999 on January 31st, arriving after February's first charge.
	r := Decide(Calendar, &s, feb.WindowStart-1*ms, &jan, 2)
	if !r.Allowed || r.Remaining != 5 || r.ResetAfter != 28*day-2*ms {
		t.Fatalf("January's late charge: %+v, want counted in February (5 left, reset at February's end)", r)
	}
	if r := Decide(Calendar, &s, feb.WindowStart+3*ms, &feb, 0); r.Remaining != 5 {
		t.Fatalf("February's count after the late charge: %+v, want 5 left", r)
	}
}
