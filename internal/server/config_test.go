package server

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/halt-envoy/halt-envoy/internal/config"
)

// TestConfigAdaptiveFactor: /config shows an adaptive rule's factor as decisions apply
// it. Without a source of factors (no --adaptive-prometheus) that is 1, the configured
// limit, not the rule's max.
func TestConfigAdaptiveFactor(t *testing.T) {
	var cur atomic.Pointer[config.Set]
	cur.Store(set(t, "domain: d\ndescriptors:\n  - key: api\n    rate_limit: {unit: minute, requests_per_unit: 10}\n    adaptive: {query: up, bad_above: 0.5, min: 0.2, max: 0.5}\n"))
	s := newServer(t, &cur, Options{})
	code, body := get(t, s, "/config")
	if code != 200 || !strings.Contains(body, `"adaptive": [`) || !strings.Contains(body, `"factor": 1`) || strings.Contains(body, `"factor": 0.5`) {
		t.Fatalf("/config: %d %s, want the factor Check applies (1)", code, body)
	}
}
