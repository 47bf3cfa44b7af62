// Package denycache is the core that the local over-limit caches share
// (backends.LocalCache in front of any store, and the Redis store's own): a bounded map
// from store keys to what a denial fixed until an instant, in shards, with one eviction
// rule, and the one predicate of which ops such a cache may ever answer. What an entry
// holds and how an answer is worked out from it stay with each cache: LocalCache learns
// from the Result alone, the Redis store from the key time its script reports too.
package denycache

import (
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// Shards is the number of shards: a budget is split evenly between them.
const Shards = 32

// Cache maps store keys to entries of type E, each live until an instant (op time,
// microseconds). Its budget is in units that size gives each key (bytes, or 1 to count
// keys); a shard holds a Shards-th of it, and a full shard evicts. It is safe for
// concurrent use.
type Cache[E any] struct {
	seed     maphash.Seed
	perShard int64
	size     func(key string) int64
	n        atomic.Int64
	shards   [Shards]shard[E]
}

type shard[E any] struct {
	mu   sync.Mutex
	m    map[string]entry[E]
	used int64
	_    [40]byte // keeps shards' locks on separate cache lines
}

type entry[E any] struct {
	e     E
	until int64
}

// New returns an empty cache of budget units, each key costing size(key).
func New[E any](budget int64, size func(key string) int64) *Cache[E] {
	c := &Cache[E]{seed: maphash.MakeSeed(), perShard: budget / Shards, size: size}
	for i := range c.shards {
		c.shards[i].m = make(map[string]entry[E])
	}
	return c
}

// Len reports how many keys the cache holds.
func (c *Cache[E]) Len() int { return int(c.n.Load()) }

func (c *Cache[E]) shard(key string) *shard[E] {
	return &c.shards[maphash.String(c.seed, key)%Shards]
}

// Get returns key's entry and the instant it is live until, when it is live at now; an
// entry past its instant is dropped.
func (c *Cache[E]) Get(key string, now int64) (e E, until int64, ok bool) {
	if c.n.Load() == 0 {
		return e, 0, false // nothing held: no hash of the key either
	}
	sh := c.shard(key)
	sh.mu.Lock()
	x, ok := sh.m[key]
	if ok && now >= x.until {
		c.drop(sh, key)
		ok = false
	}
	sh.mu.Unlock()
	if !ok {
		return e, 0, false
	}
	return x.e, x.until, true
}

// Put records e for key, live until until, replacing key's entry. A new key in a full
// shard evicts first (an expired entry if one of a few sampled is, else the first
// sampled); a key larger than a shard's budget is not kept.
func (c *Cache[E]) Put(key string, e E, until, now int64) {
	size := c.size(key)
	if size > c.perShard {
		return
	}
	sh := c.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.m[key]; ok {
		sh.m[key] = entry[E]{e, until}
		return
	}
	for sh.used+size > c.perShard && len(sh.m) > 0 {
		c.evict(sh, now)
	}
	// A key of its own: the caller's may be a slice of a larger string (the engine
	// builds a round's keys as one), which the map would keep whole.
	sh.m[strings.Clone(key)] = entry[E]{e, until}
	sh.used += size
	c.n.Add(1)
}

// Drop removes key's entry, if any.
func (c *Cache[E]) Drop(key string) {
	if c.n.Load() == 0 {
		return
	}
	sh := c.shard(key)
	sh.mu.Lock()
	c.drop(sh, key)
	sh.mu.Unlock()
}

// drop removes key from sh; sh.mu is held.
func (c *Cache[E]) drop(sh *shard[E], key string) {
	if _, ok := sh.m[key]; !ok {
		return
	}
	delete(sh.m, key)
	sh.used -= c.size(key)
	c.n.Add(-1)
}

// evict makes room in sh (sh.mu held): an expired entry if one of a few sampled is, else
// the first sampled.
func (c *Cache[E]) evict(sh *shard[E], now int64) {
	var victim string
	n := 0
	for k, x := range sh.m {
		if x.until <= now {
			victim = k
			break
		}
		if n == 0 {
			victim = k
		}
		if n++; n == 8 {
			break
		}
	}
	c.drop(sh, victim)
}

// Cacheable reports whether an op of algorithm a under limit l can ever be answered from
// a local over-limit cache: a fixed window, a calendar quota, and (with penalties, for a
// cache that knows the key's time) a penalty lockout; never a report-only op (it is
// charged and never refused) nor a calendar op that may drain into debt (a denial then
// still charges).
func Cacheable(a algorithms.Algorithm, l *algorithms.Limit, penalties bool) bool {
	if l.Report {
		return false
	}
	switch a {
	case algorithms.FixedWindow:
		return true
	case algorithms.Penalty:
		return penalties
	case algorithms.Calendar:
		return !l.Drain || l.MaxDebt == 0
	}
	return false
}
