package postgres

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// waitFor polls cond (no timing assertion: the bound only ends a test that hangs).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestConcurrentCallsShareRoundTrip holds the one pipeline's round trip on a row lock,
// queues calls meanwhile, and counts round trips: the queued calls go out in one. In
// that round a call with a key PostgreSQL refuses fails alone, a caller that gave up
// while queued is not sent (its hit is not counted) and gets its answer on its own
// deadline, and every other hit is counted exactly once.
func TestConcurrentCallsShareRoundTrip(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	s := openTest(t, dsn, table, Config{Pipelines: 1})
	defer s.Close()
	ctx := context.Background()
	lim := algorithms.Limit{Requests: 100, Period: 3600_000_000}
	now := time.Now().UnixMicro()
	op := func(key string) *backends.Op {
		return &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
	}
	if err := s.Apply(ctx, now, []*backends.Op{op("held")}); err != nil {
		t.Fatal(err)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, `SELECT 1 FROM `+s.names.table+` WHERE key = 'held' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	before := s.Rounds()
	type answer struct {
		ops []*backends.Op
		err error
	}
	apply := func(ctx context.Context, ops ...*backends.Op) chan answer {
		ch := make(chan answer, 1)
		go func() { ch <- answer{ops, s.Apply(ctx, now, ops)} }()
		return ch
	}
	held := apply(ctx, op("held"))
	waitFor(t, "the first round trip", func() bool { return s.Rounds() == before+1 })

	const n = 20
	var queued []chan answer
	for i := 0; i < n; i++ {
		queued = append(queued, apply(ctx, op(fmt.Sprintf("k%d", i%5)), op(fmt.Sprintf("own%d", i))))
	}
	bad := apply(ctx, op("nul\x00key"), op("beside-nul"))
	cctx, cancel := context.WithCancel(ctx)
	gaveUp := apply(cctx, op("gave-up"))
	waitFor(t, "the calls to queue", func() bool { return s.batch.Queued() == n+2 })
	cancel()
	if a := <-gaveUp; !errors.Is(a.err, backends.ErrUnavailable) || !errors.Is(a.ops[0].Err, context.Canceled) {
		t.Fatalf("a caller that gave up while queued: %v, op %v", a.err, a.ops[0].Err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-held; a.err != nil || a.ops[0].Result.Remaining != lim.Requests-2 {
		t.Fatalf("the held call: %v %+v", a.err, a.ops[0].Result)
	}
	for i, ch := range queued {
		a := <-ch
		if a.err != nil || !a.ops[0].Result.Allowed || !a.ops[1].Result.Allowed || a.ops[1].Result.Remaining != lim.Requests-1 {
			t.Fatalf("queued call %d: %v %+v %+v", i, a.err, a.ops[0].Result, a.ops[1].Result)
		}
	}
	a := <-bad
	if a.err == nil || a.ops[0].Err == nil || errors.Is(a.err, backends.ErrUnavailable) {
		t.Fatalf("a key PostgreSQL refuses: %v, op %v", a.err, a.ops[0].Err)
	}
	if got := s.Rounds(); got != before+2 {
		t.Fatalf("%d round trips for %d calls queued behind one, want 2", got-before, n+2)
	}
	// Every hit counted once; the call that gave up counted nothing.
	check := func(key string, want int64) {
		t.Helper()
		o := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim}
		if err := s.Apply(ctx, now, []*backends.Op{o}); err != nil {
			t.Fatal(err)
		}
		if used := lim.Requests - o.Result.Remaining; used != want {
			t.Fatalf("%s counted %d hits, want %d", key, used, want)
		}
	}
	for i := 0; i < 5; i++ {
		check(fmt.Sprintf("k%d", i), n/5)
	}
	check("gave-up", 0)
	check("beside-nul", 0) // its call's transaction failed as a whole
}
