//go:build unix

package engine_test

import (
	"context"
	"strconv"
	"syscall"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// checkBenchConfig has one fixed-window rule per descriptor key, high enough that every
// call is admitted: the hot path of a decision, one store round for every descriptor.
const checkBenchConfig = `
domain: bench
descriptors:
  - {key: user, rate_limit: {unit: second, requests_per_unit: 1000000000, algorithm: fixed_window}}
  - {key: tenant, rate_limit: {unit: second, requests_per_unit: 1000000000, algorithm: fixed_window}}
  - {key: route, rate_limit: {unit: second, requests_per_unit: 1000000000, algorithm: fixed_window}}
  - {key: client, rate_limit: {unit: second, requests_per_unit: 1000000000, algorithm: fixed_window}}
  - {key: api, rate_limit: {unit: second, requests_per_unit: 1000000000, algorithm: fixed_window}}
`

var benchKeys = [...]string{"user", "tenant", "route", "client", "api"}

// checkBench is an engine on the memory store with real metrics, and its calls'
// descriptors built up front (keys distinct values of each descriptor key).
type checkBench struct {
	e     *engine.Engine
	descs [][]engine.Descriptor
	decs  []engine.Decision
}

func newCheckBench(tb testing.TB, n, keys int) *checkBench {
	tb.Helper()
	set, err := config.Parse(map[string][]byte{"b.yaml": []byte(checkBenchConfig)})
	if err != nil {
		tb.Fatal(err)
	}
	store := memory.New(memory.Config{SweepInterval: -1})
	tb.Cleanup(func() { store.Close() })
	e, err := engine.New(engine.Config{Store: store, StoreName: "memory", Rules: func() *config.Set { return set }, Clock: &fakeClock{now: t0}, Metrics: metrics.New(nil)})
	if err != nil {
		tb.Fatal(err)
	}
	b := &checkBench{e: e, descs: make([][]engine.Descriptor, keys), decs: make([]engine.Decision, n)}
	for k := range b.descs {
		v := strconv.Itoa(k)
		for _, key := range benchKeys[:n] {
			b.descs[k] = append(b.descs[k], engine.Descriptor{Entries: []config.Entry{{Key: key, Value: key[:1] + v}}, Hits: 1})
		}
	}
	return b
}

func (b *checkBench) check(tb testing.TB, i int) {
	if _, err := b.e.Check(context.Background(), "bench", b.descs[i%len(b.descs)], b.decs); err != nil || b.decs[0].Code != engine.CodeOK {
		tb.Fatal(err, b.decs[0])
	}
}

// BenchmarkCheck: one decision of 1 and of 5 descriptors on the memory store (every
// call admitted, one store round), on 1 and 10,000 keys, with allocations reported: the
// engine's hot path without a transport. cpu-ns/op is the process's CPU time per call
// (getrusage), which other processes on the machine inflate less than ns/op.
//
//	go test -run '^$' -bench BenchmarkCheck -benchmem ./internal/engine/
func BenchmarkCheck(b *testing.B) {
	for _, n := range []int{1, 5} {
		for _, keys := range []int{1, 10000} {
			b.Run(strconv.Itoa(n)+"Descriptors/"+strconv.Itoa(keys)+"Keys", func(b *testing.B) {
				cb := newCheckBench(b, n, keys)
				for i := range keys {
					cb.check(b, i) // every key's state exists: the steady state
				}
				b.ReportAllocs()
				b.ResetTimer()
				cpu0 := processCPU(b)
				for i := range b.N {
					cb.check(b, i)
				}
				b.StopTimer()
				b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
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
