package backends

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultBatchCalls bounds the Apply calls of one round: enough to share a round trip
// among every call in flight at the load a store answers, few enough that one round
// never holds the store (or its row locks) for long.
const DefaultBatchCalls = 128

// BatchConfig says how a Batcher runs a store's rounds.
type BatchConfig struct {
	// Store names the store in errors ("postgres").
	Store string
	// Collectors is how many rounds may be in flight at once; zero means one. With one,
	// every call arriving while a round is out waits for the next, so rounds are as
	// large as the load makes them; more shorten that wait when the store is far away
	// or can work on several rounds at once.
	Collectors int
	// MaxCalls bounds the calls of one round; zero means DefaultBatchCalls.
	MaxCalls int
	// Round decides the ops of every call in one store round, each op atomic on its key
	// as Store.Apply promises, and each call's ops at that call's Now. When it returns,
	// every op of every call has a Result or an Err (FailAll for a round that failed as
	// a whole). ctx ends at the latest deadline of the calls; a call whose caller gave
	// up meanwhile (Call.Live) should not be written for. Round owns the calls' Ops
	// until it returns, and never sees a caller's own ops.
	Round func(ctx context.Context, calls []*Call)
}

// Call is one Apply call in a Batcher's round.
type Call struct {
	// Now is the instant the call's ops are decided at.
	Now int64
	// Ops are the round's copies of the caller's ops: the round fills their Result or
	// Err, and the caller takes them back only if it still waits.
	Ops []*Op

	ctx      context.Context
	deadline time.Time
	copies   []Op
	done     chan struct{}
	state    atomic.Int32 // callWaiting, then callAnswered or callAbandoned, set once
}

// The states of a Call: whoever moves it from callWaiting owns its end. The collector
// answers it (the caller copies the results back and pools it); a caller whose context
// ended first abandons it (the collector pools it once its round no longer uses it).
const (
	callWaiting int32 = iota
	callAnswered
	callAbandoned
)

// Live reports whether the caller still waits for c: a round skips the writes of a call
// whose caller gave up, so that no hit is counted for an answer nobody receives (a
// write already sent may still land; the caller then got ErrUnavailable).
func (c *Call) Live() bool { return c.state.Load() == callWaiting && c.ctx.Err() == nil }

var callPool = sync.Pool{New: func() any { return &Call{done: make(chan struct{}, 1)} }}

// Batcher gathers the Apply calls of one store that arrive while its rounds are in
// flight into shared rounds, as the Redis store's collector does for its pipelines:
// each collector takes a call, adds the calls already waiting (up to MaxCalls) without
// waiting for more, and runs them as one round. Under light load a call goes out at
// once, alone; under heavy load calls pile up while a round is out and go together, so
// a round's size follows the load with no timer.
//
// Each caller keeps its own deadline and cancellation: it waits for its answer or its
// context, whichever comes first, and a caller that gives up takes nothing from the
// others in its round (the round runs until the latest deadline of its calls, and no
// caller's answer depends on another's). A call given up before its round starts is not
// sent at all.
type Batcher struct {
	cfg    BatchConfig
	in     chan *Call
	stop   chan struct{}
	wg     sync.WaitGroup
	rounds atomic.Uint64
	// mu orders enqueueing (read side) against Close (write side): once closed is set,
	// nothing more enters in, so draining in after the collectors stop leaves no call
	// waiting forever.
	mu     sync.RWMutex
	closed bool
}

// NewBatcher starts cfg.Collectors collectors; Close stops them.
func NewBatcher(cfg BatchConfig) *Batcher {
	if cfg.Collectors <= 0 {
		cfg.Collectors = 1
	}
	if cfg.MaxCalls <= 0 {
		cfg.MaxCalls = DefaultBatchCalls
	}
	b := &Batcher{cfg: cfg, in: make(chan *Call, 4*cfg.MaxCalls), stop: make(chan struct{})}
	for i := 0; i < cfg.Collectors; i++ {
		b.wg.Add(1)
		go b.collect()
	}
	return b
}

// Rounds is how many rounds the Batcher has run: what a test counts to see that
// concurrent calls shared a round trip.
func (b *Batcher) Rounds() uint64 { return b.rounds.Load() }

// Queued is how many calls wait for a collector (for tests: a round starts with those).
func (b *Batcher) Queued() int { return len(b.in) }

// Apply hands ops to a round at now and waits for their answers or for ctx, which
// should carry the store's timeout. It keeps Store.Apply's contract: every op has a
// Result or an Err, and the error is the first op's error.
func (b *Batcher) Apply(ctx context.Context, now int64, ops []*Op) error {
	if len(ops) == 0 {
		return nil
	}
	c := callPool.Get().(*Call)
	c.ctx, c.Now = ctx, now
	c.deadline, _ = ctx.Deadline()
	for _, op := range ops {
		c.copies = append(c.copies, Op{Key: op.Key, Algorithm: op.Algorithm, Limit: op.Limit, Cost: op.Cost})
	}
	for i := range c.copies {
		c.Ops = append(c.Ops, &c.copies[i])
	}
	if err := b.enqueue(ctx, c); err != nil {
		putCall(c)
		return FailAll(ops, err)
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		if c.state.CompareAndSwap(callWaiting, callAbandoned) {
			// The round goes on without us and pools c when done with it.
			return FailAll(ops, fmt.Errorf("%s apply: %w: %w", b.cfg.Store, ErrUnavailable, ctx.Err()))
		}
		<-c.done // answered meanwhile
	}
	var first error
	for i, op := range ops {
		op.Result, op.Err = c.copies[i].Result, c.copies[i].Err
		if first == nil && op.Err != nil {
			first = op.Err
		}
	}
	putCall(c)
	return first
}

// putCall empties c and pools it.
func putCall(c *Call) {
	clear(c.Ops)
	clear(c.copies) // no key outlives its call in the pool
	c.Ops, c.copies, c.ctx = c.Ops[:0], c.copies[:0], nil
	c.state.Store(callWaiting)
	callPool.Put(c)
}

func (b *Batcher) errClosed() error {
	return fmt.Errorf("%s: store closed: %w", b.cfg.Store, ErrUnavailable)
}

func (b *Batcher) enqueue(ctx context.Context, c *Call) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return b.errClosed()
	}
	select {
	case b.in <- c:
		return nil
	default:
	}
	select { // the queue is full: wait for room within the caller's budget
	case b.in <- c:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s apply: queued past the deadline: %w: %w", b.cfg.Store, ErrUnavailable, ctx.Err())
	}
}

func (b *Batcher) collect() {
	defer b.wg.Done()
	batch := make([]*Call, 0, b.cfg.MaxCalls)
	for {
		var first *Call
		select {
		case first = <-b.in:
		case <-b.stop:
			return
		}
		batch = append(batch[:0], first)
	more:
		for len(batch) < b.cfg.MaxCalls {
			select {
			case c := <-b.in:
				batch = append(batch, c)
			default:
				break more
			}
		}
		b.run(batch)
		clear(batch)
	}
}

// run runs one round for batch. Calls whose caller already gave up are not sent.
func (b *Batcher) run(batch []*Call) {
	live := batch[:0:0]
	var deadline time.Time
	unbounded := false // a caller without a deadline: the round has none either
	for _, c := range batch {
		if !c.Live() {
			b.finish(c, fmt.Errorf("%s apply: %w: %w", b.cfg.Store, ErrUnavailable, context.Cause(c.ctx)))
			continue
		}
		unbounded = unbounded || c.deadline.IsZero()
		if c.deadline.After(deadline) {
			deadline = c.deadline
		}
		live = append(live, c)
	}
	if unbounded {
		deadline = time.Time{}
	}
	if len(live) == 0 {
		return
	}
	b.rounds.Add(1)
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	if !deadline.IsZero() {
		ctx, cancel = context.WithDeadline(ctx, deadline)
	}
	b.cfg.Round(ctx, live)
	cancel()
	for _, c := range live {
		b.finish(c, nil)
	}
}

// finish answers c (failing its ops with err first, when err is set), or pools it when
// its caller gave up.
func (b *Batcher) finish(c *Call, err error) {
	if !c.state.CompareAndSwap(callWaiting, callAnswered) {
		putCall(c) // abandoned: nobody reads the answer
		return
	}
	if err != nil {
		FailAll(c.Ops, err)
	}
	c.done <- struct{}{}
}

// Close stops the collectors once their rounds are done and fails every call still
// queued. Later calls are answered ErrUnavailable.
func (b *Batcher) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	b.mu.Unlock()
	close(b.stop)
	b.wg.Wait()
	for {
		select {
		case c := <-b.in:
			b.finish(c, b.errClosed())
		default:
			return
		}
	}
}
