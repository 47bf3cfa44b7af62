package simulate

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

func series(t *testing.T, res *Result, name string) Series {
	t.Helper()
	for _, s := range res.Series {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no series %q", name)
	return Series{}
}

func TestSteadyExact(t *testing.T) {
	// 20/s against 10 per 1s for 10s: one arrival every 50ms, 200 in all.
	res, err := Run(Steady, Params{Limit: 10, Period: time.Second, Rate: 20, Duration: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Totals{
		// The first 10 of every aligned window.
		"fixed_window": {Arrivals: 200, Admitted: 100, Denied: 100, AdmittedCost: 100, WorstWindow: 10, MaxPerSecond: 10},
		// A full bucket of 10 plus the refill while it drains: 19 by 900ms, then one per 100ms.
		"token_bucket":           {Arrivals: 200, Admitted: 109, Denied: 91, AdmittedCost: 109, WorstWindow: 19, MaxPerSecond: 19},
		"sliding_window":         {Arrivals: 200, Admitted: 100, Denied: 100, AdmittedCost: 100, WorstWindow: 10, MaxPerSecond: 10},
		"sliding_window_counter": {Arrivals: 200, Admitted: 100, Denied: 100, AdmittedCost: 100, WorstWindow: 10, MaxPerSecond: 10},
		"leaky_bucket":           {Arrivals: 200, Admitted: 109, Denied: 91, AdmittedCost: 109, WorstWindow: 19, MaxPerSecond: 19},
		// Backlog up to 500ms: 11 in the first 500ms (delays 0..500ms), then one per 100ms,
		// released one per 100ms.
		"leaky_bucket+max_delay": {Arrivals: 200, Admitted: 105, Denied: 95, AdmittedCost: 105, WorstWindow: 10, MaxPerSecond: 10, MeanDelay: 473809 * time.Microsecond, MaxDelay: 500 * time.Millisecond},
	}
	if len(res.Series) != len(want) {
		t.Fatalf("%d series, want %d", len(res.Series), len(want))
	}
	for name, w := range want {
		if got := series(t, res, name).Totals; got != w {
			t.Errorf("%s: got %+v\nwant %+v", name, got, w)
		}
	}
	if res.Params.Bucket != 200*time.Millisecond || res.Buckets != 53 {
		// 50 buckets of traffic plus the shaper's releases up to 500ms later.
		t.Errorf("bucket %s x %d", res.Params.Bucket, res.Buckets)
	}
	fw := series(t, res, "fixed_window")
	if fw.Admitted[0] != 4 || fw.Admitted[2] != 2 || fw.Denied[3] != 4 || fw.Admitted[5] != 4 {
		t.Errorf("fixed window buckets: admitted %v denied %v", fw.Admitted[:6], fw.Denied[:6])
	}
}

func TestBurstExact(t *testing.T) {
	// One burst of 30 at t=0 against a token bucket of 10 per second, burst 10.
	res, err := Run(Burst, Params{Limit: 10, Burst: 10, BurstSize: 30, BurstEvery: 5 * time.Second, Duration: 2 * time.Second, Bucket: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range res.Series {
		want := int64(10)
		if s.Shaping {
			want = 6 // delays 0, 100, ..., 500ms fit max_delay 500ms
			if s.Totals.MaxDelay != 500*time.Millisecond || s.Totals.MeanDelay != 250*time.Millisecond {
				t.Errorf("shaper delays %s / %s", s.Totals.MeanDelay, s.Totals.MaxDelay)
			}
			if s.Admitted[0] != 2 || s.Admitted[1] != 2 || s.Admitted[2] != 2 {
				t.Errorf("shaper releases %v, want 2 per 200ms", s.Admitted[:4])
			}
		}
		if s.Totals.Admitted != want || s.Totals.Denied != 30-want {
			t.Errorf("%s: admitted %d denied %d, want %d", s.Name, s.Totals.Admitted, s.Totals.Denied, want)
		}
	}
	// A bigger bucket takes more of the burst.
	res, err = Run(Burst, Params{Limit: 10, Burst: 25, BurstSize: 30, BurstEvery: 5 * time.Second, Duration: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if got := series(t, res, "token_bucket").Totals.Admitted; got != 25 {
		t.Errorf("token bucket burst 25 admitted %d", got)
	}
	if got := series(t, res, "fixed_window").Totals.Admitted; got != 10 {
		t.Errorf("fixed window admitted %d", got)
	}
}

func TestBurstEveryCounterEstimate(t *testing.T) {
	// Bursts every 1.5s: a burst in the middle of a window sees half the previous
	// window's 10 in the counter's estimate and gets only 5.
	res, err := Run(Burst, Params{})
	if err != nil {
		t.Fatal(err)
	}
	if got := series(t, res, "sliding_window_counter").Totals.Admitted; got != 10+5+10+5+10+5+10 {
		t.Errorf("counter admitted %d", got)
	}
	if got := series(t, res, "sliding_window").Totals.Admitted; got != 70 {
		t.Errorf("sliding window admitted %d", got)
	}
}

func TestInvariants(t *testing.T) {
	tr, err := ParseTrace(strings.NewReader("0.95\n0.96 3\n1.0\n1.01 2\n1.5\n2.2 10\n"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		pattern Pattern
		p       Params
	}{
		{Steady, Params{}},
		{Steady, Params{Seed: 7, Rate: 40, Limit: 7, Period: 700 * time.Millisecond}},
		{Ramp, Params{}},
		{Ramp, Params{Seed: 3, Duration: 30 * time.Second, Limit: 50, Burst: 80}},
		{Burst, Params{BurstSize: 100, BurstEvery: 700 * time.Millisecond, MaxDelay: 2 * time.Second}},
		{Trace, Params{Trace: tr, Limit: 5}},
	}
	for _, c := range cases {
		res, err := Run(c.pattern, c.p)
		if err != nil {
			t.Fatalf("%s: %v", c.pattern, err)
		}
		var offered int64
		for _, v := range res.Arrivals {
			offered += v
		}
		for _, s := range res.Series {
			tt := s.Totals
			if tt.Admitted+tt.Denied != tt.Arrivals || tt.Arrivals != res.Series[0].Totals.Arrivals {
				t.Errorf("%s %s: %d + %d != %d", c.pattern, s.Name, tt.Admitted, tt.Denied, tt.Arrivals)
			}
			var adm, den int64
			for i := range s.Admitted {
				adm += s.Admitted[i]
				den += s.Denied[i]
			}
			if adm != tt.AdmittedCost || adm+den != offered {
				t.Errorf("%s %s: buckets admitted %d denied %d, totals %d offered %d", c.pattern, s.Name, adm, den, tt.AdmittedCost, offered)
			}
			limit := res.Params.Limit
			switch {
			case s.Name == "sliding_window" && tt.WorstWindow > limit:
				t.Errorf("%s: sliding window admitted %d in one period, limit %d", c.pattern, tt.WorstWindow, limit)
			case s.Name == "fixed_window" && tt.WorstWindow > 2*limit:
				t.Errorf("%s: fixed window admitted %d in one period", c.pattern, tt.WorstWindow)
			case s.Shaping && tt.MaxDelay > res.Params.MaxDelay:
				t.Errorf("%s: shaper delay %s above max_delay", c.pattern, tt.MaxDelay)
			}
		}
	}
}

func TestSeed(t *testing.T) {
	a, _ := Run(Steady, Params{Seed: 1})
	b, _ := Run(Steady, Params{Seed: 1})
	c, _ := Run(Steady, Params{Seed: 2})
	if a.Series[0].Totals != b.Series[0].Totals || !equal(a.Arrivals, b.Arrivals) {
		t.Error("same seed, different runs")
	}
	if equal(a.Arrivals, c.Arrivals) {
		t.Error("different seeds, same arrivals")
	}
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestParamErrors(t *testing.T) {
	for _, c := range []struct {
		pattern Pattern
		p       Params
		want    string
	}{
		{"zigzag", Params{}, "unknown pattern"},
		{Steady, Params{Limit: -1}, "limit"},
		{Steady, Params{Rate: -3}, "rate"},
		{Trace, Params{}, "needs a trace"},
		{Steady, Params{Duration: time.Hour, Bucket: time.Millisecond}, "use a wider bucket"},
		{Steady, Params{Rate: 1e9}, "more than"},
	} {
		if _, err := Run(c.pattern, c.p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %+v: %v, want %q", c.pattern, c.p, err, c.want)
		}
	}
	if _, err := ParsePattern("trace"); err != nil {
		t.Error(err)
	}
}

func TestLimitAboveSlidingLog(t *testing.T) {
	res, err := Run(Steady, Params{Limit: algorithms.MaxSlidingLog + 1, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Series) != 5 || len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "sliding_window left out") {
		t.Fatalf("%d series, notes %q", len(res.Series), res.Notes)
	}
}

func TestParseTrace(t *testing.T) {
	tr, err := ParseTrace(strings.NewReader("# recorded\n\n0\n0.5 2\n0.5,3\n  1.25\t4 \n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Arrival{{0, 1}, {500 * time.Millisecond, 2}, {500 * time.Millisecond, 3}, {1250 * time.Millisecond, 4}}
	if !tr.Start.IsZero() || len(tr.Arrivals) != len(want) {
		t.Fatalf("%+v", tr)
	}
	for i := range want {
		if tr.Arrivals[i] != want[i] {
			t.Errorf("arrival %d: %+v, want %+v", i, tr.Arrivals[i], want[i])
		}
	}

	tr, err = ParseTrace(strings.NewReader("2026-03-01T12:00:00.75Z\n2026-03-01T13:00:01.5+01:00 5\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !tr.Start.Equal(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)) || tr.Arrivals[0].At != 750*time.Millisecond || tr.Arrivals[1] != (Arrival{1500 * time.Millisecond, 5}) {
		t.Fatalf("%+v", tr)
	}
	// RFC 3339 traces keep their clock: the fixed window aligns to the real second, so
	// 12:00:00.75 and 12:00:01.25 fall in two windows, but in one sliding second.
	tr, err = ParseTrace(strings.NewReader("2026-03-01T12:00:00.75Z\n2026-03-01T12:00:01.25Z\n"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(Trace, Params{Trace: tr, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := series(t, res, "fixed_window").Totals.Admitted; got != 2 {
		t.Errorf("fixed window admitted %d of two arrivals in different seconds", got)
	}
	if got := series(t, res, "sliding_window").Totals.Admitted; got != 1 {
		t.Errorf("sliding window admitted %d of two arrivals 500ms apart", got)
	}
}

func TestParseTraceErrors(t *testing.T) {
	for _, c := range []struct {
		in   string
		line []int
		want []string
	}{
		{"", nil, []string{"no arrivals"}},
		{"# only a comment\n", nil, []string{"no arrivals"}},
		{"1\nabc\n2\n", []int{2}, []string{`time "abc" is neither seconds`}},
		{"1 0\n2 x\n3 1 4\n", []int{1, 2, 3}, []string{`cost "0"`, `cost "x"`, "got 3 fields"}},
		{"1\n0.5\n", []int{2}, []string{"before the previous arrival's 1: a trace must be sorted"}},
		{"-1\nNaN\n", []int{1, 2}, []string{"between 0 and", "between 0 and"}},
		{"1\n2026-03-01T12:00:00Z\n", []int{2}, []string{"earlier lines are in seconds"}},
		{"2026-03-01T12:00:00Z\n3\n", []int{2}, []string{"earlier lines are RFC 3339"}},
		{"2026-03-01T12:00:00Z\n2026-03-01T12:00:01\n", []int{2}, []string{"neither seconds"}},
		{strings.Repeat("x\n", 20), []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, nil},
	} {
		_, err := ParseTrace(strings.NewReader(c.in))
		if err == nil {
			t.Errorf("%q: no error", c.in)
			continue
		}
		var lines []int
		for _, e := range unjoin(err) {
			var te *TraceError
			if errors.As(e, &te) {
				lines = append(lines, te.Line)
			}
		}
		if !equalInts(lines, c.line) {
			t.Errorf("%q: lines %v, want %v (%v)", c.in, lines, c.line, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: %v, want %q", c.in, err, w)
			}
		}
		if len(c.line) > 0 && !strings.HasPrefix(err.Error(), "line ") {
			t.Errorf("%q: %v does not start with its line", c.in, err)
		}
	}
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestWriteSVG(t *testing.T) {
	if _, err := ParseTrace(strings.NewReader("0.9\n0.95\n1.0 <&>\n")); err == nil {
		t.Fatal("a cost of <&> parsed")
	}
	tr, _ := ParseTrace(strings.NewReader("0.9\n0.95\n1.0 2\n"))
	for _, c := range []struct {
		pattern Pattern
		p       Params
	}{{Steady, Params{}}, {Burst, Params{}}, {Ramp, Params{Seed: 9}}, {Trace, Params{Trace: tr}}, {Steady, Params{Limit: 20000, Duration: time.Second}}} {
		res, err := Run(c.pattern, c.p)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := WriteSVG(&buf, res); err != nil {
			t.Fatal(err)
		}
		// Well-formed XML, an <svg> root, one <g class="series"> per algorithm.
		dec := xml.NewDecoder(&buf)
		var root string
		var got []string
		for {
			tok, err := dec.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: not well-formed: %v", c.pattern, err)
			}
			if se, ok := tok.(xml.StartElement); ok {
				if root == "" {
					root = se.Name.Local
				}
				attrs := map[string]string{}
				for _, a := range se.Attr {
					attrs[a.Name.Local] = a.Value
				}
				if se.Name.Local == "g" && attrs["class"] == "series" {
					got = append(got, attrs["data-algorithm"])
				}
			}
		}
		if root != "svg" || len(got) != len(res.Series) {
			t.Fatalf("%s: root %q, series %q", c.pattern, root, got)
		}
		for i, s := range res.Series {
			if got[i] != s.Name {
				t.Errorf("%s: series %d is %q, want %q", c.pattern, i, got[i], s.Name)
			}
		}
	}
}

func TestWriteTable(t *testing.T) {
	res, err := Run(Burst, Params{BurstSize: 30, BurstEvery: 5 * time.Second, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, res); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 8 || !strings.HasPrefix(lines[0], "| algorithm ") ||
		lines[2] != "| fixed_window           |       10 |     20 |              10 |        10 |                - |" ||
		!strings.HasSuffix(lines[7], "|    250ms / 500ms |") {
		t.Fatalf("table:\n%s", buf.String())
	}
}

func TestNiceValues(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{0: time.Microsecond, 200 * time.Millisecond: 200 * time.Millisecond, 210 * time.Millisecond: 500 * time.Millisecond, 1200 * time.Millisecond: 2 * time.Second} {
		if got := niceDuration(in); got != want {
			t.Errorf("niceDuration(%s) = %s, want %s", in, got, want)
		}
	}
	for in, want := range map[float64]float64{0.5: 1, 6: 6, 6.5: 8, 31: 40, 90: 100} {
		if got := niceCeil(in); got != want {
			t.Errorf("niceCeil(%v) = %v, want %v", in, got, want)
		}
	}
	for in, want := range map[time.Duration]string{0: "0", 1500 * time.Millisecond: "1.5s", 2 * time.Minute: "2m", 90 * time.Second: "90s", 250 * time.Millisecond: "250ms", 5 * time.Microsecond: "5µs"} {
		if got := fmtDur(in); got != want {
			t.Errorf("fmtDur(%s) = %q, want %q", in, got, want)
		}
	}
}

// TestRunConsistency: exact and local_first on the same bursty traffic across three
// replicas: local_first never admits more than limit x (1 + max_overshoot) in a fixed
// window, admits about what exact does, and costs a small fraction of its store ops;
// bad consistency parameters are refused.
func TestRunConsistency(t *testing.T) {
	p := Params{Limit: 10000, Period: time.Minute, BurstSize: 4000, BurstEvery: 5 * time.Second, Duration: 3 * time.Minute}
	res, err := RunConsistency(Burst, p, Consistency{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Series) != 2 || res.Series[0].Name != "exact" || res.Series[1].Name != "local_first" {
		t.Fatalf("series: %+v", res.Series)
	}
	exact, local := res.Series[0].Totals, res.Series[1].Totals
	if exact.Admitted != 30000 {
		t.Fatalf("exact admitted %d, want 3 windows x 10,000", exact.Admitted)
	}
	if local.Admitted < 29700 || local.Admitted > 30300 || local.WorstWindow > 10100 {
		t.Fatalf("local_first admitted %d, worst window %d: want within 1%% of exact and of the limit", local.Admitted, local.WorstWindow)
	}
	if len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "3 replicas") || !strings.Contains(res.Notes[0], "store ops: exact 144000") {
		t.Fatalf("notes: %q", res.Notes)
	}
	for name, c := range map[string]Consistency{
		"sliding_window": {Algorithm: algorithms.SlidingWindow},
		"replicas":       {Replicas: MaxReplicas + 1},
		"overshoot":      {MaxOvershoot: 1},
		"sync":           {SyncInterval: 2 * time.Minute},
	} {
		if _, err := RunConsistency(Burst, p, c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
