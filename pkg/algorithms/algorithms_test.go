package algorithms

import (
	"errors"
	"testing"
)

const (
	ms  = int64(1000)
	sec = 1000 * ms
	// t0 is 2030-01-01T00:00:00Z in microseconds: a multiple of every period used here.
	t0 = int64(1893456000) * sec
)

type step struct {
	at   int64 // offset from t0
	cost int64
	want Result
}

func run(t *testing.T, a Algorithm, l Limit, steps []step) {
	t.Helper()
	var s State
	for i, st := range steps {
		got := Decide(a, &s, t0+st.at, &l, st.cost)
		got.TTL = 0 // TTLs are checked separately
		if got != st.want {
			t.Fatalf("step %d (at +%dus, cost %d):\n got  %+v\n want %+v", i, st.at, st.cost, got, st.want)
		}
	}
}

func TestFixedWindow(t *testing.T) {
	l := Limit{Requests: 3, Period: sec}
	run(t, FixedWindow, l, []step{
		{0, 1, Result{Allowed: true, Limit: 3, Remaining: 2, ResetAfter: sec}},
		{100 * ms, 1, Result{Allowed: true, Limit: 3, Remaining: 1, ResetAfter: 900 * ms}},
		// The last one: admitted, and the next one like it waits for the next window.
		{200 * ms, 1, Result{Allowed: true, Limit: 3, Remaining: 0, ResetAfter: 800 * ms, RetryAfter: 800 * ms}},
		// Denied hits still count, as in the reference service.
		{300 * ms, 1, Result{Limit: 3, ResetAfter: 700 * ms, RetryAfter: 700 * ms}},
		{999_999, 0, Result{Limit: 3, ResetAfter: 1, RetryAfter: 1}},
		// Window boundary: aligned to the epoch, a fresh count.
		{sec, 1, Result{Allowed: true, Limit: 3, Remaining: 2, ResetAfter: sec}},
		// An op 10us older than the state it reads (it arrived late, or its clock is
		// behind): decided at the state's time, in the newer window.
		{sec - 10, 1, Result{Allowed: true, Limit: 3, Remaining: 1, ResetAfter: sec}},
		// Cost above the limit can never pass.
		{sec + 1, 4, Result{Limit: 3, ResetAfter: sec - 1, RetryAfter: -1}},
		// 2^32-1 hits saturate instead of wrapping.
		{sec + 2, 1<<32 - 1, Result{Limit: 3, ResetAfter: sec - 2, RetryAfter: -1}},
	})
}

func TestFixedWindowSaturates(t *testing.T) {
	l := Limit{Requests: 3, Period: sec}
	s := State{A: t0, B: MaxCount - 1}
	r := Decide(FixedWindow, &s, t0, &l, 1<<32-1)
	if r.Allowed || s.B != MaxCount {
		t.Fatalf("no saturation: %+v state %+v", r, s)
	}
}

func TestFixedWindowZeroLimit(t *testing.T) {
	run(t, FixedWindow, Limit{Requests: 0, Period: sec}, []step{
		{0, 0, Result{Allowed: true, Limit: 0, ResetAfter: sec}},
		{0, 1, Result{Limit: 0, ResetAfter: sec, RetryAfter: -1}},
	})
}

func TestTokenBucket(t *testing.T) {
	// 5 per second: one token every 200ms, burst 5.
	l := Limit{Requests: 5, Period: sec}
	run(t, TokenBucket, l, []step{
		{0, 1, Result{Allowed: true, Limit: 5, Remaining: 4, ResetAfter: 200 * ms}},
		// One token left: another request of cost 3 needs two more, back in 400ms.
		{0, 3, Result{Allowed: true, Limit: 5, Remaining: 1, ResetAfter: 800 * ms, RetryAfter: 400 * ms}},
		// The last token: full in 1s, but the next one like it passes in 200ms.
		{0, 1, Result{Allowed: true, Limit: 5, Remaining: 0, ResetAfter: sec, RetryAfter: 200 * ms}},
		// Empty: a denied request takes nothing and learns when one token is back.
		{0, 1, Result{Limit: 5, Remaining: 0, ResetAfter: sec, RetryAfter: 200 * ms}},
		{0, 2, Result{Limit: 5, Remaining: 0, ResetAfter: sec, RetryAfter: 400 * ms}},
		{199 * ms, 1, Result{Limit: 5, Remaining: 0, ResetAfter: 801 * ms, RetryAfter: 1 * ms}},
		{200 * ms, 1, Result{Allowed: true, Limit: 5, Remaining: 0, ResetAfter: sec, RetryAfter: 200 * ms}},
		// Cost larger than the bucket: never.
		{200 * ms, 6, Result{Limit: 5, Remaining: 0, ResetAfter: sec, RetryAfter: -1}},
		// Check only.
		{600 * ms, 0, Result{Allowed: true, Limit: 5, Remaining: 2, ResetAfter: 600 * ms}},
		// Long idle: full again, never more than the burst.
		{100 * sec, 1, Result{Allowed: true, Limit: 5, Remaining: 4, ResetAfter: 200 * ms}},
		// An op 1 s (MaxSkew) older than the state: decided at the state's time, as if
		// it came right after the last one.
		{99 * sec, 1, Result{Allowed: true, Limit: 5, Remaining: 3, ResetAfter: 400 * ms}},
		// A clock 2 s behind the state's time is broken, not skewed: treated as a full
		// backlog at its own time, nothing extra admitted.
		{98 * sec, 1, Result{Limit: 5, Remaining: 0, ResetAfter: sec, RetryAfter: 200 * ms}},
	})
}

func TestTokenBucketBurst(t *testing.T) {
	// 2 per second (500ms a token), burst 4.
	l := Limit{Requests: 2, Period: sec, Burst: 4}
	run(t, TokenBucket, l, []step{
		{0, 4, Result{Allowed: true, Limit: 4, Remaining: 0, ResetAfter: 2 * sec, RetryAfter: 2 * sec}},
		{500 * ms, 1, Result{Allowed: true, Limit: 4, Remaining: 0, ResetAfter: 2 * sec, RetryAfter: 500 * ms}},
		{500 * ms, 1, Result{Limit: 4, Remaining: 0, ResetAfter: 2 * sec, RetryAfter: 500 * ms}},
	})
}

func TestTokenBucketRoundsIntervalUp(t *testing.T) {
	// 3 per second: 333_334us a token, so three take a hair over a second, never less.
	l := Limit{Requests: 3, Period: sec}
	if l.Interval() != 333_334 {
		t.Fatalf("interval %d", l.Interval())
	}
	var s State
	for i := 0; i < 3; i++ {
		if r := Decide(TokenBucket, &s, t0, &l, 1); !r.Allowed {
			t.Fatalf("burst request %d denied", i)
		}
	}
	if r := Decide(TokenBucket, &s, t0+333_333, &l, 1); r.Allowed {
		t.Fatal("admitted before a whole interval passed")
	}
}

func TestTokenBucketZeroLimit(t *testing.T) {
	run(t, TokenBucket, Limit{Requests: 0, Period: sec}, []step{
		{0, 1, Result{Limit: 0, RetryAfter: -1}},
	})
}

func TestLeakyBucketShaping(t *testing.T) {
	// 10 per second drains one unit per 100ms; wait at most 250ms.
	l := Limit{Requests: 10, Period: sec, MaxDelay: 250 * ms}
	run(t, LeakyBucket, l, []step{
		{0, 1, Result{Allowed: true, Limit: 10, Remaining: 9, ResetAfter: 100 * ms, Delay: 0}},
		{0, 1, Result{Allowed: true, Limit: 10, Remaining: 8, ResetAfter: 200 * ms, Delay: 100 * ms}},
		// Room in the bucket, but the next one would wait 300ms > max_delay: it passes
		// in 50ms.
		{0, 1, Result{Allowed: true, Limit: 10, Remaining: 7, ResetAfter: 300 * ms, RetryAfter: 50 * ms, Delay: 200 * ms}},
		// Would wait 300ms > max_delay: denied at once though the bucket has room.
		{0, 1, Result{Limit: 10, Remaining: 7, ResetAfter: 300 * ms, RetryAfter: 50 * ms}},
		{50 * ms, 1, Result{Allowed: true, Limit: 10, Remaining: 6, ResetAfter: 350 * ms, RetryAfter: 100 * ms, Delay: 250 * ms}},
	})
}

func TestLeakyBucketMeter(t *testing.T) {
	// Without max_delay it admits exactly what a token bucket admits.
	l := Limit{Requests: 4, Period: sec, Burst: 2}
	var a, b State
	for i, at := range []int64{0, 0, 0, 100 * ms, 250 * ms, 250 * ms, 600 * ms, 2 * sec, 2 * sec, 2 * sec} {
		ra := Decide(LeakyBucket, &a, t0+at, &l, 1)
		rb := Decide(TokenBucket, &b, t0+at, &l, 1)
		if ra != rb {
			t.Fatalf("step %d: leaky %+v token %+v", i, ra, rb)
		}
	}
}

func TestSlidingWindow(t *testing.T) {
	l := Limit{Requests: 3, Period: sec}
	run(t, SlidingWindow, l, []step{
		{0, 1, Result{Allowed: true, Limit: 3, Remaining: 2, ResetAfter: sec}},
		// Full: another cost 2 waits for this entry to leave, at +1.4s.
		{400 * ms, 2, Result{Allowed: true, Limit: 3, Remaining: 0, ResetAfter: sec, RetryAfter: sec}},
		// Full until the first entry leaves at exactly +1s.
		{999_999, 1, Result{Limit: 3, Remaining: 0, ResetAfter: 400*ms + 1, RetryAfter: 1}},
		{sec, 1, Result{Allowed: true, Limit: 3, Remaining: 0, ResetAfter: sec, RetryAfter: 400 * ms}},
		// Cost 2 must wait for the entry of cost 2 at +400ms to leave.
		{sec, 2, Result{Limit: 3, Remaining: 0, ResetAfter: sec, RetryAfter: 400 * ms}},
		// Cost above the limit: never.
		{sec, 4, Result{Limit: 3, Remaining: 0, ResetAfter: sec, RetryAfter: -1}},
		{10 * sec, 0, Result{Allowed: true, Limit: 3, Remaining: 3}},
	})
}

func TestSlidingWindowMergesSameInstant(t *testing.T) {
	l := Limit{Requests: 100, Period: sec}
	var s State
	for i := 0; i < 100; i++ {
		Decide(SlidingWindow, &s, t0, &l, 1)
	}
	if len(s.Log) != 1 || s.Log[0].Cost != 100 {
		t.Fatalf("log not merged: %d entries", len(s.Log))
	}
}

func TestSlidingWindowCounter(t *testing.T) {
	l := Limit{Requests: 10, Period: sec}
	run(t, SlidingWindowCounter, l, []step{
		// 4 left: another 6 fits once the 6 weigh 4 at most, 166.667ms into the next window.
		{0, 6, Result{Allowed: true, Limit: 10, Remaining: 4, ResetAfter: 2 * sec, RetryAfter: 1166667}},
		{900 * ms, 4, Result{Allowed: true, Limit: 10, Remaining: 0, ResetAfter: 1100 * ms, RetryAfter: 400*ms + 1}},
		// Next window, 25% in: previous 10 weighted 0.75 -> 7.5, floor 7; room for 3.
		{1250 * ms, 3, Result{Allowed: true, Limit: 10, Remaining: 0, ResetAfter: 1750 * ms, RetryAfter: 250*ms + 1}},
		// floor(10*(1s-e)/1s) <= 6 first holds 300.001ms into the window.
		{1250 * ms, 1, Result{Limit: 10, Remaining: 0, ResetAfter: 1750 * ms, RetryAfter: 50*ms + 1}},
		{1350 * ms, 1, Result{Allowed: true, Limit: 10, Remaining: 0, ResetAfter: 1650 * ms, RetryAfter: 50*ms + 1}},
		// Two idle windows: everything forgotten.
		{5 * sec, 0, Result{Allowed: true, Limit: 10, Remaining: 10}},
	})
}

func TestCalendar(t *testing.T) {
	l := Limit{Requests: 5, WindowStart: t0, WindowEnd: t0 + 30*24*3600*sec}
	end := l.WindowEnd - t0
	run(t, Calendar, l, []step{
		{0, 3, Result{Allowed: true, Limit: 5, Remaining: 2, ResetAfter: end, RetryAfter: end}},
		// Denied hits are not counted: the quota is not burned by refused requests.
		{sec, 3, Result{Limit: 5, Remaining: 2, ResetAfter: end - sec, RetryAfter: end - sec}},
		{2 * sec, 2, Result{Allowed: true, Limit: 5, Remaining: 0, ResetAfter: end - 2*sec, RetryAfter: end - 2*sec}},
		{2 * sec, 6, Result{Limit: 5, Remaining: 0, ResetAfter: end - 2*sec, RetryAfter: -1}},
	})
	// The next month: a fresh count.
	next := l
	next.WindowStart, next.WindowEnd = l.WindowEnd, l.WindowEnd+31*24*3600*sec
	s := State{A: l.WindowStart, B: 5}
	if r := Decide(Calendar, &s, next.WindowStart, &next, 1); !r.Allowed || r.Remaining != 4 {
		t.Fatalf("new period not fresh: %+v", r)
	}
}

func TestPenaltyLadder(t *testing.T) {
	// 3 points lock out; lockouts 1m, 5m, 30m; a quiet hour forgets one level.
	l := Limit{Requests: 3, Period: 3600 * sec, Steps: 3}
	l.Ladder[0], l.Ladder[1], l.Ladder[2] = 60*sec, 300*sec, 1800*sec
	var s State
	at := int64(0)
	violate := func(sev int64) Result { return Decide(Penalty, &s, t0+at, &l, sev) }
	check := func() Result { return Decide(Penalty, &s, t0+at, &l, 0) }

	if r := violate(2); !r.Allowed || r.Remaining != 1 {
		t.Fatalf("below threshold: %+v", r)
	}
	if r := violate(1); r.Allowed || r.ResetAfter != 60*sec {
		t.Fatalf("first lockout: %+v", r)
	}
	at += 30 * sec
	if r := check(); r.Allowed || r.ResetAfter != 30*sec {
		t.Fatalf("during lockout: %+v", r)
	}
	// Violations during a lockout do not stack.
	if r := violate(10); r.Allowed || r.ResetAfter != 30*sec {
		t.Fatalf("violation during lockout: %+v", r)
	}
	at += 30 * sec
	if r := check(); !r.Allowed {
		t.Fatalf("lockout did not end: %+v", r)
	}
	if r := violate(3); r.Allowed || r.ResetAfter != 300*sec {
		t.Fatalf("second lockout should be 5m: %+v", r)
	}
	at += 300 * sec
	if r := violate(3); r.ResetAfter != 1800*sec {
		t.Fatalf("third lockout should be 30m: %+v", r)
	}
	at += 1800 * sec
	if r := violate(3); r.ResetAfter != 1800*sec {
		t.Fatalf("ladder top repeats: %+v", r)
	}
	// Two quiet hours after the lockout ends: two levels forgotten, next lockout is 5m.
	at += 1800*sec + 2*3600*sec
	if r := violate(3); r.ResetAfter != 300*sec {
		t.Fatalf("decay: %+v", r)
	}
}

func TestTTLCoversState(t *testing.T) {
	// After TTL has passed, a fresh state must decide exactly like the kept one.
	pen := Limit{Requests: 2, Period: 10 * sec, Steps: 2}
	pen.Ladder[0], pen.Ladder[1] = 5*sec, 20*sec
	cases := []struct {
		a Algorithm
		l Limit
	}{
		{FixedWindow, Limit{Requests: 3, Period: sec}},
		{TokenBucket, Limit{Requests: 3, Period: sec}},
		{SlidingWindow, Limit{Requests: 3, Period: sec}},
		{SlidingWindowCounter, Limit{Requests: 3, Period: sec}},
		{LeakyBucket, Limit{Requests: 3, Period: sec}},
		{Penalty, pen},
	}
	for _, c := range cases {
		var kept State
		var r Result
		for i := 0; i < 5; i++ {
			r = Decide(c.a, &kept, t0+int64(i)*100*ms, &c.l, 1)
		}
		at := t0 + 400*ms + r.TTL
		var fresh State
		got := Decide(c.a, &kept, at, &c.l, 1)
		want := Decide(c.a, &fresh, at, &c.l, 1)
		if got != want {
			t.Errorf("%s: after TTL kept state gives %+v, fresh %+v", c.a, got, want)
		}
	}
}

func TestValidate(t *testing.T) {
	bad := []struct {
		a     Algorithm
		l     Limit
		param Param
		step  int
	}{
		{FixedWindow, Limit{Requests: 1, Period: 0}, ParamPeriod, 0},
		{FixedWindow, Limit{Requests: -1, Period: sec}, ParamRequests, 0},
		{FixedWindow, Limit{Requests: MaxRequests + 1, Period: sec}, ParamRequests, 0},
		{FixedWindow, Limit{Requests: 1, Period: sec, Burst: -1}, ParamBurst, 0},
		{FixedWindow, Limit{Requests: 1, Period: sec, Burst: MaxRequests + 1}, ParamBurst, 0},
		{TokenBucket, Limit{Requests: 2_000_000, Period: sec}, ParamRequests, 0},
		{TokenBucket, Limit{Requests: 1, Period: 3600 * sec, Burst: 2_000_000}, ParamBurst, 0},
		{TokenBucket, Limit{Requests: 1, Period: sec, MaxDelay: sec}, ParamMaxDelay, 0},
		{LeakyBucket, Limit{Requests: 1, Period: sec, MaxDelay: -1}, ParamMaxDelay, 0},
		{SlidingWindow, Limit{Requests: MaxSlidingLog + 1, Period: sec}, ParamRequests, 0},
		{Calendar, Limit{Requests: 1, WindowStart: 5, WindowEnd: 5}, ParamWindow, 0},
		{Penalty, Limit{Requests: 1, Period: sec, Steps: 0}, ParamLadder, 0},
		{Penalty, Limit{Requests: 1, Period: sec, Steps: 2, Ladder: [MaxLadder]int64{5, 5}}, ParamLadder, 2},
		{Penalty, Limit{Requests: 1, Period: sec, Steps: 2, Ladder: [MaxLadder]int64{5, MaxPeriod + 1}}, ParamLadder, 2},
		{Algorithm(0), Limit{Requests: 1, Period: sec}, ParamAlgorithm, 0},
	}
	for i, c := range bad {
		err := c.l.Validate(c.a)
		var le *LimitError
		if !errors.As(err, &le) {
			t.Errorf("case %d: %s %+v: Validate = %v, want a *LimitError", i, c.a, c.l, err)
			continue
		}
		if le.Param != c.param || le.Step != c.step || le.Error() != le.Msg || le.Msg == "" {
			t.Errorf("case %d: %s %+v: %+v, want param %d step %d", i, c.a, c.l, *le, c.param, c.step)
		}
	}
	if err := (&Limit{Requests: 100, Period: 60 * sec}).Validate(TokenBucket); err != nil {
		t.Fatal(err)
	}
}

func TestParse(t *testing.T) {
	for _, name := range []string{"token_bucket", "fixed_window", "sliding_window", "sliding_window_counter", "leaky_bucket"} {
		a, err := Parse(name)
		if err != nil || a.String() != name {
			t.Fatalf("%s: %v %v", name, a, err)
		}
	}
	for _, name := range []string{"", "calendar", "penalty", "TOKEN_BUCKET", "gcra"} {
		if _, err := Parse(name); err == nil {
			t.Fatalf("%q accepted", name)
		}
	}
}

func TestWindowStartNegative(t *testing.T) {
	if got := WindowStart(-1, sec); got != -sec {
		t.Fatalf("WindowStart(-1) = %d", got)
	}
}

func benchmark(b *testing.B, a Algorithm, l Limit) {
	var s State
	now := t0
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		now += 7 * ms
		Decide(a, &s, now, &l, 1)
	}
}

func BenchmarkFixedWindow(b *testing.B) {
	benchmark(b, FixedWindow, Limit{Requests: 100, Period: sec})
}
func BenchmarkTokenBucket(b *testing.B) {
	benchmark(b, TokenBucket, Limit{Requests: 100, Period: sec})
}
func BenchmarkSlidingWindow(b *testing.B) {
	benchmark(b, SlidingWindow, Limit{Requests: 100, Period: sec})
}
func BenchmarkSlidingWindowCounter(b *testing.B) {
	benchmark(b, SlidingWindowCounter, Limit{Requests: 100, Period: sec})
}
func BenchmarkLeakyBucket(b *testing.B) {
	benchmark(b, LeakyBucket, Limit{Requests: 100, Period: sec, MaxDelay: 50 * ms})
}

// TestWireNumbers pins every algorithm's wire value: the Lua and SQL ports receive these
// numbers, stored state and replicas of other releases depend on them, so a change here
// is a breaking change of the store format, never a refactoring.
func TestWireNumbers(t *testing.T) {
	want := map[string]uint8{
		"fixed_window": 1, "token_bucket": 2, "sliding_window": 3, "sliding_window_counter": 4,
		"leaky_bucket": 5, "calendar": 6, "penalty": 7, "once": 8,
	}
	seen := 0
	for a := Algorithm(1); a != 0; a++ {
		if !a.Valid() {
			continue
		}
		seen++
		if n, ok := want[a.String()]; !ok || n != uint8(a) {
			t.Errorf("%s has wire value %d, pinned at %d (0 = not pinned): a wire value never changes", a, uint8(a), n)
		}
	}
	if seen != len(want) {
		t.Errorf("%d algorithms are valid, %d are pinned: pin a new one here with the next free number", seen, len(want))
	}
}
