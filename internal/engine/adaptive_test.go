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

// TestAdaptiveFactorIsWhatCheckApplies: AdaptiveFactor (what /config shows) is the
// factor Check and Limits apply. Without a source of factors that is 1, the configured
// limit, whatever the rule's max; with one, the source's factor.
func TestAdaptiveFactorIsWhatCheckApplies(t *testing.T) {
	const yaml = `
domain: d
descriptors:
  - key: api
    rate_limit: {unit: minute, requests_per_unit: 10}
    adaptive: {query: up, bad_above: 0.5, min: 0.2, max: 0.5}
  - key: fixed
    rate_limit: {unit: minute, requests_per_unit: 10}
`
	for _, c := range []struct {
		name   string
		source *factors
		want   float64
		limit  uint64
	}{
		{"no source", nil, 1, 10},
		{"source", &factors{f: map[string]float64{"api": 0.3}}, 0.3, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, yaml, func(cfg *engine.Config) {
				if c.source != nil {
					cfg.Adaptive = c.source
				}
			})
			rule, ok := f.e.Rules().Match("d", []config.Entry{{Key: "api", Value: "x"}})
			if !ok {
				t.Fatal("no rule for api")
			}
			if got := f.e.AdaptiveFactor(rule); got != c.want {
				t.Fatalf("AdaptiveFactor %g, want %g", got, c.want)
			}
			fixed, _ := f.e.Rules().Match("d", []config.Entry{{Key: "fixed", Value: "x"}})
			if got := f.e.AdaptiveFactor(fixed); got != 1 {
				t.Fatalf("a rule without adaptive: factor %g, want 1", got)
			}
			admitted := 0
			for i := 0; i < 12; i++ {
				if _, over := f.mustCheck(t, d(1, "api", "x")); !over {
					admitted++
				}
			}
			if uint64(admitted) != c.limit {
				t.Fatalf("Check admitted %d, want %d (the factor shown, %g, of 10)", admitted, c.limit, c.want)
			}
			ls, err := f.e.Limits(t.Context(), "d", []config.Entry{{Key: "api", Value: "x"}}, rule)
			if err != nil {
				t.Fatal(err)
			}
			if got := ls[0].Limit.Params.Requests; uint64(got) != c.limit {
				t.Fatalf("Limits reports %d, want %d", got, c.limit)
			}
		})
	}
}
