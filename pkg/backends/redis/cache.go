package redis

import (
	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
	"github.com/halt-envoy/halt-envoy/pkg/backends/internal/denycache"
)

// denyCache remembers keys the server said are over their limit, for the algorithms
// where the server's answer until some instant is fully determined by that denial, so
// that an abusive client's hits are answered without a round trip:
//
//   - fixed_window, after a denial: the window's count is above the limit and only grows
//     until the window ends, so every hit with cost > 0 in that same window is denied with
//     Remaining 0 and ResetAfter = window end - now. (The server would also add the
//     denied hits to the count; the count being above the limit either way, no Result
//     differs.)
//   - calendar, once Remaining is 0: admitted cost only grows within the window and denied
//     cost is not counted, so every hit with cost > 0 is denied until the window end.
//   - penalty, while locked out: the state does not change at all until the lockout ends,
//     so every op (any cost) gets the same denial, computed from the lockout end.
//
// Token and leaky buckets and both sliding windows refill with time in ways that depend
// on the exact server state (which other replicas move), so they are never cached.
//
// Entries are tied to the exact Limit (a configuration change misses) and are replaced
// or dropped by every answer the server gives for the key in this process, so a clock
// that went forward and back again is handled exactly. An entry keeps the key's time the
// server reported (algorithms.StateTime) and answers at the time the server would decide
// at (algorithms.At): none of the answers it gives changes that time (a denied hit in a
// fixed window does not move it), so it stays the server's. What a cache cannot see is
// another replica's Delete (admin reset) or another replica whose clock is ahead; see
// the docs.
type denyCache struct {
	*denycache.Cache[cacheEntry]
}

type cacheEntry struct {
	alg   algorithms.Algorithm
	limit algorithms.Limit
	// from is the first time (microseconds, op clock) at which the entry answers; the
	// cache's instant is the last.
	from int64
	// ttlEnd is when the server-side state expires in op time (for Result.TTL).
	ttlEnd int64
	// keyTime is the key's time the server reported with the answer the entry was
	// learned from: ops are answered at algorithms.At(now, keyTime), as the server would.
	keyTime int64
}

// newDenyCache returns a cache of at most maxKeys keys (at least one per shard).
func newDenyCache(maxKeys int) *denyCache {
	return &denyCache{denycache.New[cacheEntry](int64(max(maxKeys, denycache.Shards)), func(string) int64 { return 1 })}
}

// cacheable reports whether op can ever be answered from the cache (denycache.Cacheable,
// penalties included: the key's time the script reports fixes a lockout's answer).
func cacheable(op *backends.Op) bool { return denycache.Cacheable(op.Algorithm, &op.Limit, true) }

// answer fills op.Result from a live entry and reports whether it did.
func (c *denyCache) answer(now int64, op *backends.Op) bool {
	if !cacheable(op) {
		return false
	}
	e, until, ok := c.Get(op.Key, now)
	if !ok || e.alg != op.Algorithm || e.limit != op.Limit {
		return false
	}
	at := algorithms.At(now, e.keyTime)
	if at < e.from || at >= until {
		return false
	}
	l := &op.Limit
	cost := op.Cost
	var r algorithms.Result
	// The waits count from at, the TTL from now (algorithms.Result).
	switch op.Algorithm {
	case algorithms.FixedWindow:
		if cost <= 0 || algorithms.WindowStart(at, l.Period) != e.from {
			return false
		}
		reset := until - at
		r = algorithms.Result{Limit: l.Requests, ResetAfter: reset, RetryAfter: reset, TTL: until - now}
	case algorithms.Calendar:
		if cost <= 0 {
			return false
		}
		reset := until - at
		r = algorithms.Result{Limit: l.Requests, ResetAfter: reset, RetryAfter: reset, TTL: until - now}
	case algorithms.Penalty:
		left := until - at
		r = algorithms.Result{Limit: l.Requests, ResetAfter: left, RetryAfter: left, TTL: max(0, e.ttlEnd-now)}
	}
	if op.Algorithm != algorithms.Penalty && cost > l.Requests {
		r.RetryAfter = -1
	}
	op.Result = r
	op.Err = nil
	return true
}

// learn records (or forgets) what the server just answered for op at now, leaving the
// key at keyTime.
func (c *denyCache) learn(now, keyTime int64, op *backends.Op) {
	switch op.Algorithm {
	case algorithms.FixedWindow, algorithms.Calendar, algorithms.Penalty:
	default:
		return // never cached
	}
	r := &op.Result
	// The time the server decided op at: the key's time after it is that time when op
	// changed the key, and the time op found when it did not.
	at := algorithms.At(now, keyTime)
	var e cacheEntry
	var until int64
	keep := false
	// An op the cache never answers (a report, a drain into debt) teaches nothing and
	// drops what the key held: it changed the key behind any entry.
	switch alg := op.Algorithm; {
	case !cacheable(op):
	case alg == algorithms.FixedWindow:
		if !r.Allowed && r.ResetAfter > 0 {
			// The window the server counted in (it may be a newer one than now's when
			// the clock went back); the entry answers only inside exactly that window.
			end := at + r.ResetAfter
			e.from, until = end-op.Limit.Period, end
			keep = true
		}
	case alg == algorithms.Calendar:
		// Only when it was decided in the op's own window (not a later one it found
		// the key in: algorithms.DecideCalendar).
		if r.Remaining == 0 && op.Limit.WindowEnd > at && at+r.ResetAfter == op.Limit.WindowEnd {
			e.from, until = minTime, op.Limit.WindowEnd
			keep = true
		}
	case alg == algorithms.Penalty:
		if !r.Allowed && r.ResetAfter > 0 {
			e.from, until = minTime, at+r.ResetAfter
			e.ttlEnd = now + r.TTL
			keep = true
		}
	}
	if !keep {
		c.Drop(op.Key)
		return
	}
	e.alg, e.limit, e.keyTime = op.Algorithm, op.Limit, keyTime
	c.Put(op.Key, e, until, now)
}

// minTime is earlier than any op time.
const minTime = -1 << 62
