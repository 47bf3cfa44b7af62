package engine_test

import (
	"context"
	"math"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// ewmaStores are the stores Rates runs on: memory, and every peer the test script
// starts (a missing one skips, or fails under HALT_TEST_PEERS).
func ewmaStores() []struct {
	name string
	open func(t *testing.T) backends.Store
} {
	peer := func(env string, u func(string) string) func(t *testing.T) backends.Store {
		return func(t *testing.T) backends.Store { return openPeer(t, env, u) }
	}
	return []struct {
		name string
		open func(t *testing.T) backends.Store
	}{
		{"memory", func(t *testing.T) backends.Store {
			s := memory.New(memory.Config{SweepInterval: -1})
			t.Cleanup(func() { s.Close() })
			return s
		}},
		{"redis", peer("REDIS_ADDR", func(v string) string { return "redis://" + v + "/0" })},
		{"memcached", peer("MEMCACHED_ADDR", func(v string) string { return "memcached://" + v })},
		{"postgres", peer("PG_DSN", func(v string) string { return v })},
		{"mongodb", peer("MONGO_URI", func(v string) string { return strings.TrimSuffix(v, "/") + "/halt_ewma" })},
		{"dynamodb", peer("DYNAMODB_ENDPOINT", func(v string) string {
			return "dynamodb://halt_ewma?region=us-east-1&access_key_id=test&secret_access_key=test&endpoint=" + url.QueryEscape(v)
		})},
	}
}

// TestRatesEWMA: the spike detector's baseline is an exponentially weighted moving
// average kept in the store: each request weighs 2^(-age/half-life), exactly (the
// requests fall where the weights are powers of two), across epochs (4 half-lives
// each), and the epoch three back is left out. Every store reads the same numbers.
func TestRatesEWMA(t *testing.T) {
	for _, st := range ewmaStores() {
		t.Run(st.name, func(t *testing.T) {
			clock := &fakeClock{now: t0} // t0 is a multiple of 4 minutes: an epoch starts
			e, err := engine.New(engine.Config{Store: st.open(t), Rules: func() *config.Set { return nil }, Clock: clock, Metrics: metrics.New(nil)})
			if err != nil {
				t.Fatal(err)
			}
			who := []config.Entry{{Key: "customer", Value: "acme"}}
			rate := func() engine.Rate {
				t.Helper()
				r, err := e.Rates(context.Background(), "d", who, "spike", time.Minute, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				return r
			}
			for _, step := range []struct {
				at      time.Duration // since t0
				decayed float64       // the requests' weights, this one included
				short   int64         // the sliding window's count: at t0+1m the previous window still counts whole
			}{
				{0, 1, 1},
				{time.Minute, 1 + 0.5, 2},
				{3 * time.Minute, 1 + 0.25 + 0.125, 1},
				{5 * time.Minute, 1 + 0.25 + 0.0625 + 0.03125, 1}, // the second epoch
				{9 * time.Minute, 1 + 0.0625 + 0.015625 + 0.00390625 + 0.001953125, 1},                // the third
				{13 * time.Minute, 1 + 0.0625 + 0.00390625 /* the first epoch's three left out */, 1}, // the fourth
			} {
				clock.mu.Lock()
				clock.now = t0.Add(step.at)
				clock.mu.Unlock()
				if r := rate(); r.Decayed != step.decayed || r.Short != step.short {
					t.Fatalf("at t0+%s: decayed %v short %d, want %v and %d", step.at, r.Decayed, r.Short, step.decayed, step.short)
				}
			}
			// Another identity has its own baseline.
			if r, err := e.Rates(context.Background(), "d", []config.Entry{{Key: "customer", Value: "bob"}}, "spike", time.Minute, time.Minute); err != nil || r.Decayed != 1 {
				t.Fatalf("another identity: %+v %v", r, err)
			}
		})
	}
}

// TestRatesEWMASteady: a steady rate r makes the decayed count r x half-life / ln 2,
// the EWMA's fixed point, whatever the epoch boundaries (to the weights' rounding and
// the left-out tail, both far below 1%); a step to another rate is half-way there in
// one half-life.
func TestRatesEWMASteady(t *testing.T) {
	clock := &fakeClock{now: t0.Add(17 * time.Second)}
	store := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { store.Close() })
	e, err := engine.New(engine.Config{Store: store, Rules: func() *config.Set { return nil }, Clock: clock, Metrics: metrics.New(nil)})
	if err != nil {
		t.Fatal(err)
	}
	who := []config.Entry{{Key: "customer", Value: "acme"}}
	const halfLife = 10 * time.Minute
	run := func(perMinute int, d time.Duration) engine.Rate {
		var r engine.Rate
		for end := clock.Now().Add(d); clock.Now().Before(end); clock.Add(time.Minute / time.Duration(perMinute)) {
			if r, err = e.Rates(context.Background(), "d", who, "spike", time.Minute, halfLife); err != nil {
				t.Fatal(err)
			}
		}
		return r
	}
	fixed := func(perMinute float64) float64 { return perMinute * halfLife.Minutes() / math.Ln2 }
	if r := run(12, 3*time.Hour); math.Abs(r.Decayed/fixed(12)-1) > 0.01 {
		t.Fatalf("12 a minute for 3h: decayed %v, want %v within 1%%", r.Decayed, fixed(12))
	}
	// Up to 36 a minute: after one half-life, half of the way from 12 to 36.
	if r := run(36, halfLife); math.Abs(r.Decayed/fixed(24)-1) > 0.02 {
		t.Fatalf("one half-life after a step 12 -> 36: decayed %v, want %v (24 a minute) within 2%%", r.Decayed, fixed(24))
	}
}
