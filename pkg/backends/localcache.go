package backends

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends/internal/denycache"
)

// LocalCacheEntryBytes is what one entry of a LocalCache is counted as, besides its key:
// the entry itself and its share of the map, rounded up.
const LocalCacheEntryBytes = 128

// LocalCache is a Store that answers, without a round trip, the ops of keys the store
// said are over their limit until their window ends: the reference service's local
// over-limit cache (LOCAL_CACHE_SIZE_IN_BYTES), for any store. Under attack most calls
// are denials of a few keys; this keeps them off the network.
//
// Only the algorithms where the store's answer is fixed until a known instant are
// cached, and only from answers that show that instant:
//
//   - fixed_window, once a window has nothing left (Remaining 0): every hit with cost > 0
//     in that window is denied (the count only grows until the window ends), with
//     Remaining 0 and ResetAfter = RetryAfter = TTL = window end - now (RetryAfter -1
//     for a cost above the limit). The store would also add the denied hits to the
//     count; the count being at the limit or above either way, no Result differs.
//   - calendar, once Remaining is 0 in the op's own window: admitted cost only grows and
//     denied cost is not counted, so every hit with cost > 0 is denied until the window
//     ends.
//
// The window's end is now + TTL of the store's answer and the time the store decided it
// at is that end less ResetAfter (algorithms.Result counts waits from the decision time,
// the TTL from now). That time is not earlier than the key's time (the state's, which
// only an admitted hit or a new window moves), so an op at or after it is decided at its
// own now, which is what the cache answers; an older op goes to the store.
//
// Token and leaky buckets and both sliding windows refill continuously from state other
// replicas move, and a penalty's answer is not fixed by one denial: they always go to the
// store, as do checks (cost 0), refunds (a negative cost), report-only ops (Limit.Report)
// and calendar charges that may drain into debt. An entry is tied to the exact Limit (a
// configuration change misses), is replaced or dropped by every answer the store gives
// for its key (a refund's included), and is dropped by Delete through this cache. What it
// cannot see: a Delete (admin reset) or a refund through another replica, or another
// replica whose clock is ahead and already in the next window (this one keeps denying
// until the cached window ends); a key's time left more than algorithms.MaxSkew ahead by
// a replica whose clock is that far off, which the algorithms treat as broken (the cached
// wait is then longer than the store's by up to that lead).
//
// Memory is bounded by NewLocalCache's maxBytes: each of 32 shards holds a 32nd of it, an
// entry counting len(key) + LocalCacheEntryBytes; a full shard evicts (an expired entry
// if one of a few sampled is, else the first sampled).
type LocalCache struct {
	store  Store
	cache  *denycache.Cache[localEntry]
	hits   atomic.Uint64
	closed atomic.Bool
	pool   sync.Pool // *[]*Op, the ops sent on to the store
}

// localEntry is what a denial fixed, live until the window's end (the cache's instant).
type localEntry struct {
	alg   algorithms.Algorithm
	limit algorithms.Limit
	// from is the first op time (microseconds) the entry answers at.
	from int64
	// at is the time the store decided the answer the entry was learnt from, not earlier
	// than the key's time (algorithms.StateTime); an op older than it goes to the store,
	// which may decide it at the key's time (algorithms.At).
	at int64
}

// NewLocalCache returns st behind a local over-limit cache of at most maxBytes.
func NewLocalCache(st Store, maxBytes int64) *LocalCache {
	c := &LocalCache{store: st, cache: denycache.New[localEntry](maxBytes, localEntrySize)}
	c.pool.New = func() any { return new([]*Op) }
	return c
}

// localEntrySize is what a key's entry counts against the cache's bytes.
func localEntrySize(key string) int64 { return int64(len(key)) + LocalCacheEntryBytes }

// Hits reports how many ops the cache answered.
func (c *LocalCache) Hits() uint64 { return c.hits.Load() }

// Len reports how many keys the cache holds.
func (c *LocalCache) Len() int { return c.cache.Len() }

// Unwrap returns the store behind the cache.
func (c *LocalCache) Unwrap() Store { return c.store }

// Apply answers the ops it can from the cache and sends the others to the store in one
// call, then learns from the store's answers. The contract holds: every op has its
// answer, and the error is the first op's, in ops order.
func (c *LocalCache) Apply(ctx context.Context, now int64, ops []*Op) error {
	if c.cache.Len() == 0 || c.closed.Load() {
		err := c.store.Apply(ctx, now, ops)
		c.learnAll(now, ops)
		return err
	}
	bufp := c.pool.Get().(*[]*Op)
	rest := (*bufp)[:0]
	for _, op := range ops {
		if c.answer(now, op) {
			c.hits.Add(1)
			continue
		}
		rest = append(rest, op)
	}
	if len(rest) > 0 {
		_ = c.store.Apply(ctx, now, rest)
		c.learnAll(now, rest)
	}
	clear(rest)
	*bufp = rest[:0]
	c.pool.Put(bufp)
	for _, op := range ops {
		if op.Err != nil {
			return op.Err
		}
	}
	return nil
}

func (c *LocalCache) learnAll(now int64, ops []*Op) {
	for _, op := range ops {
		if op.Err == nil {
			c.learn(now, op)
		}
	}
}

// localCacheable reports whether op can ever be answered from the cache: a fixed window
// or a calendar quota (denycache.Cacheable; not a penalty, whose answer this cache, which
// sees no key time, cannot work out).
func localCacheable(op *Op) bool { return denycache.Cacheable(op.Algorithm, &op.Limit, false) }

// answer fills op.Result from a live entry and reports whether it did.
func (c *LocalCache) answer(now int64, op *Op) bool {
	if op.Cost <= 0 || !localCacheable(op) {
		return false
	}
	e, until, ok := c.cache.Get(op.Key, now)
	if !ok || e.alg != op.Algorithm || e.limit != op.Limit || now < e.from || now < e.at {
		return false
	}
	left := until - now
	op.Result = algorithms.Result{Limit: op.Limit.Requests, ResetAfter: left, RetryAfter: left, TTL: left}
	if op.Cost > op.Limit.Requests {
		op.Result.RetryAfter = -1
	}
	op.Err = nil
	return true
}

// learn records, replaces or drops the entry of op's key from the store's answer at now.
func (c *LocalCache) learn(now int64, op *Op) {
	if !localCacheable(op) {
		return
	}
	r := &op.Result
	var e localEntry
	var until int64
	keep := false
	// The window's end is now + TTL, and the time the store decided op at is that end
	// less ResetAfter (the algorithms count waits from that time and the TTL from now).
	end := now + r.TTL
	at := end - r.ResetAfter
	switch op.Algorithm {
	case algorithms.FixedWindow:
		// Decided inside the window it counted in (not a later one a broken clock left
		// the key in), at or after now.
		if p := op.Limit.Period; r.Remaining == 0 && r.ResetAfter > 0 && r.ResetAfter <= p && at >= now {
			e.from, until, e.at = end-p, end, at
			keep = true
		}
	case algorithms.Calendar:
		// Decided in the op's own window (not a later one it found the key in).
		if r.Remaining == 0 && r.Debt == 0 && r.ResetAfter > 0 && end == op.Limit.WindowEnd && at >= now {
			e.from, until, e.at = op.Limit.WindowStart, end, at
			keep = true
		}
	}
	if !keep {
		c.cache.Drop(op.Key)
		return
	}
	e.alg, e.limit = op.Algorithm, op.Limit
	c.cache.Put(op.Key, e, until, now)
}

// Delete drops keys from the cache (a reset here must not be undone by a cached denial)
// and from the store.
func (c *LocalCache) Delete(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		c.cache.Drop(k)
	}
	return c.store.Delete(ctx, keys...)
}

// Ping asks the store.
func (c *LocalCache) Ping(ctx context.Context) error { return c.store.Ping(ctx) }

// Close closes the store; later calls go to it (and fail as a closed store's do).
func (c *LocalCache) Close() error {
	c.closed.Store(true)
	return c.store.Close()
}
