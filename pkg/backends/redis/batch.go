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
type batcher struct {
	s    *Store
	in   chan *call
	stop chan struct{}
	wg   sync.WaitGroup
}

func newBatcher(s *Store, collectors int) *batcher {
	b := &batcher{s: s, in: make(chan *call, 4*maxBatch), stop: make(chan struct{})}
	for i := 0; i < collectors; i++ {
		b.wg.Add(1)
		go b.collect()
	}
	return b
}

// do hands calls to the collectors and waits for them, or for ctx.
func (b *batcher) do(ctx context.Context, calls []*call) {
	for i, c := range calls {
		c.done = make(chan struct{})
		// A one-channel attempt first: the queue is rarely full, and a three-way select
		// locks all three channels every time.
		select {
		case b.in <- c:
			continue
		default:
		}
		select {
		case b.in <- c:
		case <-ctx.Done():
			failFrom(calls, i, ctx.Err())
			b.wait(ctx, calls[:i])
			return
		case <-b.stop:
			failFrom(calls, i, errClosed)
			b.wait(ctx, calls[:i])
			return
		}
	}
	b.wait(ctx, calls)
}

var errClosed = fmt.Errorf("store closed: %w", backends.ErrUnavailable)

func failFrom(calls []*call, i int, err error) {
	for ; i < len(calls); i++ {
		calls[i].err = err
	}
}

// wait returns when every call is done or ctx ends. A call still out when ctx ends is
// marked abandoned, and its reply (which the collector may still be writing) is never read.
func (b *batcher) wait(ctx context.Context, calls []*call) {
	for i, c := range calls {
		select {
		case <-c.done:
		case <-ctx.Done():
			for _, c := range calls[i:] {
				select {
				case <-c.done:
				default:
					c.abandoned = ctx.Err()
				}
			}
			return
		}
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

// send runs one pipeline for batch. Calls whose caller already gave up are dropped, not
// sent: applying an op nobody waits for would only count a hit the client never saw.
func (b *batcher) send(batch []*call) {
	live := batch[:0:0]
	var deadline time.Time
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.err = err
			close(c.done)
			continue
		}
		if d, ok := c.ctx.Deadline(); ok && d.After(deadline) {
			deadline = d
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	if deadline.IsZero() {
		deadline = time.Now().Add(b.s.timeout)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	merged := b.merge(live)
	b.s.run(ctx, merged)
	cancel()
	if len(merged) != len(live) {
		b.unmerge(live, merged)
	}
	for _, c := range live {
		close(c.done)
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
		nk, ns := 0, 0
		for _, c := range calls[i:j] {
			nk += len(c.keys)
			ns += len(c.spec)
		}
		m := &call{keys: make([]string, 0, nk), slot: calls[i].slot, parts: calls[i:j]}
		var sb strings.Builder
		sb.Grow(ns)
		for _, c := range calls[i:j] {
			m.keys = append(m.keys, c.keys...)
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

func (b *batcher) close() {
	close(b.stop)
	b.wg.Wait()
}
