// Package adaptive makes a rule's effective limit follow a health signal: the limit in
// force is the configured one times a factor between min and max, lowered
// multiplicatively while the signal is bad and raised additively while it is good,
// held in between (the hysteresis band) and when the signal says nothing.
//
// Replicas must agree on the factor without talking to each other, so the factor is
// not a running state: it is a pure fold (Fold) of the signal's values at instants
// aligned on the interval (multiples of it since the Unix epoch), over a window long
// enough to go from min back to max, starting at max. Every replica that asks the same
// Prometheus for the same aligned instants computes the same factor, and a replica that
// restarts computes it again instead of starting over.
package adaptive

import (
	"fmt"
	"math"
	"time"
)

// Spec is a rule's adaptive block (config `adaptive:`), validated.
type Spec struct {
	// Query is the PromQL expression of the signal: one series, one number per instant.
	Query string
	// Interval is how often the signal is judged; the instants are its multiples.
	Interval time.Duration
	// BadAbove and GoodBelow are the hysteresis band: a value above BadAbove lowers the
	// factor, one below GoodBelow raises it, one in between holds it. BadAbove >= GoodBelow.
	BadAbove, GoodBelow float64
	// Min and Max bound the factor (fractions of the configured limit); Min is the floor.
	Min, Max float64
	// Decrease multiplies the factor on a bad instant (0 < Decrease < 1).
	Decrease float64
	// Increase is added to the factor on a good instant (> 0).
	Increase float64
}

// KeyError is a problem of one key of the adaptive block.
type KeyError struct{ Key, Msg string }

func (e *KeyError) Error() string { return e.Key + ": " + e.Msg }

// Validate reports the first problem of s, naming its key (a *KeyError).
func (s *Spec) Validate() error {
	bad := func(key, format string, args ...any) error {
		return &KeyError{Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case s.Query == "":
		return bad("query", "required (a PromQL expression whose value is the signal)")
	case s.Interval < time.Second:
		return bad("interval", "must be at least 1s, got %s", s.Interval)
	case s.Interval > time.Hour:
		return bad("interval", "must be at most 1h, got %s", s.Interval)
	case time.Duration(24*time.Hour)%s.Interval != 0:
		return bad("interval", "must divide a day (instants are aligned on the day), got %s", s.Interval)
	case !finite(s.BadAbove):
		return bad("bad_above", "must be a finite number")
	case !finite(s.GoodBelow):
		return bad("good_below", "must be a finite number")
	case s.GoodBelow > s.BadAbove:
		return bad("good_below", "%g is above bad_above %g: the band between them is where the factor holds", s.GoodBelow, s.BadAbove)
	case !(s.Min > 0 && s.Min <= 1):
		return bad("min", "must be above 0 and at most 1, got %g", s.Min)
	case !(s.Max > 0 && s.Max <= 1):
		return bad("max", "must be above 0 and at most 1, got %g", s.Max)
	case s.Min > s.Max:
		return bad("min", "%g is above max %g", s.Min, s.Max)
	case !(s.Decrease > 0 && s.Decrease < 1):
		return bad("decrease", "must be above 0 and below 1 (the factor is multiplied by it), got %g", s.Decrease)
	case !(s.Increase > 0 && s.Increase <= 1):
		return bad("increase", "must be above 0 and at most 1 (added to the factor), got %g", s.Increase)
	case s.Steps() > MaxSteps:
		return bad("increase", "%g climbs from min to max in %d steps; at most %d", s.Increase, s.Steps()-1, MaxSteps-1)
	}
	return nil
}

// MaxSteps bounds the instants of one fold (one range query's points).
const MaxSteps = 1000

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

// Steps is the number of instants a fold covers: enough additive steps to climb from
// Min to Max, plus one, so that a signal good for the whole window always ends at Max
// and any bad instant inside it is remembered.
func (s *Spec) Steps() int {
	return int(math.Ceil((s.Max-s.Min)/s.Increase)) + 1
}

// Point is the signal at one instant; OK false when the signal had no value there
// (the factor holds).
type Point struct {
	At    time.Time
	Value float64
	OK    bool
}

// Change is one change of the factor and why.
type Change struct {
	At       time.Time
	From, To float64
	// Reason is "bad" (value above bad_above) or "good" (below good_below).
	Reason string
	Value  float64
}

// Fold is the factor after points (in time order), starting at Max: each bad value
// multiplies it by Decrease (never below Min), each good one adds Increase (never above
// Max), anything else holds it. It returns every change, in order.
func (s *Spec) Fold(points []Point) (float64, []Change) {
	f := s.Max
	var changes []Change
	for _, p := range points {
		if !p.OK || math.IsNaN(p.Value) {
			continue
		}
		from, reason := f, ""
		switch {
		case p.Value > s.BadAbove:
			f, reason = max(s.Min, f*s.Decrease), "bad"
		case p.Value < s.GoodBelow:
			f, reason = min(s.Max, f+s.Increase), "good"
		}
		// Additions of a decimal step drift (0.1 x 3 != 0.3): a factor is kept to 1e-9.
		f = math.Round(f*1e9) / 1e9
		if f != from {
			changes = append(changes, Change{At: p.At, From: from, To: f, Reason: reason, Value: p.Value})
		}
	}
	return f, changes
}

// Window is the instants the fold at now reads: the last aligned instant at or before
// now - lag (lag leaves the signal time to be scraped), and Steps()-1 intervals before
// it.
func (s *Spec) Window(now time.Time, lag time.Duration) (start, end time.Time) {
	end = now.Add(-lag).Truncate(s.Interval) // Truncate is relative to the zero time: aligned on the epoch for intervals dividing a day
	start = end.Add(-time.Duration(s.Steps()-1) * s.Interval)
	return start, end
}

// Scale is n times factor, rounded down, never below 1 (a limit of 0 would refuse
// everything: the floor is min, not zero) nor above n.
func Scale(n int64, factor float64) int64 {
	if n <= 0 {
		return n
	}
	v := int64(math.Floor(float64(n) * factor))
	return min(max(v, 1), n)
}
