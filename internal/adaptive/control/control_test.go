package control_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halt-envoy/halt-envoy/internal/adaptive"
	"github.com/halt-envoy/halt-envoy/internal/adaptive/control"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	htestutil "github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

const interval = 15 * time.Second

// The upstream's error ratio at each instant of the timeline, an interval apart: good,
// turned up (bad), held in the band, turned down (good), and bad again at the end.
var timeline = []float64{
	0.001, 0.001, 0.001, 0.001, 0.001, // 0-4 good
	0.2, 0.2, 0.2, // 5-7 bad: 1 -> 0.5 -> 0.25 -> 0.2 (the floor)
	0.03, 0.03, // 8-9 in the band: holds
	0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002, // 10-19 good: +0.1 each
	0.3, 0.3, // 20-21 bad
}

// startPrometheus runs a real Prometheus on a TSDB holding the timeline as the series
// upstream_error_ratio (written with promtool's backfill, so the test controls every
// sample's time), and returns its URL and the timeline's first instant.
func startPrometheus(t *testing.T) (string, time.Time) {
	// An hour ago, aligned: well inside retention and away from the head block.
	t0 := time.Now().Add(-time.Hour).Truncate(interval)
	var om bytes.Buffer
	om.WriteString("# TYPE upstream_error_ratio gauge\n")
	for i, v := range timeline {
		fmt.Fprintf(&om, "upstream_error_ratio %g %d\n", v, t0.Add(time.Duration(i)*interval).Unix())
	}
	om.WriteString("# EOF\n")
	data := htestutil.Backfill(t, om.String())
	return htestutil.StartPrometheus(t, "global: {scrape_interval: 15s}\n", data), t0
}

func rule(query string) *config.Rule {
	return &config.Rule{Domain: "api", Name: "upstream", Path: "upstream", Adaptive: &adaptive.Spec{
		Query: query, Interval: interval, BadAbove: 0.05, GoodBelow: 0.01, Min: 0.2, Max: 1, Decrease: 0.5, Increase: 0.1,
	}}
}

// TestFactorFollowsPrometheus: the factor falls and recovers as the upstream's error
// ratio (in a real Prometheus) is turned up and down, exactly as the fold says; three
// replicas, one of them started late, agree at every instant; a query that answers
// nothing or fails leaves the last factor in force, logged and counted.
func TestFactorFollowsPrometheus(t *testing.T) {
	base, t0 := startPrometheus(t)
	lag := 5 * time.Second
	// now is when instant i has been judged: i intervals after t0, plus the lag.
	now := func(i int) time.Time { return t0.Add(time.Duration(i)*interval + lag) }
	logs := make([]*bytes.Buffer, 3)
	ms := make([]*metrics.Metrics, 3)
	reps := make([]*control.Controller, 3)
	for i := range reps {
		ms[i], logs[i] = metrics.New(nil), &bytes.Buffer{}
		var err error
		reps[i], err = control.New(control.Options{Prometheus: base, Lag: lag, Metrics: ms[i], Logger: slog.New(slog.NewTextHandler(logs[i], nil))})
		if err != nil {
			t.Fatal(err)
		}
	}
	r := rule("upstream_error_ratio")
	ctx := context.Background()
	// The documented factors (docs/config.md, adaptive limits) at chosen instants.
	// From instant 14 the window no longer reaches the first bad instant (5): the fold
	// forgets it, and recovers faster than one long memory would (0.75, not 0.7).
	want := map[int]float64{4: 1, 5: 0.5, 6: 0.25, 7: 0.2, 9: 0.2, 10: 0.3, 12: 0.5, 14: 0.75, 16: 1, 19: 1, 20: 0.5, 21: 0.25}
	changes, prev := 0, 1.0
	for i := 0; i < len(timeline); i++ {
		for j, c := range reps {
			if j == 2 && i < 12 {
				continue // the third replica starts at instant 12, knowing nothing
			}
			c.Step(ctx, now(i), []*config.Rule{r})
		}
		f0 := reps[0].Factor(r)
		if f0 != prev {
			changes, prev = changes+1, f0
		}
		if w, ok := want[i]; ok && f0 != w {
			t.Errorf("instant %d (ratio %g): factor %v, want %v", i, timeline[i], f0, w)
		}
		for j := 1; j < 3; j++ {
			if j == 2 && i < 12 {
				continue
			}
			if f := reps[j].Factor(r); f != f0 {
				t.Errorf("instant %d: replica %d says %v, replica 0 %v", i, j, f, f0)
			}
		}
		if g := testutil.ToFloat64(ms[0].AdaptiveFactor.WithLabelValues("api", "upstream")); g != f0 {
			t.Errorf("instant %d: halt_adaptive_factor %v, factor %v", i, g, f0)
		}
	}
	// Each change logged once, with its reason and the signal's value.
	if n := strings.Count(logs[0].String(), `msg="adaptive: the factor in force changed"`); n != changes || changes < 10 {
		t.Errorf("%d changes, %d logged:\n%s", changes, n, logs[0])
	}
	if !strings.Contains(logs[0].String(), "from=1 to=0.5 at="+t0.Add(5*interval).UTC().Format("2006-01-02T15:04:05.000Z")+" reason=bad signal=0.2") ||
		!strings.Contains(logs[0].String(), "from=0.2 to=0.3") || !strings.Contains(logs[0].String(), "reason=good signal=0.002") {
		t.Errorf("reasons missing from the log:\n%s", logs[0])
	}

	// Long after the timeline the series is stale: the query answers no series, and
	// the last factor (0.25) holds.
	last := reps[0].Factor(r)
	reps[0].Step(ctx, now(len(timeline)+60), []*config.Rule{r})
	if f := reps[0].Factor(r); f != last || f != 0.25 {
		t.Errorf("empty signal: factor %v, want %v held", f, last)
	}
	if n := testutil.ToFloat64(ms[0].AdaptiveSignalErrors.WithLabelValues("api", "upstream", "empty")); n != 1 {
		t.Errorf("halt_adaptive_signal_errors_total{reason=empty} = %v", n)
	}
	// A query Prometheus refuses, and several series: held too, each counted.
	bad := rule("rate(")
	reps[1].Step(ctx, now(12), []*config.Rule{bad})
	if f := reps[1].Factor(bad); f != 1 || testutil.ToFloat64(ms[1].AdaptiveSignalErrors.WithLabelValues("api", "upstream", "query")) != 1 {
		t.Errorf("failing query: factor %v", f)
	}
	two := rule(`upstream_error_ratio or label_replace(upstream_error_ratio, "x", "y", "", "")`)
	reps[1].Step(ctx, now(12), []*config.Rule{two})
	if testutil.ToFloat64(ms[1].AdaptiveSignalErrors.WithLabelValues("api", "upstream", "series")) != 1 {
		t.Errorf("two series not counted")
	}
	if !strings.Contains(logs[0].String(), "the factor holds") || !strings.Contains(logs[1].String(), "reason=series") {
		t.Errorf("a silent signal is not logged:\n%s\n%s", logs[0], logs[1])
	}
}

// TestLiveScrape: a real Prometheus scrapes a test upstream every second while the
// test turns its error ratio up and down. The factor falls to the floor and the limit in
// force with it (an engine deciding with the controller), three replicas agree at every
// instant they judge alike, and both recover once the ratio is good again. Wall time
// passes here (Prometheus scrapes in real time): every wait is bounded by a generous
// multiple of the intervals, never asserted as a speed.
func TestLiveScrape(t *testing.T) {
	ratio := &atomicFloat{}
	ratio.set(0.01)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "# TYPE upstream_error_ratio gauge\nupstream_error_ratio %g\n", ratio.get())
	}))
	t.Cleanup(upstream.Close)
	base := startScraping(t, strings.TrimPrefix(upstream.URL, "http://"))

	set, err := config.Parse(map[string][]byte{"a.yaml": []byte(`
domain: api
descriptors:
  - key: route
    rate_limit: {unit: second, requests_per_unit: 8}
    adaptive: {query: max(upstream_error_ratio), interval: 1s, bad_above: 0.5, good_below: 0.1, min: 0.25, increase: 0.25}
`)})
	if err != nil {
		t.Fatal(err)
	}
	rules := set.AdaptiveRules()
	reps := make([]*control.Controller, 3)
	for i := range reps {
		if reps[i], err = control.New(control.Options{Prometheus: base, Lag: 3 * time.Second}); err != nil {
			t.Fatal(err)
		}
	}
	mem := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { mem.Close() })
	eng, err := engine.New(engine.Config{Store: mem, Rules: func() *config.Set { return set }, Adaptive: reps[0]})
	if err != nil {
		t.Fatal(err)
	}
	limitInForce := func() int64 {
		decs := make([]engine.Decision, 1)
		if _, err := eng.Check(context.Background(), "api", []engine.Descriptor{{Entries: []config.Entry{{Key: "route", Value: "x"}}, Hits: 0}}, decs); err != nil {
			t.Fatal(err)
		}
		return decs[0].Limit.Params.Requests
	}
	// step judges the same instant on every replica and checks that they agree.
	step := func() float64 {
		now := time.Now()
		for _, c := range reps {
			c.Step(context.Background(), now, rules)
		}
		f := reps[0].Factor(rules[0])
		for i, c := range reps[1:] {
			if g := c.Factor(rules[0]); g != f {
				t.Errorf("replica %d says %v, replica 0 %v, at %v", i+1, g, f, now)
			}
		}
		return f
	}
	waitFactor := func(want float64) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			f := step()
			if f == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("factor %v after 90s, want %v", f, want)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	waitFactor(1)
	if l := limitInForce(); l != 8 {
		t.Fatalf("limit in force %d, want 8", l)
	}
	ratio.set(0.9) // the upstream fails
	waitFactor(0.25)
	if l := limitInForce(); l != 2 {
		t.Fatalf("limit in force %d with factor 0.25, want 2", l)
	}
	ratio.set(0.02) // and recovers
	waitFactor(1)
	if l := limitInForce(); l != 8 {
		t.Fatalf("limit in force %d after recovery, want 8", l)
	}
}

type atomicFloat struct {
	mu sync.Mutex
	v  float64
}

func (a *atomicFloat) set(v float64) { a.mu.Lock(); a.v = v; a.mu.Unlock() }
func (a *atomicFloat) get() float64  { a.mu.Lock(); defer a.mu.Unlock(); return a.v }

// startScraping runs a real Prometheus scraping target every second and returns its URL.
func startScraping(t *testing.T, target string) string {
	return htestutil.StartPrometheus(t, fmt.Sprintf("global: {scrape_interval: 1s, scrape_timeout: 1s}\nscrape_configs:\n  - job_name: upstream\n    static_configs:\n      - targets: [%q]\n", target), "")
}
