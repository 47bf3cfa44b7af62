package faults

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/halt-envoy/halt-envoy/internal/testutil"
)

// contention is what a phase of concurrent callers saw.
type contention struct {
	calls, decided int
	// untilDecided is, per caller, how many calls it made before the store first decided
	// one (-1: never).
	untilDecided []int
	worst        time.Duration
}

// hammer runs callers goroutines calling on the hot keys (failure mode error, so that a
// decision of the store is OK or OVER_LIMIT and a failure is UNAVAILABLE) for d.
func (h *harness) hammer(callers int, hot []string, d time.Duration) contention {
	var mu sync.Mutex
	res := contention{untilDecided: make([]int, callers)}
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			first := -1
			n, decided := 0, 0
			var worst time.Duration
			for time.Now().Before(deadline) {
				o := h.call("error", hot[(c+n)%len(hot)])
				if o.grpc == codes.OK {
					decided++
					if first < 0 {
						first = n
					}
				}
				worst = max(worst, o.elapsed)
				n++
			}
			mu.Lock()
			res.calls += n
			res.decided += decided
			res.untilDecided[c] = first
			res.worst = max(res.worst, worst)
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	return res
}

// TestPostgresTightTimeout: with a 50 ms store timeout, eight callers on two hot keys
// (every call waits for the same rows' locks), then a network fault adding latency far
// beyond the timeout for a while. A timed-out call must not cost its connection (pgx
// closes a connection whose query context ends mid-flight, and a new one did not fit in
// 50 ms, so every call failed, before any fault and after it). The store decides calls
// under contention, decides them again within a few calls of the fault ending, and
// opens few connections. The share of calls decided depends on the machine (under the
// race detector at a load average of 40 on 2 cores, 70 % of them were); what is checked
// is that most are, where the collapse decided none, and that connections are kept.
func TestPostgresTightTimeout(t *testing.T) {
	testutil.SkipIfShort(t, "starts a private PostgreSQL")
	pg := testutil.StartPrivatePostgres(t)
	done := leakCheck(t)
	p := NewProxy(t, pg.Addr())
	h := newHarness(t, fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", p.Addr()))
	rep := &report{}
	defer rep.log(t)
	const callers = 8
	hot := []string{h.freshUser(), h.freshUser()}

	before := h.hammer(callers, hot, 3*time.Second)
	rep.add("contention, no fault: %d of %d calls decided by the store (worst %v); connections opened %d",
		before.decided, before.calls, before.worst.Round(time.Millisecond), p.Accepted())
	if before.decided*2 < before.calls {
		t.Errorf("contention without a fault: only %d of %d calls decided by the store", before.decided, before.calls)
	}

	p.SetLatency(200 * time.Millisecond) // each way: a round trip 8 times the timeout
	during := h.hammer(callers, hot, 2*time.Second)
	rep.add("latency 200 ms each way: %d of %d calls decided (worst %v); connections opened so far %d",
		during.decided, during.calls, during.worst.Round(time.Millisecond), p.Accepted())
	if during.worst > latencyBound {
		t.Errorf("a call took %v during the fault, the bound is %v", during.worst, latencyBound)
	}
	p.SetLatency(0)

	after := h.hammer(callers, hot, 3*time.Second)
	rep.add("after the fault: %d of %d calls decided; calls before each caller's first decision %v; connections opened in all %d",
		after.decided, after.calls, after.untilDecided, p.Accepted())
	for c, n := range after.untilDecided {
		if n < 0 || n > 50 {
			t.Errorf("caller %d: %d calls after the fault before the store decided one (-1: never)", c, n)
		}
	}
	if after.decided*2 < after.calls {
		t.Errorf("after the fault: only %d of %d calls decided by the store", after.decided, after.calls)
	}
	// The pool keeps its connections through timeouts: a handful of dials, not one per
	// timed-out call.
	if n := p.Accepted(); n > 24 {
		t.Errorf("%d connections opened for %d calls: timeouts churn connections", n, before.calls+during.calls+after.calls)
	}
	h.Close()
	p.Close()
	done()
}
