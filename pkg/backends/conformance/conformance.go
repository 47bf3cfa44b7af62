// Package conformance is the one suite every halt-envoy backend runs unchanged: the same
// timelines must give the same decisions as the pure algorithms, concurrent hammering
// of one key must never admit more than the limit, and local-first replicas over the
// store must keep their stated bound (localfirst.go).
package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// Factory opens a fresh store for one subtest. The suite closes it.
type Factory func(t *testing.T) backends.Store

// Options adjust the suite for a backend's documented limits. Every field that skips
// or allows something must come with a Reason the test log will show.
type Options struct {
	// SkipConcurrency skips the parts that send concurrent ops (the hammering, the
	// out-of-order shaping calls), for a server that cannot apply concurrent updates
	// atomically (FerretDB v1). Reason is then required.
	SkipConcurrency bool
	// SkipSlidingLog skips the exact sliding log (a backend whose items are too small).
	SkipSlidingLog bool
	// MaxContention is the share of the concurrency part's operations (0 up to
	// MaxContentionLimit) that may fail with backends.ErrContention: a compare-and-swap
	// store gives up on a key after a bounded number of lost races instead of spinning
	// through its deadline. Zero (the default) means every operation must be decided.
	// Whatever the share, the ops that were decided must admit exactly what the pure
	// algorithm admits for as many ops, which is the limit itself. Reason is then required.
	MaxContention float64
	// Reason explains every skip and every allowance.
	Reason string
	// Workers and OpsPerWorker size the concurrency part (defaults 16 and 40).
	Workers, OpsPerWorker int
}

// MaxContentionLimit is the largest Options.MaxContention the suite accepts: with more
// than half the ops allowed to fail, a store that decides almost nothing could pass.
const MaxContentionLimit = 0.5

// Case is one algorithm configuration the suite exercises.
type Case struct {
	Name      string
	Algorithm algorithms.Algorithm
	Limit     algorithms.Limit
}

const (
	sec    = int64(time.Second / time.Microsecond)
	minute = 60 * sec
)

// Cases returns the algorithm configurations every backend must decide identically.
func Cases() []Case {
	pen := algorithms.Limit{Requests: 3, Period: 10 * sec, Steps: 3}
	pen.Ladder[0], pen.Ladder[1], pen.Ladder[2] = 2*sec, 5*sec, 30*sec
	return []Case{
		{"fixed_window", algorithms.FixedWindow, algorithms.Limit{Requests: 5, Period: sec}},
		{"fixed_window_minute", algorithms.FixedWindow, algorithms.Limit{Requests: 20, Period: minute}},
		{"token_bucket", algorithms.TokenBucket, algorithms.Limit{Requests: 5, Period: sec}},
		{"token_bucket_burst", algorithms.TokenBucket, algorithms.Limit{Requests: 3, Period: sec, Burst: 7}},
		{"sliding_window", algorithms.SlidingWindow, algorithms.Limit{Requests: 5, Period: sec}},
		{"sliding_window_counter", algorithms.SlidingWindowCounter, algorithms.Limit{Requests: 7, Period: sec}},
		{"leaky_bucket", algorithms.LeakyBucket, algorithms.Limit{Requests: 4, Period: sec}},
		{"leaky_bucket_shaping", algorithms.LeakyBucket, algorithms.Limit{Requests: 10, Period: sec, MaxDelay: 300_000}},
		{"calendar", algorithms.Calendar, algorithms.Limit{Requests: 6}},
		{"penalty", algorithms.Penalty, pen},
	}
}

// Step is one request of a timeline.
type Step struct {
	At   int64 // microseconds since the timeline's base
	Key  int   // index into the timeline's keys
	Cost int64 // negative: a refund
	// Report makes the op report-only (algorithms.Limit.Report).
	Report bool
	// NeedsUnit makes a check ask for one unit (algorithms.Limit.NeedsUnit).
	NeedsUnit bool
}

// Timeline returns a deterministic sequence exercising boundaries: bursts within one
// microsecond, steps across window edges, long idle gaps, a clock going backwards, check-
// only (cost 0) requests and costs above the limit.
func Timeline(seed uint64, n int) []Step {
	rng := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	steps := make([]Step, 0, n)
	var t int64 = 3*sec/4 + 17
	for i := 0; i < n; i++ {
		switch r := rng.IntN(100); {
		case r < 35: // same instant: bursts
		case r < 65:
			t += int64(rng.IntN(int(sec / 5)))
		case r < 80:
			t += sec - t%sec + int64(rng.IntN(3)) - 1 // right at a window edge
		case r < 88:
			t += int64(rng.IntN(int(3 * sec)))
		case r < 92:
			t += 70 * sec // long idle: windows and lockouts expire
		case r < 95:
			t -= int64(rng.IntN(int(sec / 3))) // clock goes backwards
		default:
			t += 1
		}
		cost := int64(1)
		switch r := rng.IntN(100); {
		case r < 8:
			cost = 0
		case r < 20:
			cost = 2
		case r < 24:
			cost = 9 // above most limits
		case r < 26:
			cost = 1<<32 - 1 // hostile hits_addend
		}
		steps = append(steps, Step{At: t, Key: rng.IntN(3), Cost: cost})
	}
	return steps
}

// Replica is one halt replica of a skewed timeline: its clock's offset from real time.
type Replica struct {
	Name string
	Skew int64 // microseconds; positive is ahead
}

// Replicas are the clocks of SkewedTimeline: NTP-grade skews either way, one clock behind
// by most of algorithms.MaxSkew, and one broken clock far beyond it (whose state times
// the others must not trust, and which must not trust theirs).
func Replicas() []Replica {
	return []Replica{
		{"on time", 0},
		{"behind 45ms", -45_000},
		{"ahead 30ms", 30_000},
		{"behind 700ms", -700_000},
		{"ahead 2.5s", 2_500_000},
	}
}

// SkewedTimeline returns a deterministic sequence of ops on three keys as several
// replicas send them: real time moves forward (bursts, window edges, idle gaps), each
// op comes from a random replica of Replicas and carries that replica's clock reading,
// taken up to 6 ms before the op reaches the store (so that ops reach it out of the
// order of their timestamps). Costs are mostly 1 and 2, with check-only ops and costs
// above the limit.
func SkewedTimeline(seed uint64, n int) []Step {
	rng := mrand.New(mrand.NewPCG(seed, seed^0x51ed270b27b57d3))
	reps := Replicas()
	steps := make([]Step, 0, n)
	var real int64 = 5 * sec
	for i := 0; i < n; i++ {
		switch r := rng.IntN(100); {
		case r < 40: // together: the skew decides the order
		case r < 75:
			real += int64(rng.IntN(int(sec / 8)))
		case r < 88:
			real += sec - real%sec + int64(rng.IntN(40_000)) - 20_000 // around a window edge
		case r < 97:
			real += int64(rng.IntN(int(2 * sec)))
		default:
			real += 70 * sec
		}
		rep := reps[0]
		if r := rng.IntN(100); r >= 30 {
			rep = reps[1+rng.IntN(len(reps)-1)]
			if rep.Skew > algorithms.MaxSkew && rng.IntN(3) != 0 {
				rep = reps[1] // the broken clock sends less
			}
		}
		cost := int64(1)
		switch r := rng.IntN(100); {
		case r < 8:
			cost = 0
		case r < 30:
			cost = 2
		case r < 33:
			cost = 9
		}
		at := real + rep.Skew - int64(rng.IntN(6000))
		steps = append(steps, Step{At: at, Key: rng.IntN(3), Cost: cost})
	}
	return steps
}

// ChargeTimeline returns a deterministic sequence of the calls of a budget whose costs are
// known late (issue 17): checks (cost 0) before each request, charges after it of any
// size (most larger than what is left, some larger than the limit, some hostile),
// report-only charges, and refunds (negative costs, some larger than anything charged,
// some of -algorithms.MaxCount), across window edges and idle gaps.
func ChargeTimeline(seed uint64, n int) []Step {
	rng := mrand.New(mrand.NewPCG(seed, seed^0x2545f4914f6cdd1d))
	steps := make([]Step, 0, n)
	var t int64 = sec/2 + 3
	for i := 0; i < n; i++ {
		switch r := rng.IntN(100); {
		case r < 30:
		case r < 70:
			t += int64(rng.IntN(int(sec / 4)))
		case r < 85:
			t += sec - t%sec + int64(rng.IntN(3)) - 1
		case r < 96:
			t += int64(rng.IntN(int(3 * sec)))
		default:
			t += 70 * sec
		}
		step := Step{At: t, Key: rng.IntN(3)}
		switch r := rng.IntN(100); {
		case r < 25: // the request-time check, most asking for a unit
			step.NeedsUnit = rng.IntN(5) != 0
		case r < 55:
			step.Cost = 1 + int64(rng.IntN(12)) // the after-response charge
		case r < 70:
			step.Cost = 1 + int64(rng.IntN(12))
			step.Report = true
		case r < 88:
			step.Cost = -1 - int64(rng.IntN(6)) // a refund
		case r < 92:
			step.Cost = -algorithms.MaxCount // is_negative_hits with hits_addend 2^64-1
		case r < 96:
			step.Cost = 1<<32 - 1
		default:
			step.Cost = 1 << 32
			step.Report = true
		}
		steps = append(steps, step)
	}
	return steps
}

// UniqueKey returns a key prefix nobody else uses, so suites can share a real server.
func UniqueKey(t testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("halt-conf-%s-%s", t.Name(), hex.EncodeToString(b[:]))
}

// Run runs the whole suite.
func Run(t *testing.T, open Factory, opt Options) {
	if (opt.SkipConcurrency || opt.SkipSlidingLog || opt.MaxContention != 0) && opt.Reason == "" {
		t.Fatal("conformance: a skip or a contention allowance needs a Reason")
	}
	t.Run("timelines", func(t *testing.T) { RunTimelines(t, open, opt) })
	t.Run("skewed", func(t *testing.T) { RunSkewed(t, open, opt) })
	t.Run("charges", func(t *testing.T) { RunCharges(t, open, opt) })
	t.Run("once", func(t *testing.T) { RunOnce(t, open) })
	t.Run("shaping_out_of_order", func(t *testing.T) {
		if opt.SkipConcurrency {
			t.Skip(opt.Reason)
		}
		RunShapingOutOfOrder(t, open, opt)
	})
	t.Run("batch", func(t *testing.T) { RunBatch(t, open) })
	t.Run("delete", func(t *testing.T) { RunDelete(t, open) })
	t.Run("answered", func(t *testing.T) { RunAnswered(t, open) })
	t.Run("concurrency", func(t *testing.T) {
		if opt.SkipConcurrency {
			t.Skip(opt.Reason)
		}
		RunConcurrency(t, open, opt)
	})
	t.Run("local_first", func(t *testing.T) { RunLocalFirst(t, open, opt) })
	t.Run("peek", func(t *testing.T) { RunPeek(t, open, opt) })
}

// base is a fixed instant far from any epoch-aligned surprise: 2030-01-01T00:00:00Z.
const base = int64(1893456000) * sec

func calendarLimit(l algorithms.Limit, now int64) algorithms.Limit {
	// A "calendar" of 2-second periods is enough to exercise the explicit bounds.
	start := algorithms.WindowStart(now, 2*sec)
	l.WindowStart, l.WindowEnd = start, start+2*sec
	return l
}

// RunTimelines plays the same timelines through the store and through the pure
// algorithms and demands identical results, field by field.
func RunTimelines(t *testing.T, open Factory, opt Options) {
	runTimelines(t, open, opt, func(seed uint64, c Case) []Step { return Timeline(seed*7919+uint64(c.Algorithm), 150) })
}

// RunSkewed is RunTimelines for SkewedTimeline: ops from replicas whose clocks disagree,
// reaching the store out of the order of their timestamps. Every store must decide each
// op at the time algorithms.At gives (the key's time when the op's clock is behind it by
// up to algorithms.MaxSkew), exactly as the pure algorithms do.
func RunSkewed(t *testing.T, open Factory, opt Options) {
	runTimelines(t, open, opt, func(seed uint64, c Case) []Step { return SkewedTimeline(seed*104729+uint64(c.Algorithm), 150) })
}

// RunCharges plays ChargeTimeline through the store and the pure algorithms, for every
// case with each way a rule can take a charge that does not fit (refuse, drain to zero,
// drain into a debt of up to 4), and demands identical results, debt included.
func RunCharges(t *testing.T, open Factory, opt Options) {
	for _, mode := range []struct {
		name    string
		drain   bool
		maxDebt int64
	}{{"refuse", false, 0}, {"drain", true, 0}, {"debt", true, 4}} {
		t.Run(mode.name, func(t *testing.T) {
			runTimelines(t, open, opt, func(seed uint64, c Case) []Step {
				return ChargeTimeline(seed*15485863+uint64(c.Algorithm), 150)
			}, func(l *algorithms.Limit) { l.Drain, l.MaxDebt = mode.drain, mode.maxDebt })
		})
	}
}

// RunOnce plays idempotency-key records (algorithms.Once) through the store and the pure
// algorithm and demands identical results, TTL included: claims by two fingerprints on
// three keys, decisions recorded (some of algorithms.MaxCount), reads, and records that
// end (the store may still hold the key: a record at or past its end is absent whatever
// the store keeps). Records live a minute or more, so no store expires a key on the wall
// clock while the suite runs.
func RunOnce(t *testing.T, open Factory) {
	st := open(t)
	defer st.Close()
	prefix := UniqueKey(t)
	for seed := uint64(1); seed <= 3; seed++ {
		rng := mrand.New(mrand.NewPCG(seed, seed*0x9e3779b97f4a7c15))
		model := map[string]*algorithms.State{}
		now := base + int64(seed)*1000*sec
		for i := 0; i < 200; i++ {
			switch r := rng.IntN(100); {
			case r < 60:
				now += rng.Int64N(sec)
			case r < 90:
				now += rng.Int64N(30 * sec)
			default:
				now += 200 * sec
			}
			key := fmt.Sprintf("%s:%d:%d", prefix, seed, rng.IntN(3))
			lim := algorithms.Limit{Requests: 1 + rng.Int64N(2), Period: rng.Int64N(90 * sec), WindowEnd: now + 60*sec + rng.Int64N(120*sec)}
			var cost int64
			switch r := rng.IntN(100); {
			case r < 45: // a claim
			case r < 80:
				cost = 1 + rng.Int64N(1<<20) // a decision recorded
			case r < 85:
				cost = algorithms.MaxCount
			default:
				cost = -1 // a read
			}
			ms := model[key]
			if ms == nil {
				ms = &algorithms.State{}
				model[key] = ms
			}
			want := algorithms.Decide(algorithms.Once, ms, now, &lim, cost)
			op := &backends.Op{Key: key, Algorithm: algorithms.Once, Limit: lim, Cost: cost}
			if err := applyOne(st, now, op); err != nil {
				t.Fatalf("seed %d step %d: %v", seed, i, err)
			}
			if !sameResult(op.Result, want) || op.Result.TTL != want.TTL {
				t.Fatalf("seed %d step %d key %s fingerprint %d cost %d:\n got  %+v\n want %+v", seed, i, key, lim.Requests, cost, op.Result, want)
			}
		}
	}
}

func runTimelines(t *testing.T, open Factory, opt Options, timeline func(seed uint64, c Case) []Step, adjust ...func(*algorithms.Limit)) {
	for _, c := range Cases() {
		c := c
		for _, f := range adjust {
			f(&c.Limit)
		}
		if opt.SkipSlidingLog && c.Algorithm == algorithms.SlidingWindow {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			st := open(t)
			defer st.Close()
			prefix := UniqueKey(t)
			keys := []string{prefix + ":a", prefix + ":b", prefix + ":{c}"}
			for seed := uint64(1); seed <= 3; seed++ {
				model := map[string]*algorithms.State{}
				for i, step := range timeline(seed, c) {
					now := base + int64(seed)*1000*sec + step.At
					key := fmt.Sprintf("%s:%d", keys[step.Key], seed)
					lim := c.Limit
					if c.Algorithm == algorithms.Calendar {
						lim = calendarLimit(lim, now)
					}
					lim.Report, lim.NeedsUnit = step.Report, step.NeedsUnit
					ms := model[key]
					if ms == nil {
						ms = &algorithms.State{}
						model[key] = ms
					}
					want := algorithms.Decide(c.Algorithm, ms, now, &lim, step.Cost)
					op := &backends.Op{Key: key, Algorithm: c.Algorithm, Limit: lim, Cost: step.Cost}
					if err := applyOne(st, now, op); err != nil {
						t.Fatalf("seed %d step %d (%+v): %v", seed, i, step, err)
					}
					if !sameResult(op.Result, want) {
						t.Fatalf("seed %d step %d at +%dus key %s cost %d report %v:\n got  %+v\n want %+v", seed, i, step.At, keys[step.Key], step.Cost, step.Report, op.Result, want)
					}
				}
			}
		})
	}
}

// RunShapingOutOfOrder is the case of issue 15 item 9b, repeated: five leaky-bucket
// shaping calls (burst 5, 10 per second, max_delay 800 ms) sent at once on one key,
// whose clock readings were taken up to 4 ms apart, so that they reach the store in any
// order. Each fits (the fifth waits 400 ms), so every one the store decides is admitted
// and charged; a store that decides an op older than the state it reads at the op's own
// time sees a larger backlog and refuses one. Ops failed under contention (up to
// opt.MaxContention) are not charged.
func RunShapingOutOfOrder(t *testing.T, open Factory, opt Options) {
	st := open(t)
	defer st.Close()
	prefix := UniqueKey(t)
	lim := algorithms.Limit{Requests: 10, Period: sec, Burst: 5, MaxDelay: 800_000}
	const rounds, calls = 30, 5
	var failedAll int
	for round := 0; round < rounds; round++ {
		key := fmt.Sprintf("%s:%d", prefix, round)
		now := base + 300*sec + int64(round)*10*sec
		offsets := mrand.Perm(calls)
		results := make([]*backends.Op, calls)
		errs := make([]error, calls)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < calls; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				op := &backends.Op{Key: key, Algorithm: algorithms.LeakyBucket, Limit: lim, Cost: 1}
				<-start
				errs[i] = applyOne(st, now+int64(offsets[i])*1000, op)
				results[i] = op
			}(i)
		}
		close(start)
		wg.Wait()
		failed := 0
		for i, op := range results {
			switch {
			case errors.Is(errs[i], backends.ErrContention):
				failed++
			case errs[i] != nil:
				t.Fatalf("round %d call %d: %v", round, i, errs[i])
			case !op.Result.Allowed:
				t.Fatalf("round %d: call %d (clock +%dms) refused although all five fit: %+v", round, i, offsets[i], op.Result)
			}
		}
		failedAll += failed
		// Every decided call was charged: as many units are left as calls failed.
		check := &backends.Op{Key: key, Algorithm: algorithms.LeakyBucket, Limit: lim}
		if err := applyOne(st, now+int64(calls)*1000, check); err != nil {
			t.Fatal(err)
		}
		if check.Result.Remaining != int64(failed) {
			t.Fatalf("round %d: %d left after %d admitted calls, want %d", round, check.Result.Remaining, calls-failed, failed)
		}
	}
	if max := int(opt.MaxContention * rounds * calls); failedAll > max {
		t.Fatalf("%d of %d calls failed under contention, more than the %d this store may give up on", failedAll, rounds*calls, max)
	}
}

func applyOne(st backends.Store, now int64, op *backends.Op) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.Apply(ctx, now, []*backends.Op{op}); err != nil {
		return err
	}
	return op.Err
}

func sameResult(a, b algorithms.Result) bool {
	return a.Allowed == b.Allowed && a.Limit == b.Limit && a.Remaining == b.Remaining &&
		a.ResetAfter == b.ResetAfter && a.RetryAfter == b.RetryAfter && a.Delay == b.Delay &&
		a.Debt == b.Debt
}

// RunBatch checks that one Apply with several ops (the same key twice included) decides
// them in order, each atomically, as the engine sends every descriptor of a request at once.
func RunBatch(t *testing.T, open Factory) {
	st := open(t)
	defer st.Close()
	p := UniqueKey(t)
	now := base + 5*sec
	mk := func(key string, a algorithms.Algorithm, l algorithms.Limit, cost int64) *backends.Op {
		return &backends.Op{Key: key, Algorithm: a, Limit: l, Cost: cost}
	}
	for round := 0; round < 4; round++ {
		ops := []*backends.Op{
			mk(p+":fw", algorithms.FixedWindow, algorithms.Limit{Requests: 3, Period: minute}, 1),
			mk(p+":tb", algorithms.TokenBucket, algorithms.Limit{Requests: 2, Period: minute}, 1),
			mk(p+":fw", algorithms.FixedWindow, algorithms.Limit{Requests: 3, Period: minute}, 1),
			mk(p+":sw", algorithms.SlidingWindow, algorithms.Limit{Requests: 3, Period: minute}, 1),
		}
		if err := st.Apply(context.Background(), now, ops); err != nil {
			t.Fatal(err)
		}
		fwFirst, fwSecond := ops[0].Result, ops[2].Result
		wantFirst := int64(3 - (2*round + 1))
		if wantFirst < 0 {
			wantFirst = 0
		}
		if fwFirst.Remaining != wantFirst || fwSecond.Remaining != max(0, wantFirst-1) {
			t.Fatalf("round %d: same key twice in one batch not applied in order: %+v then %+v", round, fwFirst, fwSecond)
		}
		if want := round < 2; ops[1].Result.Allowed != want {
			t.Fatalf("round %d: token bucket allowed=%v, want %v", round, ops[1].Result.Allowed, want)
		}
		if want := round < 3; ops[3].Result.Allowed != want {
			t.Fatalf("round %d: sliding window allowed=%v, want %v", round, ops[3].Result.Allowed, want)
		}
	}
}

// RunDelete checks that Delete resets state and that deleting a missing key is fine.
func RunDelete(t *testing.T, open Factory) {
	st := open(t)
	defer st.Close()
	key := UniqueKey(t)
	now := base + 9*sec
	lim := algorithms.Limit{Requests: 1, Period: minute}
	op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
	for i, want := range []bool{true, false} {
		if err := applyOne(st, now, op); err != nil {
			t.Fatal(err)
		}
		if op.Result.Allowed != want {
			t.Fatalf("hit %d: allowed=%v", i, op.Result.Allowed)
		}
	}
	if err := st.Delete(context.Background(), key, key+":missing"); err != nil {
		t.Fatal(err)
	}
	if err := applyOne(st, now, op); err != nil {
		t.Fatal(err)
	}
	if !op.Result.Allowed {
		t.Fatal("not allowed after Delete: state survived")
	}
}

// PrefixFactory opens a store of the kind under test with backends.Options.KeyPrefix set
// to prefix (and the suite's other settings).
type PrefixFactory func(t *testing.T, prefix string) backends.Store

// RunKeyPrefix checks backends.Options.KeyPrefix (the reference's CACHE_KEY_PREFIX): two
// stores on one server under different prefixes keep apart the state of one key, and a
// Delete through one leaves the other's. Stores that share no server between instances
// (the memory store) have nothing to check.
func RunKeyPrefix(t *testing.T, open PrefixFactory) {
	u := UniqueKey(t)
	a, b := open(t, u+"-a:"), open(t, u+"-b:")
	defer a.Close()
	defer b.Close()
	key := "shared"
	now := base + 9*sec
	lim := algorithms.Limit{Requests: 1, Period: minute}
	hit := func(st backends.Store, what string, want bool) {
		t.Helper()
		op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		if err := applyOne(st, now, op); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if op.Result.Allowed != want {
			t.Fatalf("%s: allowed=%v, want %v (the prefixes do not keep the key apart)", what, op.Result.Allowed, want)
		}
	}
	hit(a, "first hit under prefix a", true)
	hit(b, "first hit under prefix b", true)
	hit(a, "second hit under prefix a", false)
	if err := b.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	hit(a, "prefix a after a Delete under prefix b", false)
	hit(b, "prefix b after its Delete", true)
}

// RunConcurrency hammers one key per algorithm from many goroutines at one instant (so
// nothing refills) and demands exactly what the pure algorithm decides for the same ops
// played one after another: the limit is reached exactly, never passed (lost updates)
// and never missed (an op that failed, or was refused, without cause). Every op must be
// decided, except that up to opt.MaxContention of them may fail with
// backends.ErrContention; any other error fails the check. A last cost-1 op must then see
// the state the serial model has after the decided ops, field by field.
//
// Penalty is included: every op at one instant is one violation point, the lockout starts
// when the points reach the threshold (so one fewer than Requests is admitted), and a
// lost update shows as more admissions or as a different lockout in the last op.
func RunConcurrency(t *testing.T, open Factory, opt Options) {
	workers, per := opt.Workers, opt.OpsPerWorker
	if workers <= 0 {
		workers = 16
	}
	if per <= 0 {
		per = 40
	}
	if opt.MaxContention < 0 || opt.MaxContention > MaxContentionLimit {
		t.Fatalf("conformance: MaxContention %v is outside 0..%v", opt.MaxContention, MaxContentionLimit)
	}
	total := int64(workers * per)
	maxFailed := int64(opt.MaxContention * float64(total))
	for _, c := range Cases() {
		c := c
		if opt.SkipSlidingLog && c.Algorithm == algorithms.SlidingWindow {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			st := open(t)
			defer st.Close()
			key := UniqueKey(t)
			now := base + 77*sec + 500_000
			lim := concurrencyLimit(c, now)
			full := serialAdmitted(c.Algorithm, lim, now, total)
			if serialAdmitted(c.Algorithm, lim, now, total-maxFailed) != full {
				t.Fatalf("conformance: %d ops with up to %d failing cannot reach the limit; raise Workers or OpsPerWorker", total, maxFailed)
			}
			if full == 0 || full >= total {
				t.Fatalf("conformance: the workload admits %d of %d ops: it cannot tell a full store from a broken one", full, total)
			}
			var admitted, denied, contention atomic.Int64
			var mu sync.Mutex
			var otherErrs []error
			start := make(chan struct{})
			var wg sync.WaitGroup
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start // all at once: the point is to make them race
					for i := 0; i < per; i++ {
						op := &backends.Op{Key: key, Algorithm: c.Algorithm, Limit: lim, Cost: 1}
						err := applyOne(st, now, op)
						switch {
						case errors.Is(err, backends.ErrContention):
							contention.Add(1)
						case err != nil:
							mu.Lock()
							otherErrs = append(otherErrs, err)
							mu.Unlock()
						case op.Result.Allowed:
							admitted.Add(1)
						default:
							denied.Add(1)
						}
					}
				}()
			}
			close(start)
			wg.Wait()
			got, no, failed := admitted.Load(), denied.Load(), contention.Load()
			t.Logf("%d ops: admitted %d, refused %d, failed under contention %d (allowed %d), other errors %d",
				total, got, no, failed, maxFailed, len(otherErrs))
			if len(otherErrs) > 0 {
				t.Fatalf("%d ops failed with an error other than backends.ErrContention, first: %v", len(otherErrs), otherErrs[0])
			}
			if got+no+failed != total {
				t.Fatalf("admitted %d + refused %d + contention %d != %d ops", got, no, failed, total)
			}
			if got > full {
				t.Fatalf("admitted %d > %d (the limit): lost updates", got, full)
			}
			if failed > maxFailed {
				t.Fatalf("%d of %d ops failed under contention, more than the %d (%.0f%%) this store may give up on",
					failed, total, maxFailed, opt.MaxContention*100)
			}
			want := serialAdmitted(c.Algorithm, lim, now, total-failed)
			if got != want {
				t.Fatalf("admitted %d, want exactly %d: %d ops were refused although the limit was not reached", got, want, no)
			}
			// The state left behind is the serial model's after the decided ops.
			ms := &algorithms.State{}
			for i := int64(0); i < total-failed; i++ {
				algorithms.Decide(c.Algorithm, ms, now, &lim, 1)
			}
			wantLast := algorithms.Decide(c.Algorithm, ms, now, &lim, 1)
			last := &backends.Op{Key: key, Algorithm: c.Algorithm, Limit: lim, Cost: 1}
			if err := applyOne(st, now, last); err != nil {
				t.Fatalf("the op after the hammering: %v", err)
			}
			if !sameResult(last.Result, wantLast) {
				t.Fatalf("the op after the hammering sees a state the serial model does not:\n got  %+v\n want %+v", last.Result, wantLast)
			}
		})
	}
}

// concurrencyLimit is c's limit raised to 50 requests, over a minute (a minute-long
// calendar window), with no burst or shaping: the count admitted at one instant is then
// the limit, nothing refills, and the state's TTL (which stores count in wall-clock time,
// while the suite's clock stands still) outlasts a run slowed down by a loaded machine.
// With a one-second period a store that expires items (memcached) dropped the state in
// the middle of a three-second run and admitted the limit twice.
func concurrencyLimit(c Case, now int64) algorithms.Limit {
	lim := c.Limit
	lim.Requests = 50
	lim.Burst = 0
	lim.MaxDelay = 0
	lim.Period = minute
	if c.Algorithm == algorithms.Calendar {
		start := algorithms.WindowStart(now, minute)
		lim.Period = 0
		lim.WindowStart, lim.WindowEnd = start, start+minute
	}
	return lim
}

// serialAdmitted is how many of n cost-1 ops at now the pure algorithm admits, one after
// another on a fresh state: what a store must admit for n decided ops, in any order.
func serialAdmitted(a algorithms.Algorithm, lim algorithms.Limit, now, n int64) int64 {
	s := &algorithms.State{}
	var admitted int64
	for i := int64(0); i < n; i++ {
		if algorithms.Decide(a, s, now, &lim, 1).Allowed {
			admitted++
		}
	}
	return admitted
}

// Bench measures one token-bucket op per Apply against st from GOMAXPROCS goroutines,
// cycling over keys distinct keys under a limit never reached (every op is admitted, so
// every op reaches the store). Backends call it from their own Benchmark functions.
func Bench(b *testing.B, st backends.Store, keys int) {
	p := UniqueKey(b)
	names := make([]string, keys)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%d", p, i)
	}
	lim := algorithms.Limit{Requests: 1_000_000, Period: 1_000_000}
	var seq atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		op := &backends.Op{Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 1}
		ops := []*backends.Op{op}
		for pb.Next() {
			op.Key = names[int(seq.Add(1))%keys]
			if err := st.Apply(ctx, time.Now().UnixMicro(), ops); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Within is the longest a test lets a store call bounded by timeout take: a generous
// multiple of it (20 times, plus two seconds), so that a store that honours its timeout
// passes on a loaded machine under the race detector, while one that ignores it (waits
// on a silent server, retries without end) still fails. Tests bound time only this way,
// never by a fixed figure near the timeout.
func Within(timeout time.Duration) time.Duration { return 20*timeout + 2*time.Second }

// Unavailable checks a store whose server cannot answer (down, refusing, silent) and
// whose Options.Timeout is timeout: an Apply fails, with every op's error wrapping
// backends.ErrUnavailable, and Ping fails the same way, each within Within(timeout). A
// call that has not returned by then fails the test at once instead of hanging it.
func Unavailable(t *testing.T, st backends.Store, timeout time.Duration) {
	t.Helper()
	op := &backends.Op{Key: "k", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 5, Period: 1_000_000}, Cost: 1}
	var applyErr, pingErr error
	bounded(t, "Apply", timeout, func() { applyErr = st.Apply(context.Background(), 1, []*backends.Op{op}) })
	if !errors.Is(applyErr, backends.ErrUnavailable) || !errors.Is(op.Err, backends.ErrUnavailable) {
		t.Fatalf("Apply: %v (op: %v), want ErrUnavailable", applyErr, op.Err)
	}
	bounded(t, "Ping", timeout, func() { pingErr = st.Ping(context.Background()) })
	if !errors.Is(pingErr, backends.ErrUnavailable) {
		t.Fatalf("Ping: %v, want ErrUnavailable", pingErr)
	}
}

// bounded runs call and fails the test if it has not returned within Within(timeout).
func bounded(t *testing.T, what string, timeout time.Duration, call func()) {
	t.Helper()
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		call()
	}()
	select {
	case <-done:
		t.Logf("%s failed in %s (timeout %s)", what, time.Since(start).Round(time.Millisecond), timeout)
	case <-time.After(Within(timeout)):
		t.Fatalf("%s has not returned after %s with a %s timeout: the store does not honour it", what, Within(timeout), timeout)
	}
}
