package conformance

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// SharedServer is one store over several opened on the same server, as several halt replicas
// share it: each Apply goes to the next, in turn. Run through RunConcurrency, it makes
// stores that batch their own concurrent calls (backends.Batcher) race each other, so
// that their lost races (the writes that must be decided again, never counted twice) are
// tested too. Delete, Ping and Close go to every one.
func SharedServer(stores ...backends.Store) backends.Store { return &replicas{stores: stores} }

type replicas struct {
	stores []backends.Store
	next   atomic.Uint64
}

func (r *replicas) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	return r.stores[(r.next.Add(1)-1)%uint64(len(r.stores))].Apply(ctx, now, ops)
}

func (r *replicas) Delete(ctx context.Context, keys ...string) error {
	return r.stores[0].Delete(ctx, keys...)
}

func (r *replicas) Ping(ctx context.Context) error {
	for _, s := range r.stores {
		if err := s.Ping(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (r *replicas) Close() error {
	var first error
	for _, s := range r.stores {
		if err := s.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// CountingIO is a compare-and-swap store's batched I/O that counts its batched reads:
// one round trip each (per server), what RunSharedRound counts.
type CountingIO struct {
	backends.BatchIO
	reads atomic.Uint64
}

// ReadBatch counts the read and makes it.
func (c *CountingIO) ReadBatch(ctx context.Context, keys []string, snaps []*backends.Snapshot) error {
	c.reads.Add(1)
	return c.BatchIO.ReadBatch(ctx, keys, snaps)
}

// Reads is how many batched reads were made.
func (c *CountingIO) Reads() uint64 { return c.reads.Load() }

// HeldBatcher returns a Batcher like a store's own over round, except that every round
// waits until release is called: what RunSharedRound needs to queue calls behind one.
func HeldBatcher(store string, round func(context.Context, []*backends.Call)) (b *backends.Batcher, release func()) {
	gate := make(chan struct{})
	var once sync.Once
	b = backends.NewBatcher(backends.BatchConfig{Store: store, Round: func(ctx context.Context, calls []*backends.Call) {
		<-gate
		round(ctx, calls)
	}})
	return b, func() { once.Do(func() { close(gate) }) }
}

// RunSharedRound checks that a store shares one round among the calls that arrive while
// a round is out, counting its round trips (roundTrips), never time: with b's rounds held
// (HeldBatcher), one call starts a round, 20 more queue behind it (4 each on 5 shared
// keys, and a key of their own), one more gives up while queued; then every hit is
// counted exactly once, the one that gave up not at all, in two round trips. st must use
// b, and a timeout of seconds (the calls wait while held).
func RunSharedRound(t *testing.T, st backends.Store, b *backends.Batcher, release func(), roundTrips func() uint64) {
	t.Helper()
	defer release()
	ctx := context.Background()
	now := base + 7*sec
	lim := algorithms.Limit{Requests: 100, Period: 60 * sec}
	prefix := UniqueKey(t)
	op := func(key string) *backends.Op {
		return &backends.Op{Key: prefix + key, Algorithm: algorithms.FixedWindow, Limit: lim, Cost: 1}
	}
	type answer struct {
		ops []*backends.Op
		err error
	}
	apply := func(ctx context.Context, ops ...*backends.Op) chan answer {
		ch := make(chan answer, 1)
		go func() { ch <- answer{ops, st.Apply(ctx, now, ops)} }()
		return ch
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second) // ends a hung test, no timing assertion
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("gave up waiting for %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	before, trips := b.Rounds(), roundTrips()
	first := apply(ctx, op("first"))
	wait("the first round", func() bool { return b.Rounds() == before+1 })
	const n = 20
	var queued []chan answer
	for i := 0; i < n; i++ {
		queued = append(queued, apply(ctx, op(fmt.Sprintf("k%d", i%5)), op(fmt.Sprintf("own%d", i))))
	}
	cctx, cancel := context.WithCancel(ctx)
	gaveUp := apply(cctx, op("gave-up"))
	wait("the calls to queue", func() bool { return b.Queued() == n+1 })
	cancel()
	if a := <-gaveUp; !errors.Is(a.err, backends.ErrUnavailable) {
		t.Fatalf("a caller that gave up while queued: %v", a.err)
	}
	release()
	if a := <-first; a.err != nil || a.ops[0].Result.Remaining != lim.Requests-1 {
		t.Fatalf("the first call: %v %+v", a.err, a.ops[0].Result)
	}
	for i, ch := range queued {
		a := <-ch
		if a.err != nil || !a.ops[0].Result.Allowed || a.ops[1].Result.Remaining != lim.Requests-1 {
			t.Fatalf("queued call %d: %v %+v %+v", i, a.err, a.ops[0].Result, a.ops[1].Result)
		}
	}
	if got := roundTrips() - trips; got != 2 {
		t.Fatalf("%d round trips for %d calls queued behind one, want 2", got, n)
	}
	count := func(key string, want int64) {
		t.Helper()
		o := &backends.Op{Key: prefix + key, Algorithm: algorithms.FixedWindow, Limit: lim}
		if err := applyOne(st, now, o); err != nil {
			t.Fatal(err)
		}
		if used := lim.Requests - o.Result.Remaining; used != want {
			t.Fatalf("%s counted %d hits, want %d", key, used, want)
		}
	}
	for i := 0; i < 5; i++ {
		count(fmt.Sprintf("k%d", i), n/5)
	}
	count("own0", 1)
	count("gave-up", 0)
}
