package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/server"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// startHalt runs an in-process halt-envoy (memory store) with config yaml and returns
// its gRPC address.
func startHalt(t *testing.T, yaml string) string {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"bench.yaml": []byte(yaml)})
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	store := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { store.Close() })
	rules := func() *config.Set { return set }
	m := metrics.New(nil)
	e, err := engine.New(engine.Config{Store: store, StoreName: "memory", Rules: rules, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Engine: e, Service: rlsv3.NewService(e, headers.Families{}),
		Metrics: m, Config: rules, DrainTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return srv.GRPCAddr().String()
}

func startEmpty(t *testing.T) string {
	t.Helper()
	s, err := newEmptyServer("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s.Addr().String()
}

func tokenBucketConfig(n int) string {
	return `
domain: bench
descriptors:
  - key: user
    rate_limit:
      unit: hour
      requests_per_unit: ` + strconv.Itoa(n) + `
      algorithm: token_bucket
`
}

func checkSums(t *testing.T, r *report) {
	t.Helper()
	if r.OK+r.OverLimit+r.Errors != r.Requests {
		t.Errorf("ok %d + over %d + errors %d != requests %d", r.OK, r.OverLimit, r.Errors, r.Requests)
	}
	if r.Requests == 0 {
		t.Errorf("no requests measured")
	}
}

// TestLoadRespectsLimit checks the tally against a known limit. The tests make no
// timing assumptions: on a loaded machine fewer than n calls may fit in the run, so the
// exact expectation is min(requests, n).
func TestLoadRespectsLimit(t *testing.T) {
	const n = 20
	addr := startHalt(t, tokenBucketConfig(n))
	r, err := runLoad(context.Background(), &loadConfig{
		Addr: addr, Method: methodRateLimit, Domain: "bench",
		Descriptors: [][]entryTemplate{{{Key: "user", Value: "alice"}}},
		Keys:        1, Concurrency: 4, Connections: 2, Duration: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, r)
	if r.Errors != 0 {
		t.Fatalf("%d errors: %+v", r.Errors, r.ErrorMsgs)
	}
	// n per hour: the bucket starts full and refills one token every 3 minutes.
	if want := min(r.Requests, n); r.OK != want {
		t.Errorf("ok = %d, want exactly %d (requests %d, over_limit %d)", r.OK, want, r.Requests, r.OverLimit)
	}
}

// TestLoadSpreadsKeys checks that {key} spreads the load over distinct counters.
func TestLoadSpreadsKeys(t *testing.T) {
	const n, keys = 5, 7
	addr := startHalt(t, tokenBucketConfig(n))
	// One worker cycles the keys in order, so after r requests every key was asked
	// r/keys times (give or take one): the expected tally is exact.
	r, err := runLoad(context.Background(), &loadConfig{
		Addr: addr, Method: methodRateLimit, Domain: "bench",
		Descriptors: [][]entryTemplate{{{Key: "user", Value: "u{key}"}}},
		Keys:        keys, Concurrency: 1, Connections: 1, Duration: 700 * time.Millisecond, Hits: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, r)
	if r.Errors != 0 {
		t.Fatalf("%d errors: %+v", r.Errors, r.ErrorMsgs)
	}
	var want uint64
	for k := range uint64(keys) {
		asked := r.Requests / keys
		if k < r.Requests%keys {
			asked++
		}
		want += min(asked, n)
	}
	if r.OK != want {
		t.Errorf("ok = %d, want %d (%d requests over %d keys of %d)", r.OK, want, r.Requests, keys, n)
	}
}

// TestLoadSeveralDescriptors sends two descriptors per request.
func TestLoadSeveralDescriptors(t *testing.T) {
	// Two descriptors per request on distinct keys, used in lockstep: a request is OK
	// while both are.
	const n = 10
	addr := startHalt(t, tokenBucketConfig(n))
	r, err := runLoad(context.Background(), &loadConfig{
		Addr: addr, Method: methodRateLimit, Domain: "bench",
		Descriptors: [][]entryTemplate{{{Key: "user", Value: "a{key}"}}, {{Key: "user", Value: "b{key}"}}},
		Keys:        1, Concurrency: 2, Connections: 1, Duration: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, r)
	if want := min(r.Requests, n); r.OK != want || r.Errors != 0 {
		t.Errorf("ok %d errors %d, want %d and 0", r.OK, r.Errors, want)
	}
}

// TestLoadWarmupNotCounted checks that answers during warmup are not tallied.
func TestLoadWarmupNotCounted(t *testing.T) {
	// The limit (2) is used up by the first calls, during warmup: the measured period
	// sees only OVER_LIMIT.
	addr := startHalt(t, tokenBucketConfig(2))
	r, err := runLoad(context.Background(), &loadConfig{
		Addr: addr, Method: methodRateLimit, Domain: "bench",
		Descriptors: [][]entryTemplate{{{Key: "user", Value: "x"}}},
		Keys:        1, Concurrency: 2, Connections: 1, Duration: 300 * time.Millisecond, Warmup: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, r)
	if r.OK != 0 || r.OverLimit == 0 {
		t.Errorf("ok %d over %d: warmup answers were counted", r.OK, r.OverLimit)
	}
}

// TestEmptyServerDelay: with --empty-delay every answer still is OK, and none comes
// sooner than the delay (a lower bound only: a loaded machine makes answers later, never
// earlier).
func TestEmptyServerDelay(t *testing.T) {
	const delay = 20 * time.Millisecond
	s, err := newEmptyServer("127.0.0.1:0", delay)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	r, err := runLoad(context.Background(), &loadConfig{
		Addr: s.Addr().String(), Method: methodRateLimit, Domain: "bench",
		Descriptors: [][]entryTemplate{{{Key: "user", Value: "u{key}"}}},
		Keys:        10, Concurrency: 4, Connections: 1, Duration: 300 * time.Millisecond,
		Warmup: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, r)
	if r.Requests == 0 || r.OK != r.Requests || r.Errors != 0 {
		t.Fatalf("ok %d of %d, errors %d: %+v", r.OK, r.Requests, r.Errors, r.ErrorMsgs)
	}
	if min := float64(delay.Microseconds()); r.LatencyUS.P50 < min {
		t.Errorf("p50 %.0f us: answers came sooner than the %s delay", r.LatencyUS.P50, delay)
	}
}

// TestEmptyDelayFlag: a negative or absurd --empty-delay is refused by name.
func TestEmptyDelayFlag(t *testing.T) {
	for _, v := range []string{"-1ms", "2h"} {
		var out, errb strings.Builder
		if code := run(context.Background(), []string{"--empty-server", "127.0.0.1:0", "--empty-delay", v}, &out, &errb); code != 2 {
			t.Errorf("--empty-delay %s: exit %d, want 2", v, code)
		}
		if !strings.Contains(errb.String(), "--empty-delay") {
			t.Errorf("--empty-delay %s: stderr %q does not name the flag", v, errb.String())
		}
	}
}

// TestEmptyServer loads the baseline server with both methods.
func TestEmptyServer(t *testing.T) {
	addr := startEmpty(t)
	for _, method := range []string{methodRateLimit, methodHealth} {
		t.Run(method, func(t *testing.T) {
			r, err := runLoad(context.Background(), &loadConfig{
				Addr: addr, Method: method, Domain: "bench",
				Descriptors: [][]entryTemplate{{{Key: "user", Value: "u{key}"}}},
				Keys:        10, Concurrency: 4, Connections: 2, Duration: 500 * time.Millisecond,
				Warmup: 100 * time.Millisecond, PID: os.Getpid(),
			})
			if err != nil {
				t.Fatal(err)
			}
			checkSums(t, r)
			if r.OK != r.Requests || r.Errors != 0 {
				t.Errorf("ok %d of %d, errors %d: %+v", r.OK, r.Requests, r.Errors, r.ErrorMsgs)
			}
			if r.ServerCPUPerReqUS == nil {
				t.Errorf("no server CPU with --pid (%s)", r.ServerCPUErr)
			}
			l := r.LatencyUS
			if !(l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) || l.P50 <= 0 {
				t.Errorf("latencies out of order: %+v", l)
			}
		})
	}
}

// TestLoadCountsErrors loads an address nobody listens on.
func TestLoadCountsErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	r, err := runLoad(context.Background(), &loadConfig{
		Addr: addr, Method: methodRateLimit, Domain: "bench",
		Descriptors: [][]entryTemplate{{{Key: "user", Value: "x"}}},
		Keys:        1, Concurrency: 2, Connections: 1, Duration: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, r)
	if r.Errors != r.Requests || len(r.ErrorMsgs) == 0 || len(r.ErrorMsgs) > maxErrSamples {
		t.Fatalf("errors %d of %d, samples %+v", r.Errors, r.Requests, r.ErrorMsgs)
	}
	if !strings.Contains(r.ErrorMsgs[0].Message, "Unavailable") {
		t.Errorf("first error %q, want Unavailable", r.ErrorMsgs[0].Message)
	}
}

// TestRunJSONAndInterrupt runs the command with --json and interrupts it.
func TestRunJSONAndInterrupt(t *testing.T) {
	addr := startEmpty(t)
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	var out, errOut bytes.Buffer
	// --duration is far longer than the test: the cancelled context (Ctrl-C) ends it.
	code := run(ctx, []string{"--addr", addr, "--json", "--duration", "1h", "--warmup", "100ms",
		"--concurrency", "3", "--keys", "4", "--descriptor", "user=u{key},path=/x", "--descriptor", "tenant=t"}, &out, &errOut)
	if code != 130 {
		t.Fatalf("exit %d, want 130 (interrupted); stderr: %s", code, errOut.String())
	}
	var r report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("json: %v\n%s", err, out.String())
	}
	if !r.Interrupted || r.Requests == 0 || r.OK != r.Requests || r.Descriptors != 2 || r.ElapsedS > 5 {
		t.Errorf("report %+v", r)
	}
}

// TestRunText checks the text report.
func TestRunText(t *testing.T) {
	addr := startEmpty(t)
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"--addr", addr, "--duration", "200ms", "--warmup", "0", "--concurrency", "2", "--pid", strconv.Itoa(os.Getpid())}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d; stderr: %s", code, errOut.String())
	}
	for _, want := range []string{"req/s", "ok ", "over_limit", "errors", "p99.9", "server cpu", "us/request"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestFlagErrors checks that bad flags exit 2.
func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--descriptor", "novalue"},
		{"--descriptor", "=v"},
		{"--keys", "0"},
		{"--concurrency", "0"},
		{"--method", "nope"},
		{"--duration", "0s"},
		{"extra"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}

// TestHistogram checks bucket bounds, quantiles, merging and that recording never allocates.
func TestHistogram(t *testing.T) {
	// Every value lands in a bucket whose top is within 1/128 of it.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		v := int64(rng.Uint64() >> (1 + rng.IntN(63)))
		i := bucketOf(v)
		hi := bucketHigh(i)
		if hi < v || float64(hi-v) > float64(v)/subCount+1 {
			t.Fatalf("v %d: bucket %d top %d", v, i, hi)
		}
		if i > 0 && bucketHigh(i-1) >= v {
			t.Fatalf("v %d: previous bucket %d top %d also holds it", v, i-1, bucketHigh(i-1))
		}
	}
	var h, h2 histogram
	for v := int64(1); v <= 1000; v++ {
		h.record(v * 1000)
	}
	h2.record(5_000_000)
	h.merge(&h2)
	for _, c := range []struct {
		q    float64
		want int64
	}{{0.5, 501_000}, {0.99, 991_000}, {0.999, 1_000_000}, {1, 5_000_000}} {
		got := h.quantile(c.q)
		if got < c.want-c.want/100 || got > c.want+c.want/100 {
			t.Errorf("quantile(%g) = %d, want %d within 1%%", c.q, got, c.want)
		}
	}
	if h.n != 1001 || h.max != 5_000_000 {
		t.Errorf("n %d max %d", h.n, h.max)
	}
	if allocs := testing.AllocsPerRun(1000, func() { h.record(12345) }); allocs != 0 {
		t.Errorf("record allocates %v times", allocs)
	}
}

// TestParseStat checks the /proc/PID/stat parser.
func TestParseStat(t *testing.T) {
	// The command name may hold spaces and parentheses.
	line := "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 1000 10 18446744073709551615"
	d, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if d != 3250*time.Millisecond {
		t.Errorf("cpu %s, want 3.25s", d)
	}
	if _, err := parseStat("garbage"); err == nil {
		t.Error("garbage parsed")
	}
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Errorf("own /proc stat: %v", err)
	}
}
