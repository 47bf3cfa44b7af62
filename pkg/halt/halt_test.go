package halt_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Berlin whatever the machine has in /usr/share/zoneinfo

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/memory"
	"github.com/halt-envoy/halt-envoy/pkg/halt"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newStore(t *testing.T) *memory.Store {
	t.Helper()
	s := memory.New(memory.Config{SweepInterval: -1})
	t.Cleanup(func() { s.Close() })
	return s
}

func TestLimiterTokenBucket(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
	lim, err := halt.NewLimiter(newStore(t), halt.Policy{Algorithm: algorithms.TokenBucket, Requests: 60, Per: time.Minute, Burst: 3}, halt.WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		d, err := lim.Allow(ctx, "user:42")
		if err != nil || !d.Allowed || d.Remaining != int64(2-i) || d.Limit != 3 {
			t.Fatalf("request %d: %+v, %v", i, d, err)
		}
	}
	d, err := lim.Allow(ctx, "user:42")
	if err != nil || d.Allowed || d.RetryAfter != time.Second {
		t.Fatalf("4th request: %+v, %v (want denied, retry after 1s)", d, err)
	}
	if d, _ := lim.Allow(ctx, "user:43"); !d.Allowed {
		t.Fatal("another key must have its own bucket")
	}
	clk.Add(time.Second)
	if d, _ := lim.Allow(ctx, "user:42"); !d.Allowed {
		t.Fatalf("after a refill interval: %+v", d)
	}
	// n = 0 peeks without taking (user:43 took one token and got it back in the second).
	p1, _ := lim.AllowN(ctx, "user:43", 0)
	p2, _ := lim.AllowN(ctx, "user:43", 0)
	if p1.Remaining != 3 || p2.Remaining != 3 {
		t.Fatalf("peeks changed the bucket: %+v %+v", p1, p2)
	}
	// A cost above the burst can never pass.
	if d, _ := lim.AllowN(ctx, "user:44", 4); d.Allowed || d.RetryAfter >= 0 {
		t.Fatalf("cost above capacity: %+v", d)
	}
	if err := lim.Reset(ctx, "user:42"); err != nil {
		t.Fatal(err)
	}
	if d, _ := lim.AllowN(ctx, "user:42", 0); d.Remaining != 3 {
		t.Fatalf("after Reset: %+v", d)
	}
}

func TestLimiterAlgorithmsAndValidation(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	store := newStore(t)
	for _, a := range []algorithms.Algorithm{algorithms.FixedWindow, algorithms.SlidingWindow, algorithms.SlidingWindowCounter, algorithms.LeakyBucket} {
		lim, err := halt.NewLimiter(store, halt.Policy{Algorithm: a, Requests: 2, Per: time.Hour}, halt.WithClock(clk))
		if err != nil {
			t.Fatalf("%s: %v", a, err)
		}
		for i := range 3 {
			d, err := lim.Allow(ctx, "k")
			if err != nil || d.Allowed != (i < 2) {
				t.Fatalf("%s request %d: %+v %v", a, i, d, err)
			}
		}
	}
	bad := []halt.Policy{
		{Requests: 10},                   // no period
		{Requests: -1, Per: time.Second}, // negative
		{Algorithm: algorithms.Calendar, Requests: 1, Per: time.Hour},
		{Algorithm: algorithms.FixedWindow, Requests: 1, Per: time.Hour, Burst: 5},
		{Requests: 10, Per: time.Second, MaxDelay: time.Second}, // max delay needs leaky bucket
		{Requests: 2_000_000, Per: time.Second},                 // too fast for a bucket
		{Requests: 10, Per: 1500 * time.Millisecond},            // the configuration counts whole seconds
	}
	for _, p := range bad {
		if _, err := halt.NewLimiter(store, p); !errors.Is(err, halt.ErrInvalid) {
			t.Errorf("%+v: err = %v, want ErrInvalid", p, err)
		}
	}
	lim, _ := halt.NewLimiter(store, halt.Policy{Requests: 1, Per: time.Second})
	for _, key := range []string{"", strings.Repeat("x", halt.MaxKeyLen+1)} {
		if _, err := lim.Allow(ctx, key); !errors.Is(err, halt.ErrInvalid) {
			t.Errorf("key of %d bytes: %v", len(key), err)
		}
	}
	if _, err := lim.AllowN(ctx, "k", -1); !errors.Is(err, halt.ErrInvalid) {
		t.Errorf("negative cost: %v", err)
	}
}

func TestLimitersDoNotShareCounters(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	perMin, _ := halt.NewLimiter(store, halt.Policy{Algorithm: algorithms.FixedWindow, Requests: 1, Per: time.Minute})
	perHour, _ := halt.NewLimiter(store, halt.Policy{Algorithm: algorithms.FixedWindow, Requests: 1, Per: time.Hour})
	named, _ := halt.NewLimiter(store, halt.Policy{Name: "exports", Algorithm: algorithms.FixedWindow, Requests: 1, Per: time.Minute})
	prefixed, _ := halt.NewLimiter(store, halt.Policy{Algorithm: algorithms.FixedWindow, Requests: 1, Per: time.Minute}, halt.WithKeyPrefix("tenant2:"))
	for _, l := range []*halt.Limiter{perMin, perHour, named, prefixed} {
		if d, err := l.Allow(ctx, "u"); err != nil || !d.Allowed {
			t.Fatalf("%+v: %+v %v", l.Policy(), d, err)
		}
	}
}

type failingStore struct{ backends.Store }

func (failingStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	for _, op := range ops {
		op.Err = backends.ErrUnavailable
	}
	return backends.ErrUnavailable
}

func TestStoreErrorsSurface(t *testing.T) {
	lim, _ := halt.NewLimiter(failingStore{}, halt.Policy{Requests: 1, Per: time.Second})
	if _, err := lim.Allow(context.Background(), "k"); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
}

func TestQuotaManager(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Date(2025, 1, 31, 23, 0, 0, 0, time.UTC)}
	qm := halt.NewQuotaManager(newStore(t), halt.WithClock(clk))
	q := halt.Quota{Period: halt.Monthly, Requests: 10}
	d, err := qm.CheckN(ctx, "c42", q, 7)
	if err != nil || !d.Allowed || d.Used != 7 || d.Remaining != 3 {
		t.Fatalf("CheckN 7: %+v %v", d, err)
	}
	if !d.PeriodStart.Equal(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)) || !d.PeriodEnd.Equal(time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("period %s .. %s", d.PeriodStart, d.PeriodEnd)
	}
	if d.ResetAfter != time.Hour {
		t.Fatalf("reset after %s", d.ResetAfter)
	}
	// Refused requests are not counted.
	if d, _ := qm.CheckN(ctx, "c42", q, 4); d.Allowed || d.Used != 7 || d.RetryAfter != time.Hour {
		t.Fatalf("CheckN 4 over the quota: %+v", d)
	}
	for range 3 {
		if d, _ := qm.Check(ctx, "c42", q); !d.Allowed {
			t.Fatalf("within quota: %+v", d)
		}
	}
	u, err := qm.Usage(ctx, "c42", q)
	if err != nil || u.Used != 10 || u.Remaining != 0 || u.Allowed {
		t.Fatalf("Usage: %+v %v", u, err)
	}
	if u2, _ := qm.Usage(ctx, "c42", q); u2 != u {
		t.Fatalf("Usage counted: %+v then %+v", u, u2)
	}
	// A Berlin-time daily quota is separate and uses its own calendar: 23:00 UTC is
	// already the next day in Berlin.
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	dq := halt.Quota{Name: "exports", Period: halt.Daily, Requests: 1, Location: berlin}
	if d, _ := qm.Check(ctx, "c42", dq); !d.Allowed || !d.PeriodEnd.Equal(time.Date(2025, 2, 2, 0, 0, 0, 0, berlin)) {
		t.Fatalf("daily Berlin quota: %+v", d)
	}
	if err := qm.Reset(ctx, "c42", q); err != nil {
		t.Fatal(err)
	}
	if u, _ := qm.Usage(ctx, "c42", q); u.Used != 0 || !u.Allowed {
		t.Fatalf("after Reset: %+v", u)
	}
	// The next month starts afresh.
	qm.CheckN(ctx, "c42", q, 10)
	clk.Add(time.Hour)
	if d, _ := qm.Check(ctx, "c42", q); !d.Allowed || d.Used != 1 {
		t.Fatalf("new month: %+v", d)
	}
	if _, err := qm.Check(ctx, "c42", halt.Quota{Period: 0, Requests: 1}); !errors.Is(err, halt.ErrInvalid) {
		t.Fatalf("bad period: %v", err)
	}
}

func TestPenaltyManager(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	pm, err := halt.NewPenaltyManager(newStore(t), halt.Penalty{Threshold: 3, Ladder: []time.Duration{time.Minute, 5 * time.Minute}, Decay: time.Hour}, halt.WithClock(clk))
	if err != nil {
		t.Fatal(err)
	}
	id := "ip:1.2.3.4"
	for i := range 2 {
		st, err := pm.RecordViolation(ctx, id, 1)
		if err != nil || st.Active || st.PointsLeft != int64(2-i) {
			t.Fatalf("violation %d: %+v %v", i, st, err)
		}
	}
	st, _ := pm.RecordViolation(ctx, id, 1)
	if !st.Active || st.Remaining != time.Minute || !st.Until.Equal(clk.Now().Add(time.Minute)) {
		t.Fatalf("third violation: %+v", st)
	}
	active, until, err := pm.Active(ctx, id)
	if err != nil || !active || !until.Equal(st.Until) {
		t.Fatalf("Active: %v %s %v", active, until, err)
	}
	clk.Add(time.Minute)
	if active, _, _ := pm.Active(ctx, id); active {
		t.Fatal("lockout outlived its step")
	}
	// Second lockout climbs the ladder.
	st, _ = pm.RecordViolation(ctx, id, 3)
	if !st.Active || st.Remaining != 5*time.Minute {
		t.Fatalf("second lockout: %+v", st)
	}
	if err := pm.Lift(ctx, id); err != nil {
		t.Fatal(err)
	}
	if st, _ := pm.Status(ctx, id); st.Active || st.PointsLeft != 3 {
		t.Fatalf("after Lift: %+v", st)
	}
	for _, p := range []halt.Penalty{
		{Threshold: 0, Ladder: []time.Duration{time.Minute}, Decay: time.Hour},
		{Threshold: 1, Decay: time.Hour},
		{Threshold: 1, Ladder: []time.Duration{time.Minute, time.Second}, Decay: time.Hour},
		{Threshold: 1, Ladder: []time.Duration{time.Minute}},
	} {
		if _, err := halt.NewPenaltyManager(newStore(t), p); !errors.Is(err, halt.ErrInvalid) {
			t.Errorf("%+v: %v", p, err)
		}
	}
	if _, err := pm.RecordViolation(ctx, id, 0); !errors.Is(err, halt.ErrInvalid) {
		t.Errorf("severity 0: %v", err)
	}
}

func TestConcurrentAllow(t *testing.T) {
	store := newStore(t)
	// A fixed clock: on the wall clock an hour's edge falling among the 400 calls would
	// open a second window and admit more than 100.
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	lim, _ := halt.NewLimiter(store, halt.Policy{Algorithm: algorithms.FixedWindow, Requests: 100, Per: time.Hour}, halt.WithClock(clk))
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for range 8 {
		wg.Go(func() {
			for range 50 {
				d, err := lim.Allow(context.Background(), "shared")
				if err != nil {
					t.Error(err)
					return
				}
				if d.Allowed {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if allowed != 100 {
		t.Fatalf("allowed %d of 400, want exactly 100", allowed)
	}
}
