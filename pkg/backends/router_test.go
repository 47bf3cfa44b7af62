package backends_test

import (
	"context"
	"testing"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// TestPerSecondConformance: the router of two stores decides as one store does, for
// every algorithm and period (some of the suite's limits are of one second).
func TestPerSecondConformance(t *testing.T) {
	conformance.Run(t, func(t *testing.T) backends.Store {
		return &backends.PerSecond{Main: memory.New(memory.Config{SweepInterval: -1}), Second: memory.New(memory.Config{SweepInterval: -1})}
	}, conformance.Options{})
}

// TestPerSecondRoutes: one-second ops go to the per-second store only, every other op to
// the main one, within one Apply; Delete reaches both.
func TestPerSecondRoutes(t *testing.T) {
	main, second := memory.New(memory.Config{SweepInterval: -1}), memory.New(memory.Config{SweepInterval: -1})
	r := &backends.PerSecond{Main: main, Second: second}
	defer r.Close()
	ctx := context.Background()
	perSecond := algorithms.Limit{Requests: 1, Period: backends.SecondPeriod}
	perMinute := algorithms.Limit{Requests: 1, Period: 60 * backends.SecondPeriod}
	ops := func() []*backends.Op {
		return []*backends.Op{
			{Key: "s", Algorithm: algorithms.FixedWindow, Limit: perSecond, Cost: 1},
			{Key: "m", Algorithm: algorithms.FixedWindow, Limit: perMinute, Cost: 1},
		}
	}
	const now = 1_893_456_000_000_000
	if err := r.Apply(ctx, now, ops()); err != nil {
		t.Fatal(err)
	}
	// Each key counted in its store only: the other store still has room for it.
	check := func(s backends.Store, key string, lim algorithms.Limit, allowed bool) {
		t.Helper()
		op := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 0}
		if err := s.Apply(ctx, now, []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
		if (op.Result.Remaining > 0) != allowed {
			t.Errorf("%s: remaining %d, want room %v", key, op.Result.Remaining, allowed)
		}
	}
	check(second, "s", perSecond, false)
	check(main, "s", perSecond, true)
	check(main, "m", perMinute, false)
	check(second, "m", perMinute, true)
	// Through the router both are now denied.
	got := ops()
	if err := r.Apply(ctx, now, got); err != nil {
		t.Fatal(err)
	}
	if got[0].Result.Allowed || got[1].Result.Allowed {
		t.Errorf("second round allowed: %+v %+v", got[0].Result, got[1].Result)
	}
	if err := r.Delete(ctx, "s", "m"); err != nil {
		t.Fatal(err)
	}
	check(second, "s", perSecond, true)
	check(main, "m", perMinute, true)
}
