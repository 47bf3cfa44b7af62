package memory

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// vmRSS reads the resident set size from /proc/self/status (0 where there is none).
func vmRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestMemoryBound pushes 5 million distinct keys through a store bounded to 1 million
// and checks that the bound holds, that evictions are counted, and that memory stays
// under a documented ceiling. Keys look like real descriptor keys (~40 bytes) and carry
// token-bucket state with an hour-long TTL, so nothing expires: every key over the bound
// is a live eviction.
//
// Under -race the sizes are divided by 10 (the detector's shadow memory would make the
// figure meaningless and the run slow); the bound is checked, memory is only logged.
func TestMemoryBound(t *testing.T) {
	testutil.SkipIfShort(t, "pushes 5 million keys")
	total, maxKeys := 5_000_000, 1_000_000
	if raceEnabled {
		total, maxKeys = total/10, maxKeys/10
	}
	// Ceiling for 1M keys: ~200 B/key (DefaultMaxKeys's estimate) plus the Go runtime
	// and map growth slack. The measured figure is in docs/operations.md.
	const rssCeiling = 600 << 20

	runtime.GC()
	rss0 := vmRSS()
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)

	var evicted atomic.Int64
	s := New(Config{MaxKeys: maxKeys, SweepInterval: -1, OnEvict: func() { evicted.Add(1) }})
	defer s.Close()
	lim := algorithms.Limit{Requests: 100, Period: 3_600_000_000}
	now := int64(1_700_000_000_000_000)
	// A few writers, as a server would have: it is faster and exercises the shard locks.
	workers := min(4, runtime.GOMAXPROCS(0))
	var peakRSS atomic.Uint64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			op := &backends.Op{Algorithm: algorithms.TokenBucket, Limit: lim, Cost: 1}
			ops := []*backends.Op{op}
			key := []byte("ratelimit_api_user_id_")
			base := len(key)
			for i := w; i < total; i += workers {
				key = strconv.AppendInt(key[:base], int64(i), 10)
				op.Key = string(key)
				if err := s.Apply(context.Background(), now, ops); err != nil {
					t.Error(err)
					return
				}
				if i%500_000 == 0 {
					if r := vmRSS(); r > peakRSS.Load() {
						peakRSS.Store(r)
					}
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	peak := max(peakRSS.Load(), vmRSS())
	runtime.GC()
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	rss1 := vmRSS()

	n := s.Len()
	perKey := float64(ms1.HeapInuse-ms0.HeapInuse) / float64(n)
	t.Logf("%d keys pushed by %d writers in %v (%.0f ns/key), %d held (bound %d), %d evicted",
		total, workers, took.Round(time.Millisecond), float64(took.Nanoseconds())/float64(total), n, maxKeys, s.Evicted())
	t.Logf("heap in use %.0f MiB after GC (%.0f B/key), runtime Sys %.0f MiB, VmRSS %.0f MiB before, peak %.0f MiB, %.0f MiB at the end (race=%v)",
		float64(ms1.HeapInuse)/(1<<20), perKey, float64(ms1.Sys)/(1<<20), float64(rss0)/(1<<20), float64(peak)/(1<<20), float64(rss1)/(1<<20), raceEnabled)

	// The bound is per shard (ceil(MaxKeys/64) each), so at most 63 over MaxKeys.
	if n > maxKeys+numShards {
		t.Errorf("holds %d keys, bound %d", n, maxKeys)
	}
	if n < maxKeys*9/10 {
		t.Errorf("holds only %d keys: eviction too eager (bound %d)", n, maxKeys)
	}
	if want := int64(total - n); s.Evicted() != want || evicted.Load() != want {
		t.Errorf("evictions counted %d (callback %d), want %d", s.Evicted(), evicted.Load(), want)
	}
	if !raceEnabled && rss0 > 0 && peak > rssCeiling {
		t.Errorf("resident memory peaked at %d MiB, ceiling %d MiB", peak>>20, rssCeiling>>20)
	}
}
