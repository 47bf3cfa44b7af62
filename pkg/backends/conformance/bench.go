package conformance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// BenchHotKey measures a compare-and-swap store under contention: every op of b.N is a
// hit on one key (under a limit never reached), from 8 goroutines per GOMAXPROCS, and the
// share of ops that gave up with backends.ErrContention is reported as contention/op.
// Stores size their cas_attempts default with it (docs/backends.md); any other error
// fails the benchmark.
func BenchHotKey(b *testing.B, st backends.Store) {
	key := UniqueKey(b)
	lim := algorithms.Limit{Requests: 1 << 40, Period: 3600 * sec}
	var contention, other atomic.Int64
	var firstErr atomic.Value
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		ops := []*backends.Op{op}
		for pb.Next() {
			switch err := st.Apply(context.Background(), time.Now().UnixMicro(), ops); {
			case errors.Is(err, backends.ErrContention):
				contention.Add(1)
			case err != nil:
				other.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
		}
	})
	b.StopTimer()
	if n := other.Load(); n > 0 {
		b.Fatalf("%d ops failed with another error than contention: %v", n, firstErr.Load())
	}
	b.ReportMetric(float64(contention.Load())/float64(b.N), "contention/op")
}

// RoundTripParallelism is BenchRoundTrip's goroutines per GOMAXPROCS: 8 concurrent calls
// on the 2-core machine of docs/backends.md, the "handful of concurrent calls" under
// which a store must still answer within its default timeout.
const RoundTripParallelism = 4

// BenchRoundTrip measures what a store's default timeout must cover: the time of one
// Apply (one token-bucket hit, admitted, so every op writes) under ordinary concurrency
// (RoundTripParallelism goroutines per GOMAXPROCS, cycling over keys distinct keys).
// It reports the 50th, 99th and 99.9th percentiles and the maximum in microseconds;
// st must be opened with a timeout far above them (any error fails the benchmark).
func BenchRoundTrip(b *testing.B, st backends.Store, keys int) {
	p := UniqueKey(b)
	names := make([]string, keys)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%d", p, i)
	}
	lim := algorithms.Limit{Requests: 1_000_000_000, Period: 3600 * sec}
	var seq atomic.Int64
	var mu sync.Mutex
	var all []time.Duration
	b.SetParallelism(RoundTripParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		op := &backends.Op{Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 1}
		ops := []*backends.Op{op}
		var mine []time.Duration
		for pb.Next() {
			op.Key = names[int(seq.Add(1))%keys]
			start := time.Now()
			err := st.Apply(context.Background(), start.UnixMicro(), ops)
			mine = append(mine, time.Since(start))
			if err != nil {
				b.Error(err)
				return
			}
		}
		mu.Lock()
		all = append(all, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	at := func(q float64) float64 {
		return float64(all[min(len(all)-1, int(q*float64(len(all))))].Microseconds())
	}
	b.ReportMetric(at(0.5), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
	b.ReportMetric(at(0.999), "p99.9-µs")
	b.ReportMetric(float64(all[len(all)-1].Microseconds()), "max-µs")
}
