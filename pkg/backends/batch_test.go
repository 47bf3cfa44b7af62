package backends

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// waitUntil polls cond; the bound only ends a test that hangs (no timing assertion).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// gatedRound is a pure-logic round for the Batcher's tests: it answers each op with its
// call's now as Remaining, after its gate opens, and records the calls of each round.
type gatedRound struct {
	gate   chan struct{}
	mu     sync.Mutex
	rounds [][]int64 // the nows of each round's calls
}

func (g *gatedRound) round(ctx context.Context, calls []*Call) {
	<-g.gate
	var nows []int64
	for _, c := range calls {
		nows = append(nows, c.Now)
		for _, op := range c.Ops {
			op.Result = algorithms.Result{Allowed: true, Remaining: c.Now}
		}
	}
	g.mu.Lock()
	g.rounds = append(g.rounds, nows)
	g.mu.Unlock()
}

func TestBatcherSharesRounds(t *testing.T) {
	g := &gatedRound{gate: make(chan struct{})}
	b := NewBatcher(BatchConfig{Store: "test", Round: g.round})
	defer b.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	apply := func(now int64) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ops := []*Op{{Key: "a"}, {Key: "b", Result: algorithms.Result{Limit: 7}, Err: errors.New("stale")}}
			if err := b.Apply(ctx, now, ops); err != nil {
				errs <- err
				return
			}
			for _, op := range ops {
				if op.Err != nil || op.Result != (algorithms.Result{Allowed: true, Remaining: now}) {
					errs <- fmt.Errorf("call %d: op %s answered %+v, %v", now, op.Key, op.Result, op.Err)
				}
			}
		}()
	}
	apply(1)
	waitUntil(t, "the first round", func() bool { return b.Rounds() == 1 })
	for now := int64(2); now <= 11; now++ {
		apply(now)
	}
	waitUntil(t, "the calls to queue", func() bool { return b.Queued() == 10 })
	close(g.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if b.Rounds() != 2 || len(g.rounds[1]) != 10 {
		t.Fatalf("rounds %v, want the 10 queued calls in the second", g.rounds)
	}
}

// TestBatcherCallerGivesUp: a caller whose context ends while its round is out gets
// ErrUnavailable at once, and the round, finishing later, never touches its ops; a call
// that gave up before its round started is not sent at all.
func TestBatcherCallerGivesUp(t *testing.T) {
	g := &gatedRound{gate: make(chan struct{})}
	b := NewBatcher(BatchConfig{Store: "test", Round: g.round})
	defer b.Close()
	out, cancelOut := context.WithCancel(context.Background())
	outOps := []*Op{{Key: "out"}}
	outErr := make(chan error, 1)
	go func() { outErr <- b.Apply(out, 1, outOps) }()
	waitUntil(t, "the first round", func() bool { return b.Rounds() == 1 })
	queued, cancelQueued := context.WithCancel(context.Background())
	queuedOps := []*Op{{Key: "queued"}}
	queuedErr := make(chan error, 1)
	go func() { queuedErr <- b.Apply(queued, 2, queuedOps) }()
	waitUntil(t, "the call to queue", func() bool { return b.Queued() == 1 })
	cancelOut()
	cancelQueued()
	for _, c := range []struct {
		err chan error
		ops []*Op
	}{{outErr, outOps}, {queuedErr, queuedOps}} {
		if err := <-c.err; !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) || !errors.Is(c.ops[0].Err, ErrUnavailable) {
			t.Fatalf("a caller that gave up: %v, op %v", err, c.ops[0].Err)
		}
	}
	close(g.gate)
	// A later call goes through, in a round without the one that gave up while queued.
	ops := []*Op{{Key: "later"}}
	if err := b.Apply(context.Background(), 3, ops); err != nil || ops[0].Result.Remaining != 3 {
		t.Fatalf("a later call: %v %+v", err, ops[0].Result)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, r := range g.rounds {
		for _, now := range r {
			if now == 2 {
				t.Fatalf("the call that gave up while queued was sent: rounds %v", g.rounds)
			}
		}
	}
	if outOps[0].Result != (algorithms.Result{}) {
		t.Fatalf("the round wrote into the ops of a caller that gave up: %+v", outOps[0].Result)
	}
}

func TestBatcherClose(t *testing.T) {
	g := &gatedRound{gate: make(chan struct{})}
	b := NewBatcher(BatchConfig{Store: "test", Round: g.round})
	first := make(chan error, 1)
	go func() { first <- b.Apply(context.Background(), 1, []*Op{{Key: "a"}}) }()
	waitUntil(t, "the first round", func() bool { return b.Rounds() == 1 })
	queued := make(chan error, 1)
	go func() { queued <- b.Apply(context.Background(), 2, []*Op{{Key: "b"}}) }()
	waitUntil(t, "the call to queue", func() bool { return b.Queued() == 1 })
	closed := make(chan struct{})
	go func() { b.Close(); close(closed) }()
	close(g.gate) // the round out finishes; Close then fails what is queued
	<-closed
	if err := <-first; err != nil {
		t.Fatalf("the round out: %v", err)
	}
	// The queued call is either failed by Close or was taken by the collector first.
	if err := <-queued; err != nil && !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a call queued at Close: %v", err)
	}
	if err := b.Apply(context.Background(), 3, []*Op{{Key: "c"}}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("after Close: %v", err)
	}
}
