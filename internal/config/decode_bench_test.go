package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// exampleFiles returns the files under config/, as Load would read them.
func exampleFiles(t testing.TB) map[string][]byte {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "config")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, e := range ents {
		if isYAML(e.Name()) {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			files[e.Name()] = b
		}
	}
	return files
}

// largeConfig generates one file that uses every kind of mapping the decoder knows, n
// top-level descriptors with two children each: 3n descriptors in all.
func largeConfig(n int) []byte {
	var b strings.Builder
	b.WriteString("domain: large\nfailure_mode: deny\ntime_zone: Europe/Berlin\ndefault_plan: gold\n")
	b.WriteString("policies:\n  P:\n    rate_limits:\n      - {unit: second, requests_per_unit: 50, algorithm: token_bucket, burst: 100}\n      - {unit: day, requests_per_unit: 100000}\n    failure_mode: allow\n")
	b.WriteString("plans:\n  gold:\n    rate_limit: {unit: hour, requests_per_unit: 3000, algorithm: token_bucket}\n    quotas: [{period: monthly, requests: 100000}, {name: d, period: daily, requests: 5000}]\n    penalty: abuse\n")
	b.WriteString("penalties:\n  abuse: {threshold: 3, severity: 1, ladder: [1m, 5m, 30m, 24h], decay: 1h}\n")
	b.WriteString("exemptions:\n  paths: [/healthz, \"/internal/*\"]\n  private_ranges: true\n  cidrs: [203.0.113.0/24]\n  values: [{key: user, value: health}]\n")
	b.WriteString("descriptors:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  - key: k%d\n    value: v%d\n    shadow_mode: false\n    detailed_metric: true\n    cost: 2\n", i, i)
		switch i % 4 {
		case 0:
			fmt.Fprintf(&b, "    rate_limit:\n      unit: minute\n      requests_per_unit: %d\n      name: lim%d\n      replaces: [{name: other}]\n", 10+i, i)
		case 1:
			b.WriteString("    rate_limits:\n      - {unit: second, requests_per_unit: 5, algorithm: leaky_bucket, burst: 9, max_delay: 250ms}\n      - {unit: hour, requests_per_unit: 900, algorithm: sliding_window_counter, unit_multiplier: 2}\n")
		case 2:
			b.WriteString("    policy: P\n    quota: {period: daily, requests: 1000, time_zone: UTC}\n    penalty: abuse\n")
		case 3:
			b.WriteString("    plan: gold\n")
		}
		b.WriteString("    descriptors:\n")
		b.WriteString("      - key: path\n        value: \"/api/*\"\n        share_threshold: true\n        rate_limit: {unit: second, requests_per_unit: 100, algorithm: token_bucket}\n")
		b.WriteString("      - key: user\n        rate_limit: {unit: minute, requests_per_unit: 60, failure_mode: error}\n        allow_algorithm_override: true\n")
	}
	return []byte(b.String())
}

func TestLargeConfigParses(t *testing.T) {
	s := mustParse(t, map[string]string{"large.yaml": string(largeConfig(50))})
	if r, ok := s.Match("large", ents("k5", "v5", "user", "u")); !ok || r.Limits[0].Params.Requests != 60 {
		t.Errorf("Match = %+v, %v", r, ok)
	}
}

// BenchmarkParse measures decoding, validation and resolution: the files under config/,
// and one generated file of 3,000 descriptors.
//
//	go test -run '^$' -bench BenchmarkParse -benchmem ./internal/config/
func BenchmarkParse(b *testing.B) {
	b.Run("examples", func(b *testing.B) {
		files := exampleFiles(b)
		n := 0
		for _, c := range files {
			n += len(c)
		}
		b.SetBytes(int64(n))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := Parse(files); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("large", func(b *testing.B) {
		files := map[string][]byte{"large.yaml": largeConfig(1000)}
		b.SetBytes(int64(len(files["large.yaml"])))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := Parse(files); err != nil {
				b.Fatal(err)
			}
		}
	})
}
