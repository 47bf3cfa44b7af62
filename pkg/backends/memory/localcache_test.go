package memory

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/conformance"
)

// TestLocalCacheConformance: the memory store behind backends.LocalCache still decides
// exactly as the pure algorithms, on every timeline of the suite (skewed ones, where ops
// arrive older than the key's time, included); and the cache answered some of them.
func TestLocalCacheConformance(t *testing.T) {
	var mu sync.Mutex
	var caches []*backends.LocalCache
	conformance.Run(t, func(t *testing.T) backends.Store {
		c := backends.NewLocalCache(New(Config{SweepInterval: -1}), 1<<20)
		mu.Lock()
		caches = append(caches, c)
		mu.Unlock()
		return c
	}, conformance.Options{})
	var hits uint64
	for _, c := range caches {
		hits += c.Hits()
	}
	if hits == 0 {
		t.Error("the cache answered none of the suite's ops: the suite did not test it")
	}
}

// countingStore counts the ops that reach the store.
type countingStore struct {
	backends.Store
	mu  sync.Mutex
	ops int
}

func (s *countingStore) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	s.mu.Lock()
	s.ops += len(ops)
	s.mu.Unlock()
	return s.Store.Apply(ctx, now, ops)
}

// TestLocalCache: a key over its limit is answered locally until its window ends, with
// the store's Result; checks, other algorithms, another limit and a Delete go to the
// store; memory stays within the bound however many keys go over.
func TestLocalCache(t *testing.T) {
	inner := &countingStore{Store: New(Config{SweepInterval: -1})}
	c := backends.NewLocalCache(inner, 64<<10)
	defer c.Close()
	ctx := context.Background()
	const sec = int64(1_000_000)
	now := int64(1893456000)*sec + 10*sec // 10 s into a minute
	fw := algorithms.Limit{Requests: 2, Period: 60 * sec}
	apply := func(now int64, op *backends.Op) {
		t.Helper()
		if err := c.Apply(ctx, now, []*backends.Op{op}); err != nil {
			t.Fatal(err)
		}
	}
	hit := func(key string, a algorithms.Algorithm, l algorithms.Limit, cost int64) *backends.Op {
		return &backends.Op{Key: key, Algorithm: a, Limit: l, Cost: cost}
	}
	for range 2 {
		apply(now, hit("k", algorithms.FixedWindow, fw, 1))
	}
	before := inner.ops
	op := hit("k", algorithms.FixedWindow, fw, 1)
	apply(now+sec, op)
	want := algorithms.Result{Limit: 2, ResetAfter: 49 * sec, RetryAfter: 49 * sec, TTL: 49 * sec}
	if op.Result != want || inner.ops != before || c.Hits() != 1 {
		t.Fatalf("over limit: %+v (store ops %d -> %d, hits %d), want %+v from the cache", op.Result, before, inner.ops, c.Hits(), want)
	}
	// A cost above the limit can never pass.
	op = hit("k", algorithms.FixedWindow, fw, 3)
	apply(now+sec, op)
	if op.Result.RetryAfter != -1 {
		t.Errorf("cost above the limit: %+v", op.Result)
	}
	// Checks, another limit and a new window go to the store.
	for _, o := range []struct {
		what string
		now  int64
		op   *backends.Op
	}{
		{"a check", now + sec, hit("k", algorithms.FixedWindow, fw, 0)},
		{"another limit", now + sec, hit("k", algorithms.FixedWindow, algorithms.Limit{Requests: 3, Period: 60 * sec}, 1)},
		{"the next window", now + 50*sec, hit("k", algorithms.FixedWindow, fw, 1)},
	} {
		before = inner.ops
		apply(o.now, o.op)
		if inner.ops != before+1 {
			t.Errorf("%s was answered by the cache", o.what)
		}
	}
	// The next window admitted again (the store said so and replaced the entry).
	op = hit("k", algorithms.FixedWindow, fw, 1)
	apply(now+51*sec, op)
	if !op.Result.Allowed {
		t.Errorf("next window: %+v", op.Result)
	}
	// A token bucket is never cached.
	tb := algorithms.Limit{Requests: 1, Period: 60 * sec}
	apply(now, hit("tb", algorithms.TokenBucket, tb, 1))
	before = inner.ops
	apply(now, hit("tb", algorithms.TokenBucket, tb, 1))
	if inner.ops != before+1 {
		t.Error("a token bucket was answered by the cache")
	}
	// Delete through the cache: the next hit goes to the store and passes.
	for range 3 {
		apply(now, hit("d", algorithms.FixedWindow, fw, 1))
	}
	if err := c.Delete(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	op = hit("d", algorithms.FixedWindow, fw, 1)
	apply(now, op)
	if !op.Result.Allowed {
		t.Errorf("after Delete: %+v", op.Result)
	}
	// 64 KiB hold at most 64 KiB / (128 + key) entries, whatever goes over.
	for i := range 5000 {
		key := fmt.Sprintf("flood-%06d", i)
		apply(now, hit(key, algorithms.FixedWindow, algorithms.Limit{Requests: 0, Period: 60 * sec}, 1))
	}
	if max := (64 << 10) / (backends.LocalCacheEntryBytes + len("flood-000000")); c.Len() > max || c.Len() < max/2 {
		t.Errorf("%d keys cached in 64 KiB, want at most %d (and most of it used)", c.Len(), max)
	}
}
