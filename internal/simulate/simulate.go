// Package simulate replays one traffic pattern against every halt-envoy algorithm on an
// injected clock and reports what each admitted and denied.
//
// Nothing sleeps: the simulation computes each arrival's time, calls algorithms.Decide
// directly with that time, and counts the outcome in fixed-width time buckets. The same
// arrivals go to every algorithm, so the rows of the chart written by WriteSVG differ
// only by the decision rule.
package simulate

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// Pattern names a traffic shape.
type Pattern string

// The traffic patterns.
const (
	// Steady arrives at a constant rate (Params.Rate, default 1.5 times the limit).
	Steady Pattern = "steady"
	// Burst is idle, then BurstSize requests in the same microsecond, every BurstEvery.
	Burst Pattern = "burst"
	// Ramp rises linearly from 0 to Params.Rate (default 3 times the limit) over Duration.
	Ramp Pattern = "ramp"
	// Trace replays the arrivals of Params.Trace (see ParseTrace).
	Trace Pattern = "trace"
)

// Patterns returns the synthetic patterns, the ones that need no input: what a run with
// no pattern named compares.
func Patterns() []Pattern { return []Pattern{Steady, Burst, Ramp} }

// ParsePattern returns the pattern named s.
func ParsePattern(s string) (Pattern, error) {
	switch p := Pattern(s); p {
	case Steady, Burst, Ramp, Trace:
		return p, nil
	}
	return "", fmt.Errorf("unknown pattern %q (want steady, burst, ramp or trace)", s)
}

// Bounds that keep a simulation to seconds of CPU and a chart to a readable size.
const (
	// MaxArrivals bounds the requests one simulation generates or reads.
	MaxArrivals = 5_000_000
	// MaxBuckets bounds the bars of one chart row.
	MaxBuckets = 2000
)

// Params describes the limit and the traffic. Zero values take the documented defaults.
type Params struct {
	// Limit is the requests admitted per Period (default 10).
	Limit int64
	// Period is the limit's period (default 1s).
	Period time.Duration
	// Burst is the token and leaky buckets' capacity (default: Limit).
	Burst int64
	// MaxDelay is the leaky-bucket shaper's max_delay (default: half of Period).
	MaxDelay time.Duration
	// Duration is the simulated time (default 10s; for a trace, its span).
	Duration time.Duration
	// Rate is the steady rate, or the ramp's final rate, in requests per second
	// (default 1.5 times the limit's rate for steady, 3 times for ramp).
	Rate float64
	// BurstSize is the requests of one burst (default 3 times Limit).
	BurstSize int64
	// BurstEvery is the time from one burst to the next (default 1.5 times Period).
	BurstEvery time.Duration
	// Bucket is the chart's bar width (default: a round value giving about 50 bars).
	Bucket time.Duration
	// Seed, when not 0, makes steady and ramp arrivals a Poisson process with the same
	// mean rate drawn from a PCG generator seeded with it; 0 spaces them evenly.
	Seed uint64
	// Trace holds the arrivals of the trace pattern.
	Trace *TraceData
}

// Totals summarises one algorithm's decisions over the whole run. Arrivals, Admitted and
// Denied count requests; the window figures count cost (requests when every cost is 1).
type Totals struct {
	// Arrivals is the number of requests offered.
	Arrivals int64
	// Admitted is the number of requests allowed.
	Admitted int64
	// Denied is the number of requests refused; Admitted+Denied == Arrivals.
	Denied int64
	// AdmittedCost is the cost admitted (equal to Admitted when every cost is 1).
	AdmittedCost int64
	// WorstWindow is the most cost admitted in any window (t-Period, t].
	WorstWindow int64
	// MaxPerSecond is the most cost admitted in any window (t-1s, t].
	MaxPerSecond int64
	// MeanDelay and MaxDelay are the shaper's hold times over admitted requests.
	MeanDelay, MaxDelay time.Duration
}

// Series is one algorithm's outcome.
type Series struct {
	// Name is the algorithm's configuration name, "leaky_bucket+max_delay" for the shaper.
	Name string
	// Algorithm is the decision rule.
	Algorithm algorithms.Algorithm
	// Shaping reports a leaky bucket with max_delay: its admitted requests are counted
	// in the bucket where they are released (arrival plus delay), not where they arrived.
	Shaping bool
	// Admitted and Denied hold the cost per time bucket.
	Admitted, Denied []int64
	// Totals summarises the run.
	Totals Totals
}

// Result is the outcome of Run.
type Result struct {
	// Pattern is the traffic pattern simulated.
	Pattern Pattern
	// Params are the parameters with every default filled in.
	Params Params
	// Buckets is the number of time buckets, Params.Bucket wide, of every series.
	Buckets int
	// Arrivals holds the offered cost per bucket.
	Arrivals []int64
	// Series holds one entry per algorithm, in a fixed order.
	Series []Series
	// Notes says what was left out and why (an algorithm the limit does not fit).
	Notes []string
}

// base is the simulated clock's origin for patterns without absolute times:
// 2026-01-01T00:00:00Z, aligned to every period up to a day, as a real fixed window is.
const base = int64(1767225600) * 1e6

// arrival is one request at an absolute time in microseconds.
type arrival struct {
	at, cost int64
}

// withDefaults fills the zero fields of p and validates the result.
func withDefaults(pattern Pattern, p Params) (Params, error) {
	if p.Limit == 0 {
		p.Limit = 10
	}
	if p.Period == 0 {
		p.Period = time.Second
	}
	if p.Limit < 1 || p.Limit > algorithms.MaxRequests {
		return p, fmt.Errorf("limit must be between 1 and %d, got %d", algorithms.MaxRequests, p.Limit)
	}
	if p.Period < time.Microsecond || p.Period > time.Duration(algorithms.MaxPeriod)*time.Microsecond {
		return p, fmt.Errorf("period must be between 1us and 100 years, got %s", p.Period)
	}
	if p.Burst == 0 {
		p.Burst = p.Limit
	}
	if p.Burst < 0 {
		return p, fmt.Errorf("burst must not be negative, got %d", p.Burst)
	}
	if p.MaxDelay == 0 {
		p.MaxDelay = p.Period / 2
	}
	if p.MaxDelay < 0 {
		return p, fmt.Errorf("max-delay must not be negative, got %s", p.MaxDelay)
	}
	if p.Duration == 0 && pattern != Trace {
		p.Duration = 10 * time.Second
	}
	limitRate := float64(p.Limit) / p.Period.Seconds()
	switch pattern {
	case Steady, Ramp:
		if p.Rate == 0 {
			p.Rate = 1.5 * limitRate
			if pattern == Ramp {
				p.Rate = 3 * limitRate
			}
		}
		if !(p.Rate > 0) || math.IsInf(p.Rate, 0) {
			return p, fmt.Errorf("rate must be a positive number of requests per second, got %v", p.Rate)
		}
		if d := p.Duration; p.Rate*d.Seconds() > 2*MaxArrivals {
			return p, fmt.Errorf("%v req/s for %s makes more than %d arrivals: lower the rate or the duration", p.Rate, d, MaxArrivals)
		}
	case Burst:
		if p.BurstSize == 0 {
			p.BurstSize = 3 * p.Limit
		}
		if p.BurstEvery == 0 {
			p.BurstEvery = p.Period * 3 / 2
		}
		if p.BurstSize < 1 || p.BurstEvery <= 0 {
			return p, fmt.Errorf("burst-size and burst-every must be positive, got %d and %s", p.BurstSize, p.BurstEvery)
		}
	case Trace:
		if p.Trace == nil || len(p.Trace.Arrivals) == 0 {
			return p, errors.New("the trace pattern needs a trace with at least one arrival")
		}
		if p.Duration == 0 {
			last := p.Trace.Arrivals[len(p.Trace.Arrivals)-1].At
			p.Duration = last.Truncate(time.Second) + time.Second
		}
	default:
		return p, fmt.Errorf("unknown pattern %q", pattern)
	}
	if p.Duration < time.Millisecond {
		return p, fmt.Errorf("duration must be at least 1ms, got %s", p.Duration)
	}
	if p.Bucket == 0 {
		p.Bucket = niceDuration(p.Duration / 50)
	}
	if p.Bucket < time.Microsecond || p.Bucket > p.Duration {
		return p, fmt.Errorf("bucket must be between 1us and the duration, got %s", p.Bucket)
	}
	if n := (p.Duration + p.MaxDelay + p.Bucket - 1) / p.Bucket; n > MaxBuckets {
		return p, fmt.Errorf("%s in %s buckets (with max-delay %s) makes %d bars, more than %d: use a wider bucket", p.Duration, p.Bucket, p.MaxDelay, n, MaxBuckets)
	}
	return p, nil
}

// niceDuration rounds d up to 1, 2 or 5 times a power of ten microseconds.
func niceDuration(d time.Duration) time.Duration {
	us := int64(d / time.Microsecond)
	for step := int64(1); ; step *= 10 {
		for _, m := range []int64{1, 2, 5} {
			if m*step >= us || step > int64(1)<<50 {
				return time.Duration(m*step) * time.Microsecond
			}
		}
	}
}

// arrivals generates the pattern's requests, sorted by time, all before the end.
func arrivals(pattern Pattern, p Params) ([]arrival, int64, error) {
	start := base
	end := int64(p.Duration / time.Microsecond)
	var out []arrival
	add := func(offset, cost int64) error {
		if len(out) >= MaxArrivals {
			return fmt.Errorf("the %s pattern makes more than %d arrivals: lower the rate or the duration", pattern, MaxArrivals)
		}
		out = append(out, arrival{at: start + offset, cost: cost})
		return nil
	}
	var rng *rand.Rand
	if p.Seed != 0 {
		rng = rand.New(rand.NewPCG(p.Seed, 0x68616c74)) // "halt"
	}
	// units yields the cumulative count of a unit-rate process: 0, 1, 2... evenly, or
	// Poisson points with a seed. Steady and ramp map it onto time.
	e := 0.0
	next := func() float64 {
		if rng == nil {
			v := e
			e++
			return v
		}
		e += rng.ExpFloat64()
		return e
	}
	switch pattern {
	case Steady:
		for {
			t := int64(math.Round(next() * 1e6 / p.Rate))
			if t >= end {
				break
			}
			if err := add(t, 1); err != nil {
				return nil, 0, err
			}
		}
	case Ramp:
		// Rate r(t) = R t/D, so the count by t is R t^2/(2D): the k-th request is at
		// sqrt(2Dk/R).
		d := p.Duration.Seconds()
		if rng == nil {
			next() // start at k=1: the first request is due once one whole request accrued
		}
		for {
			t := int64(math.Round(math.Sqrt(2*d*next()/p.Rate) * 1e6))
			if t >= end {
				break
			}
			if err := add(t, 1); err != nil {
				return nil, 0, err
			}
		}
	case Burst:
		every := int64(p.BurstEvery / time.Microsecond)
		for t := int64(0); t < end; t += every {
			if int64(len(out))+p.BurstSize > MaxArrivals {
				return nil, 0, fmt.Errorf("the burst pattern makes more than %d arrivals: lower burst-size or the duration", MaxArrivals)
			}
			for range p.BurstSize {
				out = append(out, arrival{at: start + t, cost: 1})
			}
		}
	case Trace:
		if !p.Trace.Start.IsZero() {
			start = p.Trace.Start.UnixMicro()
		}
		if len(p.Trace.Arrivals) > MaxArrivals {
			return nil, 0, fmt.Errorf("the trace has %d arrivals, more than %d", len(p.Trace.Arrivals), MaxArrivals)
		}
		for _, a := range p.Trace.Arrivals {
			t := int64(a.At / time.Microsecond)
			if t >= end {
				break
			}
			out = append(out, arrival{at: start + t, cost: a.Cost})
		}
	}
	return out, start, nil
}

// Run simulates pattern with p against fixed_window, token_bucket, sliding_window,
// sliding_window_counter, leaky_bucket and leaky_bucket with max_delay.
func Run(pattern Pattern, p Params) (*Result, error) {
	p, err := withDefaults(pattern, p)
	if err != nil {
		return nil, err
	}
	reqs, start, err := arrivals(pattern, p)
	if err != nil {
		return nil, err
	}
	bucket := int64(p.Bucket / time.Microsecond)
	end := int64(p.Duration / time.Microsecond)
	maxDelay := int64(p.MaxDelay / time.Microsecond)
	n := int((end + maxDelay + bucket - 1) / bucket)
	res := &Result{Pattern: pattern, Params: p, Buckets: n, Arrivals: make([]int64, n)}
	for _, a := range reqs {
		res.Arrivals[(a.at-start)/bucket] += a.cost
	}
	limit := algorithms.Limit{
		Requests: p.Limit,
		Period:   int64(p.Period / time.Microsecond),
		Burst:    p.Burst,
	}
	type spec struct {
		name  string
		alg   algorithms.Algorithm
		shape bool
	}
	specs := []spec{
		{"fixed_window", algorithms.FixedWindow, false},
		{"token_bucket", algorithms.TokenBucket, false},
		{"sliding_window", algorithms.SlidingWindow, false},
		{"sliding_window_counter", algorithms.SlidingWindowCounter, false},
		{"leaky_bucket", algorithms.LeakyBucket, false},
		{"leaky_bucket+max_delay", algorithms.LeakyBucket, true},
	}
	for _, sp := range specs {
		l := limit
		if sp.shape {
			l.MaxDelay = maxDelay
		}
		if err := l.Validate(sp.alg); err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("%s left out: %v", sp.name, err))
			continue
		}
		res.Series = append(res.Series, simulate(sp.name, sp.alg, sp.shape, &l, reqs, start, bucket, n))
	}
	if len(res.Series) == 0 {
		return nil, fmt.Errorf("no algorithm accepts this limit: %v", res.Notes)
	}
	// Keep the buckets past the end only when a shaper released requests into them.
	used := int((end + bucket - 1) / bucket)
	for _, s := range res.Series {
		for i := n - 1; i >= used; i-- {
			if s.Admitted[i] != 0 {
				used = i + 1
				break
			}
		}
	}
	res.Buckets, res.Arrivals = used, res.Arrivals[:used]
	for i := range res.Series {
		res.Series[i].Admitted = res.Series[i].Admitted[:used]
		res.Series[i].Denied = res.Series[i].Denied[:used]
	}
	return res, nil
}

// simulate runs one algorithm over the arrivals.
func simulate(name string, alg algorithms.Algorithm, shape bool, l *algorithms.Limit, reqs []arrival, start, bucket int64, n int) Series {
	var st algorithms.State
	return decideAll(name, alg, shape, l, reqs, start, bucket, n, func(_ int, a arrival) algorithms.Result {
		return algorithms.Decide(alg, &st, a.at, l, a.cost)
	})
}

// decideAll decides every arrival (the i-th with decide) and counts the outcomes.
func decideAll(name string, alg algorithms.Algorithm, shape bool, l *algorithms.Limit, reqs []arrival, start, bucket int64, n int, decide func(i int, a arrival) algorithms.Result) Series {
	s := Series{Name: name, Algorithm: alg, Shaping: shape, Admitted: make([]int64, n), Denied: make([]int64, n)}
	var admitted []arrival // at: when the request leaves (arrival plus any shaping delay)
	var delaySum int64
	for i, a := range reqs {
		r := decide(i, a)
		s.Totals.Arrivals++
		if !r.Allowed {
			s.Totals.Denied++
			s.Denied[(a.at-start)/bucket] += a.cost
			continue
		}
		s.Totals.Admitted++
		s.Totals.AdmittedCost += a.cost
		out := a.at + r.Delay
		s.Admitted[(out-start)/bucket] += a.cost
		admitted = append(admitted, arrival{at: out, cost: a.cost})
		delaySum += r.Delay
		if d := time.Duration(r.Delay) * time.Microsecond; d > s.Totals.MaxDelay {
			s.Totals.MaxDelay = d
		}
	}
	if s.Totals.Admitted > 0 {
		s.Totals.MeanDelay = time.Duration(delaySum/s.Totals.Admitted) * time.Microsecond
	}
	slices.SortStableFunc(admitted, func(a, b arrival) int { return cmp.Compare(a.at, b.at) })
	s.Totals.WorstWindow = worstWindow(admitted, l.Period)
	s.Totals.MaxPerSecond = worstWindow(admitted, 1e6)
	return s
}

// worstWindow returns the most cost in any window (t-width, t] of the sorted events.
func worstWindow(events []arrival, width int64) int64 {
	var best, sum int64
	i := 0
	for _, e := range events {
		sum += e.cost
		for events[i].at <= e.at-width {
			sum -= events[i].cost
			i++
		}
		best = max(best, sum)
	}
	return best
}
