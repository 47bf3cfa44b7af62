package engine_test

import (
	"sync"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
)

// factors is a fixed table of factors by rule name (the controller is tested against
// Prometheus in internal/adaptive/control).
type factors struct {
	mu sync.Mutex
	f  map[string]float64
}

func (f *factors) Factor(r *config.Rule) float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, ok := f.f[r.Name]; ok {
		return v
	}
	return r.Adaptive.Max
}

func (f *factors) set(name string, v float64) {
	f.mu.Lock()
	f.f[name] = v
	f.mu.Unlock()
}

// TestAdaptiveFactorScalesLimits: an adaptive rule's limits in force are its configured
// ones times the factor (rounded down, at least 1), on the same counter, so a change of
// factor loses no count; a rule without adaptive: is never scaled.
func TestAdaptiveFactorScalesLimits(t *testing.T) {
	fs := &factors{f: map[string]float64{}}
	f := newFixture(t, `
domain: d
descriptors:
  - key: api
    rate_limit: {unit: minute, requests_per_unit: 10}
    adaptive: {query: up, bad_above: 0.5, min: 0.2}
  - key: fixed
    rate_limit: {unit: minute, requests_per_unit: 10}
`, func(c *engine.Config) { c.Adaptive = fs })
	fs.set("api", 0.5)
	fs.set("fixed", 0.1) // not adaptive: never asked
	admitted := func(key string, n int) int {
		ok := 0
		for i := 0; i < n; i++ {
			decs, over := f.mustCheck(t, d(1, key, "x"))
			if !over {
				ok++
			}
			if l := decs[0].Limit; l == nil {
				t.Fatalf("%s: no limit reported", key)
			}
		}
		return ok
	}
	if n := admitted("api", 8); n != 5 {
		t.Fatalf("factor 0.5 of 10: %d admitted, want 5", n)
	}
	decs, _ := f.mustCheck(t, d(1, "api", "x"))
	if decs[0].Limit.Params.Requests != 5 || decs[0].Limit.RequestsPerUnit != 5 {
		t.Fatalf("limit reported %+v, want the limit in force (5)", decs[0].Limit.Params)
	}
	// The factor recovers: the same counter (9 counted) under a limit of 10.
	fs.set("api", 1)
	if n := admitted("api", 3); n != 1 {
		t.Fatalf("factor back to 1: %d more admitted, want 1 (9 of 10 already counted)", n)
	}
	if n := admitted("fixed", 12); n != 10 {
		t.Fatalf("a fixed rule: %d admitted, want 10", n)
	}
	// A factor below 1/limit still leaves one request.
	fs.set("api", 0.01)
	f.clock.Add(time.Minute)
	if n := admitted("api", 3); n != 1 {
		t.Fatalf("factor 0.01 of 10: %d admitted, want 1", n)
	}
}
