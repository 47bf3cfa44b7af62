package engine_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/localfirst"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
)

// BenchmarkRegions measures the decision latency of a limit shared by two regions, with
// the other region's store behind a TCP proxy that delays every byte by 80 ms each way,
// against the same limit in one region, in the same run (Redis at REDIS_ADDR for this
// region, REDIS_REGION2_ADDR for the other): the reads of the other region run in the
// background and must not add to a decision. It reports p50 and p99 in microseconds.
//
//	REDIS_ADDR=... REDIS_REGION2_ADDR=... go test -run '^$' -bench BenchmarkRegions -benchtime 20000x -count 3 ./internal/engine/
func BenchmarkRegions(b *testing.B) {
	set, err := config.Parse(map[string][]byte{"r.yaml": []byte(`domain: d
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 1000000000, regions: shared, sync_interval: 100ms}
`)})
	if err != nil {
		b.Fatal(err)
	}
	prefix := fmt.Sprintf("rg-bench-%d:", time.Now().UnixNano())
	own, err := all.Open(context.Background(), "redis://"+testutil.Peer(b, "REDIS_ADDR")+"/0", backends.Options{Timeout: 2 * time.Second, KeyPrefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	defer own.Close()
	for _, mode := range []string{"one-region", "two-regions-80ms"} {
		b.Run(mode, func(b *testing.B) {
			m := metrics.New(nil)
			cfg := engine.Config{Store: own, Rules: func() *config.Set { return set }, Metrics: m}
			if mode != "one-region" {
				p := startProxy(b, testutil.Peer(b, "REDIS_REGION2_ADDR"))
				p.setDelay(80 * time.Millisecond)
				remote, err := all.Open(context.Background(), "redis://"+p.addr()+"/0", backends.Options{Timeout: 2 * time.Second, KeyPrefix: prefix})
				if err != nil {
					b.Fatal(err)
				}
				defer remote.Close()
				cfg.Regions = localfirst.NewRegions(localfirst.RegionsConfig{Local: "a", Others: []localfirst.Region{{Name: "b", Store: remote}}, Metrics: m})
			}
			eng, err := engine.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = eng.Close(context.Background()) }()
			ds := []engine.Descriptor{d(1, "tenant", "t1")}
			before := 0.0
			decs := make([]engine.Decision, 1)
			if cfg.Regions != nil {
				// The key's first read (a connection through the proxy, then the read: a
				// few 160 ms round trips) before the timing: until it lands, the key is
				// held to the share.
				if _, err := eng.Check(context.Background(), "d", ds, decs); err != nil {
					b.Fatal(err)
				}
				key := string(engine.LimitKey(nil, "d", ds[0].Entries, nil, algorithms.FixedWindow, time.Minute.Microseconds()))
				testutil.WaitFor(b, 30*time.Second, func() bool { _, _, ok := cfg.Regions.Seen(key, "b"); return ok })
				before = promtest.ToFloat64(m.RegionShareDecisions)
			}
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				start := time.Now()
				if _, err := eng.Check(context.Background(), "d", ds, decs); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				if decs[0].Code != engine.CodeOK {
					b.Fatalf("refused: %+v", decs[0])
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
			// Decisions held to the share: the other region's count not read yet (its
			// first read takes the 160 ms round trip) or stale. With reads every
			// sync_interval through the delay, the counts stay fresh after the first.
			b.ReportMetric((promtest.ToFloat64(m.RegionShareDecisions)-before)/float64(len(lat)), "held/op")
		})
	}
}
