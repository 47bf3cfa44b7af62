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

// The Engine: the YAML an Envoy mesh uses, asked one question per request with the
// descriptors Envoy would send. CheckN takes the time, as x/time/rate's AllowN does.
func ExampleEngine_CheckN() {
	store := memory.New(memory.Config{})
	defer store.Close()
	h, err := halt.New(store, halt.YAML(`
domain: api
descriptors:
  - key: customer
    descriptors:
      - key: plan
        plan_from_value: true     # the built-in plans: free 100/h, pro 2000/h, ...
  - key: path
    value: /v1/login
    policy: AUTH_BRUTE_FORCE      # a preset: 5 a minute
`))
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	d, _ := h.CheckN(ctx, now, "api", 1, halt.D("customer", "acme", "plan", "pro"))
	fmt.Println(d.Allowed, d.Policy, d.Limit, d.Remaining)
	for range 5 {
		h.CheckN(ctx, now, "api", 1, halt.D("path", "/v1/login"))
	}
	d, _ = h.CheckN(ctx, now, "api", 1, halt.D("path", "/v1/login"))
	status, body := d.Problem()
	fmt.Println(d.Allowed, d.Reason, d.RetryAfter, status)
	fmt.Println(string(body))
	// Output:
	// true pro 2000 1999
	// false rate 1m0s 429
	// {"detail":"rate limit exceeded","retry_after_seconds":60,"status":429,"title":"Too Many Requests","type":"about:blank","violated_policy":"AUTH_BRUTE_FORCE"}
}

// Limiter, QuotaManager and PenaltyManager: one rule each, built in code and decided by
// the same engine.
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

// A configuration built in code is the YAML it renders: New validates that, and the
// mesh can use it unchanged.
func ExampleBuild() {
	cfg := halt.Build(halt.Domain{
		Name:       "api",
		Exemptions: &halt.Exemptions{Paths: []string{"/healthz"}},
		Rules: []halt.Rule{
			{Key: "path", Value: "/v1/login", Policy: "AUTH_BRUTE_FORCE",
				Penalty: &halt.Penalty{Name: "stuffing", Threshold: 10, Ladder: []time.Duration{5 * time.Minute, time.Hour}, Decay: 6 * time.Hour}},
			{Key: "path", Value: "/v1/export", Cost: 10,
				Limits: []halt.Policy{{Name: "exports", Algorithm: algorithms.TokenBucket, Requests: 100, Per: time.Minute}},
				Quotas: []halt.Quota{{Period: halt.Monthly, Requests: 10000}}},
		},
	})
	docs, err := cfg.YAML()
	if err != nil {
		panic(err)
	}
	fmt.Print(docs["<domain api>"])
	store := memory.New(memory.Config{})
	defer store.Close()
	if _, err := halt.New(store, cfg); err != nil {
		panic(err)
	}
	// Output:
	// domain: api
	// penalties:
	//   stuffing:
	//     threshold: 10
	//     ladder:
	//       - 5m0s
	//       - 1h0m0s
	//     decay: 6h0m0s
	// exemptions:
	//   paths:
	//     - /healthz
	// descriptors:
	//   - key: path
	//     value: /v1/login
	//     policy: AUTH_BRUTE_FORCE
	//     penalty: stuffing
	//   - key: path
	//     value: /v1/export
	//     rate_limits:
	//       - name: exports
	//         unit: minute
	//         requests_per_unit: 100
	//         algorithm: token_bucket
	//     quotas:
	//       - period: monthly
	//         requests: 10000
	//     cost: 10
}
