//go:build !race && unix

package engine_test

import "testing"

// TestCheckAllocs: a decision on the hot path (rate limits only, every descriptor
// admitted, one store round on the memory store) allocates once per call, whatever the
// number of descriptors: the string holding the round's store keys. Nothing is
// allocated per descriptor (keys, metrics lookups, events). An exact count of mallocs,
// independent of load; not under the race detector, whose sync.Pool drops pooled
// scratch at random (scripts/test.sh runs it in its stage without -race).
func TestCheckAllocs(t *testing.T) {
	for _, n := range []int{1, 5} {
		cb := newCheckBench(t, n, 1)
		cb.check(t, 0) // the key's state and the rule's counters exist: the steady state
		i := 0
		got := testing.AllocsPerRun(1000, func() {
			cb.check(t, i)
			i++
		})
		if got != 1 {
			t.Errorf("%d descriptors: %.0f allocations per call, want 1 (the round's keys)", n, got)
		}
	}
}
