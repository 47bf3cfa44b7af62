package redis

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/halt-envoy/halt-envoy/pkg/backends"
)

// maxBatch bounds one shared pipeline: large enough to amortise a round trip, small
// enough that one pipeline never holds Redis for long.
const maxBatch = 128

// batcher gathers the script calls of concurrent Apply calls into shared pipelines.
// Each collector takes a call, adds whatever other calls are already waiting (up to
// maxBatch) without waiting for more, and sends them as one pipeline. Under light load a
// call goes out at once, alone; under heavy load calls pile up while the pipelines are in
// flight and go out together, so the batch size follows the load with no timer.
//
// A caller waits on its call's done channel alone, with no timer and no context: every
// call handed over is finished by its deadline, because a collector drops calls already
// past it and runs each pipeline under the earliest deadline of its calls, and Close
// fails whatever is still queued. A per-call timer, a cancel registration on the gRPC
// context and a select over three channels were, together, more CPU than the round trip.
type batcher struct {
	s    *Store
	in   chan *call
	stop chan struct{}
	wg   sync.WaitGroup
	// mu orders enqueueing (read side) against close (write side): once closed is set,
	// nothing more enters in, so draining in after the collectors stop leaves no call
	// waiting forever.
	mu     sync.RWMutex
	closed bool
}

func newBatcher(s *Store, collectors int) *batcher {
	b := &batcher{s: s, in: make(chan *call, 4*maxBatch), stop: make(chan struct{})}
	for i := 0; i < collectors; i++ {
		b.wg.Add(1)
		go b.collect()
	}
	return b
}

// do hands calls to the collectors and waits until each is finished.
func (b *batcher) do(ctx context.Context, calls []*call) {
	b.mu.RLock()
	n := b.enqueue(ctx, calls)
	b.mu.RUnlock()
	for _, c := range calls[:n] {
		<-c.done
	}
}

// enqueue queues calls and returns how many it queued; the rest get an error.
func (b *batcher) enqueue(ctx context.Context, calls []*call) int {
	if b.closed {
		failFrom(calls, 0, errClosed)
		return 0
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for i, c := range calls {
		// The queue is rarely full: only then is a timer worth its cost.
		select {
		case b.in <- c:
			continue
		default:
		}
		if timer == nil {
			timer = time.NewTimer(time.Until(c.deadline))
		}
		select {
		case b.in <- c:
		case <-ctx.Done():
			failFrom(calls, i, ctx.Err())
			return i
		case <-timer.C:
			failFrom(calls, i, fmt.Errorf("queued for a pipeline past the deadline: %w", context.DeadlineExceeded))
			return i
		}
	}
	return len(calls)
}

var errClosed = fmt.Errorf("store closed: %w", backends.ErrUnavailable)

func failFrom(calls []*call, i int, err error) {
	for ; i < len(calls); i++ {
		calls[i].err = err
	}
}

func (b *batcher) collect() {
	defer b.wg.Done()
	batch := make([]*call, 0, maxBatch)
	for {
		var first *call
		select {
		case first = <-b.in:
		case <-b.stop:
			return
		}
		batch = append(batch[:0], first)
	more:
		for len(batch) < maxBatch {
			select {
			case c := <-b.in:
				batch = append(batch, c)
			default:
				break more
			}
		}
		b.send(batch)
	}
}

// errLate fails calls whose deadline passed while they waited for a pipeline.
var errLate = fmt.Errorf("no pipeline free before the deadline: %w", context.DeadlineExceeded)

// send runs one pipeline for batch. Calls whose caller already gave up, or whose
// deadline passed in the queue, are dropped, not sent: applying an op nobody waits for
// would only count a hit the client never saw.
func (b *batcher) send(batch []*call) {
	live := batch[:0:0]
	var deadline time.Time
	now := time.Now()
	for _, c := range batch {
		err := c.ctx.Err()
		if err == nil && !now.Before(c.deadline) {
			err = errLate
		}
		if err != nil {
			c.err = err
			c.done <- struct{}{}
			continue
		}
		if deadline.IsZero() || c.deadline.Before(deadline) {
			deadline = c.deadline
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	merged := b.merge(live)
	b.s.run(ctx, merged)
	cancel()
	if len(merged) != len(live) {
		b.unmerge(live, merged)
	}
	for _, c := range live {
		c.done <- struct{}{}
	}
}

// merge folds the calls of one slot (every call, outside Cluster) into one script call:
// each op carries its own now, so ops of different Apply calls decide exactly as if sent
// apart, and the server runs one script instead of one per Apply. In Cluster the merged
// calls of different slots then share one pipeline per node.
func (b *batcher) merge(calls []*call) []*call {
	if len(calls) == 1 {
		return calls
	}
	if b.s.slots != nil {
		slices.SortStableFunc(calls, func(x, y *call) int { return x.slot - y.slot })
	}
	var out []*call
	for i := 0; i < len(calls); {
		j := i + 1
		for j < len(calls) && calls[j].slot == calls[i].slot {
			j++
		}
		if j == i+1 {
			out = append(out, calls[i])
			i = j
			continue
		}
		// The merged call's keys are its parts' (Store.command points at them); only
		// the ops' specs are joined into one ARGV.
		ns := 0
		for _, c := range calls[i:j] {
			ns += len(c.spec)
		}
		m := &call{slot: calls[i].slot, parts: calls[i:j]}
		var sb strings.Builder
		sb.Grow(ns)
		for _, c := range calls[i:j] {
			sb.WriteString(c.spec)
		}
		m.spec = sb.String()
		out = append(out, m)
		i = j
	}
	return out
}

// unmerge hands each part of a merged call its share of the reply (or the error).
func (b *batcher) unmerge(live, merged []*call) {
	for _, m := range merged {
		if m.parts == nil {
			continue
		}
		rest := m.reply
		for _, c := range m.parts {
			if m.err != nil {
				c.err = m.err
				continue
			}
			n := min(replyBytes*len(c.ops), len(rest))
			c.reply, rest = rest[:n], rest[n:]
		}
	}
}

// close stops the collectors once their pipelines are done and fails every call still
// queued.
func (b *batcher) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	close(b.stop)
	b.wg.Wait()
	for {
		select {
		case c := <-b.in:
			c.err = errClosed
			c.done <- struct{}{}
		default:
			return
		}
	}
}
