package memory

import (
	"context"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

func TestConformance(t *testing.T) {
	conformance.Run(t, func(t *testing.T) backends.Store {
		return New(Config{SweepInterval: -1})
	}, conformance.Options{})
}

func TestMaxKeysEvicts(t *testing.T) {
	evicted := 0
	s := New(Config{MaxKeys: 128, SweepInterval: -1, OnEvict: func() { evicted++ }})
	defer s.Close()
	lim := algorithms.Limit{Requests: 10, Period: 60_000_000}
	for i := 0; i < 10_000; i++ {
		op := &backends.Op{Key: string(rune('a'+i%26)) + string(rune(i)), Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		if err := s.Apply(context.Background(), 1_000_000, []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.Len(); n > 128 {
		t.Fatalf("holds %d keys, bound is 128", n)
	}
	if evicted == 0 || int64(evicted) != s.Evicted() {
		t.Fatalf("evictions not counted: callback %d, counter %d", evicted, s.Evicted())
	}
}

func TestSweepRemovesExpired(t *testing.T) {
	s := New(Config{SweepInterval: -1})
	defer s.Close()
	lim := algorithms.Limit{Requests: 10, Period: 1_000_000}
	for _, k := range []string{"a", "b", "c"} {
		op := &backends.Op{Key: k, Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 1}
		_ = s.Apply(context.Background(), 5_000_000, []*backends.Op{op})
	}
	if s.Len() != 3 {
		t.Fatalf("len %d", s.Len())
	}
	if n := s.Sweep(5_050_000); n != 0 {
		t.Fatalf("swept %d live keys", n)
	}
	if n := s.Sweep(5_100_000); n != 3 || s.Len() != 0 {
		t.Fatalf("swept %d, left %d", n, s.Len())
	}
}

func TestClosedStoreIsUnavailable(t *testing.T) {
	s := New(Config{})
	s.Close()
	s.Close()
	op := &backends.Op{Key: "k", Algorithm: algorithms.FixedWindow, Limit: algorithms.Limit{Requests: 1, Period: 1}, Cost: 1}
	if err := s.Apply(context.Background(), 1, []*backends.Op{op}); err == nil || op.Err == nil {
		t.Fatal("closed store answered")
	}
}

// BenchmarkRoundTrip measures what the store's default timeout covers (docs/backends.md).
func BenchmarkRoundTrip(b *testing.B) {
	s := New(Config{SweepInterval: -1})
	defer s.Close()
	conformance.BenchRoundTrip(b, s, 1000)
}

// BenchmarkApplyKeys decides one op per call over 100,000 keys from every core (the
// store's hot path: a shard lock, a map lookup, the decision).
func BenchmarkApplyKeys(b *testing.B) {
	s := New(Config{SweepInterval: -1})
	defer s.Close()
	keys := make([]string, 100_000)
	for i := range keys {
		keys[i] = "bench|user=u" + strconv.Itoa(i) + "|@token_bucket:1000000"
	}
	lim := algorithms.Limit{Requests: 1_000_000, Period: 1_000_000, Burst: 1_000_000}
	var next atomic.Int64
	b.ReportAllocs()
	cpu0 := cpuNS(b)
	defer func() { b.ReportMetric(float64(cpuNS(b)-cpu0)/float64(b.N), "cpu-ns/op") }()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(7919))
		op := &backends.Op{Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 1}
		ops := []*backends.Op{op}
		now := int64(1_700_000_000_000_000)
		for pb.Next() {
			op.Key = keys[i%len(keys)]
			i++
			now++
			if err := s.Apply(context.Background(), now, ops); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkInsertEvict inserts new keys into a full store: every call evicts one.
func BenchmarkInsertEvict(b *testing.B) {
	s := New(Config{MaxKeys: 64 * 1024, SweepInterval: -1})
	defer s.Close()
	lim := algorithms.Limit{Requests: 100, Period: 3_600_000_000, Burst: 100}
	op := &backends.Op{Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 1}
	ops := []*backends.Op{op}
	key := []byte("ratelimit_api_user_id_")
	now := int64(1_700_000_000_000_000)
	b.ReportAllocs()
	cpu0 := cpuNS(b)
	defer func() { b.ReportMetric(float64(cpuNS(b)-cpu0)/float64(b.N), "cpu-ns/op") }()
	for i := 0; b.Loop(); i++ {
		op.Key = string(strconv.AppendInt(key[:22], int64(i), 10))
		if err := s.Apply(context.Background(), now, ops); err != nil {
			b.Fatal(err)
		}
	}
}

// cpuNS is the process's CPU time (getrusage: every goroutine and the collector): on a
// shared machine it measures the store, where wall time measures the queue for a core.
func cpuNS(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
