package config

import (
	"errors"
	"testing"
)

// FuzzParse: no input panics, every failure is a located *LoadError, and every Set that
// loads can be matched against.
func FuzzParse(f *testing.F) {
	f.Add([]byte(basicConfig))
	f.Add([]byte(matchConfig))
	f.Add([]byte(saasConfig))
	f.Add([]byte("domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - {unit: second, requests_per_unit: 5, algorithm: token_bucket, burst: 9}\n"))
	f.Add([]byte("domain: d\npolicies:\n  P: {rate_limit: {unit: minute, requests_per_unit: 1, algorithm: leaky_bucket, max_delay: 1s}}\ndescriptors:\n  - {key: k, policy: P}\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("domain: d\n---\ndomain: e\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(map[string][]byte{"f.yaml": data})
		if err != nil {
			var le *LoadError
			if !errors.As(err, &le) || len(le.Problems) == 0 {
				t.Fatalf("error without problems: %v", err)
			}
			for _, p := range le.Problems {
				if p.File != "f.yaml" || p.Line < 1 || p.Column < 1 {
					t.Fatalf("unlocated problem %+v", p)
				}
			}
			return
		}
		for _, d := range s.Domains() {
			s.Match(d, []Entry{{"k", "v"}, {"path", "/api/x"}})
			s.Match(d, []Entry{{"customer", "c"}, {"plan", "pro"}})
			s.Exempt(d, []Entry{{"path", "/healthz"}, {"remote_address", "10.0.0.1"}, {"user", "x"}})
		}
		_ = s.Effective()
		_ = s.PlanNames()
	})
}
