package stats

import (
	"context"
	"fmt"
	"testing"
	"time"

	gostats "github.com/lyft/gostats"
	dto "github.com/prometheus/client_model/go"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

type fixedClock struct{ t time.Time }

func (c *fixedClock) Now() time.Time { return c.t }

const testConfig = `
domain: d
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: route
    value_to_metric: true
    descriptors:
      - key: method
        descriptors:
          - key: subject
            rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: ip
    detailed_metric: true
    rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: path
    value: "/api/*"
    value_to_metric: true
    rate_limit: {unit: hour, requests_per_unit: 1000}
  - key: free
    rate_limit: {unlimited: true}
  - key: database
    value: users
    descriptors:
      - key: op
        rate_limit: {unit: hour, requests_per_unit: 1000}
`

// rig is a real engine on the memory store with a fixed clock, observed by Stats and
// by a gostats store on a sink that keeps what is flushed.
type rig struct {
	t    *testing.T
	e    *engine.Engine
	m    *metrics.Metrics
	sink *memSink
	st   gostats.Store
}

// memSink keeps the counters flushed to it (a gostats sink for pure-logic checks; the
// statsd wire is tested against statsd_exporter in sinks_test.go).
type memSink struct{ counters map[string]uint64 }

func (s *memSink) FlushCounter(name string, v uint64) { s.counters[name] += v }
func (s *memSink) FlushGauge(string, uint64)          {}
func (s *memSink) FlushTimer(string, float64)         {}

func newRig(t *testing.T, ratio float64, perRule, total int) *rig {
	t.Helper()
	sink := &memSink{counters: map[string]uint64{}}
	r := newRigSink(t, ratio, perRule, total, sink, nil)
	r.sink = sink
	return r
}

// newRigSink builds the rig on any gostats sink, with extra tags.
func newRigSink(t *testing.T, ratio float64, perRule, total int, sink gostats.Sink, tags map[string]string) *rig {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"d.yaml": []byte(testConfig)})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.Discard()
	m.SetKeyCaps(perRule, total)
	store := gostats.NewStore(sink, false)
	s, err := New(Options{Metrics: m, NearLimitRatio: ratio, Store: store, ExtraTags: tags})
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.New(memory.Config{})
	t.Cleanup(func() { mem.Close() })
	e, err := engine.New(engine.Config{
		Store: mem, StoreName: "memory", Rules: func() *config.Set { return set },
		Clock: &fixedClock{time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}, Metrics: m,
		Observers: []engine.Observer{s},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, e: e, m: m, st: store}
}

func (r *rig) call(hits uint64, kv ...string) engine.Code {
	r.t.Helper()
	var ents []config.Entry
	for i := 0; i+1 < len(kv); i += 2 {
		ents = append(ents, config.Entry{Key: kv[i], Value: kv[i+1]})
	}
	dec := make([]engine.Decision, 1)
	if _, err := r.e.Check(context.Background(), "d", []engine.Descriptor{{Entries: ents, Hits: hits}}, dec); err != nil {
		r.t.Fatal(err)
	}
	return dec[0].Code
}

// want checks halt's Prometheus counters and the reference's stats of one key.
func (r *rig) want(key string, total, over, near, within, shadow uint64) {
	r.t.Helper()
	r.st.Flush()
	for i, w := range []uint64{total, over, near, within, shadow} {
		name := "ratelimit.service.rate_limit.d." + key + suffixes[i]
		if got := r.sink.counters[name]; got != w {
			r.t.Errorf("%s = %d, want %d", name, got, w)
		}
		vec := [nStats]*dtoVec{{r.m, "halt_rule_hits_total"}, {r.m, "halt_rule_over_limit_hits_total"}, {r.m, "halt_rule_near_limit_hits_total"}, {r.m, "halt_rule_within_limit_hits_total"}, {r.m, "halt_rule_shadow_mode_hits_total"}}[i]
		if got := vec.value(r.t, "d", key); got != float64(w) {
			r.t.Errorf("%s{key=%q} = %v, want %d", vec.name, key, got, w)
		}
	}
}

type dtoVec struct {
	m    *metrics.Metrics
	name string
}

func (v *dtoVec) value(t *testing.T, domain, key string) float64 {
	t.Helper()
	mfs, err := v.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != v.name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			if label(mt, "domain") == domain && label(mt, "key") == key {
				return mt.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// TestHitsAsTheReference: one hit at a time against a limit of 10 with ratio 0.8 gives
// the reference's counts (threshold floor(10 x 0.8) = 8): 8 within only, 2 within and
// near, 2 over.
func TestHitsAsTheReference(t *testing.T) {
	r := newRig(t, 0.8, 0, 0)
	for i := 1; i <= 12; i++ {
		want := engine.CodeOK
		if i > 10 {
			want = engine.CodeOverLimit
		}
		if got := r.call(1, "user", "a"); got != want {
			t.Fatalf("call %d: %v, want %v", i, got, want)
		}
	}
	r.want("user", 12, 2, 2, 10, 0)
}

// TestHitsAddend counts hits, not calls: calls of 3 hits (3, 6, 9 used) put the part of
// the third past 8 in near_limit, as the reference's checkNearLimitThreshold does; a
// check (hits 0) counts nothing.
func TestHitsAddend(t *testing.T) {
	r := newRig(t, 0.8, 0, 0)
	for range 3 {
		r.call(3, "user", "b")
	}
	r.call(0, "user", "b")
	r.want("user", 9, 0, 1, 9, 0)
	// Past the limit: the whole call is over (see OnDecision).
	r.call(3, "user", "b")
	r.want("user", 12, 3, 1, 9, 0)
}

// TestNearLimitRatio: another ratio moves the threshold (floor(10 x 0.5) = 5).
func TestNearLimitRatio(t *testing.T) {
	r := newRig(t, 0.5, 0, 0)
	for range 7 {
		r.call(1, "user", "c")
	}
	r.want("user", 7, 0, 2, 7, 0)
}

// TestShadowMode: over the limit, a shadow rule answers OK and counts over_limit and
// shadow_mode, as the reference does.
func TestShadowMode(t *testing.T) {
	r := newRig(t, 0.8, 0, 0)
	for range 4 {
		if got := r.call(1, "shadow", "x"); got != engine.CodeOK {
			t.Fatalf("shadow rule answered %v", got)
		}
	}
	// limit 2: threshold floor(1.6) = 1, so the 2nd hit is near; 3rd and 4th over.
	r.want("shadow", 4, 2, 1, 2, 2)
}

// TestKeys: the reference's keys: a configured path, value_to_metric putting the
// request's value in (the full value, past a wildcard), detailed_metric the whole
// descriptor; unlimited rules count nothing.
func TestKeys(t *testing.T) {
	r := newRig(t, 0.8, 0, 0)
	r.call(1, "route", "api", "method", "GET", "subject", "123")
	r.call(2, "route", "web", "method", "POST", "subject", "456")
	r.call(1, "ip", "10.0.0.1")
	r.call(1, "path", "/api/v1/items")
	r.call(1, "database", "users", "op", "read")
	r.call(5, "free", "x")
	r.want("route_api.method.subject", 1, 0, 0, 1, 0)
	r.want("route_web.method.subject", 2, 0, 0, 2, 0)
	r.want("ip_10.0.0.1", 1, 0, 0, 1, 0)
	r.want("path_/api/v1/items", 1, 0, 0, 1, 0)
	r.want("database_users.op", 1, 0, 0, 1, 0)
	r.want("free", 0, 0, 0, 0, 0)
}

// TestCardinalityCap floods a detailed_metric rule and a value_to_metric rule with
// distinct values (issue 15: one series per value, without bound): each rule keeps at
// most its cap of keys, the whole at most the total, and every hit is still counted,
// beyond the cap under KEY.__overflow__.
func TestCardinalityCap(t *testing.T) {
	const perRule, total, flood = 50, 80, 2000
	r := newRig(t, 0.8, perRule, total)
	for i := range flood {
		r.call(1, "ip", fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255))
	}
	for i := range flood {
		r.call(1, "route", fmt.Sprint("r", i), "method", "GET", "subject", "s")
	}
	if n := r.m.RuleKeys().Len(); n != total {
		t.Errorf("%d request-valued keys admitted, want the total cap %d", n, total)
	}
	r.st.Flush()
	keys := map[string]int{}
	var hits uint64
	for name, v := range r.sink.counters {
		if len(name) > len(".total_hits") && name[len(name)-len(".total_hits"):] == ".total_hits" {
			keys[name]++
			hits += v
		}
	}
	if hits != 2*flood {
		t.Errorf("%d hits counted, want %d", hits, 2*flood)
	}
	// ip got its 50, route the 30 left of the total; one overflow key each.
	if len(keys) != total+2 {
		t.Errorf("%d total_hits series, want %d", len(keys), total+2)
	}
	ipOver := r.sink.counters["ratelimit.service.rate_limit.d.ip."+metrics.OverflowKey+".total_hits"]
	routeOver := r.sink.counters["ratelimit.service.rate_limit.d.route.method.subject."+metrics.OverflowKey+".total_hits"]
	if ipOver != flood-perRule || routeOver != flood-(total-perRule) {
		t.Errorf("overflow hits ip %d route %d, want %d and %d", ipOver, routeOver, flood-perRule, flood-(total-perRule))
	}
	// Prometheus: the same bound.
	mfs, _ := r.m.Registry.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "halt_rule_hits_total" && len(mf.GetMetric()) != total+2 {
			t.Errorf("halt_rule_hits_total has %d series, want %d", len(mf.GetMetric()), total+2)
		}
	}
}

// TestNearHits pins the arithmetic against the reference's formulas, cost included.
func TestNearHits(t *testing.T) {
	for _, c := range []struct {
		limit, remaining int64
		n                uint64
		cost             int64
		ratio            float32
		want             uint64
	}{
		{10, 2, 1, 1, 0.8, 0}, // after 8: at the threshold, not past it
		{10, 1, 1, 1, 0.8, 1}, // after 9
		{10, 1, 3, 1, 0.8, 1}, // 6 -> 9: one hit past 8
		{10, 0, 5, 1, 0.8, 2}, // 5 -> 10: two past 8
		{10, 0, 1, 1, 0.8, 1}, // 9 -> 10
		{3, 0, 1, 1, 0.8, 1},  // floor(2.4) = 2
		{10, 4, 1, 2, 0.5, 1}, // cost 2: 4 -> 6 crosses 5
		{10, 5, 1, 2, 0.5, 0}, // 3 -> 5
		{100, 0, 1, 1, 1, 0},  // ratio 1: never near
		{100, 99, 1, 1, 0, 1}, // ratio 0: every admitted hit
		{1 << 40, 0, 1, 1, 0.8, 1},
	} {
		if got := nearHits(c.limit, c.remaining, c.n, c.cost, c.ratio); got != c.want {
			t.Errorf("nearHits(%+v) = %d, want %d", c, got, c.want)
		}
	}
}

func TestRatioChecked(t *testing.T) {
	for _, r := range []float64{-0.1, 1.5} {
		if _, err := New(Options{NearLimitRatio: r}); err == nil {
			t.Errorf("ratio %v accepted", r)
		}
	}
}

// TestNotUTF8Values: request values that are not UTF-8 (internal/wire decides such
// calls on their bytes) become U+FFFD in the key; two that differ only there share one
// series, and /metrics still gathers.
func TestNotUTF8Values(t *testing.T) {
	r := newRig(t, 0.8, 0, 0)
	r.call(1, "ip", "10.0.0.\xff")
	r.call(2, "ip", "10.0.0.\xfe")
	if _, err := r.m.Registry.Gather(); err != nil {
		t.Fatalf("gather: %v", err)
	}
	r.want("ip_10.0.0.\uFFFD", 3, 0, 0, 3, 0)
}
