// Package memory is halt-envoy's embedded default store: a sharded, bounded hash table
// that decides with the pure algorithms under a per-shard lock.
package memory

import (
	"context"
	"hash/maphash"
	"sync/atomic"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// DefaultMaxKeys bounds memory when the URL does not say otherwise. At the ~110 bytes a
// key measured by the memory-bound test it keeps the store near 110 MiB.
const DefaultMaxKeys = 1 << 20

const numShards = 64

// Config tunes a Store.
type Config struct {
	// MaxKeys is the most keys held; past it the key closest to expiry among a few
	// sampled is evicted (and counted). Zero means DefaultMaxKeys.
	MaxKeys int
	// SweepInterval is how often expired keys are removed. Zero means 10 s; negative
	// disables the background sweeper (tests call Sweep).
	SweepInterval time.Duration
	// Clock returns microseconds since the epoch for the sweeper. Nil means time.Now.
	Clock func() int64
	// OnEvict is called once per live key evicted to honour MaxKeys (for a metric).
	OnEvict func()
}

// Store is the in-memory backend. The zero value is not usable; call New.
type Store struct {
	shards  [numShards]shard
	seed    maphash.Seed
	maxPer  int
	keys    atomic.Int64
	evicted atomic.Int64
	cfg     Config
	stop    chan struct{}
	done    chan struct{}
	closed  atomic.Bool
}

// New returns a store and starts its sweeper.
func New(cfg Config) *Store {
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = func() int64 { return time.Now().UnixMicro() }
	}
	s := &Store{seed: maphash.MakeSeed(), cfg: cfg, stop: make(chan struct{}), done: make(chan struct{})}
	s.maxPer = (cfg.MaxKeys + numShards - 1) / numShards
	for i := range s.shards {
		sh := &s.shards[i]
		sh.seed = s.seed
		sh.rng = maphash.Comparable(s.seed, i) | 1
	}
	if cfg.SweepInterval > 0 {
		go s.sweepLoop()
	} else {
		close(s.done)
	}
	return s
}

// shardFor returns key's shard and key's hash (the shard's table places it by the rest).
func (s *Store) shardFor(key string) (*shard, uint64) {
	h := maphash.String(s.seed, key)
	return &s.shards[h%numShards], h
}

// Apply decides each op under its shard's lock.
func (s *Store) Apply(ctx context.Context, now int64, ops []*backends.Op) error {
	if s.closed.Load() {
		return backends.FailAll(ops, backends.ErrUnavailable)
	}
	for _, op := range ops {
		op.Err = nil
		op.Result = s.apply(now, op)
	}
	return nil
}

// PeekOps is backends.Peeker: each op decided at cost 0 on a copy of its key's state,
// nothing stored (a missing key stays missing, an entry's expiry is left as it is).
func (s *Store) PeekOps(_ context.Context, now int64, ops []*backends.Op) error {
	if s.closed.Load() {
		return backends.FailAll(ops, backends.ErrUnavailable)
	}
	var stored, scratch algorithms.State
	for _, op := range ops {
		sh, h := s.shardFor(op.Key)
		sh.mu.Lock()
		slot, _, ok := sh.find(op.Key, h)
		if ok {
			stored = sh.load(slot) // its Log is the shard's: PeekState decides on a copy
		}
		op.Result, op.Err = backends.PeekState(op, now, ok, &stored, &scratch), nil
		sh.mu.Unlock()
	}
	return nil
}

func (s *Store) apply(now int64, op *backends.Op) algorithms.Result {
	sh, h := s.shardFor(op.Key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	slot, _, ok := sh.find(op.Key, h)
	if !ok {
		var fresh algorithms.State
		r := algorithms.Decide(op.Algorithm, &fresh, now, &op.Limit, op.Cost)
		if r.TTL <= 0 || fresh.IsZero() {
			return r // nothing worth keeping
		}
		if int(sh.live) >= s.maxPer {
			s.evictOne(sh, now)
		}
		sh.insert(op.Key, h, &fresh, now+r.TTL)
		s.keys.Add(1)
		return r
	}
	// An entry past its expiry on this op's clock is decided on as it is: past its TTL a
	// state decides exactly as a fresh one for this op (algorithms.Result.TTL), and an op
	// from a replica whose clock is behind must still read it at its own time, as it
	// would on every other store. Expiry only frees memory (Sweep, eviction).
	st := sh.load(slot)
	r := algorithms.Decide(op.Algorithm, &st, now, &op.Limit, op.Cost)
	expires := sh.at(slot).expires
	if r.TTL > 0 {
		if exp := now + r.TTL; exp > expires || expires <= now {
			expires = exp
		}
	}
	sh.store(slot, &st, expires)
	return r
}

// evictOne makes room in a full shard: expired keys first, else the sampled key that
// would expire soonest (the one whose loss forgets the least).
func (s *Store) evictOne(sh *shard, now int64) {
	victimPos, victimSlot, n := -1, uint32(0), 0
	var best int64
	expired := false
	sh.sample(8, func(pos int, slot uint32) bool {
		exp := sh.at(slot).expires
		if exp <= now {
			victimPos, victimSlot, expired = pos, slot, true
			return false
		}
		if n == 0 || exp < best {
			victimPos, victimSlot, best = pos, slot, exp
		}
		n++
		return true
	})
	if victimPos < 0 {
		return
	}
	sh.removeAt(victimPos, victimSlot)
	s.keys.Add(-1)
	if expired {
		return
	}
	s.evicted.Add(1)
	if s.cfg.OnEvict != nil {
		s.cfg.OnEvict()
	}
}

// Delete removes keys.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		sh, h := s.shardFor(k)
		sh.mu.Lock()
		if slot, pos, ok := sh.find(k, h); ok {
			sh.removeAt(pos, slot)
			s.keys.Add(-1)
		}
		sh.mu.Unlock()
	}
	return nil
}

// Peek returns a copy of the state stored under key, for admin reads and snapshots.
func (s *Store) Peek(key string, now int64) (algorithms.State, bool) {
	sh, h := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	slot, _, ok := sh.find(key, h)
	if !ok || sh.at(slot).expires <= now {
		return algorithms.State{}, false
	}
	st := sh.load(slot)
	st.Log = append([]algorithms.Entry(nil), st.Log...)
	return st, true
}

// Len returns the number of keys held (a gauge for metrics).
func (s *Store) Len() int { return int(s.keys.Load()) }

// Evicted returns how many live keys were evicted to honour MaxKeys.
func (s *Store) Evicted() int64 { return s.evicted.Load() }

// Sweep removes every key expired at now and returns how many it removed. Each shard is
// locked on its own so a sweep never stalls the whole store.
func (s *Store) Sweep(now int64) int {
	removed := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.each(func(pos int, slot uint32) bool {
			if sh.at(slot).expires <= now {
				sh.removeAt(pos, slot)
				removed++
			}
			return true
		})
		sh.mu.Unlock()
	}
	s.keys.Add(int64(-removed))
	return removed
}

func (s *Store) sweepLoop() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.Sweep(s.cfg.Clock())
		}
	}
}

// Ping always succeeds while the store is open.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return backends.ErrUnavailable
	}
	return nil
}

// Close stops the sweeper. Later calls are no-ops.
func (s *Store) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		close(s.stop)
		<-s.done
	}
	return nil
}

// Range calls fn for every live key at now, one shard at a time, until fn returns false.
// It is how snapshots are written.
func (s *Store) Range(now int64, fn func(key string, st *algorithms.State, expires int64) bool) {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		stopped := false
		sh.each(func(_ int, slot uint32) bool {
			e := sh.at(slot)
			if e.expires > now {
				st := sh.load(slot)
				stopped = !fn(sh.keyOf(slot, e), &st, e.expires)
			}
			return !stopped
		})
		sh.mu.Unlock()
		if stopped {
			return
		}
	}
}

// Restore inserts a state (from a snapshot) unless it is already expired at now.
func (s *Store) Restore(key string, st algorithms.State, expires, now int64) {
	if expires <= now {
		return
	}
	sh, h := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if slot, _, ok := sh.find(key, h); ok {
		sh.store(slot, &st, expires)
		return
	}
	if int(sh.live) >= s.maxPer {
		s.evictOne(sh, now)
	}
	s.keys.Add(1)
	sh.insert(key, h, &st, expires)
}
