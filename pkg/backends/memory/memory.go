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

type shard struct {
	mu sync.Mutex
	m  map[string]*entry
	_  [40]byte // keep shards on separate cache lines
}

type entry struct {
	state   algorithms.State
	expires int64 // microseconds, on the clock of the ops that touched it
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
		s.shards[i].m = make(map[string]*entry)
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
	e := sh.m[op.Key]
	if e == nil {
		var fresh algorithms.State
		r := algorithms.Decide(op.Algorithm, &fresh, now, &op.Limit, op.Cost)
		if r.TTL <= 0 || fresh.IsZero() {
			return r // nothing worth keeping
		}
		if len(sh.m) >= s.maxPer {
			s.evictOne(sh, now)
		}
		sh.m[op.Key] = &entry{state: fresh, expires: now + r.TTL}
		s.keys.Add(1)
		return r
	}
	// An entry past its expiry on this op's clock is decided on as it is: past its TTL a
	// state decides exactly as a fresh one for this op (algorithms.Result.TTL), and an op
	// from a replica whose clock is behind must still read it at its own time, as it
	// would on every other store. Expiry only frees memory (Sweep, eviction).
	r := algorithms.Decide(op.Algorithm, &e.state, now, &op.Limit, op.Cost)
	if r.TTL > 0 {
		if exp := now + r.TTL; exp > e.expires || e.expires <= now {
			e.expires = exp
		}
	}
	return r
}

// evictOne makes room in a full shard: expired keys first, else the sampled key that
// would expire soonest (the one whose loss forgets the least).
func (s *Store) evictOne(sh *shard, now int64) {
	var victim string
	var best int64
	n := 0
	for k, e := range sh.m { // map iteration order is random: a free sample
		if e.expires <= now {
			delete(sh.m, k)
			s.keys.Add(-1)
			return
		}
		if n == 0 || e.expires < best {
			victim, best = k, e.expires
		}
		if n++; n == 8 {
			break
		}
	}
	if n > 0 {
		delete(sh.m, victim)
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
		if _, ok := sh.m[k]; ok {
			delete(sh.m, k)
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
	e := sh.m[key]
	if e == nil || e.expires <= now {
		return algorithms.State{}, false
	}
	st := e.state
	st.Log = append([]algorithms.Entry(nil), e.state.Log...)
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
		for k, e := range sh.m {
			if e.expires <= now {
				delete(sh.m, k)
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
		for k, e := range sh.m {
			if e.expires > now && !fn(k, &e.state, e.expires) {
				sh.mu.Unlock()
				return
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
	if _, ok := sh.m[key]; !ok {
		if len(sh.m) >= s.maxPer {
			s.evictOne(sh, now)
		}
		s.keys.Add(1)
	}
	sh.m[key] = &entry{state: st, expires: expires}
}
