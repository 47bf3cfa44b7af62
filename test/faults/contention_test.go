package faults

import (
	"strings"
	"sync"
	"testing"

	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
)

// TestMemcachedHotKeyFailOpen: sixteen callers on one key of a limit of 100 through
// memcached at its default timeout (15 ms), each failure mode. Memcached decides by
// compare-and-swap, so under contention an op may give up (lost races, or the timeout)
// and its rule's failure mode answers. That is the only way past the limit: the calls
// the store decided admit exactly the limit, and with failure_mode allow every admission
// beyond it is a failed-open call, counted in halt_decisions_total{result="fail_open"}
// one for one; deny and error never admit beyond the limit. (Issue 15 saw 124-425
// admitted of 100 before the per-kind timeouts and the one CAS core.)
func TestMemcachedHotKeyFailOpen(t *testing.T) {
	addr := env(t, "MEMCACHED_ADDR")
	const limit, callers, each = 100, 16, 40
	h := newHarnessWith(t, "memcached://"+addr, 0, strings.Replace(rulesYAML, "requests_per_unit: 5, algorithm: token_bucket", "requests_per_unit: 100", 1))
	defer h.Close()
	rep := &report{}
	defer rep.log(t)
	for _, mode := range modes {
		user := h.freshUser()
		failOpen0 := counter(h.metrics[mode], "halt_decisions_total", "result", metrics.ResultFailOpen)
		var mu sync.Mutex
		admitted, refused, failed := 0, 0, 0
		var wg sync.WaitGroup
		for c := 0; c < callers; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					o := h.call(mode, user)
					mu.Lock()
					switch {
					case o.grpc != codes.OK:
						failed++
					case o.code == rlspb.RateLimitResponse_OK:
						admitted++
					default:
						refused++
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		failOpen := int(counter(h.metrics[mode], "halt_decisions_total", "result", metrics.ResultFailOpen) - failOpen0)
		rep.add("%-5s %d calls: admitted %d (failed open %d), refused %d, UNAVAILABLE %d", mode, callers*each, admitted, failOpen, refused, failed)
		switch mode {
		case config.FailAllow:
			if admitted-failOpen > limit {
				t.Errorf("allow: %d admitted, %d of them failed open: the store itself admitted %d of %d", admitted, failOpen, admitted-failOpen, limit)
			}
		default:
			if admitted > limit || failOpen != 0 {
				t.Errorf("%s: %d admitted (%d failed open) of a limit of %d", mode, admitted, failOpen, limit)
			}
		}
		if admitted+refused+failed != callers*each {
			t.Errorf("%s: %d answers for %d calls", mode, admitted+refused+failed, callers*each)
		}
	}
}
