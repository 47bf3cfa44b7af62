// Command halt-soak runs a halt-envoy for a long time under mixed traffic and reports
// whether it stays healthy: errors by gRPC code, latency per minute (p50/p99 and the drift
// of p99 from the first minute to the last), the process's resident memory every sample
// interval, and its goroutine count. It exits 1 when anything unexpected happens: an error
// other than the InvalidArgument that deliberately invalid requests must get, the server
// dying, or memory or goroutines growing past a threshold.
//
// Usage:
//
//	halt-soak [--duration 10m] [--store URL] [--binary PATH] [--rate 2000] [--concurrency 16]
//
// The store defaults to redis://$REDIS_ADDR/0 when REDIS_ADDR is set, else memory://.
// Without --binary it builds ./cmd/halt-envoy of the module it runs in.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

// Options is one soak run.
type Options struct {
	Duration, Sample, Warmup time.Duration
	CallTimeout              time.Duration
	Store, Binary, KeepDir   string
	Rate, Concurrency        int
	MaxRSSGrowthMiB          float64
	MaxGoroutineGrowth       int
	MaxFailOpenPct           float64
	JSON                     bool
}

func parse(args []string, stderr io.Writer, getenv func(string) string) (*Options, error) {
	o := &Options{}
	fs := flag.NewFlagSet("halt-soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	defStore := "memory://"
	if a := getenv("REDIS_ADDR"); a != "" {
		defStore = "redis://" + a + "/0"
	}
	fs.DurationVar(&o.Duration, "duration", time.Minute, "how long to drive traffic")
	fs.DurationVar(&o.Sample, "sample", 10*time.Second, "how often RSS and goroutines are sampled")
	fs.DurationVar(&o.Warmup, "warmup", 0, "RSS growth is measured from the first sample after this (default: one sample interval, or the first sample for short runs)")
	fs.DurationVar(&o.CallTimeout, "call-timeout", 2*time.Second, "client deadline of one call; a call that exceeds it counts as an error (DeadlineExceeded)")
	fs.StringVar(&o.Store, "store", defStore, "store URL for halt-envoy (default redis://$REDIS_ADDR/0 when set, else memory://)")
	fs.StringVar(&o.Binary, "binary", "", "halt-envoy binary (default: go build ./cmd/halt-envoy)")
	fs.StringVar(&o.KeepDir, "dir", "", "work directory for the config and the server log (default: a temporary one, removed)")
	fs.IntVar(&o.Rate, "rate", 2000, "target calls per second in total (0: as fast as the workers go)")
	fs.IntVar(&o.Concurrency, "concurrency", 16, "concurrent callers")
	fs.Float64Var(&o.MaxRSSGrowthMiB, "max-rss-growth-mib", 64, "fail when RSS grows more than this from the first sample after warm-up to the last")
	fs.IntVar(&o.MaxGoroutineGrowth, "max-goroutine-growth", 200, "fail when goroutines grow more than this from first to last sample")
	fs.Float64Var(&o.MaxFailOpenPct, "max-fail-open-pct", -1, "fail when more than this percentage of calls got a failure-mode answer because the store did not (negative: report only)")
	fs.BoolVar(&o.JSON, "json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.Duration <= 0 || o.Sample <= 0 || o.Concurrency <= 0 || o.Rate < 0 {
		return nil, errors.New("duration, sample and concurrency must be positive, rate non-negative")
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	o, err := parse(args, stderr, getenv)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "halt-soak:", err)
		return 2
	}
	rep, err := Soak(ctx, o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "halt-soak:", err)
		return 1
	}
	if o.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		rep.Print(stdout)
	}
	if len(rep.Failures) > 0 {
		return 1
	}
	return 0
}
