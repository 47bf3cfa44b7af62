package engine_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// BenchmarkConsistency: the cost of one decision on a hot key, exact against
// local-first, on the memory store and on Redis (REDIS_ADDR; skipped without it), one
// replica, the clock stepping 1 us per call and a sync pass every 100 ms of it (the
// passes' cost is in the figure). The limit, 10^7 a minute at max_overshoot 0.001, is
// never reached: the regime far from the limit. Compare the ns/op in one run:
//
//	REDIS_ADDR=127.0.0.1:6379 go test -run '^$' -bench BenchmarkConsistency -benchtime 200000x ./internal/engine/
func BenchmarkConsistency(b *testing.B) {
	stores := map[string]func(b *testing.B) backends.Store{
		"memory": func(b *testing.B) backends.Store { return memory.New(memory.Config{SweepInterval: -1}) },
		"redis": func(b *testing.B) backends.Store {
			addr := os.Getenv("REDIS_ADDR")
			if addr == "" {
				b.Skip("REDIS_ADDR not set")
			}
			s, err := all.Open(context.Background(), "redis://"+addr+"/0", backends.Options{Timeout: time.Second, KeyPrefix: "bench-lf:"})
			if err != nil {
				b.Fatal(err)
			}
			return s
		},
	}
	for _, name := range []string{"memory", "redis"} {
		for _, cons := range []string{"exact", "local_first"} {
			b.Run(name+"/"+cons, func(b *testing.B) {
				yaml := "domain: d\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: minute, requests_per_unit: 10000000, consistency: " + cons + "}\n"
				if cons == "local_first" {
					yaml = "domain: d\ndescriptors:\n  - key: tenant\n    rate_limit: {unit: minute, requests_per_unit: 10000000, consistency: local_first, max_overshoot: 0.001}\n"
				}
				set, err := config.Parse(map[string][]byte{"b.yaml": []byte(yaml)})
				if err != nil {
					b.Fatal(err)
				}
				store := stores[name](b)
				defer store.Close()
				clock := &fakeClock{now: t0}
				e, err := engine.New(engine.Config{Store: store, Rules: func() *config.Set { return set }, Clock: clock,
					LocalFirstAnnounce: time.Second, LocalFirstManual: true})
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				for range 9 {
					_ = e.SyncLocalFirst(ctx)
					clock.Add(250 * time.Millisecond)
				}
				descs := []engine.Descriptor{d(1, "tenant", "t1")}
				decs := make([]engine.Decision, 1)
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					descs[0] = d(1, "tenant", "t1")
					if _, err := e.Check(ctx, "d", descs, decs); err != nil || decs[0].Code != engine.CodeOK {
						b.Fatal(err, decs[0].Code)
					}
					clock.Add(time.Microsecond)
					if i%100000 == 99999 {
						_ = e.SyncLocalFirst(ctx)
					}
				}
			})
		}
	}
}
