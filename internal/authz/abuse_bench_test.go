package authz_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/authz"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
)

// BenchmarkCheckAbuse measures what the abuse detectors add to one ext_authz Check
// (in process, memory store), next to the same Check without them: each detector costs
// store rounds on every call. Besides ns/op it reports cpu-ns/op. The thresholds are set so that nothing is ever detected:
// this is the price of watching, paid by every legitimate call.
//
//	go test -run '^$' -bench BenchmarkCheckAbuse -benchmem ./internal/authz/
func BenchmarkCheckAbuse(b *testing.B) {
	for _, c := range []struct{ name, abuse string }{
		{"none", ""},
		{"fanout", "abuse:\n  penalty: abuse\n  fanout: {window: 1m, max: 1000}\n"},
		{"network_change", "abuse:\n  penalty: abuse\n  network_change: {window: 1h, max: 1000}\n"},
		{"spike", "abuse:\n  penalty: abuse\n  spike: {window: 1m, half_life: 20m, min: 1000000000}\n"},
		{"all", "abuse:\n  penalty: abuse\n  fanout: {window: 1m, max: 1000}\n  auth_failures: {window: 1m, max: 1000}\n  network_change: {window: 1h, max: 1000}\n  spike: {window: 1m, half_life: 20m, min: 1000000000}\n"},
	} {
		b.Run(c.name, func(b *testing.B) {
			dir := b.TempDir()
			os.WriteFile(filepath.Join(dir, "keys.yaml"), []byte("api_keys:\n  - {sha256: "+sum(proKey)+", customer: acme, plan: pro}\n"), 0o644)
			os.WriteFile(filepath.Join(dir, "authz.yaml"), []byte("domain: edge\napi_keys_file: keys.yaml\n"+c.abuse), 0o644)
			cfg, err := authz.LoadConfig(filepath.Join(dir, "authz.yaml"))
			if err != nil {
				b.Fatal(err)
			}
			set, err := config.Parse(map[string][]byte{"l.yaml": []byte(`
domain: edge
default_plan: pro
plans:
  pro:
    rate_limit: {unit: second, requests_per_unit: 1000000000}
penalties:
  abuse: {threshold: 2, ladder: [1m], decay: 1h}
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true
`)})
			if err != nil {
				b.Fatal(err)
			}
			store := memory.New(memory.Config{})
			defer store.Close()
			eng, err := engine.New(engine.Config{Store: store, Rules: func() *config.Set { return set }})
			if err != nil {
				b.Fatal(err)
			}
			srv := authz.New(eng, func() *config.Set { return set }, func() *authz.Config { return cfg }, nil, nil)
			r := req("GET", "/v1/items/1", public, map[string]string{"x-api-key": proKey})
			ctx := context.Background()
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			for b.Loop() {
				resp, err := srv.Check(ctx, r)
				if err != nil || resp.GetOkResponse() == nil {
					b.Fatalf("%v %v", resp, err)
				}
			}
			// The process's CPU time per call (getrusage), GC included: on a shared,
			// loaded machine wall time measures the queue for a core.
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

func cpuTime(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
