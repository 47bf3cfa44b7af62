package config

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestConsistencyResolved: local_first takes its defaults when the rate_limit leaves
// them out, keeps what it sets, and the view (/config, check, admin API) shows both;
// an exact limit shows "exact" and no local-first fields.
func TestConsistencyResolved(t *testing.T) {
	s := mustParse(t, map[string]string{"c.yaml": `domain: d
descriptors:
  - key: dflt
    rate_limit: {unit: minute, requests_per_unit: 10000, consistency: local_first}
  - key: set
    rate_limit: {unit: second, requests_per_unit: 500, algorithm: token_bucket, consistency: local_first, max_overshoot: 0.05, sync_interval: 250ms}
  - key: counter
    rate_limit: {unit: minute, requests_per_unit: 500, algorithm: sliding_window_counter, consistency: local_first, max_overshoot: 1e-3}
  - key: exact
    rate_limit: {unit: minute, requests_per_unit: 5, consistency: exact}
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: shared
    rate_limit: {unit: minute, requests_per_unit: 5, regions: shared}
  - key: sharedlf
    rate_limit: {unit: minute, requests_per_unit: 5000, algorithm: sliding_window_counter, consistency: local_first, regions: shared, sync_interval: 50ms}
  - key: own
    rate_limit: {unit: minute, requests_per_unit: 5, regions: own}
`})
	cases := []struct {
		key       string
		cons      Consistency
		overshoot float64
		sync      time.Duration
		view      string
	}{
		{"dflt", ConsistencyLocalFirst, 0.01, 100 * time.Millisecond, `"consistency":"local_first","max_overshoot":0.01,"sync_interval":"100ms"`},
		{"set", ConsistencyLocalFirst, 0.05, 250 * time.Millisecond, `"consistency":"local_first","max_overshoot":0.05,"sync_interval":"250ms"`},
		{"counter", ConsistencyLocalFirst, 0.001, 100 * time.Millisecond, `"consistency":"local_first","max_overshoot":0.001,"sync_interval":"100ms"`},
		{"exact", ConsistencyExact, 0, 0, `"consistency":"exact"}`},
		{"plain", "", 0, 0, `"consistency":"exact"}`},
		{"shared", "", 0, 100 * time.Millisecond, `"consistency":"exact","sync_interval":"100ms","regions":"shared"}`},
		{"sharedlf", ConsistencyLocalFirst, 0.01, 50 * time.Millisecond, `"consistency":"local_first","max_overshoot":0.01,"sync_interval":"50ms","regions":"shared"}`},
		{"own", "", 0, 0, `"consistency":"exact"}`},
	}
	for _, c := range cases {
		r, ok := s.Match("d", ents(c.key, "x"))
		if !ok || len(r.Limits) != 1 {
			t.Fatalf("%s: no rule", c.key)
		}
		l := &r.Limits[0]
		if l.Consistency != c.cons || l.MaxOvershoot != c.overshoot || l.SyncInterval != c.sync || l.LocalFirst() != (c.cons == ConsistencyLocalFirst) ||
			l.SharedRegions != strings.HasPrefix(c.key, "shared") {
			t.Errorf("%s: %q %v %v", c.key, l.Consistency, l.MaxOvershoot, l.SyncInterval)
		}
		b, _ := json.Marshal(r.View())
		if !strings.Contains(string(b), c.view) {
			t.Errorf("%s: view lacks %s:\n%s", c.key, c.view, b)
		}
	}
}

// TestConsistencyBadInput: every refusal names the file, line and field, and says why.
func TestConsistencyBadInput(t *testing.T) {
	cases := []struct {
		name, body string
		line       int
		field, msg string
	}{
		{"unknown consistency", "      unit: second\n      requests_per_unit: 1\n      consistency: eventual\n", 7, "consistency", `unknown consistency "eventual" (want exact or local_first)`},
		{"overshoot zero", "      unit: second\n      requests_per_unit: 1\n      consistency: local_first\n      max_overshoot: 0\n", 8, "max_overshoot", "between 0 and 1 (exclusive)"},
		{"overshoot one", "      unit: second\n      requests_per_unit: 1\n      consistency: local_first\n      max_overshoot: 1\n", 8, "max_overshoot", "between 0 and 1 (exclusive)"},
		{"overshoot negative", "      unit: second\n      requests_per_unit: 1\n      consistency: local_first\n      max_overshoot: -0.1\n", 8, "max_overshoot", "got -0.1"},
		{"overshoot percent", "      unit: second\n      requests_per_unit: 1\n      consistency: local_first\n      max_overshoot: 5%\n", 8, "max_overshoot", `got "5%"`},
		{"overshoot nan", "      unit: second\n      requests_per_unit: 1\n      consistency: local_first\n      max_overshoot: .nan\n", 8, "max_overshoot", "between 0 and 1"},
		{"overshoot inf", "      unit: second\n      requests_per_unit: 1\n      consistency: local_first\n      max_overshoot: .inf\n", 8, "max_overshoot", "between 0 and 1"},
		{"sync longer than window", "      unit: second\n      requests_per_unit: 1\n      consistency: local_first\n      sync_interval: 2s\n", 8, "sync_interval", "sync_interval 2s is longer than the limit's window (1s)"},
		{"sync multiplied window", "      unit: second\n      unit_multiplier: 10\n      requests_per_unit: 1\n      consistency: local_first\n      sync_interval: 11s\n", 9, "sync_interval", "longer than the limit's window (10s)"},
		{"sync too short", "      unit: second\n      requests_per_unit: 1\n      consistency: local_first\n      sync_interval: 10us\n", 8, "sync_interval", "must be at least 1ms"},
		{"sync not a duration", "      unit: second\n      requests_per_unit: 1\n      consistency: local_first\n      sync_interval: 100\n", 8, "sync_interval", "must be a duration"},
		{"sliding window", "      unit: second\n      requests_per_unit: 1\n      algorithm: sliding_window\n      consistency: local_first\n", 8, "consistency", "local_first is not supported by sliding_window: it keeps one log entry per request"},
		{"leaky bucket", "      unit: second\n      requests_per_unit: 1\n      algorithm: leaky_bucket\n      consistency: local_first\n", 8, "consistency", "local_first is not supported by leaky_bucket"},
		{"overshoot without local_first", "      unit: second\n      requests_per_unit: 1\n      max_overshoot: 0.1\n", 7, "max_overshoot", "max_overshoot applies to consistency: local_first only"},
		{"sync on exact", "      unit: second\n      requests_per_unit: 1\n      consistency: exact\n      sync_interval: 1ms\n", 8, "sync_interval", "applies to consistency: local_first only"},
		{"unlimited", "      unlimited: true\n      consistency: local_first\n", 6, "consistency", "should not specify consistency when unlimited"},
		{"unknown regions", "      unit: second\n      requests_per_unit: 1\n      regions: all\n", 7, "regions", `unknown regions "all" (want own or shared)`},
		{"regions token bucket", "      unit: second\n      requests_per_unit: 1\n      algorithm: token_bucket\n      regions: shared\n", 8, "regions", "regions: shared is not supported by token_bucket: its state is a time"},
		{"regions sliding window", "      unit: second\n      requests_per_unit: 1\n      algorithm: sliding_window\n      regions: shared\n", 8, "regions", "regions: shared is not supported by sliding_window"},
		{"regions leaky bucket", "      unit: second\n      requests_per_unit: 1\n      algorithm: leaky_bucket\n      regions: shared\n", 8, "regions", "regions: shared is not supported by leaky_bucket"},
		{"regions local_first token bucket", "      unit: second\n      requests_per_unit: 1\n      algorithm: token_bucket\n      consistency: local_first\n      regions: shared\n", 9, "regions", "regions: shared is not supported by token_bucket"},
		{"regions sync too long", "      unit: second\n      requests_per_unit: 1\n      regions: shared\n      sync_interval: 2s\n", 8, "sync_interval", "sync_interval 2s is longer than the limit's window (1s)"},
		{"regions unlimited", "      unlimited: true\n      regions: shared\n", 6, "regions", "should not specify regions when unlimited"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			le := parseErr(t, map[string]string{"f.yaml": rl(c.body)})
			for _, p := range le.Problems {
				if strings.Contains(p.Msg, c.msg) {
					if want := "descriptors[0].rate_limit." + c.field; p.Field != want || p.Line != c.line || p.File != "f.yaml" {
						t.Errorf("at %s:%d %s, want line %d %s: %s", p.File, p.Line, p.Field, c.line, want, p.Error())
					}
					if !strings.HasPrefix(p.Error(), fmt.Sprintf("f.yaml:%d:", c.line)) {
						t.Errorf("Error() = %q", p.Error())
					}
					return
				}
			}
			t.Fatalf("problems %q do not include %q", le.Error(), c.msg)
		})
	}
}
