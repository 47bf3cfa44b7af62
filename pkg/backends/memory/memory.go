// Package memory is halt-envoy's embedded default store: a sharded, bounded map that
// decides with the pure algorithms under a per-shard lock.
package memory

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// DefaultMaxKeys bounds memory when the URL does not say otherwise. At the ~300 bytes a
// key measured by the memory-bound test it keeps the store near 300 MiB.
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

// shard holds its keys' states in fixed-size blocks of entries and maps each key to its
// entry's slot: an entry is 40 bytes with no pointer, allocated with its block, so a key
// costs its string, its map slot and 40 bytes (no object of its own for the collector to
// track), and a freed slot is reused by the next new key.
type shard struct {
	mu     sync.Mutex
	m      map[string]uint32
	blocks []*[blockSize]entry
	free   []uint32 // slots freed by deletions, reused first
	used   uint32   // slots handed out so far (free ones included)
	// logs holds the sliding log of the keys whose algorithm keeps one (sliding_window),
	// by slot: the only state that does not fit in an entry.
	logs map[uint32][]algorithms.Entry
	_    [48]byte // keep shards on separate cache lines (128 bytes each)
}

// blockSize is the number of entries allocated at once (10 KiB blocks).
const blockSize = 256

type entry struct {
	a, b, c, d int64 // algorithms.State's A..D
	expires    int64 // microseconds, on the clock of the ops that touched it
}

func (sh *shard) at(slot uint32) *entry { return &sh.blocks[slot/blockSize][slot%blockSize] }

// insert stores a new key's state (the key must not be present) in a free slot.
func (sh *shard) insert(key string, st *algorithms.State, expires int64) {
	var slot uint32
	if n := len(sh.free); n > 0 {
		slot, sh.free = sh.free[n-1], sh.free[:n-1]
	} else {
		if sh.used%blockSize == 0 {
			sh.blocks = append(sh.blocks, new([blockSize]entry))
		}
		slot = sh.used
		sh.used++
	}
	sh.m[key] = slot
	sh.store(slot, st, expires)
}

// store writes st and expires into slot.
func (sh *shard) store(slot uint32, st *algorithms.State, expires int64) {
	*sh.at(slot) = entry{a: st.A, b: st.B, c: st.C, d: st.D, expires: expires}
	switch {
	case len(st.Log) > 0:
		if sh.logs == nil {
			sh.logs = make(map[uint32][]algorithms.Entry)
		}
		sh.logs[slot] = st.Log
	case sh.logs != nil:
		delete(sh.logs, slot)
	}
}

// load returns the state in slot. Its log, if any, is the stored one (not a copy).
func (sh *shard) load(slot uint32) algorithms.State {
	e := sh.at(slot)
	st := algorithms.State{A: e.a, B: e.b, C: e.c, D: e.d}
	if sh.logs != nil {
		st.Log = sh.logs[slot]
	}
	return st
}

// remove deletes key (present in slot) and frees its slot.
func (sh *shard) remove(key string, slot uint32) {
	delete(sh.m, key)
	if sh.logs != nil {
		delete(sh.logs, slot)
	}
	*sh.at(slot) = entry{}
	sh.free = append(sh.free, slot)
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
		s.shards[i].m = make(map[string]uint32)
	}
	if cfg.SweepInterval > 0 {
		go s.sweepLoop()
	} else {
		close(s.done)
	}
	return s
}

func (s *Store) shardFor(key string) *shard {
	return &s.shards[maphash.String(s.seed, key)%numShards]
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

func (s *Store) apply(now int64, op *backends.Op) algorithms.Result {
	sh := s.shardFor(op.Key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	slot, ok := sh.m[op.Key]
	if !ok {
		var fresh algorithms.State
		r := algorithms.Decide(op.Algorithm, &fresh, now, &op.Limit, op.Cost)
		if r.TTL <= 0 || fresh.IsZero() {
			return r // nothing worth keeping
		}
		if len(sh.m) >= s.maxPer {
			s.evictOne(sh, now)
		}
		sh.insert(op.Key, &fresh, now+r.TTL)
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
	var victim string
	var victimSlot uint32
	var best int64
	n := 0
	for k, slot := range sh.m { // map iteration order is random: a free sample
		exp := sh.at(slot).expires
		if exp <= now {
			sh.remove(k, slot)
			s.keys.Add(-1)
			return
		}
		if n == 0 || exp < best {
			victim, victimSlot, best = k, slot, exp
		}
		if n++; n == 8 {
			break
		}
	}
	if n > 0 {
		sh.remove(victim, victimSlot)
		s.keys.Add(-1)
		s.evicted.Add(1)
		if s.cfg.OnEvict != nil {
			s.cfg.OnEvict()
		}
	}
}

// Delete removes keys.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		sh := s.shardFor(k)
		sh.mu.Lock()
		if slot, ok := sh.m[k]; ok {
			sh.remove(k, slot)
			s.keys.Add(-1)
		}
		sh.mu.Unlock()
	}
	return nil
}

// Peek returns a copy of the state stored under key, for admin reads and snapshots.
func (s *Store) Peek(key string, now int64) (algorithms.State, bool) {
	sh := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	slot, ok := sh.m[key]
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
		for k, slot := range sh.m {
			if sh.at(slot).expires <= now {
				sh.remove(k, slot)
				removed++
			}
		}
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
		for k, slot := range sh.m {
			if exp := sh.at(slot).expires; exp > now {
				st := sh.load(slot)
				if !fn(k, &st, exp) {
					sh.mu.Unlock()
					return
				}
			}
		}
		sh.mu.Unlock()
	}
}

// Restore inserts a state (from a snapshot) unless it is already expired at now.
func (s *Store) Restore(key string, st algorithms.State, expires, now int64) {
	if expires <= now {
		return
	}
	sh := s.shardFor(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if slot, ok := sh.m[key]; ok {
		sh.store(slot, &st, expires)
		return
	}
	if len(sh.m) >= s.maxPer {
		s.evictOne(sh, now)
	}
	s.keys.Add(1)
	sh.insert(key, &st, expires)
}
