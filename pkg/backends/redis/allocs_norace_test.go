//go:build !race

package redis

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

// TestApplyAllocs: an Apply of five ops (Envoy's several descriptors) allocates no more
// than an Apply of one: one script call carrying every key, whose keys go-redis receives
// as pointers into the call (go-redis's EvalSha boxed each key into an interface{} of its
// own, one allocation per op). Unbatched, so that the count is the call's own; without
// the eviction watch (its INFO reads would be counted) and the local cache. A count of
// mallocs averaged over many calls, independent of load; not under the race detector,
// whose sync.Pool drops pooled buffers (go-redis's) at random (scripts/test.sh runs it in
// its stage without -race).
func TestApplyAllocs(t *testing.T) {
	s := mustOpen(t, "redis://"+testutil.Peer(t, "REDIS_ADDR")+"?batch=false&local_cache=false&watch_interval=0", backends.Options{Timeout: testTimeout})
	defer s.Close()
	p := conformance.UniqueKey(t)
	lim := algorithms.Limit{Requests: 1 << 40, Period: 3_600_000_000}
	now := time.Now().UnixMicro()
	got := map[int]float64{}
	for _, n := range []int{1, 5} {
		ops := make([]*backends.Op, n)
		for i := range ops {
			ops[i] = &backends.Op{Key: fmt.Sprintf("%s:%d:%d", p, n, i), Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
		}
		apply := func() {
			if err := s.Apply(context.Background(), now, ops); err != nil {
				t.Fatal(err)
			}
		}
		apply() // the connection and the keys exist: the steady state
		got[n] = testing.AllocsPerRun(500, apply)
	}
	t.Logf("allocations per Apply: %.0f with 1 op, %.0f with 5", got[1], got[5])
	if got[5] > got[1] {
		t.Errorf("an Apply of 5 ops allocates %.0f times, of 1 op %.0f: something is allocated per op", got[5], got[1])
	}
}
