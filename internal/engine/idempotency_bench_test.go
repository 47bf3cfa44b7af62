package engine_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// BenchmarkIdempotency: the cost of one decision on the memory store without an
// idempotency key, with a new key per call (claim, decide, record: two more store
// rounds), and with a repeated key (claim only: the record answers). Compare the ns/op
// of one run:
//
//	go test -run '^$' -bench BenchmarkIdempotency -benchtime 200000x ./internal/engine/
func BenchmarkIdempotency(b *testing.B) {
	const yaml = "domain: d\ndescriptors:\n  - key: tenant\n    idempotency_ttl: 1h\n    rate_limit: {unit: minute, requests_per_unit: 1000000000, algorithm: fixed_window}\n"
	set, err := config.Parse(map[string][]byte{"b.yaml": []byte(yaml)})
	if err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"none", "new", "repeat"} {
		b.Run(mode, func(b *testing.B) {
			store := memory.New(memory.Config{SweepInterval: -1})
			defer store.Close()
			e, err := engine.New(engine.Config{Store: store, Rules: func() *config.Set { return set }, Clock: &fakeClock{now: t0}})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			descs := make([]engine.Descriptor, 1)
			decs := make([]engine.Decision, 1)
			keys := make([]string, b.N)
			for i := range keys {
				keys[i] = "req-" + strconv.Itoa(i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				descs[0] = d(1, "tenant", "t1")
				switch mode {
				case "new":
					descs[0].IdempotencyKey = keys[i]
				case "repeat":
					descs[0].IdempotencyKey = "same"
				}
				if _, err := e.Check(ctx, "d", descs, decs); err != nil || decs[0].Code != engine.CodeOK {
					b.Fatal(err, decs[0])
				}
			}
		})
	}
}
