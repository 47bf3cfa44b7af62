//go:build unix

package rlsv3_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	gostats "github.com/lyft/gostats"
	"google.golang.org/protobuf/proto"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/stats"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// benchConfig is the configuration docs/benchmarks.md measures: one token-bucket rule
// on the descriptor key "user", high enough that almost every call is admitted.
const benchConfig = `
domain: bench
descriptors:
  - key: user
    rate_limit:
      unit: second
      requests_per_unit: 1000000
      algorithm: token_bucket
`

// benchConfigLow denies almost every call.
const benchConfigLow = `
domain: bench
descriptors:
  - key: user
    rate_limit:
      unit: hour
      requests_per_unit: 1
      algorithm: token_bucket
`

// benchOpts adds what the binary adds when asked: the reference's per-rule stats
// (internal/stats, always on in the binary), with a gostats store as a statsd output
// has (its sink discards: the flush is not on the call's path).
type benchOpts struct {
	stats, statsd bool
	// nop adds an observer that does nothing: the cost of having observers at all (the
	// binary always has some), against which the stats' own cost shows.
	nop bool
	// five sends five descriptors per call (benchConfigFive's keys), as Envoy does for
	// most routes.
	five bool
}

// benchConfigFive has one token-bucket rule for each of five descriptor keys.
const benchConfigFive = `
domain: bench
descriptors:
  - {key: user, rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: token_bucket}}
  - {key: tenant, rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: token_bucket}}
  - {key: route, rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: token_bucket}}
  - {key: client, rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: token_bucket}}
  - {key: api, rate_limit: {unit: second, requests_per_unit: 1000000, algorithm: token_bucket}}
`

// benchRequestsFive returns one five-descriptor request per key, built up front.
func benchRequestsFive(keys int) []*rlspb.RateLimitRequest {
	reqs := make([]*rlspb.RateLimitRequest, keys)
	for k := range reqs {
		r := &rlspb.RateLimitRequest{Domain: "bench"}
		for _, key := range []string{"user", "tenant", "route", "client", "api"} {
			r.Descriptors = append(r.Descriptors, &rlcommon.RateLimitDescriptor{
				Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: key, Value: key[:1] + strconv.Itoa(k)}},
			})
		}
		reqs[k] = r
	}
	return reqs
}

type nopObserver struct{}

func (nopObserver) OnDecision(context.Context, *engine.DecisionEvent)   {}
func (nopObserver) OnViolation(context.Context, *engine.ViolationEvent) {}

// newBenchService builds the production shape: the system clock, metrics on, memory
// store with its sweeper, no response headers.
func newBenchService(b *testing.B, yaml string, opts ...benchOpts) *rlsv3.Service {
	b.Helper()
	set, err := config.Parse(map[string][]byte{"bench.yaml": []byte(yaml)})
	if err != nil {
		b.Fatal(err)
	}
	store := memory.New(memory.Config{})
	b.Cleanup(func() { store.Close() })
	m := metrics.New(func() metrics.MemoryStore { return store })
	var observers []engine.Observer
	for _, o := range opts {
		if o.nop {
			observers = append(observers, nopObserver{})
		}
		if !o.stats {
			continue
		}
		var st gostats.Store
		if o.statsd {
			st = gostats.NewStore(gostats.NewNullSink(), false)
		}
		obs, err := stats.New(stats.Options{Metrics: m, NearLimitRatio: stats.DefaultNearLimitRatio, Store: st})
		if err != nil {
			b.Fatal(err)
		}
		observers = append(observers, obs)
	}
	e, err := engine.New(engine.Config{
		Store: store, StoreName: "memory",
		Rules:     func() *config.Set { return set },
		Metrics:   m,
		Observers: observers,
	})
	if err != nil {
		b.Fatal(err)
	}
	return rlsv3.NewService(e, headers.Families{})
}

// benchRequests returns one single-descriptor request per key, built up front.
func benchRequests(keys int) []*rlspb.RateLimitRequest {
	reqs := make([]*rlspb.RateLimitRequest, keys)
	for k := range reqs {
		reqs[k] = &rlspb.RateLimitRequest{
			Domain: "bench",
			Descriptors: []*rlcommon.RateLimitDescriptor{{
				Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: "u" + strconv.Itoa(k)}},
			}},
		}
	}
	return reqs
}

func benchShouldRateLimit(b *testing.B, yaml string, keys int, want rlspb.RateLimitResponse_Code, opts ...benchOpts) {
	svc := newBenchService(b, yaml, opts...)
	reqs := benchRequests(keys)
	for _, o := range opts {
		if o.five {
			reqs = benchRequestsFive(keys)
		}
	}
	ctx := context.Background()
	// Touch every key once so the timed loop measures steady state, not map growth (and,
	// with benchConfigLow, so every timed call is denied).
	for _, r := range reqs {
		if _, err := svc.ShouldRateLimit(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Uint64
	var wrong atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		// Each goroutine walks the keys from its own starting point.
		k := int(next.Add(uint64(keys/8+1))) % keys
		for pb.Next() {
			resp, err := svc.ShouldRateLimit(ctx, reqs[k])
			if err != nil {
				b.Error(err)
				return
			}
			if resp.OverallCode != want {
				wrong.Add(1)
			}
			if k++; k == keys {
				k = 0
			}
		}
	})
	b.StopTimer()
	// CPU time, unlike ns/op, is not inflated by other processes competing for the cores.
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
	if n := wrong.Load(); n > 0 {
		b.Errorf("%d answers were not %s", n, want)
	}
}

// processCPU is this process's user+system CPU time in nanoseconds.
func processCPU(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkShouldRateLimit measures Service.ShouldRateLimit in process (no gRPC): one
// descriptor per call, token bucket, memory store, metrics on. Besides ns/op it reports
// cpu-ns/op, the process CPU time (getrusage) per call, all goroutines and GC included.
func BenchmarkShouldRateLimit(b *testing.B) {
	b.Run("TokenBucket/1Key", func(b *testing.B) {
		benchShouldRateLimit(b, benchConfig, 1, rlspb.RateLimitResponse_OK)
	})
	b.Run("TokenBucket/10000Keys", func(b *testing.B) {
		benchShouldRateLimit(b, benchConfig, 10_000, rlspb.RateLimitResponse_OK)
	})
	b.Run("TokenBucketOverLimit/1Key", func(b *testing.B) {
		benchShouldRateLimit(b, benchConfigLow, 1, rlspb.RateLimitResponse_OVER_LIMIT)
	})
	b.Run("TokenBucketOverLimit/10000Keys", func(b *testing.B) {
		benchShouldRateLimit(b, benchConfigLow, 10_000, rlspb.RateLimitResponse_OVER_LIMIT)
	})
	// The reference's per-rule stats: on /metrics only, then also into a statsd store;
	// against an observer that does nothing, the stats' own cost.
	b.Run("TokenBucket/10000Keys/NopObserver", func(b *testing.B) {
		benchShouldRateLimit(b, benchConfig, 10_000, rlspb.RateLimitResponse_OK, benchOpts{nop: true})
	})
	b.Run("TokenBucket/10000Keys/Stats", func(b *testing.B) {
		benchShouldRateLimit(b, benchConfig, 10_000, rlspb.RateLimitResponse_OK, benchOpts{stats: true})
	})
	b.Run("TokenBucket/10000Keys/StatsStatsd", func(b *testing.B) {
		benchShouldRateLimit(b, benchConfig, 10_000, rlspb.RateLimitResponse_OK, benchOpts{stats: true, statsd: true})
	})
	// Five descriptors per call against one (issue 18: at most 1.25x), with the stats the
	// binary always has.
	b.Run("FiveDescriptors/10000Keys/Stats", func(b *testing.B) {
		benchShouldRateLimit(b, benchConfigFive, 10_000, rlspb.RateLimitResponse_OK, benchOpts{stats: true, five: true})
	})
	b.Run("TokenBucketOverLimit/10000Keys/StatsStatsd", func(b *testing.B) {
		benchShouldRateLimit(b, benchConfigLow, 10_000, rlspb.RateLimitResponse_OVER_LIMIT, benchOpts{stats: true, statsd: true})
	})
}

// TestResponseBlocks checks the responses built from status blocks (one allocation for
// a one-descriptor call): every status is its own message, and a response survives a
// wire round trip unchanged.
func TestResponseBlocks(t *testing.T) {
	set, err := config.Parse(map[string][]byte{"bench.yaml": []byte(benchConfigLow)})
	if err != nil {
		t.Fatal(err)
	}
	store := memory.New(memory.Config{SweepInterval: -1})
	defer store.Close()
	e, err := engine.New(engine.Config{Store: store, Rules: func() *config.Set { return set }})
	if err != nil {
		t.Fatal(err)
	}
	svc := rlsv3.NewService(e, headers.Families{})
	for _, n := range []int{1, 2, 5} {
		req := &rlspb.RateLimitRequest{Domain: "bench"}
		for i := range n {
			req.Descriptors = append(req.Descriptors, &rlcommon.RateLimitDescriptor{
				Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: "n" + strconv.Itoa(n) + "-" + strconv.Itoa(i%2)}},
			})
		}
		for call := range 2 {
			resp, err := svc.ShouldRateLimit(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Statuses) != n {
				t.Fatalf("n=%d: %d statuses", n, len(resp.Statuses))
			}
			seen := map[*rlspb.RateLimitResponse_DescriptorStatus]bool{}
			for i, st := range resp.Statuses {
				if st == nil || seen[st] || st.CurrentLimit == nil || st.DurationUntilReset == nil {
					t.Fatalf("n=%d status %d: %v (shared or incomplete)", n, i, st)
				}
				seen[st] = true
				if d := st.DurationUntilReset.AsDuration(); d <= 0 || d > time.Hour || st.DurationUntilReset.CheckValid() != nil {
					t.Errorf("n=%d status %d: duration_until_reset %v", n, i, st.DurationUntilReset)
				}
				if st.CurrentLimit.RequestsPerUnit != 1 || st.CurrentLimit.Unit != rlspb.RateLimitResponse_RateLimit_HOUR {
					t.Errorf("n=%d status %d: limit %v", n, i, st.CurrentLimit)
				}
			}
			// 1 per hour: the first call admits each distinct key once (descriptors 0
			// and 1 of a call are distinct keys; 2.. repeat them), the second denies all.
			wantOver := call == 1 || n > 2
			if got := resp.OverallCode == rlspb.RateLimitResponse_OVER_LIMIT; got != wantOver {
				t.Errorf("n=%d call %d: overall %s", n, call, resp.OverallCode)
			}
			b, err := proto.Marshal(resp)
			if err != nil {
				t.Fatal(err)
			}
			var back rlspb.RateLimitResponse
			if err := proto.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(resp, &back) {
				t.Errorf("n=%d: round trip changed the response:\n%v\n%v", n, resp, &back)
			}
		}
	}
}
