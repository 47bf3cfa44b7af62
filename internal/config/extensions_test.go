package config

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

func TestExtensions(t *testing.T) {
	s := mustParse(t, map[string]string{
		"shared.yaml": `
# a file of shared policies only: no domain needed
policies:
  STRICT:   # overrides the preset
    rate_limit: {unit: minute, requests_per_unit: 3}
    failure_mode: deny
    shadow_mode: true
  TWO:
    rate_limits:
      - {unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 20, name: per_sec}
      - {unit: day, requests_per_unit: 1000, failure_mode: error}
    allow_algorithm_override: true
`,
		"d.yaml": `
domain: d
failure_mode: allow
descriptors:
  - key: a
    rate_limit:
      unit: second
      unit_multiplier: 30
      requests_per_unit: 300
      algorithm: leaky_bucket
      max_delay: 250ms
  - key: b
    policy: TWO
    cost: 3
  - key: c
    policy: STRICT
  - key: e
    policy: PUBLIC_API
    failure_mode: error
  - key: f
    replaces: [{name: x}]
    rate_limits:
      - {unit: second, requests_per_unit: 1, algorithm: sliding_window, failure_mode: allow, replaces: [{name: y}]}
      - {unit: minute, requests_per_unit: 10, algorithm: sliding_window_counter, failure_mode: deny}
  - key: g
    value: 404                 # numbers are taken as text, as in the reference
    rate_limit: {unit: Minute, requests_per_unit: 1}   # unit is case-insensitive
    shadow_mode: yes           # YAML 1.1 boolean, as the reference's yaml.v2 reads it
  - key: h
    value: "v*"
    share_threshold: true
    value_to_metric: true
    rate_limit: {unit: hour, requests_per_unit: 1}
`,
	})
	r, _ := s.Match("d", ents("a", "x"))
	l := r.Limits[0]
	if l.Algorithm != algorithms.LeakyBucket || l.Period() != 30*time.Second || l.UnitMultiplier != 30 || l.Params.Burst != 300 || l.Params.MaxDelay != 250000 || r.FailureMode != FailAllow {
		t.Errorf("a: %+v %+v", r, l)
	}
	r, _ = s.Match("d", ents("b", "x"))
	if r.Policy != "TWO" || len(r.Limits) != 2 || r.Cost != 3 || !r.AllowAlgorithmOverride || r.FailureMode != FailError || r.Name != "b" {
		t.Errorf("b: %+v", r)
	}
	if r.Limits[0].Params.Burst != 20 || r.Limits[0].Name != "per_sec" || r.Limits[1].Algorithm != algorithms.FixedWindow || r.Limits[1].Params.Burst != 0 {
		t.Errorf("b limits: %+v", r.Limits)
	}
	r, _ = s.Match("d", ents("c", "x"))
	if r.Limits[0].RequestsPerUnit != 3 || !r.ShadowMode || r.FailureMode != FailDeny {
		t.Errorf("c (overridden preset): %+v", r)
	}
	r, _ = s.Match("d", ents("e", "x"))
	if r.Limits[0].Algorithm != algorithms.TokenBucket || r.Limits[0].Params.Burst != 100 || r.FailureMode != FailError {
		t.Errorf("e: %+v", r)
	}
	r, _ = s.Match("d", ents("f", "x"))
	if len(r.Limits) != 2 || r.FailureMode != FailDeny || strings.Join(r.Replaces, ",") != "y,x" {
		t.Errorf("f: %+v", r)
	}
	r, ok := s.Match("d", ents("g", "404"))
	if !ok || !r.ShadowMode || r.Limits[0].Unit != "minute" {
		t.Errorf("g: %+v", r)
	}
	r, _ = s.Match("d", ents("h", "v1"))
	if !r.Levels[0].ShareThreshold || !r.Levels[0].ValueToMetric || !r.Levels[0].Wildcard {
		t.Errorf("h: %+v", r)
	}
	if p, ok := s.Policy("TWO"); !ok || p.Domain != "" || len(p.Limits) != 2 || p.File != "shared.yaml" {
		t.Errorf("Policy(TWO) = %+v", p)
	}
	if got := s.Files(); strings.Join(got, ",") != "d.yaml,shared.yaml" {
		t.Errorf("Files() = %v", got)
	}
}

func TestPresets(t *testing.T) {
	s := mustParse(t, map[string]string{"d.yaml": "domain: d\n"})
	for _, c := range []struct {
		name  string
		alg   algorithms.Algorithm
		rpu   int64
		per   time.Duration
		burst int64
	}{
		{"PUBLIC_API", algorithms.TokenBucket, 100, time.Minute, 100},
		{"AUTH_BRUTE_FORCE", algorithms.SlidingWindow, 5, time.Minute, 0},
		{"EXPENSIVE_OPERATION", algorithms.TokenBucket, 10, time.Minute, 2},
		{"WEBHOOK", algorithms.SlidingWindowCounter, 1000, time.Minute, 0},
		{"INTERNAL_SERVICE", algorithms.TokenBucket, 10000, time.Second, 10000},
		{"STRICT", algorithms.FixedWindow, 10, time.Minute, 0},
	} {
		p, ok := s.Policy(c.name)
		if !ok || len(p.Limits) != 1 {
			t.Fatalf("preset %s: %+v", c.name, p)
		}
		l := p.Limits[0]
		if l.Algorithm != c.alg || l.Params.Requests != c.rpu || l.Period() != c.per || l.Params.Burst != c.burst || p.File != PresetFile {
			t.Errorf("preset %s = %+v", c.name, l)
		}
		if err := l.Params.Validate(l.Algorithm); err != nil {
			t.Errorf("preset %s invalid: %v", c.name, err)
		}
	}
	if _, ok := s.Policy("NOPE"); ok {
		t.Error("unknown policy found")
	}
}

func TestAnchorsAndMergeKeys(t *testing.T) {
	s := mustParse(t, map[string]string{"d.yaml": `
domain: d
descriptors:
  - key: a
    rate_limit: &std
      unit: minute
      requests_per_unit: 10
  - key: b
    rate_limit: *std
  - key: c
    rate_limit:
      <<: *std
      requests_per_unit: 20
`})
	for k, rpu := range map[string]uint32{"a": 10, "b": 10, "c": 20} {
		r, ok := s.Match("d", ents(k, "x"))
		if !ok || r.Limits[0].RequestsPerUnit != rpu || r.Limits[0].Unit != "minute" {
			t.Errorf("%s: %+v", k, r)
		}
	}
}

// An alias bomb is bounded by the descriptor count, not expanded without limit.
func TestAliasBomb(t *testing.T) {
	// a list of descriptors whose children alias the list itself 10 deep
	bomb := `
domain: d
descriptors:
  - &l0 {key: a, descriptors: []}
  - &l1 {key: b, descriptors: [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]}
  - &l2 {key: c, descriptors: [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1]}
  - &l3 {key: e, descriptors: [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2]}
  - &l4 {key: f, descriptors: [*l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3]}
  - &l5 {key: g, descriptors: [*l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4, *l4]}
  - &l6 {key: h, descriptors: [*l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5, *l5]}
`
	start := time.Now()
	m := map[string][]byte{"d.yaml": []byte(bomb)}
	_, err := testOptions(t).Parse(m)
	var le *LoadError
	if !errors.As(err, &le) || len(le.Problems) > maxProblems+1 || !strings.Contains(le.Problems[len(le.Problems)-1].Msg, "more problems in this file") {
		t.Fatalf("alias bomb: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("alias bomb took %v", time.Since(start))
	}
}

func TestEffective(t *testing.T) {
	s := mustParse(t, map[string]string{"b.yaml": basicConfig})
	b, err := json.Marshal(s.Effective())
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	for _, w := range []string{`"domain":"test-domain"`, `"file":"b.yaml"`, `"algorithm":"fixed_window"`, `"period":"1s"`, `"path":"key1=value1/subkey1=subvalue1"`, `"unlimited":true`, `"name":"PUBLIC_API"`} {
		if !strings.Contains(out, w) {
			t.Errorf("effective config lacks %s:\n%s", w, out)
		}
	}
}
