package redis

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

// BenchmarkApply measures one Apply (of one op, or of several: ops=N) against REDIS_ADDR
// (or the cluster with REDIS_BENCH_CLUSTER=1), from many goroutines at once:
//
//	go test -run '^$' -bench BenchmarkApply -benchmem ./pkg/backends/redis/
//
// "admit" ops always reach Redis (the limit is never hit); "deny" ops hit a key that is
// over its limit, which the local cache answers unless local_cache=false.
func BenchmarkApply(b *testing.B) {
	base := "redis://" + testutil.Peer(b, "REDIS_ADDR")
	if addrs := envBench("REDIS_BENCH_CLUSTER"); addrs != "" {
		base = "redis+cluster://" + testutil.Peer(b, "REDIS_CLUSTER_ADDRS")
	}
	for _, mode := range []struct{ name, query string }{
		{"batched", "?"},
		{"unbatched", "?batch=false&"},
	} {
		for _, keys := range []int{1, 5, 10_000} {
			b.Run(fmt.Sprintf("%s/admit/keys=%d", mode.name, keys), func(b *testing.B) {
				benchApply(b, base+mode.query, keys, 1, algorithms.Limit{Requests: 1 << 40, Period: 3_600_000_000})
			})
		}
	}
	// Several ops per call (Envoy's several descriptors): each call's ops on distinct keys.
	for _, n := range []int{1, 5} {
		b.Run(fmt.Sprintf("batched/admit/keys=10000/ops=%d", n), func(b *testing.B) {
			benchApply(b, base+"?", 10_000, n, algorithms.Limit{Requests: 1 << 40, Period: 3_600_000_000})
		})
	}
	for _, q := range []string{"local_cache=true", "local_cache=false"} {
		b.Run("deny/"+q, func(b *testing.B) {
			benchApply(b, base+"?"+q, 5, 1, algorithms.Limit{Requests: 1, Period: 3_600_000_000})
		})
	}
	b.Run("serial/admit", func(b *testing.B) {
		s := mustOpen(b, base, backends.Options{Timeout: time.Second})
		defer s.Close()
		key := conformance.UniqueKey(b)
		lim := algorithms.Limit{Requests: 1 << 40, Period: 3_600_000_000}
		now := time.Now().UnixMicro()
		op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		ops := []*backends.Op{op}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := s.Apply(context.Background(), now, ops); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// processCPU is this process's CPU time (user and system): per op, what the store costs
// halt, which Redis's own CPU on the same cores (the wall time's bulk here) does not
// inflate as much as ns/op.
func processCPU(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func envBench(name string) string {
	if v := os.Getenv(name); v != "" && v != "0" {
		return v
	}
	return ""
}

func benchApply(b *testing.B, raw string, nkeys, nops int, lim algorithms.Limit) {
	s := mustOpen(b, raw, backends.Options{Timeout: time.Second})
	defer s.Close()
	prefix := conformance.UniqueKey(b)
	keys := make([]string, nkeys)
	for i := range keys {
		keys[i] = prefix + ":" + strconv.Itoa(i)
	}
	now := time.Now().UnixMicro()
	var seq atomic.Int64
	var failed atomic.Int64
	b.SetParallelism(8)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		i := int(seq.Add(1)) * 7919
		ops := make([]*backends.Op, nops)
		for j := range ops {
			ops[j] = &backends.Op{Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		}
		for pb.Next() {
			for _, op := range ops {
				op.Key = keys[i%nkeys]
				i++
			}
			if err := s.Apply(context.Background(), now, ops); err != nil {
				failed.Add(1)
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d ops failed", f)
	}
}

// BenchmarkRoundTrip measures what the store's default timeout covers (docs/backends.md).
func BenchmarkRoundTrip(b *testing.B) {
	s := mustOpen(b, "redis://"+testutil.Peer(b, "REDIS_ADDR"), backends.Options{Timeout: 10 * time.Second})
	defer s.Close()
	conformance.BenchRoundTrip(b, s, 1000)
}
