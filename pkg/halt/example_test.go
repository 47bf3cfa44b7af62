package halt_test

import (
	"context"
	"fmt"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
	"github.com/halt-envoy/halt-envoy/pkg/halt"
)

// fixed is a clock that stands still, so the example's output is the same on every run.
type fixed time.Time

func (f fixed) Now() time.Time { return time.Time(f) }

func Example() {
	ctx := context.Background()
	store := memory.New(memory.Config{}) // or redis, postgres, ...: any backends.Store
	defer store.Close()
	clock := halt.WithClock(fixed(time.Date(2025, 6, 30, 22, 0, 0, 0, time.UTC)))

	// 100 requests a minute with bursts of 2. The second call takes the last token: it
	// is admitted, and says when the next one is back.
	lim, err := halt.NewLimiter(store, halt.Policy{Algorithm: algorithms.TokenBucket, Requests: 100, Per: time.Minute, Burst: 2}, clock)
	if err != nil {
		panic(err)
	}
	for range 3 {
		d, _ := lim.Allow(ctx, "user:42")
		fmt.Printf("allowed=%v remaining=%d retry_after=%s\n", d.Allowed, d.Remaining, d.RetryAfter)
	}

	// 10,000 requests per calendar month.
	qm := halt.NewQuotaManager(store, clock)
	monthly := halt.Quota{Period: halt.Monthly, Requests: 10000}
	qd, _ := qm.CheckN(ctx, "customer:c42", monthly, 250)
	fmt.Printf("quota used=%d remaining=%d resets=%s\n", qd.Used, qd.Remaining, qd.PeriodEnd.Format(time.RFC3339))

	// Three strikes: locked out for a minute, then five.
	pm, err := halt.NewPenaltyManager(store, halt.Penalty{Threshold: 3, Ladder: []time.Duration{time.Minute, 5 * time.Minute}, Decay: time.Hour}, clock)
	if err != nil {
		panic(err)
	}
	for range 3 {
		st, _ := pm.RecordViolation(ctx, "ip:203.0.113.7", 1)
		fmt.Printf("penalty active=%v points_left=%d lockout=%s\n", st.Active, st.PointsLeft, st.Remaining)
	}
	_ = pm.Lift(ctx, "ip:203.0.113.7")
	active, _, _ := pm.Active(ctx, "ip:203.0.113.7")
	fmt.Println("after lift: active =", active)

	// Output:
	// allowed=true remaining=1 retry_after=0s
	// allowed=true remaining=0 retry_after=600ms
	// allowed=false remaining=0 retry_after=600ms
	// quota used=250 remaining=9750 resets=2025-07-01T00:00:00Z
	// penalty active=false points_left=2 lockout=0s
	// penalty active=false points_left=1 lockout=0s
	// penalty active=true points_left=0 lockout=1m0s
	// after lift: active = false
}
