package faults

import (
	"context"
	"fmt"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rlcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlspb "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/engine"
	"github.com/halt-envoy/halt-envoy/internal/headers"
	"github.com/halt-envoy/halt-envoy/internal/metrics"
	"github.com/halt-envoy/halt-envoy/internal/rlsv3"
	"github.com/halt-envoy/halt-envoy/internal/testutil"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/all"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

// storeTimeout is the bound every faulted call must respect (plus latencyBound's slack).
const storeTimeout = 50 * time.Millisecond

// latencyBound is what a call may take while the store misbehaves: a generous multiple of
// the store timeout (conformance.Within), for a loaded 2-core CI machine and the race
// detector. It is a bound check, not a performance target.
var latencyBound = conformance.Within(storeTimeout)

// limitN is the per-key limit of the test rule: a fresh key admits exactly limitN.
const limitN = 5

const rulesYAML = `
domain: faults
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 5, algorithm: token_bucket}
`

var modes = []config.FailureMode{"allow", "deny", "error"}

// env returns a peer's address or skips (fails under HALT_TEST_PEERS=1) when unset.
func env(t testing.TB, name string) string {
	t.Helper()
	return testutil.Peer(t, name)
}

// harness is one store shared by three engines, one per failure mode, the way three
// halt deployments with different --failure-mode would see the same store.
type harness struct {
	t       *testing.T
	store   backends.Store
	svc     map[config.FailureMode]*rlsv3.Service
	metrics map[config.FailureMode]*metrics.Metrics
	seq     atomic.Int64
	prefix  string
}

func newHarness(t *testing.T, storeURL string) *harness {
	t.Helper()
	return newHarnessWith(t, storeURL, storeTimeout, rulesYAML)
}

// newHarnessWith is newHarness with its store timeout (0: the store kind's default) and
// rules.
func newHarnessWith(t *testing.T, storeURL string, timeout time.Duration, rules string) *harness {
	t.Helper()
	set, err := config.Parse(map[string][]byte{"faults.yaml": []byte(rules)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := all.Open(ctx, storeURL, backends.Options{Timeout: timeout})
	if err != nil {
		t.Fatalf("open %s: %v", backends.Redact(fmt.Errorf("%s", storeURL)), err)
	}
	h := &harness{t: t, store: store, svc: map[config.FailureMode]*rlsv3.Service{}, metrics: map[config.FailureMode]*metrics.Metrics{},
		prefix: fmt.Sprintf("%s-%d-", strings.ReplaceAll(t.Name(), "/", "."), time.Now().UnixNano())}
	clock := newRunningClock(t)
	for _, m := range modes {
		h.metrics[m] = metrics.New(nil)
		e, err := engine.New(engine.Config{
			Clock:       clock,
			Store:       store,
			StoreName:   "fault",
			Rules:       func() *config.Set { return set },
			Metrics:     h.metrics[m],
			FailureMode: m,
		})
		if err != nil {
			t.Fatal(err)
		}
		h.svc[m] = rlsv3.NewService(e, headers.Families{})
	}
	return h
}

func (h *harness) Close() { h.store.Close() }

// runningClock is the engines' decision clock: it starts at testutil.ClockStart (five
// minutes into an hour) and runs at the wall clock's pace, so that a test's calls against
// a window of an hour (TestMemcachedHotKeyFailOpen's fixed window) never straddle its
// edge, whatever the time of day, while buckets refill and timeouts pass as in production.
type runningClock struct{ start, since time.Time }

func newRunningClock(t *testing.T) runningClock {
	t.Helper()
	start, err := time.Parse(time.RFC3339, testutil.ClockStart)
	if err != nil {
		t.Fatal(err)
	}
	return runningClock{start: start, since: time.Now()}
}

// Now is the start plus the time elapsed since the clock was made.
func (c runningClock) Now() time.Time { return c.start.Add(time.Since(c.since)) }

// freshUser is a key nobody used before (across runs too: the prefix has a timestamp).
func (h *harness) freshUser() string {
	return fmt.Sprintf("%su%d", h.prefix, h.seq.Add(1))
}

// outcome is what a caller (Envoy) saw.
type outcome struct {
	code    rlspb.RateLimitResponse_Code // when err is nil
	grpc    codes.Code
	elapsed time.Duration
}

func (o outcome) String() string {
	if o.grpc != codes.OK {
		return o.grpc.String()
	}
	return o.code.String()
}

func (h *harness) call(mode config.FailureMode, user string) outcome {
	req := &rlspb.RateLimitRequest{Domain: "faults", Descriptors: []*rlcommon.RateLimitDescriptor{{
		Entries: []*rlcommon.RateLimitDescriptor_Entry{{Key: "user", Value: user}},
	}}}
	// Envoy's own deadline is far longer than the store timeout: the bound must come
	// from halt, not from the caller giving up.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := h.svc[mode].ShouldRateLimit(ctx, req)
	o := outcome{elapsed: time.Since(start), grpc: status.Code(err)}
	if err == nil {
		o.code = resp.OverallCode
	}
	return o
}

// counter reads halt_decisions_total{result=...} summed over domains and rules.
func counter(m *metrics.Metrics, family, label, value string) float64 {
	mfs, err := m.Registry.Gather()
	if err != nil {
		return -1
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != family {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					sum += mt.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// expectFailureMode checks that a failed store was answered as mode says.
func expectFailureMode(t *testing.T, mode config.FailureMode, o outcome) bool {
	t.Helper()
	var ok bool
	switch mode {
	case "allow":
		ok = o.grpc == codes.OK && o.code == rlspb.RateLimitResponse_OK
	case "deny":
		ok = o.grpc == codes.OK && o.code == rlspb.RateLimitResponse_OVER_LIMIT
	case "error":
		ok = o.grpc == codes.Unavailable
	}
	if !ok {
		t.Errorf("failure_mode %s: store down answered %s", mode, o)
	}
	return ok
}

// exactlyN checks that a fresh key admits exactly limitN, then denies: counting is right.
// Every call must reach the store (mode error turns a store failure into UNAVAILABLE). A
// round with a store failure proves nothing either way (a timed-out call may still have
// been applied), so it is retried with another fresh key, a few times at most; a round
// where every call was answered must give exactly limitN admissions.
func (h *harness) exactlyN(t *testing.T) {
	t.Helper()
	want := strings.TrimSpace(strings.Repeat("OK ", limitN) + "OVER_LIMIT OVER_LIMIT")
	var g string
	for round := 0; round < 5; round++ {
		user := h.freshUser()
		var got []string
		failed := false
		for i := 0; i < limitN+2; i++ {
			o := h.call("error", user)
			failed = failed || o.grpc != codes.OK
			got = append(got, o.String())
		}
		g = strings.Join(got, " ")
		if !failed {
			if g != want {
				t.Errorf("fresh key with limit %d: got %s, want %s", limitN, g, want)
			}
			return
		}
		t.Logf("store failure during the count check (retrying with a fresh key): %s", g)
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("fresh key with limit %d: the store kept failing: %s", limitN, g)
}

// waitRecovered polls until 3 calls in a row reached the store, and returns how long
// that took.
func (h *harness) waitRecovered(t *testing.T, within time.Duration) time.Duration {
	t.Helper()
	return h.waitStreak(t, within, 3)
}

// waitStreak polls with fresh keys until want calls in a row reached the store. A
// cluster needs a long streak: fresh keys must have landed on every master.
func (h *harness) waitStreak(t *testing.T, within time.Duration, want int) time.Duration {
	t.Helper()
	start := time.Now()
	streak := 0
	for streak < want {
		if h.call("error", h.freshUser()).grpc == codes.OK {
			streak++
		} else {
			streak = 0
		}
		if time.Since(start) > within {
			t.Fatalf("store not back %v after the fault was lifted", within)
		}
		if streak == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return time.Since(start)
}

// leakCheck returns a function that fails t if goroutines did not come back to the count
// seen now (within slack) after a settle period: timers, pools and relays must all end.
func leakCheck(t *testing.T) func() {
	t.Helper()
	before := runtime.NumGoroutine()
	return func() {
		t.Helper()
		const slack = 3
		deadline := time.Now().Add(10 * time.Second)
		n := runtime.NumGoroutine()
		for n > before+slack && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			n = runtime.NumGoroutine()
		}
		if n > before+slack {
			var b strings.Builder
			pprof.Lookup("goroutine").WriteTo(&b, 1)
			t.Errorf("goroutine leak: %d before, %d after settling\n%s", before, n, b.String())
		} else {
			t.Logf("goroutines: %d before, %d after", before, n)
		}
	}
}

// report collects measured figures for the summary printed at the end of a test.
type report struct {
	mu   sync.Mutex
	rows []string
}

func (r *report) add(format string, args ...any) {
	r.mu.Lock()
	r.rows = append(r.rows, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *report) log(t *testing.T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t.Logf("measured:\n  %s", strings.Join(r.rows, "\n  "))
}
