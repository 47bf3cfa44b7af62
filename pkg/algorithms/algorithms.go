// Package algorithms holds the pure arithmetic of halt-envoy's rate-limit algorithms.
//
// Every function here is a pure function of (state, now, limit, cost): no I/O, no clock
// reads, no allocation on the hot path. Backends that cannot run Go next to their data
// (Redis Lua, PostgreSQL functions) re-implement the same integer arithmetic; the shared
// conformance suite checks that they agree with this package decision for decision.
//
// All times and durations are int64 microseconds. Microseconds keep every quantity the
// algorithms produce below 2^53, so a Lua or SQL double computes exactly the same
// integers as Go does here; nanoseconds since the epoch would not fit.
package algorithms

import (
	"fmt"
	"math"
	"time"
)

// Algorithm names one decision rule.
type Algorithm uint8

// The algorithms, with their wire values. The numbers are a wire format, not an
// enumeration: the Redis Lua script and the PostgreSQL function (which get them injected
// from these constants when they load) read them in every op, state written by one
// release is decided by the next, and replicas of different releases share one store
// during a rolling upgrade. So a number is never changed or reused: a new algorithm takes
// the next free number, and a removed one leaves a hole. TestWireNumbers pins them.
// The zero value is invalid so a forgotten field is caught by validation instead of
// silently meaning "fixed window".
const (
	// FixedWindow counts hits in windows aligned to multiples of the period since the
	// Unix epoch, exactly as the reference Envoy rate-limit service does. Denied hits are
	// counted too (as there), so a client that keeps hammering stays denied.
	FixedWindow Algorithm = 1
	// TokenBucket refills continuously at Requests per Period up to Burst tokens; a
	// denied request takes nothing. It is implemented as GCRA, so its state is one number.
	TokenBucket Algorithm = 2
	// SlidingWindow is the exact sliding log: a request passes when the cost admitted in
	// (now-Period, now] plus its own cost is within Requests. Memory grows with Requests.
	SlidingWindow Algorithm = 3
	// SlidingWindowCounter is the O(1) estimate of a sliding window: the previous fixed
	// window's count weighted by how much of it still overlaps, plus the current count.
	SlidingWindowCounter Algorithm = 4
	// LeakyBucket drains at Requests per Period from a bucket of Burst capacity. As a
	// meter it admits the same traffic as TokenBucket; with MaxDelay it shapes traffic
	// by telling the caller how long to hold each admitted request.
	LeakyBucket Algorithm = 5
	// Calendar is a counter over caller-given bounds [WindowStart, WindowEnd): calendar
	// quotas (a month has no fixed length). Denied hits are not counted, so a customer's
	// quota is not burned by requests it never got served.
	Calendar Algorithm = 6
	// Penalty is the progressive lockout state of one identity; see DecidePenalty.
	Penalty Algorithm = 7
	// Once is the record of an idempotency key: the first decision of a request carrying
	// it, kept for the rule's idempotency_ttl; see DecideOnce.
	Once Algorithm = 8

	// numAlgorithms is the highest wire value in use.
	numAlgorithms = 8
)

var algorithmNames = [numAlgorithms + 1]string{
	FixedWindow:          "fixed_window",
	TokenBucket:          "token_bucket",
	SlidingWindow:        "sliding_window",
	SlidingWindowCounter: "sliding_window_counter",
	LeakyBucket:          "leaky_bucket",
	Calendar:             "calendar",
	Penalty:              "penalty",
	Once:                 "once",
}

// String returns the configuration name of a.
func (a Algorithm) String() string {
	if a == 0 || int(a) > numAlgorithms {
		return fmt.Sprintf("algorithm(%d)", uint8(a))
	}
	return algorithmNames[a]
}

// Valid reports whether a names a known algorithm.
func (a Algorithm) Valid() bool { return a != 0 && int(a) <= numAlgorithms }

// Selectable reports whether a may be named in a rate_limit's algorithm key. Calendar and
// Penalty are driven by quotas and penalties, not chosen by users directly.
func (a Algorithm) Selectable() bool {
	return a == FixedWindow || a == TokenBucket || a == SlidingWindow || a == SlidingWindowCounter || a == LeakyBucket
}

// Parse returns the selectable algorithm with configuration name s.
func Parse(s string) (Algorithm, error) {
	for a := Algorithm(1); int(a) <= numAlgorithms; a++ {
		if algorithmNames[a] == s && a.Selectable() {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown algorithm %q (want token_bucket, fixed_window, sliding_window, sliding_window_counter or leaky_bucket)", s)
}

// Bounds that keep every intermediate value below 2^53 (exact in a double) and keep the
// sliding log small enough to store in one value of any backend.
const (
	// MaxCount saturates counters: a flood of 2^32-1 hits per request can never wrap.
	MaxCount = int64(1) << 52
	// MaxRequests is the largest limit accepted in configuration.
	MaxRequests = int64(1) << 40
	// MaxPeriod is the longest period accepted: a bit over 100 years.
	MaxPeriod = int64(100 * 366 * 24 * time.Hour / time.Microsecond)
	// MaxSlidingLog bounds sliding_window's Requests: beyond it the log is too large to
	// keep per key, and sliding_window_counter is the bounded alternative.
	MaxSlidingLog = int64(10000)
	// MaxLadder is the number of lockout steps a penalty may have.
	MaxLadder = 8
	// MaxSkew is how far ahead of an op's now the time of the state it reads may be and
	// still be trusted (1 s). Every state remembers when it last changed; an op whose now
	// is older than that (it took its clock reading before a concurrent op that got to
	// the store first, or its replica's clock is behind another's) is decided as if it
	// arrived at the state's time, so that arrival order and clock skew between replicas
	// never refuse what the same ops in order would admit. A state time further ahead
	// than MaxSkew is a broken clock, not skew: the op is then decided at its own now
	// (each algorithm's handling of a clock that went back), so that one replica with a
	// wrong clock cannot hold a key at its time for longer than MaxSkew.
	MaxSkew = int64(time.Second / time.Microsecond)
)

// At returns the time an op whose clock reads now is decided at, against a state last
// changed at t (0: never): t when it is ahead of now by at most MaxSkew, else now.
func At(now, t int64) int64 {
	if t > now && t-now <= MaxSkew {
		return t
	}
	return now
}

// StateTime returns when s, a state of algorithm a, last changed (0 when it does not
// say): the time an op older than it is decided at (At). Each algorithm keeps it in a
// field of State it does not otherwise use; see the Decide functions.
func StateTime(a Algorithm, s *State) int64 {
	switch a {
	case FixedWindow, Calendar:
		return s.C
	case TokenBucket, LeakyBucket:
		return s.B
	case SlidingWindow:
		return s.A
	case SlidingWindowCounter, Penalty:
		return s.D
	}
	return 0
}

// skewTTL moves a TTL computed at the decision time at onto the clock of the op's now,
// which is what stores expire by: a state decided ahead of the op's clock must be kept
// that much longer. A TTL of 0 (nothing worth keeping) stays 0.
func skewTTL(ttl, at, now int64) int64 {
	if ttl <= 0 {
		return ttl
	}
	return ttl + at - now
}

// Limit parameterises one decision. The zero Burst means Requests.
type Limit struct {
	// Requests admitted per Period (the penalty threshold for Penalty).
	Requests int64
	// Period in microseconds (the quiet period after which violations decay for Penalty).
	Period int64
	// Burst is the bucket capacity of TokenBucket and LeakyBucket; 0 means Requests.
	Burst int64
	// MaxDelay (microseconds) turns LeakyBucket into a shaper: admitted requests are held
	// until the water ahead of them drained, and a request that would wait longer is denied.
	MaxDelay int64
	// WindowStart and WindowEnd bound a Calendar window, in microseconds since the epoch.
	WindowStart, WindowEnd int64
	// Ladder holds Penalty lockout durations (microseconds), Steps of them in use.
	Ladder [MaxLadder]int64
	// Steps is the number of Ladder entries in use.
	Steps int
	// Drain makes a charge that does not fit take what is left, and up to MaxDebt beyond,
	// instead of nothing (a rule's over_charge: drain); it is still refused. fixed_window
	// counts every charge whole whatever this says (as the reference service does).
	Drain bool
	// MaxDebt is how far below zero, in units of cost, a drained or reported charge may
	// take the key: the requests after it wait until the debt is repaid (by refill,
	// refunds, entries leaving the window). 0 drains to zero. fixed_window has no debt: its
	// count above the limit is forgiven when the window ends.
	MaxDebt int64
	// Report marks a report-only call (set per call, not per rule): a cost known after
	// the fact, charged whether it fits or not (as Drain charges it) and never refused.
	Report bool
	// NeedsUnit makes a check (cost 0, set per call) ask whether a request of cost 1
	// would pass, instead of whether nothing fits (which it always does outside debt):
	// the request-time check of a budget whose cost is charged after the response must
	// refuse the next request once the budget is at zero.
	NeedsUnit bool
}

// Capacity returns the effective bucket size.
func (l *Limit) Capacity() int64 {
	if l.Burst > 0 {
		return l.Burst
	}
	return l.Requests
}

// Interval returns the GCRA emission interval: the time one unit of cost takes to drain.
// It rounds up, so rounding can only make a bucket slightly stricter, never looser.
func (l *Limit) Interval() int64 {
	if l.Requests <= 0 {
		return 0
	}
	return ceilDiv(l.Period, l.Requests)
}

// Param names a field of Limit (or the algorithm itself), so that a caller can point at
// the setting that made a Limit invalid instead of reading the message.
type Param uint8

// The fields a LimitError can name.
const (
	ParamAlgorithm Param = iota + 1 // the Algorithm given to Validate
	ParamRequests                   // Requests (with Period, for a rate that is too fast)
	ParamPeriod                     // Period
	ParamBurst                      // Burst, or Requests when Burst is 0 (the capacity)
	ParamMaxDelay                   // MaxDelay
	ParamWindow                     // WindowStart and WindowEnd
	ParamLadder                     // Ladder and Steps; LimitError.Step names the step
	ParamMaxDebt                    // MaxDebt
)

// LimitError is why Validate refused a Limit.
type LimitError struct {
	// Param is the field at fault.
	Param Param
	// Step is the 1-based Ladder step at fault for ParamLadder, 0 when the ladder as a
	// whole is (its number of steps).
	Step int
	// Msg says what is wrong, in configuration terms.
	Msg string
}

// Error returns Msg.
func (e *LimitError) Error() string { return e.Msg }

func limitErr(p Param, format string, args ...any) error {
	return &LimitError{Param: p, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks that a can decide with l without leaving exact integer arithmetic.
// It is the single place where configuration limits are enforced. A refusal is a
// *LimitError naming the field at fault.
func (l *Limit) Validate(a Algorithm) error {
	if !a.Valid() {
		return limitErr(ParamAlgorithm, "unknown algorithm %d", a)
	}
	if l.Requests < 0 {
		return limitErr(ParamRequests, "requests_per_unit must not be negative, got %d", l.Requests)
	}
	if l.Requests > MaxRequests {
		return limitErr(ParamRequests, "requests_per_unit %d is above the maximum %d", l.Requests, MaxRequests)
	}
	if a == Once {
		// Requests is a fingerprint, Period a wait (0 for none), WindowEnd the record's end.
		if l.Requests <= 0 {
			return limitErr(ParamRequests, "once needs a fingerprint above 0, got %d", l.Requests)
		}
		if l.Period < 0 || l.Period > MaxPeriod {
			return limitErr(ParamPeriod, "once's wait must be between 0 and 100 years, got %s", time.Duration(l.Period)*time.Microsecond)
		}
		if l.WindowEnd <= 0 {
			return limitErr(ParamWindow, "once needs the record's end, got %d", l.WindowEnd)
		}
		return nil
	}
	if a != Calendar && (l.Period <= 0 || l.Period > MaxPeriod) {
		return limitErr(ParamPeriod, "period must be between 1us and 100 years, got %s", time.Duration(l.Period)*time.Microsecond)
	}
	if l.Burst < 0 {
		return limitErr(ParamBurst, "burst must not be negative, got %d", l.Burst)
	}
	if l.MaxDebt < 0 || l.MaxDebt > MaxRequests {
		return limitErr(ParamMaxDebt, "max_debt must be between 0 and %d, got %d", MaxRequests, l.MaxDebt)
	}
	switch a {
	case TokenBucket, LeakyBucket:
		if l.Requests > 0 && l.Requests > l.Period {
			return limitErr(ParamRequests, "%s refills one request per microsecond at most: %d per %s is too fast; use fixed_window or sliding_window_counter", a, l.Requests, time.Duration(l.Period)*time.Microsecond)
		}
		if l.Requests > 0 && l.Capacity() > (int64(1)<<52)/l.Interval() {
			return limitErr(ParamBurst, "burst %d is too large for %d per %s (burst x interval must stay below 2^52us)", l.Capacity(), l.Requests, time.Duration(l.Period)*time.Microsecond)
		}
		if l.Requests > 0 && l.Capacity()+l.MaxDebt > (int64(1)<<52)/l.Interval() {
			return limitErr(ParamMaxDebt, "max_debt %d is too large for %d per %s with burst %d ((burst + max_debt) x interval must stay below 2^52us)", l.MaxDebt, l.Requests, time.Duration(l.Period)*time.Microsecond, l.Capacity())
		}
		if l.MaxDelay < 0 || l.MaxDelay > MaxPeriod {
			return limitErr(ParamMaxDelay, "max_delay must be between 0 and 100 years")
		}
		if l.MaxDelay > 0 && a != LeakyBucket {
			return limitErr(ParamMaxDelay, "max_delay applies to leaky_bucket only")
		}
	case SlidingWindow:
		if l.Requests > MaxSlidingLog {
			return limitErr(ParamRequests, "sliding_window keeps one log entry per request: %d requests per window is above the bound of %d; use sliding_window_counter (O(1) memory, weighted two-window estimate)", l.Requests, MaxSlidingLog)
		}
		if l.Requests+l.MaxDebt > MaxSlidingLog {
			return limitErr(ParamMaxDebt, "sliding_window keeps one log entry per unit it holds: requests_per_unit %d plus max_debt %d is above the bound of %d", l.Requests, l.MaxDebt, MaxSlidingLog)
		}
	case Calendar:
		if l.WindowEnd <= l.WindowStart {
			return limitErr(ParamWindow, "calendar window end %d is not after its start %d", l.WindowEnd, l.WindowStart)
		}
	case Penalty:
		if l.Steps <= 0 || l.Steps > MaxLadder {
			return limitErr(ParamLadder, "penalty ladder needs 1 to %d steps, got %d", MaxLadder, l.Steps)
		}
		for i := 0; i < l.Steps; i++ {
			if l.Ladder[i] <= 0 || l.Ladder[i] > MaxPeriod {
				return &LimitError{Param: ParamLadder, Step: i + 1, Msg: fmt.Sprintf("penalty step %d must be a positive duration up to 100 years", i+1)}
			}
			if i > 0 && l.Ladder[i] <= l.Ladder[i-1] {
				return &LimitError{Param: ParamLadder, Step: i + 1, Msg: fmt.Sprintf("penalty ladder must increase: step %d (%s) is not longer than step %d (%s)", i+1, time.Duration(l.Ladder[i])*time.Microsecond, i, time.Duration(l.Ladder[i-1])*time.Microsecond)}
			}
		}
	}
	if l.Burst > MaxRequests {
		return limitErr(ParamBurst, "burst %d is above the maximum %d", l.Burst, MaxRequests)
	}
	return nil
}

// Entry is one admitted request in a sliding log.
type Entry struct {
	// At is when the request was admitted (microseconds since the epoch).
	At int64
	// Cost is what it took from the window.
	Cost int64
}

// State is the whole persistent state of one key. Its fields mean different things per
// algorithm (documented on each Decide function) so that every backend stores the same
// four integers, plus the log for SlidingWindow only. One of them is the state's time
// (StateTime): when a decision last changed it.
type State struct {
	A, B, C, D int64
	Log        []Entry
}

// IsZero reports whether s holds nothing, so a store may delete it instead of writing it.
func (s *State) IsZero() bool {
	return s.A == 0 && s.B == 0 && s.C == 0 && s.D == 0 && len(s.Log) == 0
}

// Mark is a cheap fingerprint of a State: compare-and-swap stores take one before a
// decision and skip the write when it is unchanged after. The sliding log only ever drops
// entries from its front, appends at its end or grows its last entry, so its length and
// last entry are enough to notice a change.
type Mark struct {
	a, b, c, d int64
	n          int
	last       Entry
}

// Mark returns s's fingerprint.
func (s *State) Mark() Mark {
	m := Mark{a: s.A, b: s.B, c: s.C, d: s.D, n: len(s.Log)}
	if m.n > 0 {
		m.last = s.Log[m.n-1]
	}
	return m
}

// Reset clears s for reuse, keeping the log's storage.
func (s *State) Reset() {
	s.A, s.B, s.C, s.D = 0, 0, 0, 0
	s.Log = s.Log[:0]
}

// Result is the outcome of one decision. Its durations (ResetAfter, RetryAfter, Delay)
// count from the time the op was decided at (At: its now, or the state's time when that
// is ahead); TTL counts from the op's now, the clock stores expire by.
type Result struct {
	// Allowed reports whether the request passes.
	Allowed bool
	// Limit is the limit the decision was made against (Requests, or capacity for buckets).
	Limit int64
	// Remaining is what is left after this decision, never negative.
	Remaining int64
	// ResetAfter is the time (us) until the limit is fully restored: the window's end,
	// the bucket being full, or the lockout's end.
	ResetAfter int64
	// RetryAfter is the time (us) after which the same request could pass: 0 when it
	// could pass now, -1 when it can never pass (cost above the limit). An admitted
	// request that took the last units it could has the wait until one like it can pass
	// again, so a client told "none left" also learns when (Wait).
	RetryAfter int64
	// Delay is how long (us) the caller should hold an admitted request (leaky-bucket shaping).
	Delay int64
	// TTL is how long (us) the state must be kept; past it the state is equivalent to a
	// fresh one and a backend may drop it. 0 means "nothing worth keeping".
	TTL int64
	// Debt is how far below zero (in units of cost) the key is after the decision: what
	// drained or reported charges took beyond the limit and later requests must wait to
	// see repaid. 0 for fixed_window, whose window forgives.
	Debt int64
}

// Wait is what a client is told to wait for, in microseconds: when the same request
// cannot pass now (refused, or admitted with the last units it could take), the time
// until it can (RetryAfter); otherwise, and for a request that can never pass, the time
// until the limit is whole again (ResetAfter). The rate-limit headers' reset (RateLimit
// t, X-RateLimit-Reset), Retry-After and Envoy's duration_until_reset all report it, so
// they agree.
func (r *Result) Wait() int64 {
	if r.RetryAfter > 0 {
		return r.RetryAfter
	}
	return r.ResetAfter
}

// Decide applies algorithm a to s at time now for a request of the given cost, updating
// s in place. An op whose now is older than the state's time (by up to MaxSkew) is
// decided at the state's time (At).
//
// A positive cost charges; a charge that does not fit is refused and takes nothing,
// except that fixed_window counts it anyway, l.Drain takes what is left (and up to
// l.MaxDebt beyond), and l.Report charges as Drain does and is never refused. A cost of 0
// checks: it takes nothing, and fits unless the key is in debt; with l.NeedsUnit it is
// refused when a request of cost 1 would be (a budget at zero refuses its check). A
// negative cost refunds -cost: it gives back budget (never above the limit or burst) and
// is never refused; penalties take no refunds.
func Decide(a Algorithm, s *State, now int64, l *Limit, cost int64) Result {
	if cost < -MaxCount {
		cost = -MaxCount
	}
	switch a {
	case FixedWindow:
		return DecideFixedWindow(s, now, l, cost)
	case TokenBucket:
		return DecideTokenBucket(s, now, l, cost)
	case SlidingWindow:
		return DecideSlidingWindow(s, now, l, cost)
	case SlidingWindowCounter:
		return DecideSlidingWindowCounter(s, now, l, cost)
	case LeakyBucket:
		return DecideLeakyBucket(s, now, l, cost)
	case Calendar:
		return DecideCalendar(s, now, l, cost)
	case Penalty:
		return DecidePenalty(s, now, l, cost)
	case Once:
		return DecideOnce(s, now, l, cost)
	}
	return Result{RetryAfter: -1}
}

// WindowStart returns the start of the period-long window holding now, aligned to the
// Unix epoch (floor division, so times before 1970 align too).
func WindowStart(now, period int64) int64 {
	r := now % period
	if r < 0 {
		r += period
	}
	return now - r
}

func ceilDiv(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

func satAdd(a, b int64) int64 {
	if a > MaxCount-b {
		return MaxCount
	}
	return a + b
}

// need is what a decision asks to fit for a charge of cost: the cost; for a check,
// nothing, or one unit with NeedsUnit (refused exactly when a request of cost 1 would be).
func (l *Limit) need(cost int64) int64 {
	switch {
	case cost > 0:
		return cost
	case l.NeedsUnit:
		return 1
	}
	return 0
}

// records reports whether a charge of cost that does not fit is recorded anyway.
func (l *Limit) records(cost int64) bool { return cost > 0 && (l.Drain || l.Report) }

// room is how much of a charge that does not fit a key with used units of limit may
// still record: what is left and the debt allowed beyond it.
func room(used, limit, maxDebt int64) int64 {
	if r := limit + maxDebt - used; r > 0 {
		return r
	}
	return 0
}

// DecideFixedWindow: A is the window start, B the hits counted in it, C the state's time.
// As in the reference service a charge is counted whole even when denied (Drain and
// MaxDebt change nothing: the window forgives at its end). A refund subtracts from the
// count within the limit: the count above it (denied hits) changes no decision, and is
// not refundable. A denied hit in the key's window does not move the state's time: the
// count above the limit changes no decision in that window (so the Redis deny cache may
// answer such hits without the server seeing them, and every store still agrees on the
// key's time).
func DecideFixedWindow(s *State, now int64, l *Limit, cost int64) Result {
	at := At(now, s.C)
	start := WindowStart(at, l.Period)
	changed := false
	switch {
	case s.A == start:
	case s.A > start && s.A < start+l.Period*2:
		// The clock went back further than MaxSkew into an earlier window: keep counting
		// in the newer one rather than forgetting what it admitted.
		start = s.A
	default:
		s.A, s.B = start, 0
		changed = true
	}
	reset := start + l.Period - at
	r := Result{Limit: l.Requests, ResetAfter: reset}
	nd := l.need(cost)
	switch {
	case cost < 0:
		if b := max(min(s.B, l.Requests)+cost, 0); b != s.B {
			s.B, changed = b, true
		}
		r.Allowed = true
	default:
		s.B = satAdd(s.B, cost)
		r.Allowed = s.B-cost+nd <= l.Requests
		if r.Allowed && cost > 0 {
			changed = true
		}
		r.Allowed = r.Allowed || l.Report
	}
	if changed {
		s.C = at
	}
	r.TTL = skewTTL(reset, at, now)
	r.Remaining = max(l.Requests-s.B, 0)
	switch {
	case cost < 0:
	case nd > l.Requests:
		r.RetryAfter = -1
	case !r.Allowed || r.Remaining < nd:
		r.RetryAfter = reset // the next one like it waits for the next window
	}
	return r
}

// DecideCalendar: A is the window start, B the cost admitted in it, C the state's time,
// D the window's end. Bounds come from l, computed by the caller from its own now; when
// the state is already in a later window and its time is ahead of now by at most MaxSkew
// (an op from just before a period boundary arriving after one from just after it), the
// op is decided in the state's window, at the state's time. A denied charge is not
// counted (unless drained or reported), so a customer's quota is not burned by requests
// it never got served; a refund gives back within the period, never below zero; debt
// lasts until the period ends.
func DecideCalendar(s *State, now int64, l *Limit, cost int64) Result {
	ws, we := l.WindowStart, l.WindowEnd
	at := At(now, s.C)
	if at != now && s.A >= we && s.D > s.A {
		ws, we = s.A, s.D
	}
	changed := false
	// A state from a later window than this one (the clock went back) keeps its count.
	if s.A != ws && (s.A <= ws || s.A >= we) {
		s.A, s.B = ws, 0
		changed = true
	}
	reset := we - at
	if reset < 0 {
		reset = 0
	}
	r := Result{Limit: l.Requests, ResetAfter: reset, TTL: skewTTL(reset, at, now)}
	nd := l.need(cost)
	switch {
	case cost < 0:
		if b := max(s.B+cost, 0); b != s.B {
			s.B, changed = b, true
		}
		r.Allowed = true
	case s.B+nd <= l.Requests:
		s.B += cost
		r.Allowed = true
		changed = changed || cost > 0
	default:
		if l.records(cost) {
			if take := min(cost, room(s.B, l.Requests, l.MaxDebt)); take > 0 {
				s.B += take
				changed = true
			}
		}
		r.Allowed = l.Report
	}
	if changed {
		s.C, s.D = at, we
	}
	r.Remaining = max(l.Requests-s.B, 0)
	r.Debt = max(s.B-l.Requests, 0)
	switch {
	case cost < 0:
	case nd > l.Requests:
		r.RetryAfter = -1
	case !r.Allowed || r.Remaining < nd:
		r.RetryAfter = reset // the next one like it waits for the next period
	}
	return r
}

// DecideTokenBucket: A is the theoretical arrival time (GCRA's TAT): the instant at
// which the bucket will be full again, B the state's time. A zero A is a full bucket.
func DecideTokenBucket(s *State, now int64, l *Limit, cost int64) Result {
	return gcra(s, now, l, cost, false)
}

// DecideLeakyBucket: A is the instant the bucket will have drained empty, B the state's
// time. Water drains
// at Requests per Period; a request fits when its cost plus the water fits in capacity.
// With MaxDelay, Delay tells the caller how long the water ahead of it takes to drain.
func DecideLeakyBucket(s *State, now int64, l *Limit, cost int64) Result {
	return gcra(s, now, l, cost, true)
}

func gcra(s *State, now int64, l *Limit, cost int64, shape bool) Result {
	capacity := l.Capacity()
	r := Result{Limit: capacity}
	if l.Requests <= 0 || capacity <= 0 {
		r.RetryAfter = -1
		r.Allowed = cost < 0 || l.Report
		return r
	}
	at := At(now, s.B)
	t := l.Interval()
	tau := capacity * t
	most := tau + l.MaxDebt*t // the largest backlog a key holds: full, and its debt
	tat := s.A
	if tat < at {
		tat = at
	}
	backlog := tat - at // water (in time) ahead of this request
	if backlog > most {
		// Only possible when the clock went back further than MaxSkew: treat the bucket
		// as exactly full (and as deep in debt as it may be).
		backlog = most
	}
	if cost < 0 {
		// A refund drains the water it paid for, down to an empty (full) bucket.
		left := backlog
		if q := -cost; q < ceilDiv(backlog, t) {
			left = backlog - q*t
		} else {
			left = 0
		}
		if left != backlog {
			s.A, s.B = at+left, at
		}
		r.Allowed = true
		r.Remaining = max(tau-left, 0) / t
		r.ResetAfter = left
		r.TTL = skewTTL(left, at, now)
		r.Debt = ceilDiv(left-tau, t)
		return r
	}
	nd := l.need(cost)
	shaping := shape && l.MaxDelay > 0 && !l.Report
	waitOK := !shaping || backlog <= l.MaxDelay
	if nd <= capacity && backlog+nd*t <= tau && waitOK {
		next := backlog + cost*t
		if cost > 0 {
			s.A, s.B = at+next, at
		}
		r.Allowed = true
		r.Remaining = (tau - next) / t
		r.ResetAfter = next
		r.TTL = skewTTL(next, at, now)
		if shaping {
			r.Delay = backlog
		}
		// The next request like this one finds the backlog this one left.
		if again := next + nd*t; again > tau {
			r.RetryAfter = again - tau
		}
		if shaping && next-l.MaxDelay > r.RetryAfter {
			r.RetryAfter = next - l.MaxDelay
		}
		return r
	}
	if l.records(cost) {
		// Record what does not fit: the whole units that still fit under the debt bound
		// (a part of a unit refilled is not taken, so a refused request of cost 1 at
		// zero leaves the refill alone).
		if take := min(cost, (most-backlog)/t); take > 0 {
			backlog += take * t
			s.A, s.B = at+backlog, at
		}
	}
	r.Allowed = l.Report
	r.Remaining = max(tau-backlog, 0) / t
	r.ResetAfter = backlog
	r.TTL = skewTTL(backlog, at, now)
	r.Debt = ceilDiv(backlog-tau, t)
	if nd > capacity {
		r.RetryAfter = -1
		return r
	}
	r.RetryAfter = backlog + nd*t - tau
	if shaping && backlog-l.MaxDelay > r.RetryAfter {
		r.RetryAfter = backlog - l.MaxDelay
	}
	return r
}

// DecideSlidingWindow keeps Log sorted by time; entries at or before the decision time
// minus Period have left the window. A is the state's time, B caches the sum of the
// log's costs. Entries admitted in the same microsecond are merged so the log stays at
// most Requests+MaxDebt long. A refund removes its cost from the newest entries; a
// drained or reported charge that does not fit adds an entry of what it may take, which
// leaves the window (repaying any debt) one Period later.
func DecideSlidingWindow(s *State, now int64, l *Limit, cost int64) Result {
	at := At(now, s.A)
	cut := at - l.Period
	drop := 0
	used := s.B // running sum of the log's costs, so a decision is O(entries expired)
	for drop < len(s.Log) && s.Log[drop].At <= cut {
		used -= s.Log[drop].Cost
		drop++
	}
	changed := drop > 0
	if drop > 0 {
		n := copy(s.Log, s.Log[drop:])
		s.Log = s.Log[:n]
	}
	if len(s.Log) == 0 || used < 0 {
		used = 0
		for _, e := range s.Log {
			used += e.Cost
		}
	}
	r := Result{Limit: l.Requests}
	nd := l.need(cost)
	add := int64(0) // the cost this op puts in the log
	switch {
	case cost < 0:
		for q := -cost; q > 0 && len(s.Log) > 0; {
			e := &s.Log[len(s.Log)-1]
			take := min(e.Cost, q)
			e.Cost -= take
			used -= take
			q -= take
			if e.Cost == 0 {
				s.Log = s.Log[:len(s.Log)-1]
			}
			changed = true
		}
		r.Allowed = true
	case used+nd <= l.Requests:
		r.Allowed = true
		add = cost
	default:
		if l.records(cost) {
			add = min(cost, room(used, l.Requests, l.MaxDebt))
		}
		r.Allowed = l.Report
	}
	if add > 0 {
		if n := len(s.Log); n > 0 && s.Log[n-1].At >= at {
			// Same microsecond, or a clock that went back further than MaxSkew: merge
			// into the newest entry so it expires no earlier than what it already held.
			s.Log[n-1].Cost += add
		} else {
			s.Log = append(s.Log, Entry{At: at, Cost: add})
		}
		used += add
		changed = true
	}
	switch {
	case cost < 0:
	case nd > l.Requests:
		r.RetryAfter = -1
	case used+nd > l.Requests:
		// Refused, or admitted with the last room: wait until enough of the oldest
		// entries have left the window for one like it.
		want := used + nd - l.Requests
		for _, e := range s.Log {
			want -= e.Cost
			if want <= 0 {
				r.RetryAfter = e.At + l.Period - at
				break
			}
		}
	}
	s.B = used
	if changed {
		s.A = at
	}
	r.Remaining = max(l.Requests-used, 0)
	r.Debt = max(used-l.Requests, 0)
	if n := len(s.Log); n > 0 {
		r.ResetAfter = s.Log[n-1].At + l.Period - at
		r.TTL = skewTTL(r.ResetAfter, at, now)
	}
	return r
}

// DecideSlidingWindowCounter: A is the current fixed window's start, B its count, C the
// previous window's count, D the state's time. The estimate is C*(Period-elapsed)/Period
// + B. The product is computed in float64 with the same operation order as the Lua and
// SQL versions (multiply, then divide), so every backend rounds identically. A refund
// subtracts from the current window's count, never below zero; a drained or reported
// charge adds what it may take, and its debt decays with the windows.
func DecideSlidingWindowCounter(s *State, now int64, l *Limit, cost int64) Result {
	p := l.Period
	at := At(now, s.D)
	cur := WindowStart(at, p)
	changed := false
	switch {
	case s.A == cur:
	case s.A == cur-p:
		s.A, s.B, s.C = cur, 0, s.B
		changed = true
	case s.A > cur && s.A < cur+2*p:
		cur = s.A // the clock went back further than MaxSkew: stay in the newer window
	default:
		s.A, s.B, s.C = cur, 0, 0
		changed = true
	}
	elapsed := at - cur
	if elapsed < 0 {
		elapsed = 0
	}
	weighted := math.Floor(float64(s.C) * float64(p-elapsed) / float64(p))
	w := int64(weighted)
	r := Result{Limit: l.Requests}
	nd := l.need(cost)
	switch {
	case cost < 0:
		if b := max(s.B+cost, 0); b != s.B {
			s.B, changed = b, true
		}
		r.Allowed = true
	case w+s.B+nd <= l.Requests:
		if cost > 0 {
			s.B = satAdd(s.B, cost)
			changed = true
		}
		r.Allowed = true
	default:
		if l.records(cost) {
			if take := min(cost, room(w+s.B, l.Requests, l.MaxDebt)); take > 0 {
				s.B += take
				changed = true
			}
		}
		r.Allowed = l.Report
	}
	if changed {
		s.D = at
	}
	switch {
	case cost < 0:
	case nd > l.Requests:
		r.RetryAfter = -1
	case w+s.B+nd > l.Requests:
		// Refused, or admitted with the last room: when one like it fits again.
		r.RetryAfter = slidingCounterRetry(s, at, cur, p, l.Requests, nd)
	}
	r.Remaining = max(l.Requests-w-s.B, 0)
	r.Debt = max(w+s.B-l.Requests, 0)
	switch {
	case s.B > 0:
		r.ResetAfter = cur + 2*p - at
	case s.C > 0:
		r.ResetAfter = cur + p - at
	}
	r.TTL = skewTTL(r.ResetAfter, at, now)
	return r
}

// slidingCounterRetry finds when the estimate will have fallen enough for cost to fit.
func slidingCounterRetry(s *State, now, cur, p, limit, cost int64) int64 {
	// Within the current window only the previous count decays.
	if room := limit - s.B - cost; room >= 0 && s.C > 0 {
		// need floor(C*(p-e)/p) <= room, i.e. C*(p-e) < (room+1)*p.
		e := p - int64(math.Floor(float64(room+1)*float64(p)/float64(s.C)))
		if e < 0 {
			e = 0
		}
		for i := 0; i < 8 && e < p && int64(math.Floor(float64(s.C)*float64(p-e)/float64(p))) > room; i++ {
			e++
		}
		return cur + e - now
	}
	// Otherwise wait for the next window, where the current count decays in turn.
	room := limit - cost
	if s.B == 0 {
		return cur + p - now
	}
	e := p - int64(math.Floor(float64(room+1)*float64(p)/float64(s.B)))
	if e < 0 {
		e = 0
	}
	for i := 0; i < 8 && e < p && int64(math.Floor(float64(s.B)*float64(p-e)/float64(p))) > room; i++ {
		e++
	}
	return cur + p + e - now
}

// DecidePenalty records a violation of the given severity (cost) or, with cost 0, only
// checks. A is the lockout end, B the ladder level reached, C the violation points
// gathered toward the next lockout, D the state's time: the last violation, or the end
// of the last quiet period that made a level decay. Requests is the points threshold,
// Period the quiet period after which one level (and all points) decay: a level decays
// after each whole Period without a violation, counted from the lockout's end (or the
// last violation), and a check that sees a decay records it, so that a later check does
// not count the same quiet time again. Allowed is false while locked out; ResetAfter is
// then the lockout remaining.
func DecidePenalty(s *State, now int64, l *Limit, cost int64) Result {
	if cost < 0 {
		cost = 0 // a penalty takes no refunds
	}
	at := At(now, s.D)
	r := Result{Limit: l.Requests}
	if at >= s.A && s.D != 0 && l.Period > 0 && at > s.D {
		from := s.D
		if s.A > s.D {
			from = s.A // the quiet period starts when the lockout ends
		}
		if quiet := at - from; quiet >= l.Period {
			s.C = 0
			steps := quiet / l.Period
			if steps >= s.B {
				s.B = 0
			} else {
				s.B -= steps
			}
			s.D = from + steps*l.Period
		}
	}
	if cost > 0 && at >= s.A {
		s.C = satAdd(s.C, cost)
		s.D = at
		if s.C >= l.Requests {
			if s.B < int64(l.Steps) {
				s.B++
			}
			s.A = at + l.Ladder[s.B-1]
			s.C = 0
		}
	}
	if at < s.A {
		r.ResetAfter = s.A - at
		r.RetryAfter = r.ResetAfter
	} else {
		r.Allowed = true
		r.Remaining = l.Requests - s.C
		if r.Remaining < 0 {
			r.Remaining = 0
		}
	}
	// Keep the state until its lockout is over and every level has decayed.
	if s.D != 0 || s.A != 0 {
		end := s.A
		if s.D > end {
			end = s.D
		}
		r.TTL = end + (s.B+1)*l.Period - at
		if r.TTL < 0 {
			r.TTL = 0
		}
		r.TTL = skewTTL(r.TTL, at, now)
	}
	return r
}
