package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	sim "github.com/halt-envoy/halt-envoy/internal/simulate"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// simulate runs `halt-envoy simulate`: the algorithms side by side on one traffic
// pattern, a chart per pattern and a table of totals. With no --pattern (and no --trace)
// it compares steady, burst and ramp.
func simulate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: halt-envoy simulate [flags]

Replays one traffic pattern against fixed_window, token_bucket, sliding_window,
sliding_window_counter, leaky_bucket and leaky_bucket with max_delay on a simulated
clock, writes a chart per pattern (simulate-PATTERN.svg) and prints the totals.
With no --pattern it compares steady, burst and ramp. With --consistency it compares
one algorithm decided exactly and local_first across --replicas replicas instead
(simulate-PATTERN-consistency.svg).

`)
		fs.PrintDefaults()
	}
	var p sim.Params
	pattern := fs.String("pattern", "", "steady, burst, ramp or trace (default: steady, burst and ramp; trace when --trace is set)")
	fs.Int64Var(&p.Limit, "limit", 10, "requests per period")
	fs.DurationVar(&p.Period, "period", 0, "the limit's period (default 1s)")
	fs.Int64Var(&p.Burst, "burst", 0, "token and leaky bucket capacity (default: --limit)")
	fs.DurationVar(&p.MaxDelay, "max-delay", 0, "the leaky-bucket shaper's max_delay (default: half of --period)")
	fs.DurationVar(&p.Duration, "duration", 0, "simulated time (default 10s; for a trace, its span)")
	fs.Float64Var(&p.Rate, "rate", 0, "steady rate, or the ramp's final rate, in requests per second (default 1.5x the limit for steady, 3x for ramp)")
	fs.Int64Var(&p.BurstSize, "burst-size", 0, "requests per burst of the burst pattern (default 3x --limit)")
	fs.DurationVar(&p.BurstEvery, "burst-every", 0, "time between bursts (default 1.5x --period)")
	fs.DurationVar(&p.Bucket, "bucket", 0, "bar width of the chart (default: about 50 bars)")
	fs.Uint64Var(&p.Seed, "seed", 0, "not 0: Poisson arrivals (steady, ramp) from this seed; 0: evenly spaced")
	consistency := fs.Bool("consistency", false, "compare exact and local_first consistency on one algorithm (--algorithm) across --replicas replicas instead of the algorithms")
	algName := fs.String("algorithm", "fixed_window", "with --consistency: fixed_window, token_bucket or sliding_window_counter")
	var c sim.Consistency
	fs.IntVar(&c.Replicas, "replicas", 3, "with --consistency: replicas sharing the store, taking the arrivals in turn")
	fs.Float64Var(&c.MaxOvershoot, "max-overshoot", 0.01, "with --consistency: local_first's max_overshoot")
	fs.DurationVar(&c.SyncInterval, "sync-interval", 100*time.Millisecond, "with --consistency: local_first's sync_interval")
	trace := fs.String("trace", "", "trace file: one arrival per line, seconds or RFC 3339, optional cost column")
	out := fs.String("out", ".", "directory the charts are written to")
	format := fs.String("format", "svg", "chart format: only svg is supported")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "halt-envoy simulate: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *format != "svg" {
		fmt.Fprintf(stderr, "halt-envoy simulate: format %q is not supported: only svg (convert it, e.g. rsvg-convert -o chart.png chart.svg)\n", *format)
		return 2
	}
	patterns := sim.Patterns()
	if *trace != "" && *pattern == "" {
		*pattern = string(sim.Trace)
	}
	if *pattern != "" {
		pt, err := sim.ParsePattern(*pattern)
		if err != nil {
			fmt.Fprintln(stderr, "halt-envoy simulate:", err)
			return 2
		}
		patterns = []sim.Pattern{pt}
	}
	if (*trace != "") != (len(patterns) == 1 && patterns[0] == sim.Trace) {
		fmt.Fprintln(stderr, "halt-envoy simulate: --trace FILE and --pattern trace go together")
		return 2
	}
	if *trace != "" {
		f, err := os.Open(*trace)
		if err != nil {
			fmt.Fprintln(stderr, "halt-envoy simulate:", err)
			return 1
		}
		p.Trace, err = sim.ParseTrace(f)
		f.Close()
		if err != nil {
			fmt.Fprintf(stderr, "halt-envoy simulate: %s:\n%v\n", *trace, err)
			return 1
		}
	}
	if *consistency {
		a, err := algorithms.Parse(*algName)
		if err != nil {
			fmt.Fprintln(stderr, "halt-envoy simulate: --algorithm:", err)
			return 2
		}
		c.Algorithm = a
	}
	for i, pt := range patterns {
		run := func() (*sim.Result, error) { return sim.Run(pt, p) }
		suffix := ""
		if *consistency {
			run = func() (*sim.Result, error) { return sim.RunConsistency(pt, p, c) }
			suffix = "-consistency"
		}
		res, err := run()
		if err != nil {
			fmt.Fprintf(stderr, "halt-envoy simulate: %s: %v\n", pt, err)
			return 2
		}
		name := filepath.Join(*out, "simulate-"+string(pt)+suffix+".svg")
		if err := writeChart(name, res); err != nil {
			fmt.Fprintln(stderr, "halt-envoy simulate:", err)
			return 1
		}
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "%s: %s\n\n", pt, simDescribe(res))
		if err := sim.WriteTable(stdout, res); err != nil {
			fmt.Fprintln(stderr, "halt-envoy simulate:", err)
			return 1
		}
		fmt.Fprintf(stdout, "\nwrote %s\n", name)
	}
	return 0
}

// simDescribe is the one-line parameter summary printed above a table.
func simDescribe(res *sim.Result) string {
	p := res.Params
	s := fmt.Sprintf("%d arrivals in %s against %d per %s (burst %d, max_delay %s)",
		res.Series[0].Totals.Arrivals, p.Duration, p.Limit, p.Period, p.Burst, p.MaxDelay)
	switch res.Pattern {
	case sim.Steady:
		s += fmt.Sprintf(", %g req/s", p.Rate)
	case sim.Ramp:
		s += fmt.Sprintf(", 0 to %g req/s", p.Rate)
	case sim.Burst:
		s += fmt.Sprintf(", %d at once every %s", p.BurstSize, p.BurstEvery)
	}
	return s
}

// writeChart writes res as an SVG file, removing a partial file on error.
func writeChart(name string, res *sim.Result) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := sim.WriteSVG(f, res); err != nil {
		f.Close()
		os.Remove(name)
		return fmt.Errorf("%s: %w", name, err)
	}
	return f.Close()
}
