package adaptive

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func spec() Spec {
	return Spec{Query: "q", Interval: 15 * time.Second, BadAbove: 0.05, GoodBelow: 0.01, Min: 0.2, Max: 1, Decrease: 0.5, Increase: 0.1}
}

// TestFold: the factor falls multiplicatively on bad values down to min, holds in the
// band and on missing values, and climbs additively back to max.
func TestFold(t *testing.T) {
	s := spec()
	t0 := time.Unix(1_800_000_000, 0)
	var pts []Point
	add := func(v float64, ok bool) {
		pts = append(pts, Point{At: t0.Add(time.Duration(len(pts)) * s.Interval), Value: v, OK: ok})
	}
	want := []float64{}
	step := func(v float64, ok bool, f float64) { add(v, ok); want = append(want, f) }
	step(0.001, true, 1)   // good at max: stays
	step(0.2, true, 0.5)   // bad
	step(0.03, true, 0.5)  // in the band: holds
	step(0, false, 0.5)    // no value: holds
	step(0.2, true, 0.25)  // bad
	step(0.2, true, 0.2)   // bad: floor
	step(0.2, true, 0.2)   // bad at the floor
	step(0.005, true, 0.3) // good
	step(0.005, true, 0.4) // good
	step(0.05, true, 0.4)  // at bad_above: not above, in the band
	step(0.01, true, 0.4)  // at good_below: not below
	for i := 0; i < 6; i++ {
		step(0, true, min(1, 0.5+0.1*float64(i)))
	}
	for i := range pts {
		got, _ := s.Fold(pts[:i+1])
		if d := got - want[i]; d > 1e-9 || d < -1e-9 {
			t.Fatalf("after %d points: factor %v, want %v", i+1, got, want[i])
		}
	}
	_, changes := s.Fold(pts)
	if len(changes) != 11 || changes[0].Reason != "bad" || changes[0].From != 1 || changes[0].To != 0.5 || changes[0].Value != 0.2 || !changes[0].At.Equal(pts[1].At) {
		t.Fatalf("changes: %+v", changes)
	}
}

// TestWindow: the fold at an instant depends only on the window, so a
// replica that starts late (no memory) computes what one running all along has.
func TestWindow(t *testing.T) {
	s := spec()
	if s.Steps() != 9 { // (1 - 0.2) / 0.1 = 8 steps up, plus one
		t.Fatalf("steps %d", s.Steps())
	}
	now := time.Date(2026, 12, 2, 12, 0, 7, 0, time.UTC)
	start, end := s.Window(now, 30*time.Second)
	if !end.Equal(time.Date(2026, 12, 2, 11, 59, 30, 0, time.UTC)) || !start.Equal(end.Add(-8*15*time.Second)) {
		t.Fatalf("window %v .. %v", start, end)
	}
	// A window of good values ends at max whatever came before it.
	var pts []Point
	for i := 0; i < s.Steps(); i++ {
		pts = append(pts, Point{At: start.Add(time.Duration(i) * s.Interval), OK: true})
	}
	if f, _ := s.Fold(pts); f != 1 {
		t.Fatalf("a good window ends at %v", f)
	}
}

func TestScale(t *testing.T) {
	for _, c := range []struct {
		n    int64
		f    float64
		want int64
	}{{100, 0.5, 50}, {100, 0.255, 25}, {3, 0.2, 1}, {1, 0.2, 1}, {100, 1, 100}, {0, 0.5, 0}, {1 << 40, 0.5, 1 << 39}} {
		if got := Scale(c.n, c.f); got != c.want {
			t.Errorf("Scale(%d, %v) = %d, want %d", c.n, c.f, got, c.want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		mod  func(*Spec)
		key  string
		msg  string
	}{
		{"min above max", func(s *Spec) { s.Min, s.Max = 0.8, 0.5 }, "min", "0.8 is above max 0.5"},
		{"no query", func(s *Spec) { s.Query = "" }, "query", "required"},
		{"band upside down", func(s *Spec) { s.GoodBelow = 0.1 }, "good_below", "above bad_above"},
		{"decrease of 1", func(s *Spec) { s.Decrease = 1 }, "decrease", "below 1"},
		{"zero increase", func(s *Spec) { s.Increase = 0 }, "increase", "above 0"},
		{"tiny increase", func(s *Spec) { s.Increase = 1e-6 }, "increase", "steps"},
		{"odd interval", func(s *Spec) { s.Interval = 7 * time.Second }, "interval", "divide a day"},
		{"zero min", func(s *Spec) { s.Min = 0 }, "min", "above 0"},
	} {
		s := spec()
		c.mod(&s)
		var ke *KeyError
		if err := s.Validate(); !errors.As(err, &ke) || ke.Key != c.key || !strings.Contains(ke.Msg, c.msg) {
			t.Errorf("%s: %v, want %s: ...%s...", c.name, err, c.key, c.msg)
		}
	}
	s := spec()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
}
