package backends

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/algorithms"
)

// Snapshot is what a batched read found at one key, kept for the conditional write
// after it.
type Snapshot struct {
	// Found reports that the key holds a state (then State is it, decoded).
	Found bool
	// Version is the store's version of what was read (a CAS id, a version field): a
	// write succeeds only if the key is still at it (or still absent, without Found).
	Version int64
	// State is the decoded state.
	State algorithms.State
	// Err is why the key's value is not halt state (wrapping ErrCorrupt): its ops fail
	// with it, never decide on an empty state.
	Err error
}

// Write is one conditional write of a batch: State at Key, kept at least TTL(TTL) after
// Now, if the key is still as Snap found it.
type Write struct {
	Key      string
	Snap     *Snapshot
	State    *algorithms.State
	Now, TTL int64
	// Won is set when the write landed; false with Err nil means its condition failed
	// (another writer won the race, or the key expired meanwhile).
	Won bool
	// Err is why the write could not be made (the store's own error).
	Err error
}

// BatchIO is the batched I/O of a compare-and-swap store: all BatchCAS needs beside the
// store's Versioned for ops decided one by one.
type BatchIO interface {
	// ReadBatch reads each keys[i] into snaps[i] (keys are distinct), in as few round
	// trips as the store allows. An error fails the whole read (the store's
	// ErrUnavailable); a value that is not halt state is that key's Snapshot.Err.
	ReadBatch(ctx context.Context, keys []string, snaps []*Snapshot) error
	// WriteBatch makes every write (keys are distinct), setting each one's Won or Err.
	WriteBatch(ctx context.Context, writes []*Write)
}

// BatchCAS decides the ops of a Batcher's round in a compare-and-swap store with one
// batched read of every key and one batch of conditional writes, where CAS alone takes a
// read and a write per op. The ops on one key decide one after another on the state read
// (each at its call's now, as CAS would in that order) and write once; a key whose write
// lost its race has its ops decided again one by one through CAS.Decide, after the batch.
// It keeps CAS's skip rule (a key whose state no op changed is not written) and its
// errors, and, like CAS, never counts a hit twice: an op is decided again only when its
// key's write did not land.
type BatchCAS struct {
	// CAS decides the ops whose key lost its race, and gives the store name, the retry
	// bound and the expiry jitter.
	CAS CAS
	// IO reads and writes a batch.
	IO BatchIO
	// Key maps an op's key to the store's (prefixed, hashed).
	Key func(string) string
	// One returns the store's Versioned for one op decided by CAS.Decide, and its release.
	One func() (Versioned, func())
}

// casKey is one distinct key of a round: what was read, and what its ops left.
type casKey struct {
	snap   Snapshot
	exists bool // whether the key holds a state after the ops decided so far
	dirty  bool // some op changed it: it must be written
	live   bool // some op on it is of a caller who still waits
	gone   bool // changed only by callers who gave up: not written
	lost   bool // its write lost its race: its ops go through CAS.Decide
	now    int64
	ttl    int64
	write  Write
}

// casRef is one op of a round, in the order the calls and their ops came.
type casRef struct {
	call *Call
	op   *Op
	key  int // index in casRound.keys
}

type casRound struct {
	keys   []casKey
	index  map[string]int
	names  []string
	snaps  []*Snapshot
	writes []*Write
	refs   []casRef
}

var casRoundPool = sync.Pool{New: func() any { return &casRound{index: map[string]int{}} }}

func (r *casRound) reset() {
	for i := range r.keys {
		k := &r.keys[i]
		log := k.snap.State.Log[:0]
		*k = casKey{}
		k.snap.State.Log = log
	}
	clear(r.index)
	clear(r.names)
	clear(r.snaps)
	clear(r.writes)
	clear(r.refs)
	r.keys, r.names, r.snaps, r.writes, r.refs = r.keys[:0], r.names[:0], r.snaps[:0], r.writes[:0], r.refs[:0]
	casRoundPool.Put(r)
}

// Round is a BatchConfig.Round.
func (b *BatchCAS) Round(ctx context.Context, calls []*Call) {
	r := casRoundPool.Get().(*casRound)
	defer r.reset()
	for _, c := range calls {
		for _, op := range c.Ops {
			name := b.Key(op.Key)
			i, ok := r.index[name]
			if !ok {
				i = len(r.keys)
				r.index[name] = i
				r.names = append(r.names, name)
				if len(r.keys) < cap(r.keys) {
					r.keys = r.keys[:i+1]
				} else {
					r.keys = append(r.keys, casKey{})
				}
			}
			r.refs = append(r.refs, casRef{call: c, op: op, key: i})
		}
	}
	for i := range r.keys {
		r.snaps = append(r.snaps, &r.keys[i].snap)
	}
	if err := b.IO.ReadBatch(ctx, r.names, r.snaps); err != nil {
		for _, ref := range r.refs {
			ref.op.Result, ref.op.Err = algorithms.Result{}, err
		}
		return
	}
	for i := range r.keys {
		r.keys[i].exists = r.keys[i].snap.Found
	}
	for _, ref := range r.refs {
		k := &r.keys[ref.key]
		op := ref.op
		if k.snap.Err != nil {
			op.Result, op.Err = algorithms.Result{}, k.snap.Err
			continue
		}
		st := &k.snap.State
		if !k.exists {
			st.Reset()
		}
		before := st.Mark()
		op.Result, op.Err = algorithms.Decide(op.Algorithm, st, ref.call.Now, &op.Limit, op.Cost), nil
		if k.exists && st.Mark() == before || !k.exists && (op.Result.TTL <= 0 || st.IsZero()) {
			continue // nothing to keep (CAS's skip rule)
		}
		k.dirty, k.exists, k.now, k.ttl = true, true, ref.call.Now, op.Result.TTL
		if b.CAS.Jitter > 0 && k.ttl > 0 {
			k.ttl += rand.Int64N(int64(b.CAS.Jitter/time.Microsecond) + 1)
		}
	}
	// Write the keys some waiting caller changed; a key only callers who gave up changed
	// is not written, so that no hit counts for an answer nobody receives.
	gone := fmt.Errorf("%s apply: %w: the caller gave up", b.CAS.Store, ErrUnavailable)
	// One pass over the ops, not one per key: a round holds up to MaxCalls calls' ops.
	for _, ref := range r.refs {
		if k := &r.keys[ref.key]; k.dirty && !k.live && ref.call.Live() {
			k.live = true
		}
	}
	for i := range r.keys {
		k := &r.keys[i]
		if k.dirty && k.snap.Err == nil {
			if !k.live {
				k.dirty, k.gone = false, true
				continue
			}
			k.write = Write{Key: r.names[i], Snap: &k.snap, State: &k.snap.State, Now: k.now, TTL: k.ttl}
			r.writes = append(r.writes, &k.write)
		}
	}
	if len(r.writes) > 0 {
		b.IO.WriteBatch(ctx, r.writes)
	}
	for _, ref := range r.refs {
		k := &r.keys[ref.key]
		switch {
		case k.snap.Err != nil:
		case k.gone:
			ref.op.Result, ref.op.Err = algorithms.Result{}, gone
		case k.dirty && k.write.Err != nil:
			ref.op.Result, ref.op.Err = algorithms.Result{}, k.write.Err
		case k.dirty && !k.write.Won:
			k.lost = true
		}
	}
	// The ops of keys that lost their race, decided again one by one, in their order.
	for _, ref := range r.refs {
		k := &r.keys[ref.key]
		if !k.lost {
			continue
		}
		if !ref.call.Live() {
			ref.op.Result, ref.op.Err = algorithms.Result{}, gone
			continue
		}
		v, release := b.One()
		ref.op.Result, ref.op.Err = b.CAS.Decide(ctx, v, r.names[ref.key], ref.op, ref.call.Now, &k.snap.State)
		release()
	}
}

// Spread runs fn(0) .. fn(n-1) on up to workers goroutines (the caller's among them) and
// returns when all are done: a store's WriteBatch makes its writes this way when its
// client sends one request at a time.
func Spread(n, workers int, fn func(i int)) {
	if n <= 1 || workers <= 1 {
		for i := 0; i < n; i++ {
			fn(i)
		}
		return
	}
	workers = min(workers, n)
	var next sync.Mutex
	i := 0
	take := func() int {
		next.Lock()
		defer next.Unlock()
		j := i
		i++
		return j
	}
	var wg sync.WaitGroup
	work := func() {
		for j := take(); j < n; j = take() {
			fn(j)
		}
	}
	for w := 1; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work()
		}()
	}
	work()
	wg.Wait()
}
