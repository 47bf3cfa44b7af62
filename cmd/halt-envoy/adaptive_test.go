package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// TestBinaryAdaptive: the binary with --adaptive-prometheus lowers an adaptive rule's
// limit while the signal (a real Prometheus scraping a failing upstream) is bad: the
// RateLimitService answers the limit in force, /config and /metrics show the factor.
// Wall time passes (Prometheus scrapes in real time); the wait is a generous bound.
func TestBinaryAdaptive(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# TYPE upstream_error_ratio gauge\nupstream_error_ratio 0.9\n")
	}))
	t.Cleanup(upstream.Close)
	prom := testutil.StartPrometheus(t, fmt.Sprintf("global: {scrape_interval: 1s, scrape_timeout: 1s}\nscrape_configs:\n  - job_name: upstream\n    static_configs:\n      - targets: [%q]\n",
		strings.TrimPrefix(upstream.URL, "http://")), "")
	dir := t.TempDir()
	writeConfig(t, dir, "limits.yaml", `
domain: adapt
descriptors:
  - key: route
    rate_limit: {unit: hour, requests_per_unit: 100}
    adaptive: {query: max(upstream_error_ratio), interval: 1s, bad_above: 0.5, min: 0.2}
`)
	p := start(t, "--config", dir, "--adaptive-prometheus", prom, "--adaptive-lag", "2s")
	rls := rlspb.NewRateLimitServiceClient(p.client(t))
	limit := func() uint32 {
		r, err := rls.ShouldRateLimit(context.Background(), rlReq("adapt", "route", "x"))
		if err != nil {
			t.Fatal(err)
		}
		return r.Statuses[0].GetCurrentLimit().GetRequestsPerUnit()
	}
	// 1 -> 0.5 -> 0.25 -> 0.2 (the floor) after three bad instants.
	testutil.WaitFor(t, 90*time.Second, func() bool { return limit() == 20 })
	cfg := get(t, "http://"+p.HTTPAddr+"/config")
	if !strings.Contains(cfg, `"adaptive": [`) || !strings.Contains(cfg, `"factor": 0.2`) || !strings.Contains(cfg, `"query": "max(upstream_error_ratio)"`) {
		t.Fatalf("/config: %s", cfg)
	}
	if m := get(t, "http://"+p.HTTPAddr+"/metrics"); !strings.Contains(m, `halt_adaptive_factor{domain="adapt",rule="route"} 0.2`) {
		t.Fatalf("/metrics has no factor of 0.2")
	}
	if !strings.Contains(p.Log.String(), "adaptive: the factor in force changed") {
		t.Fatalf("no change logged:\n%s", p.Log.String())
	}

	// halt-envoy check prints the block, and with --adaptive-prometheus the factor now
	// and the limit in force, as the server computes them.
	var out, errb bytes.Buffer
	args := []string{"check", "--config", dir, "--domain", "adapt", "--descriptor", "route=x"}
	if code := run(t.Context(), args, &out, &errb, os.Getenv); code != 0 {
		t.Fatalf("check: exit %d: %s", code, errb.String())
	}
	if w := "adaptive max(upstream_error_ratio) every 1s: factor 0.2..1 (x0.5 above 0.5, +0.1 below 0.5)"; !strings.Contains(out.String(), w) || strings.Contains(out.String(), "factor   ") {
		t.Fatalf("check without Prometheus: %q missing, or a factor printed:\n%s", w, out.String())
	}
	out.Reset()
	if code := run(t.Context(), append(args, "--adaptive-prometheus", prom, "--adaptive-lag", "2s"), &out, &errb, os.Getenv); code != 0 {
		t.Fatalf("check: exit %d: %s", code, errb.String())
	}
	if w := "factor   0.2 now, fixed_window: 20 per 1h0m0s in force"; !strings.Contains(out.String(), w) {
		t.Fatalf("check with Prometheus: %q missing:\n%s\n%s", w, out.String(), errb.String())
	}
	out.Reset()
	if code := run(t.Context(), append(args, "--json", "--adaptive-prometheus", prom, "--adaptive-lag", "2s"), &out, &errb, os.Getenv); code != 0 || !strings.Contains(out.String(), `"factor": 0.2`) {
		t.Fatalf("check --json: exit %d:\n%s", code, out.String())
	}
}
