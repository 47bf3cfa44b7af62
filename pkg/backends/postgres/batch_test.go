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
// that round an op whose key PostgreSQL refuses fails alone, a caller that gave up
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
	if a.err == nil || a.ops[0].Err == nil || errors.Is(a.err, backends.ErrUnavailable) || a.ops[1].Err != nil {
		t.Fatalf("a key PostgreSQL refuses: %v, ops %v, %v", a.err, a.ops[0].Err, a.ops[1].Err)
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
	check("beside-nul", 1)
}

// TestMergedRoundFailsApart: when the one statement of a merged round fails on one
// call's op (here a stored state that overflows a bigint), nothing of it was written
// (its transaction rolled back), and the calls are sent again apart: the bad call fails
// alone, every other hit is counted exactly once, in two round trips for the round.
func TestMergedRoundFailsApart(t *testing.T) {
	dsn := testDSN(t)
	table := tempTable(t, dsn)
	s := openTest(t, dsn, table, Config{Pipelines: 1})
	defer s.Close()
	ctx := context.Background()
	const per = 3600_000_000
	now := time.Now().UnixMicro()/per*per + 1
	lim := algorithms.Limit{Requests: 100, Period: per}
	op := func(key string, alg algorithms.Algorithm) *backends.Op {
		return &backends.Op{Key: key, Algorithm: alg, Limit: lim, Cost: 1}
	}
	if err := s.Apply(ctx, now, []*backends.Op{op("held", algorithms.FixedWindow)}); err != nil {
		t.Fatal(err)
	}
	// A sliding-window counter whose stored counts overflow a bigint when added.
	if _, err := s.pool.Exec(ctx, `INSERT INTO `+s.names.table+` (key, a, b, c, d, expires_at) VALUES ('overflow', $1, $2, $3, $4, $5)`,
		now-1, int64(1)<<62+int64(1)<<61, int64(1)<<62, now, now+per); err != nil {
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
	apply := func(ops ...*backends.Op) chan answer {
		ch := make(chan answer, 1)
		go func() { ch <- answer{ops, s.Apply(ctx, now, ops)} }()
		return ch
	}
	held := apply(op("held", algorithms.FixedWindow))
	waitFor(t, "the first round trip", func() bool { return s.Rounds() == before+1 })
	good := []chan answer{apply(op("a", algorithms.FixedWindow)), apply(op("z", algorithms.FixedWindow), op("a", algorithms.FixedWindow))}
	bad := apply(op("overflow", algorithms.SlidingWindowCounter), op("b", algorithms.FixedWindow))
	good = append(good, apply(op("b", algorithms.FixedWindow)))
	waitFor(t, "the calls to queue", func() bool { return s.batch.Queued() == 4 })
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-held; a.err != nil {
		t.Fatal(a.err)
	}
	for i, ch := range good {
		if a := <-ch; a.err != nil {
			t.Fatalf("good call %d: %v", i, a.err)
		}
	}
	a := <-bad
	t.Logf("the call that overflows: %v", a.err)
	if a.err == nil || errors.Is(a.err, backends.ErrUnavailable) {
		t.Fatalf("the call that overflows: %v", a.err)
	}
	if got := s.Rounds(); got != before+2 {
		t.Fatalf("%d rounds, want 2", got-before)
	}
	for key, want := range map[string]int64{"a": 2, "z": 1, "b": 1} {
		o := &backends.Op{Key: key, Algorithm: algorithms.FixedWindow, Limit: lim}
		if err := s.Apply(ctx, now, []*backends.Op{o}); err != nil {
			t.Fatal(err)
		}
		if used := lim.Requests - o.Result.Remaining; used != want {
			t.Fatalf("%s counted %d hits, want %d", key, used, want)
		}
	}
}
